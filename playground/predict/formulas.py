"""The cost model's formulas: numbers in, numbers out.

No torch here, and nothing that imports it: every function takes sizes,
counts or an action table and can be checked by hand
(``tests/test_formulas.py``). What has to be read off a model lives in
``profile``; the loop that applies these formulas to each rank of a run
lives in ``predict``.

Notation: p pipeline ranks (``stages``), m micro-batches, v stages per rank
(``virtual``), n ranks in a collective's group, B bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from playground.zoo.models import BlockInfo


# --------------------------------------------------------------------------
# Pipeline bubble


def pipeline_bubble(stages: int, micro_batches: int, virtual: int = 1) -> float:
    """Share of a step a pipeline rank sits idle filling and draining the
    pipeline, with equal stages and free communication:

      v = 1        (p - 1) / (m + p - 1)            GPipe (Huang et al. 2019), and 1F1B
      v > 1, m >= p  (p - 1) / (v m + p - 1)        interleaved 1F1B (Narayanan et al. 2021)
      v > 1, m < p   1 - v m / (v p + m - 1)        each loop also waits for micro-batch 0 to come round

    All three are 1 - v m / (v max(m, p) + min(m, p) - 1).
    ``ValueError`` unless p, m, v >= 1."""
    p, m, v = stages, micro_batches, virtual
    if p < 1 or m < 1 or v < 1:
        raise ValueError(f"stages={p}, micro_batches={m}, virtual={v}: each must be >= 1")
    return 1 - v * m / (v * max(m, p) + min(m, p) - 1)


def bubble_overhead(stages: int, micro_batches: int, virtual: int = 1) -> float:
    """Bubble time over ideal (bubble-free) time: (p - 1) / (v m), the form
    of Narayanan et al. 2021. For m >= p,
    ``pipeline_bubble`` = overhead / (1 + overhead)."""
    return (stages - 1) / (virtual * micro_batches)


UNIT_TIMES = {"forward": 1.0, "backward": 2.0, "backward_input": 1.0, "backward_weight": 1.0}
"""Time of each kind of action, in forwards: a full backward costs two (the
input and the weight gradients), the zero-bubble schedules' halves one each
(Qi et al. 2023 take T_F = T_B = T_W)."""


def table_bubble(table: dict[int, list[Action]], times: dict[str, float] = UNIT_TIMES) -> float:
    """Idle share of a step, 1 - busy / span, averaged over the ranks, when
    each rank runs its actions in table order, each taking ``times[kind]``,
    as soon as the rank is free and its input is there (``replay_schedule``
    with free communication and no host work).

    This is the bubble of a schedule with no closed form: the zero-bubble
    schedules fill the drain with weight-gradient passes, and with
    ``UNIT_TIMES`` come to (p - 1) / (3 v m + p - 1) once m >= p
    (zbvzerobubble: m >= 2p - 1), a third of the looped bubble (Qi et al.
    2023). ``ValueError`` when the table waits forever."""
    costs = ReplayCosts(duration={a: times[a[0]] for actions in table.values() for a in actions})
    shares = replayed_idle(replay_schedule(table, costs))
    return sum(shares.values()) / len(shares)


def in_flight(schedule: str, stages: int, stage: int, micro_batches: int) -> int:
    """Micro-batches whose activations stage ``stage`` holds at its peak:
    GPipe runs all m forwards before any backward (Huang et al. 2019); 1F1B
    starts backward once p - stage forwards are in flight, min(m, p - stage)
    (Narayanan et al. 2021)."""
    if schedule == "1f1b":
        return min(micro_batches, stages - stage)
    return micro_batches


def held_peak(actions: Sequence[Action], stage_bytes: dict[int, int]) -> int:
    """Peak of the activation bytes a rank holds over its actions, in order:
    a forward of stage s adds stage_bytes[s]; a full backward frees them,
    or, split, the weight-gradient pass does (the input-gradient pass keeps
    the graph for it)."""
    held = peak = 0
    for kind, stage, _ in actions:
        if kind == "forward":
            held += stage_bytes[stage]
        elif kind in ("backward", "backward_weight"):
            held -= stage_bytes[stage]
        peak = max(peak, held)
    return peak


# --------------------------------------------------------------------------
# A schedule table run on paper

Action = tuple[str, int, int]
"""(kind, stage, micro_batch), kind one of forward, backward, backward_input,
backward_weight, as in ``strategies.pipeline.schedule_table``."""


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


def output_stage(kind: str, stage: int) -> int | None:
    """The stage an action's output goes to: a forward's to the next, a
    backward's (or input-gradient pass's) to the previous; None for a
    weight-gradient pass."""
    if kind == "forward":
        return stage + 1
    return stage - 1 if kind in ("backward", "backward_input") else None


def _input_of(kind: str, stage: int, micro_batch: int, last: int) -> tuple[str, int, int] | None:
    """The pass whose result an action waits for: a forward of stage s, stage
    s-1's forward; a backward (or input-gradient pass), stage s+1's, or on
    the last stage its own forward; a weight-gradient pass, its own input
    gradient."""
    if kind == "forward":
        return ("f", stage - 1, micro_batch) if stage > 0 else None
    if kind == "backward_weight":
        return ("b", stage, micro_batch)
    return ("b", stage + 1, micro_batch) if stage < last else ("f", stage, micro_batch)


def replay_schedule(table: dict[int, list[Action]], costs: ReplayCosts | list[ReplayCosts],
                    steps: int = 1) -> dict[int, RankReplay]:
    """Run a schedule table on paper: ``steps`` steps, every rank free at 0;
    ``costs`` the same for every step, or one per step.

    Each rank runs its actions in table order, then its optimizer step. An
    action starts at max(r, a): r, when its rank is free (the previous
    action's end plus the host work after it, ``costs.after``); a, when its
    input is there (``_input_of``): the producing pass's end e on the same
    rank, else the message's arrival max(e + post, r) + transfer, since a
    transfer starts once both ends have posted it. Communication counts on
    the receiving rank as the transfer, on the sending one as the send
    (``costs.sent``). A rank's optimizer step waits for its sends of the
    step to complete, as torch's schedules wait for every send before
    ``step()`` returns.

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


# --------------------------------------------------------------------------
# Collectives

# These two mirror torch's values (this module imports no torch);
# tests/test_torch_internals.py checks them against
# instrument.ddp_default_bucket_bytes().
DDP_FIRST_BUCKET_BYTES = 1024 * 1024
"""torch.distributed._DEFAULT_FIRST_BUCKET_BYTES: the cap of the bucket
holding the gradients that are ready first (the last layers)."""
DDP_BUCKET_BYTES = 25 * 1024 * 1024
"""DDP's default ``bucket_cap_mb`` (25 MiB, ``_DEFAULT_BUCKET_CAP_MB``) for every later bucket."""


def all_reduce_bytes(nbytes: int, group_size: int) -> int:
    """Bytes each rank sends (and receives) in a ring all-reduce of
    ``nbytes`` among n ranks: a reduce-scatter then an all-gather, each
    n - 1 chunks of B / n, so 2 (n - 1) B // n (Patarasuk & Yuan 2009; the
    NCCL docs' bus bandwidth factor 2 (n - 1) / n). ``result.account``
    counts a rank's bytes the same way."""
    return 2 * (group_size - 1) * nbytes // group_size


def ddp_buckets(param_bytes: Sequence[int], first_cap: int = DDP_FIRST_BUCKET_BYTES,
                cap: int = DDP_BUCKET_BYTES) -> list[int]:
    """Bucket sizes DDP rebuilds after the first step (``param_bytes`` in the
    module's parameter order). Gradients arrive in reverse order; a bucket
    closes on the parameter that takes it to its cap or past it, the first
    capped at ``first_cap``, the others at ``cap`` (gradient bucketing,
    Li et al. 2020, "PyTorch Distributed"). Step 0 runs before the rebuild, with one
    bucket holding everything."""
    buckets, size, limit = [], 0, first_cap
    for b in reversed(param_bytes):
        size += b
        if size >= limit:
            buckets.append(size)
            size, limit = 0, cap
    if size:
        buckets.append(size)
    return buckets


def ddp_initial_buckets(param_bytes: Sequence[int], first_cap: int = DDP_FIRST_BUCKET_BYTES,
                        cap: int = DDP_BUCKET_BYTES) -> list[int]:
    """Bucket sizes DDP starts with and, when it looks for unused parameters
    (``find_unused_parameters=True``), keeps: the parameters in the module's
    order, a bucket closing on the one that takes it to its cap or past it,
    the first capped at ``first_cap``, the others at ``cap``."""
    return ddp_buckets(list(reversed(param_bytes)), first_cap, cap)


def data_parallel_bytes(param_bytes: Sequence[int], dp: int, steps: int) -> int:
    """Bytes each way DDP all-reduces over a run among dp replicas: step 0
    one bucket of everything, then DDP's rebuilt buckets B_k every step:
    2 (dp - 1) P // dp + (steps - 1) sum_k 2 (dp - 1) B_k // dp."""
    if dp == 1:
        return 0
    first = all_reduce_bytes(sum(param_bytes), dp)
    return first + (steps - 1) * sum(all_reduce_bytes(b, dp) for b in ddp_buckets(param_bytes))


def pipeline_ddp_bytes(param_bytes: Sequence[int], dp: int, steps: int) -> int:
    """Bytes each way a stage's DDP (hybrid dp x pp) all-reduces over a run
    among its dp replicas: its buckets (``ddp_initial_buckets``: DDP looks
    for unused parameters there, so never rebuilds them), once per step in
    the step's last backward (the others run under ``no_sync``), and once
    more in step 0, whose shape inference runs the stage's forward outside
    ``no_sync`` and so arms the reducer for the first micro-batch's
    backward: (steps + 1) sum_k 2 (dp - 1) B_k // dp.

    The zero-bubble schedules are refused with dp > 1 (``RunConfig``):
    their weight pass never runs the gradient accumulators DDP hooks."""
    return (steps + 1) * sum(all_reduce_bytes(b, dp) for b in ddp_initial_buckets(param_bytes))


# --------------------------------------------------------------------------
# Sharded parameters


def chunk_rows(n: int, parts: int, index: int) -> int:
    """Rows that piece ``index`` gets when ``torch.chunk`` cuts n rows into
    ``parts``, as DTensor's Shard and FSDP2 cut a parameter: c = ceil(n / parts)
    rows each, in rank order, so the last pieces hold fewer or none:
    max(0, min(c, n - index * c))."""
    c = -(-n // parts)
    return max(0, min(c, n - index * c))


def shard_bytes(shape: Sequence[int], element_size: int, parts: int, index: int) -> int:
    """Bytes of the dim-0 shard of a tensor of ``shape`` that rank ``index``
    of ``parts`` holds: chunk_rows(d_0, parts, index) * d_1 * ... * element
    size. ZeRO stage 3 (Rajbhandari et al. 2019) gives each rank
    1 / n of every parameter; FSDP2 cuts dim 0 as ``torch.chunk`` does and
    pads the last shards only in its communication buffers, so these are
    the bytes a rank's local tensor holds."""
    return chunk_rows(shape[0], parts, index) * math.prod(shape[1:]) * element_size


def gather_bytes(tensors: Sequence[tuple[Sequence[int], int]], parts: int) -> int:
    """Bytes of one FSDP unit's all-gather output (and of its gradients'
    reduce-scatter input), ``tensors`` its parameters as (shape, element
    size): every rank contributes each parameter's shard padded to rank 0's,
    parts * sum shard_bytes(shape, size, parts, 0)."""
    return parts * sum(shard_bytes(shape, size, parts, 0) for shape, size in tensors)


def fsdp_step_bytes(gathered: int, parts: int, reshard_after_forward: bool = True) -> int:
    """Bytes each way one FSDP unit of padded size G moves per step among n
    ranks: an all-gather in forward, another in backward when the unit is
    resharded after its forward (ZeRO stage 3; stage 2 keeps it gathered),
    and a reduce-scatter of its gradients, each sending (n - 1) / n of G
    (ZeRO stage 3's 3x traffic against DDP's 2x, Rajbhandari et al. 2019):
    3 ((n - 1) G // n) at stage 3, 2 ((n - 1) G // n) at stage 2."""
    return (3 if reshard_after_forward else 2) * ((parts - 1) * gathered // parts)


def broadcast_bytes(nbytes: int, group_size: int) -> int:
    """A rank's share of one broadcast of B bytes among n ranks, each way:
    the other n - 1 ranks receive B each, (n - 1) B in all, counted
    (n - 1) B // n on every rank, as ``result.account`` counts it."""
    return (group_size - 1) * nbytes // group_size


# --------------------------------------------------------------------------
# ZeRO stages (Rajbhandari et al. 2019)

ZERO_SOURCE = ("Rajbhandari et al. 2019, ZeRO: Memory Optimizations Toward Training Trillion Parameter "
               "Models, Sec. 5.1-5.2 and Fig. 1 (memory per rank), Sec. 7 (communication volume)")

ZERO_MEMORY_FORMULAS = {
    0: {"params": "4Ψ", "grads": "4Ψ", "optimizer": "KΨ"},
    1: {"params": "4Ψ", "grads": "4Ψ", "optimizer": "KΨ/N_d"},
    2: {"params": "4Ψ", "grads": "4Ψ/N_d", "optimizer": "KΨ/N_d"},
    3: {"params": "4Ψ/N_d", "grads": "4Ψ/N_d", "optimizer": "KΨ/N_d"},
}
"""Per rank, in fp32 (4 bytes per parameter and per gradient; the paper's
mixed-precision figures are 2Ψ + 2Ψ + KΨ with K = 12)."""


def zero1_partition(numels: Sequence[int], ranks: int) -> list[list[int]]:
    """Which parameters each rank of torch's ``ZeroRedundancyOptimizer``
    keeps optimizer state for, as indices into ``numels`` (the element
    counts, in the module's parameter order), each rank's in the order
    assigned. Whole parameters, largest first (a stable sort: equal sizes
    keep their order), each to the rank holding the fewest elements so far
    (the lowest such rank): a greedy balance, so rank r holds Ψ_r elements,
    near Ψ / N_d but rarely equal to it."""
    held, parts = [0] * ranks, [[] for _ in range(ranks)]
    for i in sorted(range(len(numels)), key=lambda i: -numels[i]):
        r = held.index(min(held))
        parts[r].append(i)
        held[r] += numels[i]
    return parts


def zero_memory(stage: int, psi: int, ranks: int, k: int, element_size: int = 4) -> dict[str, float]:
    """Bytes per rank of parameters, gradients and optimizer state at ZeRO
    ``stage`` (``ZERO_MEMORY_FORMULAS``), Ψ parameters over N_d ranks, K
    bytes of optimizer state per parameter, ``element_size`` bytes per
    parameter and per gradient: stage 0 (4 + 4 + K) Ψ, stage 1
    4Ψ + 4Ψ + KΨ / N_d, stage 2 4Ψ + (4 + K) Ψ / N_d, stage 3
    (4 + 4 + K) Ψ / N_d. ``ValueError`` for a stage outside 0..3."""
    if stage not in ZERO_MEMORY_FORMULAS:
        raise ValueError(f"stage={stage!r}: must be 0, 1, 2 or 3")
    whole = {"params": element_size * psi, "grads": element_size * psi, "optimizer": k * psi}
    return {name: whole[name] / ranks if formula.endswith("/N_d") else float(whole[name])
            for name, formula in ZERO_MEMORY_FORMULAS[stage].items()}


def zero_step_volume(stage: int) -> int:
    """Parameters' worth of data each rank moves per step at ZeRO ``stage``
    (Sec. 7): 2Ψ at stages 0 to 2 (an all-reduce, or a reduce-scatter of
    the gradients and an all-gather of the parameters), 3Ψ at stage 3 (the
    parameters gathered again for the backward)."""
    if stage not in ZERO_MEMORY_FORMULAS:
        raise ValueError(f"stage={stage!r}: must be 0, 1, 2 or 3")
    return 3 if stage == 3 else 2


def fsdp_accumulated_step_bytes(gathered: int, reduced: int, parts: int, micro_steps: int,
                                reshard_after_forward: bool = True) -> int:
    """``fsdp_step_bytes`` with k micro-steps per step and the gathers'
    own precision: each micro-step gathers the unit in forward and, when it
    was resharded after its forward (ZeRO stage 3), again in backward (G
    bytes each, G the padded unit in the parameters' gathered dtype: half
    of fp32's under a bf16 MixedPrecisionPolicy), and the gradients, kept
    unsharded until the last micro-step, are reduce-scattered once (R
    bytes, the reduce dtype's): g k ((n - 1) G // n) + (n - 1) R // n with
    g = 2 at stage 3, 1 at stage 2."""
    gathers = 2 if reshard_after_forward else 1
    return gathers * micro_steps * ((parts - 1) * gathered // parts) + (parts - 1) * reduced // parts


# --------------------------------------------------------------------------
# Memory


def optimizer_bytes(optimizer: str, param_bytes: Sequence[int]) -> int:
    """Optimizer state for parameters of ``param_bytes`` (P bytes over T
    tensors): 0 for SGD without momentum; for Adam (Kingma & Ba 2015)
    exp_avg and exp_avg_sq, as large as the parameters, and a float32
    ``step`` per tensor (torch's default): 2 P + 4 T.
    ``ValueError`` for another optimizer."""
    if optimizer == "sgd":
        return 0
    if optimizer == "adam":
        return 2 * sum(param_bytes) + 4 * len(param_bytes)
    raise ValueError(f"optimizer={optimizer!r}: must be sgd or adam")


def stage_shares(infos: Sequence[BlockInfo], split_points: Sequence[int]) -> list[dict]:
    """Each stage's blocks [first, end), its parameters and forward FLOPs per
    sample, and its share of the model's: params_s / sum(params),
    flops_s / sum(flops). The slowest stage (largest FLOP share) sets a
    pipeline's pace. ``infos``: one per block, with ``params`` and ``flops``."""
    total_params = sum(b.params for b in infos) or 1
    total_flops = sum(b.flops for b in infos) or 1
    edges = (0, *split_points, len(infos))
    shares = []
    for s, (first, end) in enumerate(zip(edges, edges[1:])):
        params = sum(b.params for b in infos[first:end])
        flops = sum(b.flops for b in infos[first:end])
        shares.append({"stage": s, "blocks": (first, end), "params": params, "flops": flops,
                       "param_share": params / total_params, "flop_share": flops / total_flops})
    return shares
