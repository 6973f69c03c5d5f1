"""tensor: each layer's weight cut among the ranks (DTensor tensor parallel).

A column-parallel layer gives each rank some of the output features,
y_i = W_i x; the next, row-parallel layer multiplies its slice of the input
by its slice of the weight and an all-reduce sums the partial results:
y = sum_i M_i x_i. Between the two, only elementwise ops (ReLU, GELU) run,
so the activation in between is never gathered. Layers the plan leaves out
are replicated: every rank computes them alike.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from ..data import BatchShare
from ..model_facts import tied_parameters
from ..models import TransformerBlock
from .fsdp import shard_blocks
from ..recorder import Recorder

ELEMENTWISE = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Dropout)


def tensor_plan(model: nn.Sequential, tp: int, unused: tuple[str, ...] = ()) -> dict[str, object]:
    """Module name -> ColwiseParallel / RowwiseParallel.

    Transformer layers: q, k, v and fc1 column-wise; attention out and fc2
    row-wise. Elsewhere: consecutive Linear layers with only elementwise
    modules between them are paired (column, then row), when the column
    layer's output features divide among ``tp`` ranks. A Linear whose
    weight is shared with another module (tied weights) stays whole and
    replicated: sharding it would cut the tie. One whose parameters are
    ``unused`` (they get no gradient: a branch the forward never takes) is
    not in the data flow, so it is left out without breaking a pair."""
    tied = {n.rsplit(".", 1)[0] for group in tied_parameters(model) for n in group}
    idle = {n.rsplit(".", 1)[0] for n in unused}
    plan: dict[str, object] = {}
    pending: tuple[str, nn.Linear] | None = None  # a Linear waiting for its row partner
    for name, module in model.named_modules():
        if isinstance(module, TransformerBlock):
            heads = module.attn.q.out_features // module.attn.head_dim
            if heads % tp == 0 and module.fc1.out_features % tp == 0:
                plan.update({f"{name}.attn.{p}": ColwiseParallel() for p in ("q", "k", "v")})
                plan.update({f"{name}.attn.out": RowwiseParallel(), f"{name}.fc1": ColwiseParallel(),
                             f"{name}.fc2": RowwiseParallel()})
            pending = None
            continue
        if any(name.startswith(k.rsplit(".", 2)[0] + ".") for k in plan if ".attn." in k or ".fc" in k):
            continue  # inside a planned transformer block
        if name in idle:
            continue
        if isinstance(module, nn.Linear) and name in tied:
            pending = None
        elif isinstance(module, nn.Linear):
            if pending is not None:
                plan[pending[0]], plan[name] = ColwiseParallel(), RowwiseParallel()
                pending = None
            elif module.out_features % tp == 0:
                pending = (name, module)
        elif len(list(module.children())) == 0 and not isinstance(module, ELEMENTWISE):
            pending = None  # e.g. a conv or norm between two linears breaks the pair
    return plan


class TensorParallel:
    def __init__(self, model, topology, config, recorder: Recorder, loss_fn, groups):
        self.recorder = recorder
        self.loss_fn = loss_fn
        self.topology = topology
        self.plan = tensor_plan(model, topology.tp, config.unused_parameters)
        model = parallelize_module(model, groups.mesh["tp"], self.plan)
        recorder.ignore_storages_of(model.parameters())  # the shards are weights, not activations
        # A dp x tp mesh: each tensor-parallel group trains on its share of
        # the batch, and FSDP shards the parameters over the dp replicas
        # (the 2-D layout), reducing their gradients with weights as in data parallel.
        self.part = BatchShare(config.rank_batches(), topology.dp_rank)
        if topology.dp > 1:
            model = shard_blocks(model, groups.mesh["dp"], recorder)
        self.module = self.local_model = model

    @property
    def plan_kinds(self) -> dict[str, str]:
        """The plan applied, as data: module name -> "colwise" or "rowwise"."""
        return {name: "colwise" if isinstance(style, ColwiseParallel) else "rowwise"
                for name, style in self.plan.items()}

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
