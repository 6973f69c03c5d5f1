"""The training loop one rank runs. The single-device baseline runs the very
same loop in the caller's process, with recording off and no process group.
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from playground.spec.config import RunConfig
from playground.zoo.datasets import Dataset, loss_fn
from playground.instrument import quiet_known_warnings
from playground.zoo.models import GLOBAL_RNG
from playground.zoo import levers
from playground.rank.recorder import Recorder, memory_bytes
from playground.rank.strategies import strategy_class
from playground.spec.topology import Topology


@dataclass
class Groups:
    """This rank's device mesh and process groups (None without a process group)."""

    mesh: Any = None
    """The (dp, pp, tp) DeviceMesh; its sub-meshes feed DTensor and FSDP."""
    dp: Any = None
    """Ranks holding the same part of the model: gradients are reduced among them."""
    pp: Any = None
    """Ranks of this rank's pipeline."""
    tp: Any = None
    """Ranks sharing each layer (tensor parallel)."""


def make_groups(topology: Topology, device_type: str) -> Groups:
    """The mesh, laid out as ``Topology.grid``: init_device_mesh creates one
    process group per mesh dimension and row, on every rank alike."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device_type, (topology.dp, topology.pp, topology.tp), mesh_dim_names=("dp", "pp", "tp"))
    return Groups(mesh=mesh, dp=mesh.get_group("dp"), pp=mesh.get_group("pp"), tp=mesh.get_group("tp"))


def make_optimizer(config: RunConfig, params, dp_group=None, recorder: Recorder | None = None
                   ) -> torch.optim.Optimizer | None:
    """The optimizer over ``params``; None when there are none (a stage of
    parameter-free blocks, such as a lone Flatten, has nothing to step).
    At ZeRO stage 1, with a ``dp_group``, each rank of it keeps the state of
    its partition only (``strategies.zero1.ShardedOptimizer``, recording on
    ``recorder``)."""
    params = list(params)
    if not params:
        return None
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.SGD
    if config.resolved_zero_stage == 1 and dp_group is not None:
        from playground.rank.strategies.zero1 import ShardedOptimizer

        return ShardedOptimizer(params, cls, dp_group, recorder or Recorder(enabled=False), lr=config.lr)
    return cls(params, lr=config.lr)


def train_rank(config: RunConfig, topology: Topology, model: nn.Sequential, dataset: Dataset,
               recorder: Recorder, groups: Groups, device: torch.device, on_step=None) -> dict[str, Any]:
    """Train this rank's part of ``model`` for ``config.steps`` steps.

    ``on_step(update)``: called after each step with {"step": step,
    "loss": this rank's part of its loss (None where the rank computes
    none), "step_s": the step's seconds on this rank}.

    Returns what the rank knows: its part of each step's loss, its memory,
    and its trained parameters and buffers (from the first data-parallel
    replica only, since the others hold copies). A loss part that is inf or
    NaN on any rank ends training on every rank at the same step, at most
    ``AGREE_EVERY`` + 1 steps later (after that very step without a process
    group); see ``DivergenceWatch``. ``diverged`` is then {"step": step,
    "ranks": [ranks whose part was not finite]}, else None.

    Warnings torch gives about this package's deliberate choices are
    silenced for the call only (``instrument.KNOWN_WARNINGS``): the
    baseline runs here in the caller's process, whose filters stay as they were.
    """
    with quiet_known_warnings():
        return _train(config, topology, model, dataset, recorder, groups, device, on_step)


def _train(config: RunConfig, topology: Topology, model: nn.Sequential, dataset: Dataset,
           recorder: Recorder, groups: Groups, device: torch.device, on_step) -> dict[str, Any]:
    recorder.ignore_storages_of(model.parameters())
    if config.sync_batchnorm and topology.dp > 1:
        from playground.rank.strategies.syncbn import convert_sync_batchnorm

        model = convert_sync_batchnorm(model, groups.dp, device.type)

    def recomputing(block: int):
        return recorder.span("recompute", block=block)

    with levers.on_blocks(model, config.recompute, config.precision, device.type, recomputing):
        return _train_levered(config, topology, model, dataset, recorder, groups, device, on_step)


def _train_levered(config: RunConfig, topology: Topology, model: nn.Sequential, dataset: Dataset,
                   recorder: Recorder, groups: Groups, device: torch.device, on_step) -> dict[str, Any]:
    loss = levers.with_autocast(loss_fn(dataset.task), device.type, config.precision)
    strategy = strategy_class(config)(model, topology, config, recorder, loss, groups)
    optimizer = make_optimizer(config, strategy.module.parameters(), groups.dp, recorder)
    loss_parts: list[float | None] = []
    watch = DivergenceWatch(config.steps, recorder, device)
    params = list(strategy.module.parameters())  # the same tensors, updated in place, every step
    diverged = None
    with strategy.context(), recorder.timing_waits(), seeded(config.seed, rng_stream(topology)):
        for step in range(config.steps):
            x, y = dataset.batch(step, config.global_batch, config.seed)
            x, y = x.to(device), y.to(device)
            recorder.ignore_only_storages_of(params)
            with recorder.step(step):
                if optimizer is not None:
                    optimizer.zero_grad(set_to_none=True)
                loss_parts.append(accumulated_step(strategy, x, y, config.grad_accumulation))
                with recorder.span("optimizer"):
                    if optimizer is not None:
                        optimizer.step()
            if on_step is not None:
                start, end = recorder.step_times[-1]
                on_step({"step": step, "loss": loss_parts[-1], "step_s": end - start})
            diverged = watch.after_step(step, loss_parts[-1])
            if diverged:
                break
        diverged = diverged or watch.finish()
    local = strategy.local_model
    memory = memory_bytes(local, optimizer)
    memory["activations_peak"] = recorder.activations_peak
    memory["allocator_peak"] = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    # Sharded parameters (DTensor) are gathered whole: a collective, so every rank takes part.
    state = [*local.named_parameters(), *local.named_buffers()]
    full = {name: (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().cpu().clone() for name, t in state}
    params = full if topology.dp_rank == 0 and topology.tp_rank == 0 else {}
    # The tensor-parallel plan the strategy applied (module name -> colwise / rowwise), for the views.
    plan = getattr(strategy, "plan_kinds", {})
    return {"loss_parts": loss_parts, "memory": memory, "params": params, "tensor_plan": plan,
            "tensor_plan_note": getattr(strategy, "plan_note", None), "diverged": diverged}


def accumulated_step(strategy, x: torch.Tensor, y: torch.Tensor, k: int) -> float | None:
    """Forward and backward of the global batch (x, y) as k micro-steps,
    gradients summed in place; reduced among the data-parallel ranks in the
    last micro-step only (``levers.gradient_sync``). Returns this rank's part
    of the step's loss, the sum of its micro-steps' parts (None where the
    rank computes none)."""
    parts = []
    for i, (xs, ys) in enumerate(levers.micro_steps(x, y, k)):
        with levers.gradient_sync(strategy.module, enabled=i == k - 1):
            parts.append(strategy.train_step(xs, ys))
    return None if parts[0] is None else sum(parts)


def rng_stream(topology: Topology) -> int:
    """This rank's random stream: its place in the mesh with the
    tensor-parallel axis left out. Ranks of one tensor-parallel group compute
    the replicated activations alike, so they must draw alike (the same
    Dropout mask); every other rank draws its own. Rank 0's stream, 0, is
    the single-device baseline's."""
    return topology.rank // topology.tp


@contextlib.contextmanager
def seeded(seed: int, stream: int):
    """Seed torch's, Python's and NumPy's generators from (seed, stream) as
    ``seed * 65_537 + stream``, and give back the states they had after: a
    pooled rank carries no random state from one run to the next, and the
    baseline leaves its caller's generators as they were."""
    import numpy as np

    value = seed * 65_537 + stream
    py_state, np_state = random.getstate(), np.random.get_state()
    with GLOBAL_RNG, torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_initialized() else []):
        torch.manual_seed(value)
        random.seed(value)
        np.random.seed(value % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


AGREE_EVERY = 8
"""Steps between the ranks' agreements on a diverged loss (and the last step)."""


class DivergenceWatch:
    """Whether a rank's part of the loss became inf or NaN, agreed by every
    rank so that all stop at the same step.

    Each rank keeps the first step at which its own part was not finite.
    Every ``AGREE_EVERY`` steps, and at the last step, the ranks compare:
    a max all-reduce of one number per rank (that first step + 1, or 0),
    started as the step ends and read as the next step ends, so it never
    holds a rank up and costs one small collective per ``AGREE_EVERY``
    steps; it is kept off the recorded timeline. Training therefore ends at
    most ``AGREE_EVERY`` + 1 steps after the loss went bad, on every rank at
    the same step. Without a process group (the single-device baseline) the
    answer is known at once and training stops after the very step."""

    def __init__(self, steps: int, recorder: Recorder, device: torch.device):
        import torch.distributed as dist

        self.steps, self.recorder, self.device = steps, recorder, device
        self.grouped = dist.is_available() and dist.is_initialized()
        self.first_bad: int | None = None
        self.pending = None  # (work, flags) of the agreement in flight

    def after_step(self, step: int, loss_part: float | None) -> dict | None:
        """Note this step's loss part; {"step", "ranks"} once all ranks know
        that some part was not finite, else None."""
        if self.first_bad is None and loss_part is not None and not math.isfinite(loss_part):
            self.first_bad = step
        if not self.grouped:
            return {"step": step, "ranks": [0]} if self.first_bad is not None else None
        heard = self._read() if self.pending is not None else None
        if heard is None and ((step + 1) % AGREE_EVERY == 0 or step == self.steps - 1):
            self._post()
        return heard

    def finish(self) -> dict | None:
        """The answer of the agreement still in flight, if any (waits for it)."""
        return self._read() if self.grouped and self.pending is not None else None

    def _post(self) -> None:
        import torch.distributed as dist

        flags = torch.zeros(dist.get_world_size(), device=self.device)
        flags[dist.get_rank()] = 0.0 if self.first_bad is None else float(self.first_bad + 1)
        self.recorder.unrecorded_collectives = True
        try:
            self.pending = (dist.all_reduce(flags, op=dist.ReduceOp.MAX, async_op=True), flags)
        finally:
            self.recorder.unrecorded_collectives = False

    def _read(self) -> dict | None:
        work, flags = self.pending
        self.pending = None
        self.recorder.unrecorded_collectives = True  # not the training's wait: keep it off the record
        try:
            work.wait()
        finally:
            self.recorder.unrecorded_collectives = False
        firsts = {r: int(f) - 1 for r, f in enumerate(flags.tolist()) if f}
        if not firsts:
            return None
        step = min(firsts.values())
        return {"step": step, "ranks": [r for r, s in firsts.items() if s == step]}
