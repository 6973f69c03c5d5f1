"""What the cost model reads off the model itself, in this process.

The one place that runs a model to measure: the bytes autograd saves for
backward (``stage_activations``, ``split_backward_step``), the bytes of each
block's output (``output_bytes``) and of each tensor-parallel all-reduce
(``tensor_all_reduces``). Besides those, the parameters each strategy
leaves on a rank: a tensor-parallel rank's local copy
(``tensor_local_model``) and FSDP's units and shards.

Nothing here starts a process or joins a process group. Measurements run
on one and two samples: autograd's saved bytes are affine in the batch,
fixed + per_sample * b, so two points give both terms.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.tensor.parallel import ColwiseParallel

from playground.instrument import stage_backward_functions
from playground.predict.saved import SavedTensors, is_parameter_cast
from playground.zoo.plans import tensor_plan
from playground.predict.formulas import Action, chunk_rows, gather_bytes, shard_bytes


def param_bytes(module: nn.Module) -> list[int]:
    """Bytes of each of ``module``'s parameters, in its parameter order."""
    return [p.numel() * p.element_size() for p in module.parameters()]


def bytes_per_sample(batch: torch.Tensor) -> int:
    """Bytes of one sample of ``batch`` (dim 0 the batch)."""
    return batch[0].numel() * batch.element_size()


# --------------------------------------------------------------------------
# Activations saved for backward


@dataclass(frozen=True)
class StageActivations:
    """Bytes autograd saves for one micro-batch of b samples through a stage:
    fixed + per_sample * b, counted per storage as ``SavedTensors`` counts them.
    The batch's inputs and targets are counted apart: a rank's micro-batches
    are views into the global batch, so their storage counts once, whole."""

    fixed: int
    per_sample: int
    saves_input: bool
    saves_target: bool

    def micro_batch(self, samples: int) -> int:
        return self.fixed + self.per_sample * samples


def stage_activations(model: nn.Sequential, first: int, end: int, sample: torch.Tensor,
                      target: torch.Tensor | None, loss_fn) -> StageActivations:
    """Run blocks [first, end) (and the loss, on the last stage) on 1 and 2
    samples: the difference is the per-sample cost, the rest is fixed. A
    stage after the first gets a fresh input that requires grad, like the
    buffer a pipeline stage receives into. ``sample`` and ``target``: one
    sample, no batch dimension."""
    exclude = {p.untyped_storage().data_ptr() for p in model.parameters()}
    last = end == len(model)
    counts = []
    for n in (1, 2):
        x = _batch(sample, n)
        y = _batch(target, n) if target is not None else None
        if first > 0:
            with torch.no_grad():
                x = model[:first](x)
            x = x.detach().clone().requires_grad_(True)

        def forward():
            out = model[first:end](x)
            return loss_fn(out, y) if last and y is not None else out

        saved = _saved_storages(forward, exclude)
        input_key = _storage(x) if first == 0 else None
        target_key = _storage(y) if last and y is not None else None
        other = sum(b for k, b in saved.items() if k not in (input_key, target_key))
        counts.append((other, input_key in saved, target_key in saved))
    (one, saves_input, saves_target), (two, _, _) = counts
    return StageActivations(fixed=one - (two - one), per_sample=two - one,
                            saves_input=saves_input, saves_target=saves_target)


def _saved_storages(fn, exclude: set[int]) -> dict[int, int]:
    """{storage address: bytes} of every tensor autograd saves while ``fn``
    runs, parameters (``exclude``) and empty storages left out. ``fn``
    returns its output, whose graph keeps every saved storage alive (so no
    address is reused) until all are counted."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if is_parameter_cast(t):  # autocast's bf16 copy of a weight
            return t
        storage = t.untyped_storage()
        if storage.data_ptr() and storage.data_ptr() not in exclude:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        output = fn()
    del output
    return seen


def _batch(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.unsqueeze(0).repeat_interleave(n, 0)


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


@torch.no_grad()
def output_bytes(model: nn.Sequential, sample: torch.Tensor) -> list[int]:
    """Bytes per sample of each block's output: what crosses a cut after it."""
    x, sizes = sample.unsqueeze(0), []
    for block in model:
        x = block(x)
        sizes.append(bytes_per_sample(x))
    return sizes


# --------------------------------------------------------------------------
# Tensor parallel: each rank's local layers, and what DTensor all-reduces


def tensor_local_model(model: nn.Sequential, tp: int, tp_rank: int,
                       unused: tuple[str, ...] = ()) -> tuple[nn.Sequential, dict[str, str]]:
    """A copy of ``model`` holding what tensor-parallel rank ``tp_rank`` of
    ``tp`` holds, and the plan ({layer name: "colwise" | "rowwise"}) of
    ``strategies.tensor.tensor_plan``.

    Column-parallel layer (out x in weight): rows chunk_rows(out, tp, r) of
    the weight and of the bias. Row-parallel layer: columns
    chunk_rows(in, tp, r) of the weight, the bias whole (Replicate). Layers
    off the plan are whole. Run on a plain tensor, the copy computes what
    the rank's local tensors do, so autograd saves what the rank saves: the
    column layers' outputs (b x out/tp) are never gathered."""
    local = copy.deepcopy(model)
    plan = {name: "colwise" if isinstance(style, ColwiseParallel) else "rowwise"
            for name, style in tensor_plan(local, tp, unused).items()}
    with torch.no_grad():
        for name, style in plan.items():
            layer = local.get_submodule(name)
            dim = 0 if style == "colwise" else 1
            layer.weight = nn.Parameter(_shard_rows(layer.weight, dim, tp, tp_rank))
            if style == "colwise" and layer.bias is not None:
                layer.bias = nn.Parameter(_shard_rows(layer.bias, 0, tp, tp_rank))
    return local, plan


def _shard_rows(t: torch.Tensor, dim: int, parts: int, index: int) -> torch.Tensor:
    c = -(-t.shape[dim] // parts)
    return t.narrow(dim, min(index * c, t.shape[dim]), chunk_rows(t.shape[dim], parts, index)).clone()


def tensor_all_reduces(model: nn.Sequential, plan: dict[str, str], sample: torch.Tensor) -> list[tuple[str, int]]:
    """(pass, bytes per sample) of each all-reduce DTensor issues in one
    training step, in the order of the layers (Megatron-LM's f and g
    operators, Shoeybi et al. 2019):

      forward   the output of every row-parallel layer: its partial sums
                y = sum_i W_i x_i are summed over the tp ranks (Partial ->
                Replicate), out bytes per sample;
      backward  the input gradient of every column-parallel layer whose
                input requires grad (all but a first layer fed the data):
                dL/dx = sum_i W_i^T dL/dy_i is partial on each rank, in
                bytes per sample. q, k and v read the same input but are
                three layers: three all-reduces.

    A step of b samples all-reduces b times each figure."""
    found: list[tuple[str, int]] = []

    def hook(name):
        def record(module, inputs, output):
            x = inputs[0]
            if plan[name] == "rowwise":
                found.append(("forward", output.numel() * output.element_size()))
            elif x.requires_grad:
                found.append(("backward", x.numel() * x.element_size()))
        return record

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name in plan]
    try:
        with torch.enable_grad():
            model(sample.unsqueeze(0))
    finally:
        for h in handles:
            h.remove()
    return found


# --------------------------------------------------------------------------
# FSDP: units and shards


def fsdp_units(model: nn.Sequential) -> list[list[nn.Parameter]]:
    """The trainable parameters of each FSDP unit: one unit per block that
    has any (``strategies.fsdp`` wraps each such block, then the root,
    which is left holding none)."""
    return [ps for ps in ([p for p in block.parameters() if p.requires_grad] for block in model) if ps]


def fsdp_shard_bytes(params: list[nn.Parameter], n: int, rank: int) -> list[int]:
    """Bytes of each parameter's dim-0 shard on ``rank`` of n
    (``formulas.shard_bytes``)."""
    return [shard_bytes(p.shape, p.element_size(), n, rank) for p in params]


def fsdp_gather_bytes(params: list[nn.Parameter], n: int) -> int:
    """Bytes of one unit's padded all-gather among n ranks
    (``formulas.gather_bytes``)."""
    return gather_bytes([(p.shape, p.element_size()) for p in params], n)


# --------------------------------------------------------------------------
# Zero-bubble schedules: one rank's step with the backward split


def split_backward_step(model: nn.Sequential, ranges: list[tuple[int, int]], held: tuple[int, ...],
                        actions: list[Action], sample: torch.Tensor, target: torch.Tensor | None,
                        loss_fn, samples: int) -> tuple[list[int], int]:
    """Run one rank's actions of one step (``pipeline.schedule_table``) on
    micro-batches of ``samples`` samples with torch.distributed.pipelining's
    own backward functions, counting saved tensors with ``SavedTensors``
    the ranks use. Returns the peak of saved bytes during each action, and
    the bytes still held when the step is over.

    A zero-bubble schedule splits each backward (Qi et al. 2023):

      backward_input   ``stage_backward_input``: input gradients only, with
                       retain_graph=True, so the tensors the weight
                       gradients need stay saved; then the stage's output
                       (or loss) is detached, freeing what only it reached.
                       Stage 0, with no input gradient to pass on, skips it.
      backward_weight  ``stage_backward_weight``: the weight gradients from
                       what the input pass left, freeing the graph. Stage 0
                       runs its whole backward here (``stage_backward``).

    So a forward's saved bytes are held until its weight pass, which
    ``formulas.held_peak`` cannot see for the nodes the input pass frees;
    running the step measures it. The batch's inputs and targets are left
    out (counted whole, apart, as everywhere in the cost model). A stage
    after a cut receives into a buffer of its own per micro-batch; one after
    a stage on the same rank takes that stage's output, detached, as
    ``stage.set_local_fwd_input`` does. Gradients accumulate into
    ``model``'s parameters and are cleared after."""
    stage_backward, stage_backward_input, stage_backward_weight = stage_backward_functions()
    rec = SavedTensors()
    rec.ignore_storages_of(model.parameters())
    micro_batches = 1 + max(mb for _, _, mb in actions)
    x = _batch(sample, samples * micro_batches)
    y = _batch(target, samples * micro_batches) if target is not None else None
    rec.ignore_storages_of([x] + ([y] if y is not None else []))
    last = len(ranges) - 1

    def chunk(t: torch.Tensor, mb: int) -> torch.Tensor:
        return t[mb * samples:(mb + 1) * samples]

    inputs: dict[tuple[int, int], torch.Tensor] = {}
    with torch.no_grad():
        for s in held:
            if s > 0 and s - 1 not in held:
                for mb in range(micro_batches):
                    inputs[(s, mb)] = model[:ranges[s][0]](chunk(x, mb)).clone()
    forwards: dict[tuple[int, int], tuple] = {}  # (stage, micro-batch) -> output, loss, input
    weights_due: dict[tuple[int, int], tuple] = {}  # what backward_input leaves for backward_weight

    def run(kind: str, s: int, mb: int) -> None:
        # One action per call: its locals go when it returns, as the stage's do.
        block = model[ranges[s][0]:ranges[s][1]]
        if kind == "forward":
            inp = chunk(x, mb) if s == 0 else inputs.pop((s, mb)).requires_grad_(True)
            with torch.enable_grad(), rec.counting():
                out = block(inp)
                loss = loss_fn(out, chunk(y, mb)) if s == last and y is not None else None
            if s + 1 in held:
                inputs[(s + 1, mb)] = out.detach()
            forwards[(s, mb)] = (out, loss, inp)
        elif kind in ("backward", "backward_input"):
            out, loss, inp = forwards.pop((s, mb))
            root, grads = (loss, None) if loss is not None else (out, torch.ones_like(out))
            if kind == "backward":
                stage_backward(root, grads, [inp])
            else:
                groups = None
                if s != 0:
                    _, groups = stage_backward_input([root], None if grads is None else [grads], [inp],
                                                     block.parameters())
                weights_due[(s, mb)] = (root, grads, inp, groups)
            if s == last and s != 0 and not out._is_view():
                out.detach_()
        else:
            root, grads, inp, groups = weights_due.pop((s, mb))
            if s != 0:
                stage_backward_weight(block.parameters(), groups)
            else:
                stage_backward(root, grads, [inp])

    peaks = []
    for kind, s, mb in actions:
        rec.peak = rec.bytes
        run(kind, s, mb)
        peaks.append(rec.peak)
    for p in model.parameters():
        p.grad = None
    return peaks, rec.bytes


def split_backward_peak(model: nn.Sequential, ranges: list[tuple[int, int]], held: tuple[int, ...],
                        actions: list[Action], sample: torch.Tensor, target: torch.Tensor | None,
                        loss_fn, micro_batch: int) -> int:
    """Peak saved bytes of a zero-bubble rank for micro-batches of
    ``micro_batch`` samples: ``split_backward_step`` on 1 and 2 samples
    gives each action's peak as an affine function of b, fixed + per_sample
    * b; the peak is max over actions."""
    one, _ = split_backward_step(model, ranges, held, actions, sample, target, loss_fn, 1)
    two, _ = split_backward_step(model, ranges, held, actions, sample, target, loss_fn, 2)
    b = micro_batch
    return max(p1 + (p2 - p1) * (b - 1) for p1, p2 in zip(one, two))
