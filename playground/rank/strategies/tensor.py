"""tensor: each layer's weight cut among the ranks (DTensor tensor parallel).

A column-parallel layer gives each rank some of the output features,
y_i = W_i x; the next, row-parallel layer multiplies its slice of the input
by its slice of the weight and an all-reduce sums the partial results:
y = sum_i M_i x_i. Between the two, only elementwise ops (ReLU, GELU) run,
so the activation in between is never gathered. Layers the plan leaves out
are replicated: every rank computes them alike; the plan says which and why.
"""

from __future__ import annotations

from torch.distributed.tensor.parallel import parallelize_module

from playground.zoo.datasets import BatchShare
from playground.zoo.plans import plan_tensor_parallel
from playground.rank.recorder import Recorder
from playground.rank.strategies.fsdp import shard_blocks

class TensorParallel:
    def __init__(self, model, topology, config, recorder: Recorder, loss_fn, groups):
        self.recorder = recorder
        self.loss_fn = loss_fn
        self.topology = topology
        self.plan = plan_tensor_parallel(model, topology.tp, tuple(config.unused_parameters))
        model = parallelize_module(model, groups.mesh["tp"], self.plan.parallel_styles())
        recorder.ignore_storages_of(model.parameters())  # the shards are weights, not activations
        # A dp x tp mesh: each tensor-parallel group trains on its share of
        # the batch, and FSDP shards the parameters over the dp replicas
        # (the 2-D layout), reducing their gradients with weights as in data parallel.
        self.part = BatchShare.of(config, topology.dp_rank)
        if topology.dp > 1:
            model = shard_blocks(model, groups.mesh["dp"], recorder, config.precision,
                                 config.resolved_zero_stage == 3)
        self.module = self.local_model = model

    @property
    def plan_kinds(self) -> dict[str, str]:
        """The plan applied, as data: module name -> "colwise" or "rowwise"."""
        return dict(self.plan.styles)

    @property
    def plan_note(self) -> str | None:
        """What the plan left whole, and why (``TensorPlan.note``)."""
        return self.plan.note()

    def context(self):
        return self.recorder.recording_collectives()

    def train_step(self, x, y) -> float | None:
        rec, topo = self.recorder, self.topology
        if topo.dp > 1:
            x, y = self.part.take(x), self.part.take(y)
        loss = rec.forward_and_loss(self.module, self.loss_fn, x, y)
        with rec.span("backward", stage=0, micro_batch=0):
            (loss * self.part.weight).backward()
        # Every rank of a tensor-parallel group computed the same loss: count it once.
        return loss.item() * self.part.share if topo.tp_rank == 0 else None
