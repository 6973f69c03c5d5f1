"""What a run produced: each rank's report, merged into one RunResult.

Time accounting, per rank, over the timed steps (all steps after the
warm-up step 0; step 0 alone when there is only one):

  compute  time inside forward, loss, backward, optimizer (union of spans),
           less the collectives a span waited for inline (tensor parallel)
  comm     time moving bytes, outside compute. A transfer cannot begin
           before every party has joined it, so a receive or collective
           counts as communication only from the moment the last party
           posted it; waiting for a slower peer before that is idle.
  idle     the rest of the window: waiting for peers, the pipeline bubble.

Bytes, per rank: a send or receive counts its tensor's bytes; collectives
count what the ring algorithm moves among n ranks, sent and as many
received: an all-reduce of B bytes 2 (n - 1) / n * B, an all-gather of a
B-byte output or a reduce-scatter of a B-byte input (n - 1) / n * B.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from .config import RunConfig
from .recorder import COMM_KINDS, COMPUTE_KINDS

BASELINE_TOLERANCE = 1e-5
# Ring algorithms: bytes each rank sends (and receives) per byte of payload, times n / (n - 1).
RING_FACTOR = {"all_reduce": 2, "all_gather": 1, "reduce_scatter": 1}


@dataclass
class RankReport:
    rank: int
    dp_rank: int
    stage: int
    blocks: tuple[int, int]
    """[first, end) block indices of this rank's first (usually only) stage."""
    timeline: list[dict[str, Any]]
    step_times: list[tuple[float, float]]
    memory: dict[str, int | None]
    time: dict[str, float] = field(default_factory=dict)
    bytes_sent: int = 0
    bytes_recv: int = 0
    threads: int = 1
    tp_rank: int = 0
    stages: list[tuple[int, int, int]] = field(default_factory=list)
    """(stage, first block, end block) of every stage this rank holds."""
    output: str = ""
    """What the rank's process printed during the run: stdout and stderr
    together, in the order written (at most the last MiB)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank, "dp_rank": self.dp_rank, "stage": self.stage,
            "blocks": list(self.blocks), "timeline": self.timeline,
            "step_times": [list(t) for t in self.step_times], "memory": self.memory,
            "time": self.time, "bytes_sent": self.bytes_sent, "bytes_recv": self.bytes_recv,
            "threads": self.threads, "tp_rank": self.tp_rank,
            "stages": [list(t) for t in self.stages], "output": self.output,
        }


@dataclass
class RunResult:
    config: RunConfig
    device: str
    backend: str
    world_size: int
    losses: list[float]
    throughput_samples_per_s: float
    baseline: dict[str, Any]
    ranks: list[RankReport]
    split_points: tuple[int, ...]
    accuracy: float | None = None
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    predictions: list[dict[str, Any]] | None = None
    """The cost model's per-rank figures (params, grads, optimizer,
    activations_peak, bytes_sent, bytes_recv), beside the measured ones."""
    stage_balance: list[dict[str, Any]] = field(default_factory=list)
    """Per stage: its blocks, share of parameters and FLOPs (estimates), and
    measured compute seconds over the timed steps (mean over replicas)."""
    bubble: dict[str, Any] | None = None
    """Pipelines: ``predicted`` by the schedule's formula, and ``measured``:
    each rank's idle share of the timed window."""
    tensor_plan: dict[str, str] | None = None
    """Tensor-parallel runs: {layer name: "colwise" | "rowwise"}, the layers
    cut among the tensor-parallel ranks (the rest, and why, in ``notes``)."""
    model: Any = field(default=None, repr=False)
    """The trained full model, gathered from the ranks (not in the JSON)."""

    @property
    def passed(self) -> bool:
        return bool(self.baseline["passed"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "device": self.device,
            "backend": self.backend,
            "world_size": self.world_size,
            "losses": self.losses,
            "throughput_samples_per_s": self.throughput_samples_per_s,
            "baseline": self.baseline,
            "accuracy": self.accuracy,
            "split_points": list(self.split_points),
            "wall_s": self.wall_s,
            "notes": self.notes,
            "predictions": self.predictions,
            "bubble": self.bubble,
            "stage_balance": self.stage_balance,
            "tensor_plan": self.tensor_plan,
            "ranks": [r.to_dict() for r in self.ranks],
        }

    def to_json(self, indent: int | None = None) -> str:
        """``to_dict`` as strict JSON: a number that is NaN or +-infinity
        (a diverged loss, its parameter difference) is written as null, since
        JSON has no token for it."""
        return json.dumps(finite_or_null(self.to_dict()), indent=indent, allow_nan=False)

    # Pictures (matplotlib, imported only when asked for): see plots.py.
    def plot_timeline(self, **kwargs):
        from .plots import plot_timeline
        return plot_timeline(self, **kwargs)

    def plot_time_breakdown(self):
        from .plots import plot_time_breakdown
        return plot_time_breakdown(self)

    def plot_memory(self):
        from .plots import plot_memory
        return plot_memory(self, predicted=self.predictions)

    def plot_losses(self):
        from .plots import plot_losses
        return plot_losses(self)

    def plot_dataflow(self):
        from .plots import plot_dataflow
        return plot_dataflow(self)

    def save_plots(self, directory: str) -> list[str]:
        from .plots import save_all
        return save_all(self, directory, predicted=self.predictions)

    def to_chrome_trace(self) -> dict[str, Any]:
        """The timeline in the Chrome trace event format (Perfetto,
        chrome://tracing): one process per rank, one thread per stream
        (compute, point-to-point, collectives), times in microseconds."""
        return chrome_trace(self)

    def save_chrome_trace(self, path: str) -> str:
        with open(path, "w") as f:
            json.dump(self.to_chrome_trace(), f)
        return path

    def summary(self) -> str:
        """The per-rank table the CLI prints."""
        return format_table(self)

    def rank_output(self) -> str:
        """What every rank printed, each line prefixed with ``[rank r]``,
        rank by rank (empty when none printed anything)."""
        return labelled_output({r.rank: r.output for r in self.ranks})


def labelled_output(outputs: dict[int, str]) -> str:
    """``{rank: text}`` as lines ``[rank r] line``, rank by rank."""
    return "\n".join(f"[rank {rank}] {line}" for rank, text in sorted(outputs.items())
                     for line in text.splitlines())


def finite_or_null(value: Any) -> Any:
    """``value`` with every float that is NaN or infinite replaced by None,
    through dicts, lists and tuples."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


# --------------------------------------------------------------------------
# Merging the ranks' timelines


def mark_waits(ranks: list[RankReport]) -> None:
    """Give each communication event ``joined``: when the last party posted
    it. A recv from p is matched with p's send to it of the same order; a
    collective with the other members' event of the same group and order."""
    sends: dict[tuple[int, int, int], dict] = {}
    recvs: dict[tuple[int, int, int], dict] = {}
    collectives: dict[tuple[str, int], list[dict]] = {}
    for r in ranks:
        for e in r.timeline:
            if e["kind"] == "send":
                sends[(r.rank, e["peer"], e["seq"])] = e
            elif e["kind"] == "recv":
                recvs[(e["peer"], r.rank, e["seq"])] = e
            elif e["kind"] in ("all_reduce", "all_gather", "reduce_scatter"):
                group = f"{e['group']}:{r.stage}" if e["group"] == "dp" else e["group"]
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


def account(ranks: list[RankReport]) -> None:
    """Fill each rank's ``time`` (compute, comm, idle) and byte totals."""
    mark_waits(ranks)
    lo, hi = timed_window(ranks)
    for r in ranks:
        compute = _union(_clip([(e["start"], e["end"]) for e in r.timeline if e["kind"] in COMPUTE_KINDS], lo, hi))
        # A collective issued and waited for inside a compute span (tensor
        # parallel) halts that compute: its time is not compute.
        halted = _union(_clip([(e["start"], e["end"]) for e in r.timeline if e.get("inline")], lo, hi))
        compute = _minus(compute, halted)
        comm = _union(_clip([(e.get("joined", e["start"]), e["end"]) for e in r.timeline
                             if e["kind"] in COMM_KINDS], lo, hi))
        comm = _minus(comm, compute)
        c, m = _length(compute), _length(comm)
        r.time = {"compute": c, "comm": m, "idle": max(0.0, (hi - lo) - c - m), "window": hi - lo}
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


STAGE_COMPUTE_KINDS = ("forward", "loss", "backward", "backward_weight")


def stage_balance(ranks: list[RankReport], infos, split_points: tuple[int, ...]) -> list[dict[str, Any]]:
    """Each stage's share of the parameters and FLOPs beside the compute
    time measured for it: what a balanced split would even out."""
    from .models import stage_ranges

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


# --------------------------------------------------------------------------
# Chrome trace

TRACE_STREAMS = {"compute": 0, "p2p": 1, "collective": 2}


def _stream(kind: str) -> str:
    if kind in COMPUTE_KINDS:
        return "compute"
    return "p2p" if kind in ("send", "recv") else "collective"


def chrome_trace(result: "RunResult") -> dict[str, Any]:
    events: list[dict[str, Any]] = []
    for r in result.ranks:
        name = f"rank {r.rank} · stage {r.stage} · dp {r.dp_rank}" + (f" · tp {r.tp_rank}" if r.tp_rank else "")
        events.append({"ph": "M", "name": "process_name", "pid": r.rank, "args": {"name": name}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": r.rank, "args": {"sort_index": r.rank}})
        for stream, tid in TRACE_STREAMS.items():
            events.append({"ph": "M", "name": "thread_name", "pid": r.rank, "tid": tid, "args": {"name": stream}})
        for e in r.timeline:
            label = e["kind"] + (f" mb {e['micro_batch']}" if e.get("micro_batch") is not None else "")
            if e.get("peer") is not None:
                label += f" {'to' if e['kind'] == 'send' else 'from'} rank {e['peer']}"
            args = {k: v for k, v in e.items() if k not in ("kind", "start", "end")}
            events.append({"ph": "X", "name": label, "cat": e["kind"], "pid": r.rank,
                           "tid": TRACE_STREAMS[_stream(e["kind"])], "ts": e["start"] * 1e6,
                           "dur": max(0.0, e["end"] - e["start"]) * 1e6, "args": args})
        for i, (a, b) in enumerate(r.step_times):
            events.append({"ph": "i", "name": f"step {i}", "pid": r.rank, "tid": 0, "ts": a * 1e6, "s": "p"})
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"config": result.config.to_dict(), "device": result.device, "backend": result.backend}}


# --------------------------------------------------------------------------
# The CLI table


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f}"


def format_table(result: RunResult) -> str:
    c = result.config
    head = (f"{c.model} · {c.strategy} · world {result.world_size} · {result.device}/{result.backend} · "
            f"{c.steps} steps · split {list(result.split_points) or '-'} · "
            f"{result.throughput_samples_per_s:.0f} samples/s")
    cols = ("rank", "stage", "dp", "blocks", "compute ms", "comm ms", "idle ms",
            "params MiB", "grads MiB", "optim MiB", "activ MiB", "sent MiB", "recv MiB")
    rows = []
    for r in result.ranks:
        t = r.time
        rows.append((str(r.rank), str(r.stage), str(r.dp_rank), f"{r.blocks[0]}-{r.blocks[1] - 1}",
                     f"{1e3 * t['compute']:.1f}", f"{1e3 * t['comm']:.1f}", f"{1e3 * t['idle']:.1f}",
                     _mib(r.memory["params"]), _mib(r.memory["grads"]), _mib(r.memory["optimizer"]),
                     _mib(r.memory["activations_peak"]), _mib(r.bytes_sent), _mib(r.bytes_recv)))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(cols)]
    lines = [head, "  ".join(h.rjust(w) for h, w in zip(cols, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows]
    b = result.baseline
    verdict = "PASS" if b["passed"] else "FAIL"
    lines.append(f"baseline check: {verdict}  max |Δparam| = {b['max_abs_param_diff']:.2e} "
                 f"(tolerance {b['tolerance']:.0e}), final loss {result.losses[-1]:.6f} vs "
                 f"{b['losses'][-1]:.6f} single-device (Δ {b['final_loss_diff']:.2e})")
    if result.bubble is not None:
        measured = ", ".join(f"{b:.0%}" for b in result.bubble["measured"])
        lines.append(f"pipeline bubble: measured idle share per rank {measured}; "
                     f"formula {result.bubble['formula']} = {result.bubble['predicted']:.0%}")
    if result.accuracy is not None:
        lines.append(f"held-out accuracy: {result.accuracy:.3f} (single-device {b['accuracy']:.3f})")
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)
