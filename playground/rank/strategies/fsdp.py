"""fsdp: parameters, gradients and optimizer state sharded among the ranks
(FSDP2 ``fully_shard``), each rank training on its share of the batch.

Before a block runs, an all-gather assembles its full weights; after its
backward, a reduce-scatter leaves each rank the sum of the gradients for its
own shard only. At rest (between steps) a rank holds about 1/n of the
parameters, gradients and optimizer state; while a unit runs its whole
parameters exist on every rank (and in backward its unsharded gradients),
and prefetching holds the next unit's too, so the peak is the shards plus
one or two whole units (Zhao et al., PyTorch FSDP, VLDB 2023, section 3).
Rank r's loss is weighted by
n * b_r / B, as in data parallel: the reduction averages over n ranks.

ZeRO stage 3 (the default) frees each block's gathered weights after its
forward and gathers them again for its backward: two all-gathers and a
reduce-scatter per step. Stage 2 (``reshard_after_forward=False``) keeps
them from the forward to the end of the backward: one all-gather and a
reduce-scatter, at the cost of holding every block's full weights in between.
"""

from __future__ import annotations

from torch.distributed.fsdp import fully_shard

from playground.zoo.datasets import BatchShare
from playground.rank.recorder import Recorder


def shard_blocks(model, mesh, recorder: Recorder, precision: str = "fp32", reshard_after_forward: bool = True):
    """FSDP2 over ``mesh``: one unit per block (each gathers its weights
    just in time), then the root. Blocks that share a parameter (tied
    weights) form one unit, so the Parameter is sharded once and stays shared.
    ``precision`` "bf16": ``levers.fsdp_mixed_precision``.
    ``reshard_after_forward``: True for ZeRO stage 3, False for stage 2."""
    from playground.zoo.levers import fsdp_mixed_precision

    mp = fsdp_mixed_precision(precision)
    for unit in shard_units(model):
        fully_shard(unit if len(unit) > 1 else unit[0], mesh=mesh, reshard_after_forward=reshard_after_forward, **mp)
        for block in unit:
            _ignore_gathered_weights(block, recorder)
    return fully_shard(model, mesh=mesh, **mp)


def _ignore_gathered_weights(block, recorder: Recorder) -> None:
    """The block's gathered weights are parameters, not activations, while
    its forward runs: ignored from its pre-forward hook (after FSDP's own
    has gathered them) to its forward's end. Once FSDP frees them, an
    activation may take the same address, and is counted."""
    gathered: list[set[int]] = []

    def before(module, args):
        gathered.append(recorder.ignore_storages_of(module.parameters()))

    def after(module, args, output):
        if gathered:
            recorder.unignore(gathered.pop())

    block.register_forward_pre_hook(before)
    block.register_forward_hook(after)


def shard_units(model) -> list[list]:
    """The blocks with trainable parameters, grouped so that blocks sharing
    a Parameter fall in one group, in the order of their first block."""
    units: list[list] = []
    owner: dict[int, list] = {}  # id(parameter) -> its unit
    for block in model:
        params = [p for p in block.parameters() if p.requires_grad]
        if not params:
            continue
        joined = [owner[id(p)] for p in params if id(p) in owner]
        unit = joined[0] if joined else []
        if not joined:
            units.append(unit)
        for other in joined[1:]:
            if other is not unit:
                unit.extend(b for b in other if b not in unit)
                units.remove(other)
        unit.append(block)
        for b in unit:
            for p in b.parameters():
                owner[id(p)] = unit
    return units


class FullyShardedDataParallel:
    def __init__(self, model, topology, config, recorder: Recorder, loss_fn, groups):
        self.topology = topology
        self.recorder = recorder
        self.loss_fn = loss_fn
        self.part = BatchShare.of(config, topology.dp_rank)
        stage3 = config.resolved_zero_stage == 3
        self.module = self.local_model = shard_blocks(model, groups.mesh["dp"], recorder, config.precision, stage3)

    def context(self):
        return self.recorder.recording_collectives()

    def train_step(self, x, y) -> float:
        rec = self.recorder
        x, y = self.part.take(x), self.part.take(y)
        loss = rec.forward_and_loss(self.module, self.loss_fn, x, y)
        with rec.span("backward", stage=0, micro_batch=0):
            (loss * self.part.weight).backward()
        return loss.item() * self.part.share
