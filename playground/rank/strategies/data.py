"""data: every rank holds the whole model and trains on its shard of the
batch; DistributedDataParallel averages the gradients with all-reduces.

With shares b_r of a global batch B, rank r's loss is weighted by
w_r = dp * b_r / B. DDP averages over the dp ranks, so the gradient applied
is (1/dp) * sum_r w_r * grad(mean loss of shard r) = sum_r (b_r / B) *
grad(mean_r) = grad(mean loss over the whole batch): the single-device
gradient, even when the shares are uneven.

ZeRO stage 1 keeps DDP as it is and shards the optimizer instead
(``zero1.ShardedOptimizer``). Stages 2 and 3 run as strategy 'fsdp' does
(``strategies.strategy_class``).
"""

from __future__ import annotations

import contextlib

from torch.nn.parallel import DistributedDataParallel as DDP

from playground.zoo.datasets import BatchShare
from playground.rank.recorder import Recorder


class DataParallel:
    def __init__(self, model, topology, config, recorder: Recorder, loss_fn, groups):
        self.topology = topology
        self.recorder = recorder
        self.loss_fn = loss_fn
        self.part = BatchShare.of(config, topology.dp_rank)
        self.local_model = model
        # Parameters that get no gradient (an unused branch) would leave DDP
        # waiting for their all-reduce; run() found them on a copy beforehand.
        self.module = DDP(model, process_group=groups.dp, find_unused_parameters=bool(config.unused_parameters))
        if recorder.enabled:
            self.module.register_comm_hook(None, recorder.ddp_comm_hook(groups.dp, topology.dp))

    def context(self):
        return contextlib.nullcontext()

    def train_step(self, x, y) -> float:
        rec = self.recorder
        x, y = self.part.take(x), self.part.take(y)
        loss = rec.forward_and_loss(self.module, self.loss_fn, x, y)
        with rec.backward_span(stage=0, micro_batch=0):
            (loss * self.part.weight).backward()
        return loss.item() * self.part.share

