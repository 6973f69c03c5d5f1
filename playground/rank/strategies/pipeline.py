"""pipeline: the model cut into stages, the batch cut into m micro-batches,
run by a torch.distributed.pipelining schedule, chosen by name.

  one stage per rank        gpipe, 1f1b
  v stages per rank, looped interleaved1f1b, loopedbfs, interleavedzerobubble
                            (rank r holds stages r, r + p, r + 2p, ...)
  2 stages per rank, V      zbvzerobubble, dualpipev
                            (rank r holds stages r and 2p - 1 - r)

Each micro-batch's loss is a mean over its samples and the schedule scales
gradients by 1/m, so with equal micro-batches the gradient is that of the
mean loss over the whole batch. Idle share of a rank per step (the bubble),
for p ranks and equal stages: (p - 1) / (m + p - 1) with one stage per rank,
(p - 1) / (v m + p - 1) with v looped stages per rank and m >= p; the
zero-bubble schedules fill the rest with weight gradients (backward_weight),
computed apart from the input gradients that the previous stage waits for.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage
from torch.nn.parallel import DistributedDataParallel as DDP

from playground.zoo.datasets import BatchShare
from playground.instrument import batch_p2p_hook, is_single_stage_schedule, stage_hooks
from playground.zoo.facts import tied_stages
from playground.spec.partition import stage_ranges
from playground.rank.recorder import Recorder
from playground.spec.schedules import SCHEDULE_CLASSES

class Pipeline:
    schedule_name: str | None = None  # None: the config's schedule

    def __init__(self, model: nn.Sequential, topology, config, recorder: Recorder, loss_fn, groups):
        self.topology = topology
        self.recorder = recorder
        self._last_forward = 0
        self._in_setup = False
        # run() has resolved the split points (config.stages - 1 of them)
        # before any rank started.
        ranges = stage_ranges(config.split_points or (), len(model))
        device = next(model.parameters()).device
        # Replicas of the pipeline (a dp x pp mesh) each train on their share
        # of the batch, weighted as in data parallel: w_r = dp * b_r / B, and
        # DDP averages each stage's gradients over the dp replicas.
        self.part = BatchShare(config.rank_batches(), topology.dp_rank)
        self.stages: list[PipelineStage] = []
        slices = []
        for index in config.rank_stages(topology.pp_rank):
            first, end = ranges[index]
            # Slicing keeps the blocks' names ("4.0.weight"), so the stage's
            # state dict speaks of the same parameters as the full model's.
            slices.append(model[first:end])
            submodule = slices[-1]
            # DDP refuses a module with nothing to train (a lone Flatten): such a stage has no gradients to reduce.
            if topology.dp > 1 and any(p.requires_grad for p in submodule.parameters()):
                # find_unused_parameters keeps DDP from rebuilding its buckets after
                # the first step, which it cannot do when several micro-batches
                # ran backward (under no_sync) in that step.
                submodule = DDP(submodule, process_group=groups.dp, find_unused_parameters=True)
                if recorder.enabled:
                    submodule.register_comm_hook(None, recorder.ddp_comm_hook(groups.dp, topology.dp))
            self.stages.append(PipelineStage(submodule, index, config.stages, device, group=groups.pp))
        self.module = self.local_model = slices[0] if len(slices) == 1 else _blocks_of(slices)
        self.ties = tie_groups(model, ranges, config, topology)
        self.holds_first = any(s.is_first for s in self.stages)
        self.holds_last = any(s.is_last for s in self.stages)
        schedule_cls = SCHEDULE_CLASSES[self.schedule_name or config.schedule]
        stages = self.stages[0] if is_single_stage_schedule(schedule_cls) else self.stages
        self.schedule = schedule_cls(stages, n_microbatches=config.micro_batches,
                                     loss_fn=self._recorded_loss(loss_fn))

    @contextlib.contextmanager
    def context(self):
        """The stages' hooks (recording; buffers kept through set-up) and
        the timed sends and receives, for the training loop; removed after."""
        with contextlib.ExitStack() as hooks:
            for stage in self.stages:
                hooks.enter_context(self._stage_hooks(stage))
            if self.recorder.enabled:
                hooks.enter_context(batch_p2p_hook(self._timed_p2p))
            yield

    def train_step(self, x, y) -> float | None:
        if self.topology.dp > 1:
            x, y = self.part.take(x), self.part.take(y)
        args = (x,) if self.holds_first else ()
        if self.holds_last:
            losses: list[torch.Tensor] = []
            self.schedule.step(*args, target=y, losses=losses)
            self._reduce_tied_gradients()
            # The losses are weighted by w_r; this replica's part of the global loss is mean * b_r / B.
            return float(torch.stack([l.detach() for l in losses]).mean()) / self.part.weight * self.part.share
        self.schedule.step(*args)
        self._reduce_tied_gradients()
        return None

    def _reduce_tied_gradients(self) -> None:
        """Sum each tied parameter's gradient over the pipeline ranks that
        hold a copy of it (all-reduce over the tie's group), as Megatron does
        for an embedding tied to the output head: every copy then takes the
        same optimizer step, the step one device takes with the sum of the
        gradients of both uses."""
        if not self.ties:
            return
        with self.recorder.recording_collectives():
            for param, group in self.ties:
                if param.grad is None:  # this copy's blocks did not use it
                    param.grad = torch.zeros_like(param)
                dist.all_reduce(param.grad, group=group)

    # -- recording --------------------------------------------------------

    def _stage_hooks(self, stage: PipelineStage):
        rec, index = self.recorder, stage.stage_index
        keep_buffers = _buffers_kept(list(stage.submod.buffers()))
        if not rec.enabled:
            return stage_hooks(stage, setup_forward=keep_buffers)

        def forward(chunk):
            self._last_forward = chunk
            return _both(rec.span("forward", stage=index, micro_batch=chunk), rec.saving_activations())

        # The first step infers the shapes crossing each cut by running
        # extra forwards: label that as set-up, not as micro-batches...
        def setup_forward():
            return _both(rec.span("setup", stage=index), keep_buffers())

        # Zero-bubble schedules call backward_one_chunk for the input
        # gradients only and compute the weights' in backward_weight.
        return stage_hooks(
            stage, forward=forward,
            backward=lambda chunk: rec.backward_span(stage=index, micro_batch=chunk),
            backward_input=lambda chunk: rec.backward_span("backward_input", stage=index, micro_batch=chunk),
            backward_weight=lambda chunk: rec.span("backward_weight", stage=index, micro_batch=chunk),
            setup_forward=setup_forward,
            # ...and, on the last stage, one more loss and backward.
            setup_backward=self._in_setup_backward)

    @contextlib.contextmanager
    def _in_setup_backward(self):
        self._in_setup = True
        try:
            yield
        finally:
            self._in_setup = False

    def _timed_p2p(self, ops, post):
        start = self.recorder.now()  # before posting: posting a small send may already complete it
        return self.recorder.wrap_p2p(ops, post(), start)

    def _recorded_loss(self, loss_fn):
        rec = self.recorder
        last_stage = self.stages[-1].stage_index if self.holds_last else None

        def loss(output, target):
            if self._in_setup:
                return loss_fn(output, target) * self.part.weight
            with rec.span("loss", stage=last_stage, micro_batch=self._last_forward), rec.saving_activations():
                return loss_fn(output, target) * self.part.weight

        return loss


def tie_groups(model: nn.Sequential, ranges: list[tuple[int, int]], config, topology) -> list[tuple]:
    """(parameter, process group) for each tied parameter this rank holds a
    copy of. Every rank creates every tie's group (one per data-parallel
    replica, over that replica's pipeline ranks holding a copy), in the same
    order, as ``dist.new_group`` requires."""
    params = dict(model.named_parameters(remove_duplicate=False))
    mine = []
    for names, pp_ranks in tied_stages(model, ranges, config):
        for dp_rank in range(topology.dp):
            ranks = [topology.grid[dp_rank][r][0] for r in pp_ranks]
            group = dist.new_group(ranks)
            if topology.rank in ranks:
                mine.append((params[names[0]], group))
    return mine


def _buffers_kept(buffers: list[torch.Tensor]):
    """A context manager factory: the first step's shape inference runs
    extra forwards; buffers they update (BatchNorm's running statistics,
    num_batches_tracked) are put back as they were, so that they count
    the training forwards only."""

    @contextlib.contextmanager
    def kept():
        saved = [b.detach().clone() for b in buffers]
        try:
            yield
        finally:
            with torch.no_grad():
                for b, value in zip(buffers, saved):
                    b.copy_(value)

    return kept


@contextlib.contextmanager
def _both(first, second):
    """Two context managers entered in order, as one."""
    with first, second:
        yield


def _blocks_of(slices: list[nn.Sequential]) -> nn.ModuleDict:
    """The blocks of several stages in one module, under their names in the
    full model ("4" holds "4.0.weight"), for the optimizer and the state
    dict. Not callable: the stages are not adjacent."""
    return nn.ModuleDict({name: block for s in slices for name, block in s.named_children()})
