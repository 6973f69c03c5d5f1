"""fsdp: parameters, gradients and optimizer state sharded among the ranks
(FSDP2 ``fully_shard``), each rank training on its share of the batch.

Before a block runs, an all-gather assembles its full weights; after its
backward, a reduce-scatter leaves each rank the sum of the gradients for its
own shard only. Memory per rank for parameters, gradients and optimizer
state is about 1/n of the whole. Rank r's loss is weighted by
n * b_r / B, as in data parallel: the reduction averages over n ranks.
"""

from __future__ import annotations

import warnings

from torch.distributed.fsdp import fully_shard

from ..data import BatchShare
from ..recorder import Recorder


def shard_blocks(model, mesh, recorder: Recorder):
    """FSDP2 over ``mesh``: one unit per block (each gathers its weights
    just in time), then the root."""
    # Blocks here return views (reshape, slicing) but never modify them in
    # place, the case FSDP warns about.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    for block in model:
        if any(p.requires_grad for p in block.parameters()):
            fully_shard(block, mesh=mesh)
            # Runs after FSDP's own pre-forward hook has gathered the block's
            # weights: they are parameters, not activations.
            block.register_forward_pre_hook(lambda m, args: recorder.ignore_storages_of(m.parameters()))
    return fully_shard(model, mesh=mesh)


class FullyShardedDataParallel:
    def __init__(self, model, topology, config, recorder: Recorder, loss_fn, groups):
        self.topology = topology
        self.recorder = recorder
        self.loss_fn = loss_fn
        self.part = BatchShare(config.rank_batches(), topology.dp_rank)
        self.module = self.local_model = shard_blocks(model, groups.mesh["dp"], recorder)

    def context(self):
        return self.recorder.recording_collectives()

    def train_step(self, x, y) -> float:
        rec = self.recorder
        x, y = self.part.take(x), self.part.take(y)
        loss = rec.forward_and_loss(self.module, self.loss_fn, x, y)
        with rec.span("backward", stage=0, micro_batch=0):
            (loss * self.part.weight).backward()
        return loss.item() * self.part.share
