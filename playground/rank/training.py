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
    replica only, since the others hold copies). A loss part that is inf or NaN on any
    rank ends training on every rank after the next step (after that very
    step without a process group); see ``DivergenceCheck``. ``diverged`` is
    then {"step": step, "ranks": [ranks whose part was not finite]}, else None.

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
    strategy = strategy_class(config)(model, topology, config, recorder, loss_fn(dataset.task), groups)
    optimizer = make_optimizer(config, strategy.module.parameters(), groups.dp, recorder)
    loss_parts: list[float | None] = []
    checks: list[DivergenceCheck] = []
    diverged = None
    with strategy.context(), recorder.timing_waits(), seeded(config.seed, rng_stream(topology)):
        for step in range(config.steps):
            x, y = dataset.batch(step, config.global_batch, config.seed)
            x, y = x.to(device), y.to(device)
            recorder.ignore_only_storages_of(strategy.module.parameters())
            with recorder.step(step):
                if optimizer is not None:
                    optimizer.zero_grad(set_to_none=True)
                loss_parts.append(strategy.train_step(x, y))
                with recorder.span("optimizer"):
                    if optimizer is not None:
                        optimizer.step()
            if on_step is not None:
                start, end = recorder.step_times[-1]
                on_step({"step": step, "loss": loss_parts[-1], "step_s": end - start})
            checks.append(DivergenceCheck(step, loss_parts[-1], recorder, device))
            # Read the agreement on the step before, which had a whole step to
            # arrive; without a process group, this step's is known already.
            due = checks[-1] if checks[-1].work is None else checks[-2] if len(checks) > 1 else None
            diverged = due.result() if due is not None else None
            if diverged:
                break
        last = checks[-1].result() if checks else None  # waits for the one still in flight
        diverged = diverged or last
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


class DivergenceCheck:
    """Which ranks' part of step ``step``'s loss was inf or NaN, agreed by
    every rank: a max all-reduce of one flag per rank, started as the step
    ends and read a step later, so that it never holds a rank up; it is
    kept off the recorded timeline. Without a process group (the
    single-device baseline) the answer is known at once: [0] or []."""

    def __init__(self, step: int, loss_part: float | None, recorder: Recorder, device: torch.device):
        import torch.distributed as dist

        self.step, self.recorder = step, recorder
        bad = loss_part is not None and not math.isfinite(loss_part)
        self.work = None
        if not (dist.is_available() and dist.is_initialized()):
            self.flags = torch.tensor([float(bad)])
            return
        self.flags = torch.zeros(dist.get_world_size(), device=device)
        self.flags[dist.get_rank()] = float(bad)
        recorder.unrecorded_collectives = True
        try:
            self.work = dist.all_reduce(self.flags, op=dist.ReduceOp.MAX, async_op=True)
        finally:
            recorder.unrecorded_collectives = False

    def result(self) -> dict | None:
        """{"step": step, "ranks": [...]} when a loss part was not finite, else None."""
        if self.work is not None:
            self.recorder.unrecorded_collectives = True  # not the training's wait: keep it off the record
            try:
                self.work.wait()
            finally:
                self.recorder.unrecorded_collectives = False
        ranks = [r for r, f in enumerate(self.flags.tolist()) if f]
        return {"step": self.step, "ranks": ranks} if ranks else None
