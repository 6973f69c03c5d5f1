"""Which layers a tensor-parallel run cuts, and how: a plan read from the
model's structure alone (``plan_tensor_parallel``), used by the strategy
that applies it and by the cost model that predicts it.

A column-parallel layer gives each rank some of the output features,
y_i = W_i x; the next, row-parallel layer multiplies its slice of the input
by its slice of the weight and an all-reduce sums the partial results:
y = sum_i W_i x_i (Shoeybi et al. 2019, Megatron-LM, section 3).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

from playground.zoo.facts import tied_parameters
from playground.zoo.models import TransformerBlock

ELEMENTWISE = (nn.ReLU, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Dropout)
"""Layers that act on each feature alone: a column-parallel layer's sharded
output may pass through them to its row-parallel partner."""

COLWISE, ROWWISE = "colwise", "rowwise"


@dataclass(frozen=True)
class TensorPlan:
    """Which layers are cut among the tensor-parallel ranks, and which are
    left whole on every rank, with the reason."""

    styles: dict[str, str]
    """Module name -> "colwise" (output features cut: y_i = W_i x) or
    "rowwise" (input features cut: y = sum_i W_i x_i, one all-reduce)."""
    replicated: dict[str, str]
    """Module name -> why it is left whole on every rank (the layers with
    parameters that are not split, and the blocks the plan cannot see into)."""

    def parallel_styles(self) -> dict[str, object]:
        """The plan as ``parallelize_module`` takes it."""
        return {name: ColwiseParallel() if s == COLWISE else RowwiseParallel() for name, s in self.styles.items()}

    def note(self) -> str | None:
        """One line for ``RunResult.notes``: what was split, what was not and why."""
        if not self.replicated:
            return None
        cols = sum(s == COLWISE for s in self.styles.values())
        split = (f"{len(self.styles)} layers split ({cols} colwise, {len(self.styles) - cols} rowwise; "
                 f"see tensor_plan)" if self.styles else "no layer split")
        whole = "; ".join(f"{n} ({why})" for n, why in self.replicated.items())
        return f"tensor plan: {split}; left replicated on every rank: {whole}"


def _elementwise(module: nn.Module) -> bool:
    """One of ELEMENTWISE itself (a subclass may change its forward)."""
    return type(module) in ELEMENTWISE


def _declared_styles(module: nn.Module):
    """A block's own plan: ``tensor_parallel_styles(tp)``, returning {child
    name: "colwise" | "rowwise"} or why the block cannot be cut, when the
    class that defines the block's forward defines it too (a subclass that
    changes the forward does not inherit a plan made for another)."""
    owner = next((c for c in type(module).__mro__ if "forward" in vars(c)), None)
    return vars(owner).get("tensor_parallel_styles") if owner is not None else None


def _chain(module: nn.Module, prefix: str):
    """(name, module) of the layers a forward runs one after another:
    an nn.Sequential (one that keeps Sequential's forward) is opened, any
    other module is one opaque step."""
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        for child_name, child in module._modules.items():  # not named_children(): it skips a repeated module
            yield from _chain(child, f"{prefix}.{child_name}" if prefix else child_name)
    else:
        yield prefix, module


def plan_tensor_parallel(model: nn.Sequential, tp: int, unused: tuple[str, ...] = ()) -> TensorPlan:
    """The tensor-parallel plan of ``model`` for ``tp`` ranks.

    Pairing is valid only where the sharded activation between the two
    layers is never seen whole: Linear A (column-parallel, its output
    features cut) followed, through elementwise layers only, by Linear B
    (row-parallel, its input features cut), so that B's all-reduce gives
    y = sum_i W_B,i f(W_A,i x) exactly. The plan follows the model's chain
    of layers, opening nested nn.Sequential blocks; any other block with
    children (a residual block, a custom container) is opaque: what its
    forward does with a sharded tensor is unknown, so it and everything in
    it stay replicated, and it ends any pair waiting across it. The
    A block whose class declares ``tensor_parallel_styles(tp)`` beside its
    forward (the planner's presets) is cut as it says. The
    playground's TransformerBlock is the one other known block: q, k, v and fc1
    column-wise, attention out and fc2 row-wise, when its heads and its
    fc1 width divide among ``tp`` ranks. A Linear whose weight is shared
    with another module (tied weights) stays whole: sharding it would cut
    the tie. One whose parameters are ``unused`` (they get no gradient: a
    branch the forward never takes) is not in the data flow, so it is
    passed over without breaking a pair."""
    tied = {n.rsplit(".", 1)[0] for group in tied_parameters(model) for n in group}
    idle = {n.rsplit(".", 1)[0] for n in unused}
    styles: dict[str, str] = {}
    replicated: dict[str, str] = {}
    pending: tuple[str, nn.Linear] | None = None  # a Linear waiting for its row-parallel partner

    def leave_pending(why: str) -> None:
        nonlocal pending
        if pending is not None:
            replicated[pending[0]] = why
            pending = None

    chain = list(_chain(model, ""))
    uses: dict[int, int] = {}
    for _, module in chain:
        uses[id(module)] = uses.get(id(module), 0) + 1
    for name, module in chain:
        if name in idle:
            continue
        if uses[id(module)] > 1 and not _elementwise(module):
            # One set of weights run at two places: a shard fits at most one of them.
            leave_pending("Linear: the next layer is used at more than one place")
            if any(True for _ in module.parameters()):
                replicated.setdefault(name, f"{type(module).__name__}: used at {uses[id(module)]} places in the model")
        elif isinstance(module, nn.Linear) and name in tied:
            leave_pending("Linear: the next layer's weights are tied to another module")
            replicated[name] = "Linear: its weights are tied to another module; a shard would cut the tie"
        elif (declared := _declared_styles(module)) is not None:
            leave_pending("no row-parallel partner follows it")
            own = declared(module, tp)
            if isinstance(own, str):
                replicated[name] = own
            else:
                styles.update({f"{name}.{sub}": style for sub, style in own.items()})
        elif isinstance(module, TransformerBlock) and type(module).forward is TransformerBlock.forward:
            leave_pending("no row-parallel partner follows it")
            heads = module.attn.q.out_features // module.attn.head_dim
            if heads % tp == 0 and module.fc1.out_features % tp == 0:
                styles.update({f"{name}.attn.{p}": COLWISE for p in ("q", "k", "v")})
                styles.update({f"{name}.attn.out": ROWWISE, f"{name}.fc1": COLWISE, f"{name}.fc2": ROWWISE})
            else:
                replicated[name] = f"{heads} heads or {module.fc1.out_features} fc1 features do not divide among {tp} ranks"
        elif isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward:
            if pending is not None:
                styles[pending[0]], styles[name] = COLWISE, ROWWISE
                pending = None
            elif module.out_features % tp == 0:
                pending = (name, module)
            else:
                replicated[name] = f"Linear: {module.out_features} output features do not divide among {tp} ranks"
        elif _elementwise(module):
            continue
        else:
            kind = type(module).__name__
            leave_pending(f"Linear: followed by {kind}, not by a Linear through elementwise layers")
            has_params = any(True for _ in module.parameters())
            if len(list(module.children())) > 0:
                replicated[name] = f"{kind}: a block the plan cannot see into"
            elif has_params:
                replicated[name] = f"{kind}: only Linear layers are split"
    leave_pending("Linear: no row-parallel partner follows it")
    return TensorPlan(styles, replicated)


def tensor_plan(model: nn.Sequential, tp: int, unused: tuple[str, ...] = ()) -> dict[str, object]:
    """Module name -> ColwiseParallel / RowwiseParallel (see ``plan_tensor_parallel``)."""
    return plan_tensor_parallel(model, tp, unused).parallel_styles()


