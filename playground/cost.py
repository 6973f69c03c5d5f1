"""What a run should cost, predicted from its config and its model alone.

Pure functions: no process is started and no process group is joined. The
one thing measured rather than derived is what autograd saves for backward,
found by running a stage's blocks on one and on two samples in this process
(and, for the zero-bubble schedules, by replaying one step's split backward
with torch's own functions, ``split_backward_step``).

Per rank (rank = (dp_rank * pp + stage) * tp + tp_rank, as in ``topology``),
with P the bytes of the parameters the rank holds and T their number of
tensors:

  params     P: whole stages (data, model, pipeline, hybrid dp x pp); dim-0
             shards (fsdp, ``fsdp_shard_bytes``); column and row shards of
             the planned layers (tensor, ``tensor_local_model``), cut again
             by FSDP along dim 0 in hybrid dp x tp
  grads      P                       (fp32, every gradient present after backward)
  optimizer  0 for SGD (no momentum); 2 P + 4 T for Adam (exp_avg, exp_avg_sq,
             and a float32 ``step`` scalar per parameter tensor)
  traffic    pipeline: per micro-batch of b samples, stage s sends b * A_s
             forward (A_s: bytes per sample of its last block's output) and
             b * A_{s-1} backward, and receives as many; over m micro-batches
             and every step. A rank holding several stages sums its stages'
             cuts, leaving out those to a stage on the same rank.
             data: each DDP bucket of B bytes is all-reduced every step,
             2 (n - 1) B // n bytes each way among n ranks; hybrid dp x pp:
             each stage's DDP, steps + 1 times (``pipeline_ddp_bytes``).
             fsdp: per step and block, two all-gathers and a reduce-scatter
             of its padded size G, 3 (n - 1) G // n (``_predict_fsdp``).
             tensor: per step an all-reduce of every row-parallel output and
             of every column-parallel input gradient (``tensor_all_reduces``).
  activations  k (c + a b) + B x + B y: k micro-batches in flight at the peak
             (``in_flight``), each saving c + a b bytes (``stage_activations``);
             the first stage's saved inputs and the last stage's saved targets
             count B (global batch) samples once, x and y bytes each, since a
             rank's shard and its micro-batches are views into the global batch.
             Several stages per rank: the peak over the schedule's action
             order of the stages' saved bytes held (``held_peak``); zero-bubble
             schedules: the replayed peak, which grows every step by what the
             recorder never frees (``split_backward_peak``). Tensor parallel:
             the local model's (``tensor_local_model``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from .config import RunConfig
from .models import MODELS, BlockInfo, block_infos, build_model, model_block_infos, stage_ranges

DDP_FIRST_BUCKET_BYTES = 1024 * 1024
"""torch.distributed._DEFAULT_FIRST_BUCKET_BYTES: the cap of the bucket
holding the gradients that are ready first (the last layers)."""
DDP_BUCKET_BYTES = 25 * 1024 * 1024
"""DDP's default bucket_cap_mb (25 MiB) for every later bucket."""


@dataclass(frozen=True)
class RankPrediction:
    """What one rank should hold and move; bytes throughout, over the run."""

    rank: int
    stage: int
    dp_rank: int
    params: int
    grads: int
    optimizer: int
    activations_peak: int
    bytes_sent: int
    bytes_recv: int


# --------------------------------------------------------------------------
# Formulas


LOOPED = ("interleaved", "interleaved1f1b", "loopedbfs")
ZERO_BUBBLE = ("interleavedzerobubble", "zbvzerobubble", "dualpipev")


def bubble_fraction(schedule: str, stages: int, micro_batches: int, virtual: int = 1) -> float:
    """Share of a step a pipeline rank sits idle, filling and draining the
    pipeline: p ranks (``stages``), m micro-batches, v stages per rank,
    equal stages, free communication.

    gpipe, 1f1b: (p - 1) / (m + p - 1). Looped, v model chunks per rank
    (interleaved1f1b, loopedbfs, or "interleaved"): the bubble shrinks
    v-fold, (p - 1) / (v m + p - 1), when m >= p; with m < p each loop also
    waits for micro-batch 0 to come round: 1 - v m / (v p + m - 1). See
    ``bubble_overhead`` for the same bubble measured against ideal time.
    Zero-bubble schedules (interleavedzerobubble, zbvzerobubble, dualpipev):
    ``simulated_bubble`` of the schedule's own action table; with forward,
    input-gradient and weight-gradient times equal it comes to
    (p - 1) / (3 v m + p - 1) once m >= p (zbvzerobubble: m >= 2p - 1), a
    third of the looped bubble: weight gradients fill the drain.
    """
    p, m, v = stages, micro_batches, virtual
    if p < 1 or m < 1 or v < 1:
        raise ValueError(f"stages={p}, micro_batches={m}, virtual={v}: each must be >= 1")
    if schedule in ("gpipe", "1f1b"):
        if v != 1:
            raise ValueError(f"virtual={v}: schedule {schedule!r} runs one stage per rank (virtual=1)")
    elif schedule in ZERO_BUBBLE:
        return simulated_bubble(schedule, p, m, v)
    elif schedule not in LOOPED:
        raise ValueError(f"schedule={schedule!r}: must be one of gpipe, 1f1b, {', '.join(LOOPED + ZERO_BUBBLE)}")
    return 1 - v * m / (v * max(m, p) + min(m, p) - 1)


UNIT_TIMES = {"forward": 1.0, "backward": 2.0, "backward_input": 1.0, "backward_weight": 1.0}
"""Time of each action of a schedule table, in forwards: a full backward
costs two (input and weight gradients), the zero-bubble halves one each."""


def simulated_bubble(schedule: str, stages: int, micro_batches: int, virtual: int = 1,
                     times: dict[str, float] = UNIT_TIMES) -> float:
    """1 - busy / span, averaged over the ranks, when each rank runs its
    actions (``pipeline.schedule_table``) in order, each taking
    ``times[kind]``, as soon as the rank is free and its input is there
    (``replay_schedule`` with free communication and no host work)."""
    from .strategies.pipeline import schedule_table

    table = schedule_table(schedule, stages, micro_batches, virtual)
    costs = ReplayCosts(duration={a: times[a[0]] for actions in table.values() for a in actions})
    try:
        shares = replayed_idle(replay_schedule(table, costs))
    except ValueError as err:
        raise ValueError(f"schedule={schedule!r}: {err} (p={stages}, m={micro_batches})") from None
    return sum(shares.values()) / len(shares)


Action = tuple[str, int, int]
"""(kind, stage, micro_batch), as in ``pipeline.schedule_table``."""


@dataclass(frozen=True)
class ReplayCosts:
    """What each part of a pipeline step takes, in seconds (or any one unit),
    for ``replay_schedule``. Missing entries take no time."""

    duration: dict[Action, float]
    """Each action's compute; the last stage's forward includes its loss."""
    transfer: dict[Action, float] = field(default_factory=dict)
    """The message carrying an action's output to a stage on another rank:
    from the moment both ends have posted it to its arrival."""
    post: dict[Action, float] = field(default_factory=dict)
    """From an action's end to the moment its rank posted the message
    carrying its output (host work in between: the loss, splitting,
    posting)."""
    sent: dict[Action, float] = field(default_factory=dict)
    """The same message on the sending rank: from the moment both ends
    have posted it until the send completed (``transfer`` when missing)."""
    after: dict[int, list[float]] = field(default_factory=dict)
    """Per rank, host work after each of its actions (in table order)
    before it can start the next (or the optimizer step)."""
    lead: dict[int, float] = field(default_factory=dict)
    """Per rank, host work from a step's start to its first action."""
    optimizer: dict[int, float] = field(default_factory=dict)
    """Per rank, the optimizer step after its last action of a step."""
    between: dict[int, float] = field(default_factory=dict)
    """Per rank, host work from the end of a step to the start of the next."""


@dataclass(frozen=True)
class RankReplay:
    """One rank's replayed steps: every action as (kind, stage, micro_batch,
    step, start, end), the optimizer step as ("optimizer", None, None, step,
    start, end); ``compute``: time inside them; ``comm``: time in transfers
    outside them; ``end``: the end of its last optimizer step."""

    actions: list[tuple]
    compute: float
    comm: float
    end: float


def _input_of(kind: str, stage: int, micro_batch: int, last: int) -> tuple[str, int, int] | None:
    """The pass whose result an action waits for: a forward of stage s, stage
    s-1's forward; a backward (or input-gradient pass), stage s+1's, or on
    the last stage its own forward; a weight gradient, its own input
    gradient."""
    if kind == "forward":
        return ("f", stage - 1, micro_batch) if stage > 0 else None
    if kind == "backward_weight":
        return ("b", stage, micro_batch)
    return ("b", stage + 1, micro_batch) if stage < last else ("f", stage, micro_batch)


def output_stage(kind: str, stage: int) -> int | None:
    """The stage an action's output goes to: a forward's to the next, a
    backward's (or input-gradient pass's) to the previous; None for a weight
    gradient."""
    if kind == "forward":
        return stage + 1
    return stage - 1 if kind in ("backward", "backward_input") else None


def replay_schedule(table: dict[int, list[Action]], costs: ReplayCosts | list[ReplayCosts],
                    steps: int = 1) -> dict[int, RankReplay]:
    """Run a schedule table on paper: ``steps`` steps, every rank free at 0;
    ``costs`` the same for every step, or one per step.

    Each rank runs its actions in table order, then its optimizer step; an
    action starts at max(r, a), r the time its rank is free (the previous
    action's end plus the host work after it, ``costs.after``), a the time
    its input is there (``_input_of``): the producing pass's end e when the
    producer is on the same rank, else the message's arrival
    max(e + post, r) + transfer, since a transfer starts once both ends
    have posted it. Communication: the transfer on the receiving rank, the
    send (``costs.sent``) on the sending one. A rank's optimizer step waits
    for its sends of the step to complete, as torch's schedules wait for
    every send before ``step()`` returns.
    ``ValueError`` when the table waits forever."""
    last = max(s for actions in table.values() for _, s, _ in actions)
    per_step = costs if isinstance(costs, list) else [costs] * steps
    done: dict[tuple, tuple[float, Action, int]] = {}
    free = {r: per_step[0].lead.get(r, 0.0) for r in table}
    pos = {r: (0, 0) for r in table}  # (step, index into the table; len = the optimizer step)
    boxes: dict[int, list[tuple]] = {r: [] for r in table}
    comm: dict[int, list[tuple[float, float]]] = {r: [] for r in table}
    owner = {s: r for r, actions in table.items() for _, s, _ in actions}
    # Each rank's messages per step; per (rank, step): how many of them are under way, and when the last completes.
    messages = {r: sum(owner.get(output_stage(kind, s), r) != r for kind, s, _ in actions)
                for r, actions in table.items()}
    sends = {(r, k): [0, 0.0] for r in table for k in range(steps)}
    while any(pos[r][0] < steps for r in table):
        progressed = False
        for r, actions in table.items():
            while pos[r][0] < steps:
                step, i = pos[r]
                step_costs = per_step[step]
                if i == len(actions):
                    posted, completed = sends[(r, step)]
                    if posted < messages[r]:
                        break
                    start = max(free[r], completed)
                    end = start + step_costs.optimizer.get(r, 0.0)
                    boxes[r].append(("optimizer", None, None, step, start, end))
                    if step + 1 < steps:
                        end += step_costs.between.get(r, 0.0) + per_step[step + 1].lead.get(r, 0.0)
                    free[r] = end
                    pos[r], progressed = (step + 1, 0), True
                    continue
                kind, s, mb = action = actions[i]
                need = _input_of(kind, s, mb, last)
                ready = arrival = free[r]
                if need is not None:
                    if (*need, step) not in done:
                        break
                    produced, producer, by = done[(*need, step)]
                    arrival = produced
                    if by != r:
                        joined = max(produced + step_costs.post.get(producer, 0.0), ready)
                        arrival = joined + step_costs.transfer.get(producer, 0.0)
                        comm[r].append((joined, arrival))
                        done_sending = joined + step_costs.sent.get(producer, arrival - joined)
                        comm[by].append((joined, done_sending))
                        sends[(by, step)][0] += 1
                        sends[(by, step)][1] = max(sends[(by, step)][1], done_sending)
                start = max(ready, arrival)
                end = start + step_costs.duration.get(action, 0.0)
                done[("f" if kind == "forward" else "w" if kind == "backward_weight" else "b", s, mb, step)] = \
                    (end, action, r)
                boxes[r].append((kind, s, mb, step, start, end))
                after = step_costs.after.get(r)
                free[r] = end + (after[i] if after else 0.0)
                pos[r], progressed = (step, i + 1), True
        if not progressed:
            raise ValueError("its action table waits forever")
    out = {}
    for r in table:
        busy = [(a[4], a[5]) for a in boxes[r]]
        compute = _covered(busy)
        out[r] = RankReplay(actions=boxes[r], compute=compute, comm=_covered(busy + comm[r]) - compute,
                            end=boxes[r][-1][5])
    return out


def replayed_idle(replays: dict[int, RankReplay]) -> dict[int, float]:
    """Each rank's idle share of the replayed span (0 to the last rank's
    end): 1 - (compute + comm) / span, as ``result.account`` measures it."""
    span = max(r.end for r in replays.values())
    return {rank: 1 - (r.compute + r.comm) / span if span > 0 else 0.0 for rank, r in replays.items()}


def _covered(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``intervals``."""
    total, reach = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > reach:
            total += b - max(a, reach)
            reach = b
    return total


def bubble_overhead(stages: int, micro_batches: int, virtual: int = 1) -> float:
    """Bubble time over ideal (bubble-free) time: (p - 1) / (v m), the form of
    the interleaved-1F1B paper. bubble_fraction = overhead / (1 + overhead)."""
    return (stages - 1) / (virtual * micro_batches)


def in_flight(schedule: str, stages: int, stage: int, micro_batches: int) -> int:
    """Micro-batches whose activations stage ``stage`` holds at its peak:
    GPipe runs all m forwards before any backward; 1F1B starts backward
    once p - stage forwards are in flight: min(m, p - stage)."""
    if schedule == "1f1b":
        return min(micro_batches, stages - stage)
    return micro_batches


def held_peak(actions: list[tuple[str, int, int]], stage_bytes: dict[int, int]) -> int:
    """Peak of the activation bytes a rank holds over its actions, in order
    (``pipeline.schedule_table``): a forward of stage s adds stage_bytes[s];
    a full backward frees them, or, split, the weight gradient does (the
    input-gradient pass keeps the graph for it)."""
    held = peak = 0
    for kind, stage, _ in actions:
        if kind == "forward":
            held += stage_bytes[stage]
        elif kind in ("backward", "backward_weight"):
            held -= stage_bytes[stage]
        peak = max(peak, held)
    return peak


def all_reduce_bytes(nbytes: int, group_size: int) -> int:
    """Bytes each rank sends (and receives) in a ring all-reduce of ``nbytes``
    among n ranks: 2 (n - 1) B // n, as ``result.account`` counts them."""
    return 2 * (group_size - 1) * nbytes // group_size


def ddp_buckets(param_bytes: list[int], first_cap: int = DDP_FIRST_BUCKET_BYTES,
                cap: int = DDP_BUCKET_BYTES) -> list[int]:
    """Bucket sizes DDP rebuilds after the first step (``param_bytes`` in the
    module's parameter order). Gradients arrive in reverse order; a bucket
    closes on the parameter that takes it to its cap or past it, the first
    capped at ``first_cap``, the others at ``cap``. (Step 0 runs before the
    rebuild: one bucket holding everything.)"""
    buckets, size, limit = [], 0, first_cap
    for b in reversed(param_bytes):
        size += b
        if size >= limit:
            buckets.append(size)
            size, limit = 0, cap
    if size:
        buckets.append(size)
    return buckets


def ddp_initial_buckets(param_bytes: list[int], first_cap: int = DDP_FIRST_BUCKET_BYTES,
                        cap: int = DDP_BUCKET_BYTES) -> list[int]:
    """Bucket sizes DDP starts with when it looks for unused parameters
    (``find_unused_parameters=True``): the parameters in the module's order,
    a bucket closing on the one that takes it to its cap or past it, the
    first capped at ``first_cap``, the others at ``cap``. It never rebuilds
    them."""
    return ddp_buckets(list(reversed(param_bytes)), first_cap, cap)


def pipeline_ddp_bytes(param_bytes: list[int], dp: int, steps: int) -> int:
    """Bytes each way a stage's DDP (hybrid dp x pp) all-reduces over a run
    among its dp replicas: its buckets (``ddp_initial_buckets``: DDP looks
    for unused parameters there, so never rebuilds them), once per step, in
    the step's last backward (the others run under ``no_sync``), and once
    more in step 0: the pipeline's shape inference runs the stage forward
    outside ``no_sync``, which arms the reducer, so the first micro-batch's
    backward reduces too. (steps + 1) * sum_k 2 (dp - 1) B_k // dp.

    Not with a zero-bubble schedule: its weight pass asks autograd for the
    weights' gradients (``stage_backward_weight``) without running their
    accumulators, where DDP's hooks sit, so only stage 0 (whose weight pass
    is a whole backward) reduces, and the replicas' other gradients are
    never averaged."""
    return (steps + 1) * sum(all_reduce_bytes(b, dp) for b in ddp_initial_buckets(param_bytes))


def stage_shares(infos: list[BlockInfo], split_points: tuple[int, ...]) -> list[dict]:
    """Each stage's blocks, parameters and forward FLOPs per sample, and its
    share of the model's: params_s / sum(params), flops_s / sum(flops). The
    slowest stage (largest FLOP share) sets a pipeline's pace."""
    total_params = sum(b.params for b in infos) or 1
    total_flops = sum(b.flops for b in infos) or 1
    shares = []
    for s, (first, end) in enumerate(stage_ranges(tuple(split_points), len(infos))):
        params = sum(b.params for b in infos[first:end])
        flops = sum(b.flops for b in infos[first:end])
        shares.append({"stage": s, "blocks": (first, end), "params": params, "flops": flops,
                       "param_share": params / total_params, "flop_share": flops / total_flops})
    return shares


# --------------------------------------------------------------------------
# Activations saved for backward, measured on one and two samples


@dataclass(frozen=True)
class StageActivations:
    """Bytes autograd saves for one micro-batch of b samples through a stage:
    fixed + per_sample * b, counted per storage as ``Recorder._pack`` does.
    The batch's inputs and targets are counted apart: a rank's micro-batches
    are views into the global batch, so their storage counts once, whole."""

    fixed: int
    per_sample: int
    saves_input: bool
    saves_target: bool

    def micro_batch(self, samples: int) -> int:
        return self.fixed + self.per_sample * samples


def _saved_storages(fn, exclude: set[int]) -> dict[int, int]:
    """{storage address: bytes} of every tensor autograd saves while ``fn``
    runs, parameters (``exclude``) and empty storages left out. ``fn``
    returns its output, whose graph keeps every saved storage alive (so no
    address is reused) until all are counted."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() and storage.data_ptr() not in exclude:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        output = fn()
    del output
    return seen


def stage_activations(model: nn.Sequential, first: int, end: int, sample: torch.Tensor,
                      target: torch.Tensor | None, loss_fn) -> StageActivations:
    """Run blocks [first, end) (and the loss, on the last stage) on 1 and 2
    samples; the difference is the per-sample cost, the rest is fixed. A
    stage after the first gets a fresh input that requires grad, like the
    buffer a pipeline stage receives into."""
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
        input_key = _key(x) if first == 0 else None
        target_key = _key(y) if last and y is not None else None
        other = sum(b for k, b in saved.items() if k not in (input_key, target_key))
        counts.append((other, input_key in saved, target_key in saved))
    (one, saves_input, saves_target), (two, _, _) = counts
    return StageActivations(fixed=one - (two - one), per_sample=two - one,
                            saves_input=saves_input, saves_target=saves_target)


def _batch(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.unsqueeze(0).repeat_interleave(n, 0)


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _bytes_per_sample(t: torch.Tensor) -> int:
    return t[0].numel() * t.element_size()


@torch.no_grad()
def output_bytes(model: nn.Sequential, sample: torch.Tensor) -> list[int]:
    """Bytes per sample of each block's output: what crosses a cut after it."""
    x, sizes = sample.unsqueeze(0), []
    for block in model:
        x = block(x)
        sizes.append(_bytes_per_sample(x))
    return sizes


# --------------------------------------------------------------------------
# Sharded parameters: what each rank holds, and what its collectives move


def chunk_rows(n: int, parts: int, index: int) -> int:
    """Rows that piece ``index`` gets when ``torch.chunk`` cuts n rows into
    ``parts``, as DTensor's Shard and FSDP2 cut a parameter: c = ceil(n / parts)
    rows each, in rank order, so the last pieces hold fewer or none:
    max(0, min(c, n - index * c))."""
    c = -(-n // parts)
    return max(0, min(c, n - index * c))


def _shard_rows(t: torch.Tensor, dim: int, parts: int, index: int) -> torch.Tensor:
    c = -(-t.shape[dim] // parts)
    return t.narrow(dim, min(index * c, t.shape[dim]), chunk_rows(t.shape[dim], parts, index)).clone()


def tensor_local_model(model: nn.Sequential, tp: int, tp_rank: int,
                       unused: tuple[str, ...] = ()) -> tuple[nn.Sequential, dict[str, str]]:
    """A copy of ``model`` holding what tensor-parallel rank ``tp_rank`` of
    ``tp`` holds, and the plan ({layer name: "colwise" | "rowwise"}) of
    ``strategies.tensor.tensor_plan``.

    Column-parallel layer (out x in weight): rows chunk_rows(out, tp, r) of
    the weight and of the bias. Row-parallel layer: columns
    chunk_rows(in, tp, r) of the weight, the bias whole (Replicate). Layers
    off the plan are whole. Run on a plain tensor, the copy computes what
    the rank's local tensors do, so autograd saves what the rank's saves:
    the column layers' outputs (b x out/tp) are never gathered."""
    from torch.distributed.tensor.parallel import ColwiseParallel

    from .strategies.tensor import tensor_plan

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


def tensor_all_reduces(model: nn.Sequential, plan: dict[str, str], sample: torch.Tensor) -> list[tuple[str, int]]:
    """(pass, bytes per sample) of each all-reduce DTensor issues in one
    training step, in the order of the layers:

      forward   the output of every row-parallel layer: its partial sums
                y = sum_i W_i x_i are summed over the tp ranks (Partial ->
                Replicate), b * out bytes;
      backward  the input gradient of every column-parallel layer whose
                input requires grad (all but a first layer fed the data):
                dL/dx = sum_i W_i^T dL/dy_i is partial on each rank,
                b * in bytes. q, k and v read the same input but are three
                layers: three all-reduces.

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


def fsdp_units(model: nn.Sequential) -> list[list[nn.Parameter]]:
    """The parameters of each FSDP unit: one per block that has trainable
    parameters (``strategies.fsdp`` wraps each such block, then the root,
    which is left holding none)."""
    return [ps for ps in ([p for p in block.parameters() if p.requires_grad] for block in model) if ps]


def fsdp_shard_bytes(params: list[nn.Parameter], n: int, rank: int) -> list[int]:
    """Bytes of each parameter's shard on ``rank`` of n (FSDP2 cuts dim 0,
    ``chunk_rows``): chunk_rows(d_0, n, r) * (numel / d_0) * element size;
    the padding FSDP2 adds to the last shards is not counted (``local_bytes``
    sees the unpadded local tensor)."""
    return [chunk_rows(p.shape[0], n, rank) * (p.numel() // p.shape[0]) * p.element_size() for p in params]


def fsdp_gather_bytes(params: list[nn.Parameter], n: int) -> int:
    """Bytes of one unit's all-gather output (and of its gradients'
    reduce-scatter input): each of the n ranks contributes every parameter's
    shard padded to the first rank's, n * sum_p ceil(d_0 / n) * (numel / d_0)
    * element size."""
    return n * sum(fsdp_shard_bytes(params, n, 0))


# --------------------------------------------------------------------------
# Zero-bubble schedules: the split backward, replayed


def split_backward_step(model: nn.Sequential, ranges: list[tuple[int, int]], held: tuple[int, ...],
                        actions: list[tuple[str, int, int]], sample: torch.Tensor, target: torch.Tensor | None,
                        loss_fn, samples: int) -> tuple[list[int], int]:
    """Run one rank's actions of one step (``pipeline.schedule_table``) on
    micro-batches of ``samples`` samples, as torch.distributed.pipelining
    runs them, counting saved tensors with the recorder itself
    (``Recorder.saving_activations`` around each forward and loss).
    Returns the peak of saved bytes during each action, and the bytes still
    held when the step is over (0 when everything is freed).

    A zero-bubble schedule splits each backward (``stage.backward_one_chunk``
    with full_backward=False, then ``backward_weight_one_chunk``):

      backward_input   ``_backward.stage_backward_input``: input gradients
                       only, with retain_graph=True, so every saved tensor
                       stays for the weight gradients; it then detaches the
                       stage's outputs (or loss), which frees the nodes that
                       only they reached (the last ReLU's output, the loss's
                       saved target). Stage 0 skips it.
      backward_weight  ``_backward.stage_backward_weight``: runs again only
                       the nodes where a weight meets the input path (the
                       matmuls), each from the gradient the input pass left
                       there; they free what they saved. Stage 0 runs its
                       whole backward here instead (``stage_backward``).

    Every other node (ReLU, log-softmax) never runs a second time. Without
    the recorder it would go with the graph once the weight pass drops it.
    But ``Recorder._pack`` keeps the saved tensor itself, and for a tensor a
    node saved as its own output (ReLU and log-softmax save their results)
    that closes a cycle, tensor -> grad_fn -> saved variable -> tensor, that
    neither reference counting nor Python's collector breaks: those bytes
    stay held for the rest of the run, each step adding as many again.
    (A full backward releases every node's saved tensors as it runs, which
    breaks the cycles: the other schedules leave nothing behind.) The bytes
    left over are that per-step growth: step k's peak is step 0's plus k
    times the leftover. A recorder that keeps ``t.detach()`` instead leaves
    0, and this replay, using it, would say so.

    The batch's inputs and targets are left out (counted whole, apart, as
    everywhere in this model); a stage after a cut receives into a buffer of
    its own per micro-batch, one after a stage on the same rank takes that
    stage's output, detached (``stage.set_local_fwd_input``). The replay
    accumulates gradients into ``model``'s parameters and clears them after."""
    from torch.distributed.pipelining._backward import stage_backward, stage_backward_input, stage_backward_weight

    from .recorder import Recorder

    rec = Recorder()
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
            with torch.enable_grad(), rec.saving_activations():
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
        rec.activations_peak = rec.activation_bytes
        run(kind, s, mb)
        peaks.append(rec.activations_peak)
    for p in model.parameters():
        p.grad = None
    return peaks, rec.activation_bytes


def split_backward_peak(model: nn.Sequential, ranges: list[tuple[int, int]], held: tuple[int, ...],
                        actions: list[tuple[str, int, int]], sample: torch.Tensor, target: torch.Tensor | None,
                        loss_fn, micro_batch: int, steps: int) -> int:
    """Peak saved bytes of a zero-bubble rank over ``steps`` steps of
    ``micro_batch`` samples per micro-batch: ``split_backward_step`` on 1
    and 2 samples gives each action's peak as fixed + per_sample * b, and the
    leftover g(b) likewise; the peak is the last step's,
    max_action(fixed + per_sample * b) + (steps - 1) g(b)."""
    one, left_one = split_backward_step(model, ranges, held, actions, sample, target, loss_fn, 1)
    two, left_two = split_backward_step(model, ranges, held, actions, sample, target, loss_fn, 2)
    b = micro_batch
    peak = max(p1 + (p2 - p1) * (b - 1) for p1, p2 in zip(one, two))
    return peak + (steps - 1) * (left_one + (left_two - left_one) * (b - 1))


# --------------------------------------------------------------------------
# Per rank


def predict(config: RunConfig, infos: list[BlockInfo] | None = None, model: nn.Sequential | None = None,
            sample: torch.Tensor | None = None, target: torch.Tensor | None = None) -> list[RankPrediction]:
    """Predict every rank's memory, traffic and activation peak for ``config``.

    ``model``, ``sample`` (one input, no batch dimension) and ``target`` (its
    label) stand in for a custom model's; for a named model they default to
    the built model and the first sample of its dataset. Without a target
    the loss's saved tensors are left out. Split points are resolved as
    ``run`` resolves them, from ``infos`` (the blocks' FLOPs).
    """
    model, sample, target, loss_fn = _model_and_data(config, model, sample, target)
    x_bytes = config.global_batch * _bytes_per_sample(sample.unsqueeze(0))
    y_bytes = config.global_batch * _bytes_per_sample(target.unsqueeze(0)) if target is not None else 0
    if config.tp_size > 1:
        return _predict_tensor(config, model, sample, target, loss_fn, x_bytes, y_bytes)
    if config.strategy == "fsdp":
        return _predict_fsdp(config, model, sample, target, loss_fn, x_bytes, y_bytes)
    if infos is None:
        infos = model_block_infos(config.model) if config.model in MODELS else block_infos(model, sample)
    split_points = config.split_points or ()
    if config.stages > 1 and config.split_points is None:
        split_points = config.resolved_split_points([max(1, b.flops) for b in infos])
    ranges = stage_ranges(tuple(split_points), len(model))
    out_bytes = output_bytes(model, sample)
    pp, dp, steps = config.pp_size, config.dp_size, config.steps
    scheduled = config.scheduled  # the others run a rank's batch whole
    m = config.micro_batches if scheduled else 1
    schedule = config.schedule if scheduled else "gpipe"
    # Several stages per rank: which rank holds each, and the order it runs them in.
    owner = {s: r for r in range(pp) for s in config.rank_stages(r)}
    table = None
    if config.stages > pp:
        from .strategies.pipeline import schedule_table

        table = schedule_table(schedule, pp, m, config.stages // pp)

    activations = [stage_activations(model, first, end, sample, target, loss_fn) for first, end in ranges]
    predictions = []
    for rank in range(config.world_size):
        dp_rank, stage = divmod(rank, pp)
        held_stages = config.rank_stages(stage)
        param_bytes = [b for s in held_stages for b in _param_bytes(model[ranges[s][0]:ranges[s][1]])]
        held = sum(param_bytes)

        micro_batch = config.rank_batches()[dp_rank] // m
        # Only cuts to a stage on another rank cross the wire.
        cut_bytes = sum((out_bytes[ranges[s][0] - 1] if s > 0 and owner[s - 1] != stage else 0)
                        + (out_bytes[ranges[s][1] - 1] if s < len(ranges) - 1 and owner[s + 1] != stage else 0)
                        for s in held_stages)
        sent = steps * m * micro_batch * cut_bytes
        if dp > 1 and config.strategy == "hybrid":  # each stage its own DDP
            sent += sum(pipeline_ddp_bytes(_param_bytes(model[ranges[s][0]:ranges[s][1]]), dp, steps)
                        for s in held_stages)
        elif dp > 1:
            # Step 0 all-reduces one bucket of everything; then DDP rebuilds its buckets.
            sent += all_reduce_bytes(held, dp)
            sent += (steps - 1) * sum(all_reduce_bytes(b, dp) for b in ddp_buckets(param_bytes))

        acts = [activations[s] for s in held_stages]
        if table is None:
            peak = in_flight(schedule, pp, stage, m) * acts[0].micro_batch(micro_batch)
        elif schedule in ZERO_BUBBLE:
            peak = split_backward_peak(model, ranges, held_stages, table[stage], sample, target, loss_fn,
                                       micro_batch, steps)
        else:
            peak = held_peak(table[stage], {s: activations[s].micro_batch(micro_batch) for s in held_stages})
        peak += x_bytes * any(a.saves_input for a in acts) + y_bytes * any(a.saves_target for a in acts)

        predictions.append(_rank_prediction(config, rank, stage, dp_rank, param_bytes, peak, sent))
    return predictions


def _predict_tensor(config, model, sample, target, loss_fn, x_bytes, y_bytes) -> list[RankPrediction]:
    """Tensor parallel among tp ranks (strategy tensor, or hybrid dp x tp
    with FSDP over the dp replicas), each tp group running its batch of b
    samples whole; rank = dp_rank * tp + tp_rank (``tensor_local_model``):

      params     column-parallel W (out x in), bias: chunk_rows(out, tp, r) * (in + 1);
                 row-parallel W: out * chunk_rows(in, tp, r), bias out (replicated);
                 every other layer whole. With dp > 1, FSDP cuts each of
                 those local tensors again along dim 0 among the dp ranks
                 (``fsdp_shard_bytes`` of the local model). grads alike;
                 Adam 2 P + 4 T.
      traffic    per step, among tp: b * (sum of the row-parallel outputs'
                 bytes per sample + the column-parallel inputs' that require
                 grad), each an all-reduce, 2 (tp - 1) B // tp bytes each way
                 (``tensor_all_reduces``); with dp > 1, among dp, FSDP's
                 3 (dp - 1) G_u // dp per unit of the local model (see
                 ``_predict_fsdp``).
      activations  what the local model saves for b samples (its column
                 layers' outputs are b x out/tp), plus the batch's x and y.
    """
    tp, dp, steps = config.tp_size, config.dp_size, config.steps
    locals_ = [tensor_local_model(model, tp, r, config.unused_parameters) for r in range(tp)]
    acts = [stage_activations(local, 0, len(local), sample, target, loss_fn) for local, _ in locals_]
    all_reduces = tensor_all_reduces(model, locals_[0][1], sample)
    predictions = []
    for rank in range(config.world_size):
        dp_rank, tp_rank = divmod(rank, tp)
        local, act = locals_[tp_rank][0], acts[tp_rank]
        b = config.rank_batches()[dp_rank]
        per_step = sum(all_reduce_bytes(b * nbytes, tp) for _, nbytes in all_reduces)
        if dp > 1:
            units = fsdp_units(local)
            param_bytes = [nbytes for params in units for nbytes in fsdp_shard_bytes(params, dp, dp_rank)]
            per_step += sum(3 * ((dp - 1) * fsdp_gather_bytes(params, dp) // dp) for params in units)
        else:
            param_bytes = _param_bytes(local)
        peak = act.micro_batch(b) + x_bytes * act.saves_input + y_bytes * act.saves_target
        predictions.append(_rank_prediction(config, rank, 0, dp_rank, param_bytes, peak, steps * per_step))
    return predictions


def _predict_fsdp(config, model, sample, target, loss_fn, x_bytes, y_bytes) -> list[RankPrediction]:
    """FSDP2 among n ranks, each training on its own b_r samples:

      params     each parameter's dim-0 shard, chunk_rows(d_0, n, r) rows
                 (``fsdp_shard_bytes``); grads alike (reduce-scattered
                 shards); Adam 2 P + 4 T on the shards.
      traffic    per step and unit u (a block with parameters), with G_u its
                 padded size (``fsdp_gather_bytes``): an all-gather in
                 forward and another in backward (every block, the last
                 included, is resharded after its forward: only the root,
                 which holds no parameters, keeps its own), and one
                 reduce-scatter of the gradients: 3 (n - 1) G_u // n bytes
                 each way.
      activations  as data parallel: the whole model's saved bytes for b_r
                 samples, plus the batch's x and y (the gathered weights are
                 parameters, not activations).
    """
    n, steps = config.world_size, config.steps
    units = fsdp_units(model)
    gathers = [fsdp_gather_bytes(params, n) for params in units]
    per_step = sum(3 * ((n - 1) * g // n) for g in gathers)
    act = stage_activations(model, 0, len(model), sample, target, loss_fn)
    predictions = []
    for rank in range(n):
        param_bytes = [b for params in units for b in fsdp_shard_bytes(params, n, rank)]
        b = config.rank_batches()[rank]
        peak = act.micro_batch(b) + x_bytes * act.saves_input + y_bytes * act.saves_target
        predictions.append(_rank_prediction(config, rank, 0, rank, param_bytes, peak, steps * per_step))
    return predictions


def _param_bytes(module: nn.Module) -> list[int]:
    return [p.numel() * p.element_size() for p in module.parameters()]


def _rank_prediction(config: RunConfig, rank: int, stage: int, dp_rank: int, param_bytes: list[int],
                     activations_peak: int, sent: int) -> RankPrediction:
    """params P = sum of the rank's parameter bytes, grads P, optimizer 0 for
    SGD or 2 P + 4 T for Adam (T tensors, each a float32 ``step``); every
    collective and transfer here is symmetric, so received = sent."""
    held = sum(param_bytes)
    optimizer = 2 * held + 4 * len(param_bytes) if config.optimizer == "adam" else 0
    return RankPrediction(rank=rank, stage=stage, dp_rank=dp_rank, params=held, grads=held, optimizer=optimizer,
                          activations_peak=activations_peak, bytes_sent=sent, bytes_recv=sent)


def _model_and_data(config: RunConfig, model, sample, target):
    """The model (a private copy: profiling runs forwards), one sample, its
    target and the loss, as ``run`` would choose them."""
    from .data import load_dataset, loss_fn

    if model is None:
        if config.model not in MODELS:
            raise ValueError(f"model={config.model!r}: a custom model needs predict(config, model=..., sample=...)")
        model = build_model(config.model, config.seed)
    else:
        model = copy.deepcopy(model)
    if config.model in MODELS:
        data = load_dataset(config.model)
        sample = data.train_x[0] if sample is None else sample
        target = data.train_y[0] if target is None else target
        task = data.task
    else:
        if sample is None:
            raise ValueError("a custom model needs one input sample: predict(config, model=..., sample=...)")
        task = "regression" if target is not None and target.is_floating_point() else "classification"
    return model, sample, target, loss_fn(task)


__all__ = ["RankPrediction", "predict", "bubble_fraction", "simulated_bubble", "bubble_overhead", "in_flight",
           "held_peak", "replay_schedule", "replayed_idle", "ReplayCosts", "RankReplay", "output_stage",
           "all_reduce_bytes", "ddp_buckets", "ddp_initial_buckets", "pipeline_ddp_bytes",
           "stage_shares", "stage_activations", "StageActivations", "output_bytes", "chunk_rows",
           "tensor_local_model", "tensor_all_reduces", "fsdp_units", "fsdp_shard_bytes", "fsdp_gather_bytes",
           "split_backward_step", "split_backward_peak"]
