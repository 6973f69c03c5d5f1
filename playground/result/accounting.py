"""What a run produced: each rank's report, merged into one RunResult.

Time accounting, per rank, over the timed window (all steps after the
warm-up step 0; step 0 alone when there is only one). The parts below
add up to the window:

  compute   time inside forward, loss, backward, optimizer spans (their
            union), less the time the rank's thread was blocked inside
            them on a transfer (an FSDP all-gather, a tensor-parallel
            all-reduce): that is not compute.
  comm      time a transfer of this rank was moving bytes while the rank
            did not compute. A transfer cannot begin before every party has
            joined it, so it counts from the moment the last party posted it
            (``joined``) to its completion.
  wait      time the rank was blocked on a transfer that had not begun:
            waiting for a peer (a receive whose sender is still busy, a
            collective a slower rank has not joined). The pipeline bubble
            shows up here.
  overhead  the rest: the runtime's own host work between recorded actions
            (splitting micro-batches, posting messages, scaling gradients,
            reading the loss), while no peer is awaited.

``idle`` is wait + overhead. ``overlapped`` is transfer time that ran while
the rank computed: hidden communication, outside the sum.

Bytes, per rank: a send or receive counts its tensor's bytes; collectives
count what the ring algorithm moves among n ranks, sent and as many
received: an all-reduce of B bytes 2 (n - 1) / n * B, an all-gather of a
B-byte output or a reduce-scatter of a B-byte input (n - 1) / n * B. A
broadcast of B bytes delivers B to each of the n - 1 other ranks, (n - 1) B
in all; which rank sends how much depends on the algorithm (one-to-all,
tree, ring), so each rank is counted its mean share, (n - 1) / n * B sent
and as much received. ZeroRedundancyOptimizer's broadcasts, one per
parameter from the rank that updated it, then add up to an all-gather of
the parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from playground.rank.recorder import COMM_KINDS, COMPUTE_KINDS
from playground.rank.report import RankReport

# Ring algorithms: bytes each rank sends (and receives) per byte of payload, times n / (n - 1).
RING_FACTOR = {"all_reduce": 2, "all_gather": 1, "reduce_scatter": 1, "broadcast": 1}





def on_run_clock(ranks: list[RankReport]) -> list[RankReport]:
    """Copies of the reports with every time measured from the moment the
    first rank began step 0, their events copied too."""
    t0 = min(r.step_times[0][0] for r in ranks)
    return [dataclasses.replace(
        r, step_times=[(a - t0, b - t0) for a, b in r.step_times],
        blocked=[(a - t0, b - t0) for a, b in r.blocked],
        timeline=[{**e, "start": e["start"] - t0, "end": e["end"] - t0} for e in r.timeline]) for r in ranks]


def mark_waits(ranks: list[RankReport]) -> None:
    """Give each communication event ``joined``: when the last party posted
    it. A recv from p is matched with p's send to it of the same order; a
    collective with the other members' event of the same group and order.
    (In place: ``account`` calls it on its own copies.)"""
    sends: dict[tuple[int, int, int], dict] = {}
    recvs: dict[tuple[int, int, int], dict] = {}
    collectives: dict[tuple[str, int], list[dict]] = {}
    for r in ranks:
        for e in r.timeline:
            if e["kind"] == "send":
                sends[(r.rank, e["peer"], e["seq"])] = e
            elif e["kind"] == "recv":
                recvs[(e["peer"], r.rank, e["seq"])] = e
            elif e["kind"] in RING_FACTOR:
                group = f"{e['group']}:{r.pp_rank}" if e["group"] == "dp" else e["group"]
                collectives.setdefault((e["kind"], group, e["seq"]), []).append(e)
    for key, s in sends.items():
        rv = recvs.get(key)
        joined = max(s["start"], rv["start"]) if rv else s["start"]
        s["joined"] = joined
        if rv:
            rv["joined"] = joined
    for e in recvs.values():
        e.setdefault("joined", e["start"])
    for events in collectives.values():
        joined = max(e["start"] for e in events)
        for e in events:
            e["joined"] = joined


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(intervals):
        if b <= a:
            continue
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _length(intervals) -> float:
    return sum(b - a for a, b in intervals)


def _clip(intervals, lo: float, hi: float):
    return [(max(a, lo), min(b, hi)) for a, b in intervals if b > lo and a < hi]


def _minus(intervals, holes):
    """Parts of ``intervals`` (disjoint, sorted) outside ``holes`` (same)."""
    out = []
    for a, b in intervals:
        cur = a
        for ha, hb in holes:
            if hb <= cur or ha >= b:
                continue
            if ha > cur:
                out.append((cur, ha))
            cur = max(cur, hb)
        if cur < b:
            out.append((cur, b))
    return out


def timed_window(ranks: list[RankReport]) -> tuple[float, float]:
    """From the start of the first timed step (on any rank) to the end of
    the last step (on every rank)."""
    first = 1 if len(ranks[0].step_times) > 1 else 0
    return (min(r.step_times[first][0] for r in ranks), max(r.step_times[-1][1] for r in ranks))


def _intersect_length(a, b) -> float:
    """Length of the intersection of two disjoint, sorted interval lists."""
    return _length(a) - _length(_minus(a, b))


def account(reports: list[RankReport]) -> list[RankReport]:
    """The ranks' reports as the result holds them: a pure function of what
    the ranks sent. Copies on the run's clock (``on_run_clock``), each
    transfer with ``joined`` (``mark_waits``), each rank's ``time``
    (compute, comm, wait, overhead, idle, overlapped, window; seconds, see
    the module's docstring) and its byte totals."""
    ranks = on_run_clock(reports)
    mark_waits(ranks)
    lo, hi = timed_window(ranks)
    for r in ranks:
        spans = _union(_clip([(e["start"], e["end"]) for e in r.timeline if e["kind"] in COMPUTE_KINDS], lo, hi))
        # A collective issued and waited for inside a compute span (tensor
        # parallel) halts the rank just as an explicit wait does.
        blocked = _union(_clip(list(r.blocked) + [(e["start"], e["end"]) for e in r.timeline if e.get("inline")],
                               lo, hi))
        compute = _minus(spans, blocked)
        active = _union(_clip([(e.get("joined", e["start"]), e["end"]) for e in r.timeline
                               if e["kind"] in COMM_KINDS], lo, hi))
        comm = _minus(active, compute)
        wait = _minus(blocked, active)
        c, m, w = _length(compute), _length(comm), _length(wait)
        overhead = max(0.0, (hi - lo) - c - m - w)
        r.time = {"compute": c, "comm": m, "wait": w, "overhead": overhead, "idle": w + overhead,
                  "overlapped": _intersect_length(active, compute), "window": hi - lo}
        sent = recv = 0
        for e in r.timeline:
            if e["kind"] == "send":
                sent += e["bytes"]
            elif e["kind"] == "recv":
                recv += e["bytes"]
            elif e["kind"] in RING_FACTOR:
                n = e["group_size"]
                volume = RING_FACTOR[e["kind"]] * (n - 1) * e["bytes"] // n
                sent += volume
                recv += volume
        r.bytes_sent, r.bytes_recv = sent, recv
    return ranks


def timed_steps(ranks: list[RankReport]) -> list[int]:
    """Steps the accounting covers: all after the warm-up step 0 (step 0
    alone when it is the only one)."""
    n = len(ranks[0].step_times)
    return list(range(1, n)) if n > 1 else [0]


def step_of(r: RankReport, t: float) -> int:
    """The step during which time ``t`` falls on rank ``r`` (a step runs
    until the next begins; before step 0 counts as step 0)."""
    step = 0
    for i, (start, _) in enumerate(r.step_times):
        if t >= start:
            step = i
    return step


def traffic_per_step(ranks: list[RankReport]) -> dict[str, list[dict[str, Any]]]:
    """Means over the timed steps of what the ranks moved, from their events
    (an event belongs to the step during which it began).

    ``p2p``: one entry per (src, dst) pair that exchanged messages,
    ``{"src", "dst", "bytes_per_step", "messages_per_step"}``, from the
    sender's send events.
    ``collectives``: one entry per (rank, kind, group),
    ``{"rank", "kind", "group", "group_size", "bytes_per_step",
    "ring_bytes_per_step", "calls_per_step"}``. ``bytes_per_step`` is the
    payload B (the all-reduced buffer, the gathered output, the scattered
    input); ``ring_bytes_per_step`` is what a ring sends per rank (and
    receives as much): 2 (n - 1) / n * B for an all-reduce,
    (n - 1) / n * B for an all-gather or a reduce-scatter, and a rank's
    mean share, (n - 1) / n * B, for a broadcast (see the module docstring).
    """
    steps = set(timed_steps(ranks))
    n_steps = len(steps)
    p2p: dict[tuple[int, int], list[float]] = {}
    collectives: dict[tuple[int, str, str], dict[str, Any]] = {}
    for r in ranks:
        for e in r.timeline:
            if e["kind"] not in COMM_KINDS or step_of(r, e["start"]) not in steps:
                continue
            if e["kind"] == "send":
                entry = p2p.setdefault((r.rank, e["peer"]), [0.0, 0.0])
                entry[0] += e["bytes"] / n_steps
                entry[1] += 1 / n_steps
            elif e["kind"] in RING_FACTOR:
                key = (r.rank, e["kind"], e["group"])
                entry = collectives.setdefault(key, {
                    "rank": r.rank, "kind": e["kind"], "group": e["group"], "group_size": e["group_size"],
                    "bytes_per_step": 0.0, "ring_bytes_per_step": 0.0, "calls_per_step": 0.0})
                n = e["group_size"]
                entry["bytes_per_step"] += e["bytes"] / n_steps
                entry["ring_bytes_per_step"] += RING_FACTOR[e["kind"]] * (n - 1) / n * e["bytes"] / n_steps
                entry["calls_per_step"] += 1 / n_steps
    return {
        "p2p": [{"src": s, "dst": d, "bytes_per_step": b, "messages_per_step": m}
                for (s, d), (b, m) in sorted(p2p.items())],
        "collectives": [collectives[k] for k in sorted(collectives)],
    }


def block_table(infos) -> list[dict[str, Any]]:
    """The model's blocks as the result carries them, from ``BlockInfo``s."""
    return [{"index": b.index, "label": b.label, "params": b.params, "flops": b.flops} for b in infos]


STAGE_COMPUTE_KINDS = ("forward", "loss", "backward", "backward_input", "backward_weight")


def stage_balance(ranks: list[RankReport], infos, split_points: tuple[int, ...]) -> list[dict[str, Any]]:
    """Each stage's share of the parameters and FLOPs beside the compute
    time measured for it: what a balanced split would even out."""
    from playground.spec.partition import stage_ranges

    lo, hi = timed_window(ranks)
    ranges = stage_ranges(tuple(split_points), len(infos))
    total_params = sum(b.params for b in infos) or 1
    total_flops = sum(b.flops for b in infos) or 1
    replicas = max(1, len({(r.dp_rank, r.tp_rank) for r in ranks if r.tp_rank == 0}))
    compute = [0.0] * len(ranges)
    for r in ranks:
        if r.tp_rank:
            continue  # tensor-parallel peers run the same stage side by side
        for e in r.timeline:
            if e["kind"] in STAGE_COMPUTE_KINDS and e.get("stage") is not None and lo <= e["start"] < hi:
                compute[e["stage"]] += (e["end"] - e["start"]) / replicas
    total_compute = sum(compute) or 1.0
    out = []
    for s, (first, end) in enumerate(ranges):
        params = sum(b.params for b in infos[first:end])
        flops = sum(b.flops for b in infos[first:end])
        out.append({"stage": s, "blocks": [first, end], "params": params, "params_share": params / total_params,
                    "flops": flops, "flops_share": flops / total_flops, "compute_s": compute[s],
                    "compute_share": compute[s] / total_compute})
    return out


def throughput(ranks: list[RankReport], global_batch: int) -> float:
    """Samples per second over the steps after the warm-up step."""
    steps = len(ranks[0].step_times)
    if steps == 1:
        start = min(r.step_times[0][0] for r in ranks)
        return global_batch / max(1e-12, max(r.step_times[0][1] for r in ranks) - start)
    start = max(r.step_times[0][1] for r in ranks)
    end = max(r.step_times[-1][1] for r in ranks)
    return global_batch * (steps - 1) / max(1e-12, end - start)
