"""pipeline: the model cut into stages, the batch cut into m micro-batches,
run by a torch.distributed.pipelining schedule (GPipe or 1F1B).

Each micro-batch's loss is a mean over its samples and the schedule scales
gradients by 1/m, so with equal micro-batches the gradient is that of the
mean loss over the whole batch. Idle share of a stage per step (the bubble),
for p stages: (p - 1) / (m + p - 1).
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn
from torch.distributed.pipelining import PipelineStage, ScheduleGPipe, Schedule1F1B
from torch.distributed.pipelining import schedules as pipeline_schedules

from ..models import stage_ranges
from ..recorder import Recorder

SCHEDULE_CLASSES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}


class Pipeline:
    schedule_name: str | None = None  # None: the config's schedule

    def __init__(self, model: nn.Sequential, topology, config, recorder: Recorder, loss_fn, groups):
        self.topology = topology
        self.recorder = recorder
        # run() has resolved the split points before any rank started.
        first, end = stage_ranges(config.split_points, len(model))[topology.stage]
        # Slicing keeps the blocks' names ("4.0.weight"), so the stage's
        # state dict speaks of the same parameters as the full model's.
        self.module = self.local_model = model[first:end]
        self.micro_batches = config.micro_batches
        self.stage = PipelineStage(self.module, topology.stage, topology.pp,
                                   next(model.parameters()).device, group=groups.pp)
        self._record_stage(self.stage)
        self._last_forward = 0
        schedule_cls = SCHEDULE_CLASSES[self.schedule_name or config.schedule]
        self.schedule = schedule_cls(self.stage, n_microbatches=config.micro_batches,
                                     loss_fn=self._recorded_loss(loss_fn))

    def context(self):
        return recorded_p2p(self.recorder)

    def train_step(self, x, y) -> float | None:
        topo = self.topology
        args = (x,) if topo.is_first_stage else ()
        if topo.is_last_stage:
            losses: list[torch.Tensor] = []
            self.schedule.step(*args, target=y, losses=losses)
            return float(torch.stack([l.detach() for l in losses]).mean())
        self.schedule.step(*args)
        return None

    # -- recording --------------------------------------------------------

    def _record_stage(self, stage: PipelineStage) -> None:
        rec, index = self.recorder, self.topology.stage
        if not rec.enabled:
            return
        forward, backward = stage.forward_one_chunk, stage.backward_one_chunk
        backward_weight = stage.backward_weight_one_chunk

        @functools.wraps(forward)
        def forward_one_chunk(chunk, *args, **kwargs):
            self._last_forward = chunk
            with rec.span("forward", stage=index, micro_batch=chunk), rec.saving_activations():
                return forward(chunk, *args, **kwargs)

        @functools.wraps(backward)
        def backward_one_chunk(chunk, *args, **kwargs):
            with rec.span("backward", stage=index, micro_batch=chunk):
                return backward(chunk, *args, **kwargs)

        @functools.wraps(backward_weight)
        def backward_weight_one_chunk(chunk, *args, **kwargs):
            with rec.span("backward_weight", stage=index, micro_batch=chunk):
                return backward_weight(chunk, *args, **kwargs)

        stage.forward_one_chunk = forward_one_chunk
        stage.backward_one_chunk = backward_one_chunk
        stage.backward_weight_one_chunk = backward_weight_one_chunk
        # The first step infers the shapes crossing each cut by running
        # extra forwards: label that as set-up, not as micro-batches.
        prepare = getattr(stage, "_prepare_forward_infra", None)
        if prepare is not None:
            @functools.wraps(prepare)
            def prepare_forward_infra(*args, **kwargs):
                with rec.span("setup", stage=index):
                    return prepare(*args, **kwargs)

            stage._prepare_forward_infra = prepare_forward_infra

    def _recorded_loss(self, loss_fn):
        rec, index = self.recorder, self.topology.stage

        def loss(output, target):
            with rec.span("loss", stage=index, micro_batch=self._last_forward), rec.saving_activations():
                return loss_fn(output, target)

        return loss


@contextlib.contextmanager
def recorded_p2p(recorder: Recorder):
    """Time every send and receive the schedules post (they all go through
    ``schedules._batch_p2p``)."""
    original = pipeline_schedules._batch_p2p
    if not recorder.enabled:
        yield
        return

    def batch_p2p(p2p_ops, desc=None):
        start = recorder.now()
        return recorder.wrap_p2p(p2p_ops, original(p2p_ops, desc), start)

    pipeline_schedules._batch_p2p = batch_p2p
    try:
        yield
    finally:
        pipeline_schedules._batch_p2p = original
