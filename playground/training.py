"""The training loop one rank runs. The single-device baseline runs the very
same loop in the caller's process, with recording off and no process group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .config import RunConfig
from .data import Dataset, loss_fn
from .recorder import Recorder, memory_bytes
from .strategies import STRATEGY_CLASSES
from .topology import Topology


@dataclass
class Groups:
    """This rank's process groups (None when the run has no process group)."""

    dp: Any = None
    """Ranks holding the same stage: gradients are all-reduced among them."""
    pp: Any = None
    """Ranks of this rank's pipeline."""


def make_groups(topology: Topology) -> Groups:
    """Create every group of the mesh (each rank must create all of them, in
    the same order) and keep the two this rank belongs to."""
    import torch.distributed as dist

    def group(ranks: list[int]):
        if len(ranks) == topology.world_size:
            return dist.group.WORLD
        return dist.new_group(ranks=ranks)

    dp_groups = [group([row[s] for row in topology.grid]) for s in range(topology.pp)]
    pp_groups = [group(row) for row in topology.grid]
    return Groups(dp=dp_groups[topology.stage], pp=pp_groups[topology.dp_rank])


def make_optimizer(config: RunConfig, params) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr)
    return torch.optim.SGD(params, lr=config.lr)


def train_rank(config: RunConfig, topology: Topology, model: nn.Sequential, dataset: Dataset,
               recorder: Recorder, groups: Groups, device: torch.device) -> dict[str, Any]:
    """Train this rank's part of ``model`` for ``config.steps`` steps.

    Returns what the rank knows: its part of each step's loss, its memory,
    and its trained parameters (from the first data-parallel replica only,
    since the others hold copies).
    """
    recorder.ignore_storages_of(model.parameters())
    strategy = STRATEGY_CLASSES[config.strategy](model, topology, config, recorder, loss_fn(dataset.task), groups)
    optimizer = make_optimizer(config, strategy.module.parameters())
    loss_parts: list[float | None] = []
    with strategy.context():
        for step in range(config.steps):
            x, y = dataset.batch(step, config.global_batch, config.seed)
            x, y = x.to(device), y.to(device)
            with recorder.step(step):
                optimizer.zero_grad(set_to_none=True)
                loss_parts.append(strategy.train_step(x, y))
                with recorder.span("optimizer"):
                    optimizer.step()
    local = strategy.local_model
    memory = memory_bytes(local, optimizer)
    memory["activations_peak"] = recorder.activations_peak
    memory["allocator_peak"] = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    params = {}
    if topology.dp_rank == 0:
        params = {name: p.detach().cpu().clone() for name, p in local.named_parameters()}
    return {"loss_parts": loss_parts, "memory": memory, "params": params}
