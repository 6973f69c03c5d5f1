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
B-byte output or a reduce-scatter of a B-byte input (n - 1) / n * B.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .config import RunConfig
from .recorder import COMM_KINDS, COMPUTE_KINDS

BASELINE_TOLERANCE = 1e-5
LOSS_TOLERANCE = 0.1
"""Where a run cannot equal one device (BatchNorm statistics per rank or
per micro-batch, random layers), the baseline check compares the mean loss
over the steps: |mean(run) - mean(one device)| / mean(one device) <= 0.1.
Ten percent: the spread of a few steps' mean loss under different Dropout
masks, well below what a wrong gradient (a missing reduction, a stage left
untrained) costs."""
# Ring algorithms: bytes each rank sends (and receives) per byte of payload, times n / (n - 1).
RING_FACTOR = {"all_reduce": 2, "all_gather": 1, "reduce_scatter": 1}


@dataclass
class RankReport:
    """What one rank did, built by the rank itself (``worker.run_rank``):
    one schema for the pool's pipes, the JSON and torchrun's files. The
    accounting fields (``time``, ``bytes_sent``, ``bytes_recv``) are empty
    as the rank sends it; ``account`` returns copies with them filled and
    the timeline put on the run's clock."""

    rank: int
    dp_rank: int
    stage: int
    """The rank's place along the pipeline (its first stage's index)."""
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
    blocked: list[tuple[float, float]] = field(default_factory=list)
    """(start, end) seconds in which the rank's thread waited on a transfer."""
    output: str = ""
    """What the rank's process printed during the run: stdout and stderr
    together, in the order written (at most the last MiB); filled in by the
    launcher, which holds the rank's output file."""
    loss_parts: list[float | None] = field(default_factory=list)
    """This rank's part of each step's global loss (the parts of all ranks
    sum to it), or None where the rank never sees the loss."""
    diverged: dict[str, Any] | None = None
    """{"step", "ranks"} when a loss part became inf or NaN, else None."""
    tensor_plan: dict[str, str] = field(default_factory=dict)
    """Tensor parallel: module name -> "colwise" / "rowwise" as applied."""
    tensor_plan_note: str | None = None
    """Tensor parallel: the layers the plan left whole, and why."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank, "dp_rank": self.dp_rank, "stage": self.stage,
            "blocks": list(self.blocks), "timeline": self.timeline,
            "step_times": [list(t) for t in self.step_times], "memory": self.memory,
            "time": self.time, "bytes_sent": self.bytes_sent, "bytes_recv": self.bytes_recv,
            "threads": self.threads, "tp_rank": self.tp_rank,
            "stages": [list(t) for t in self.stages],
            "blocked": [list(t) for t in self.blocked], "output": self.output,
            "loss_parts": self.loss_parts, "diverged": self.diverged, "tensor_plan": self.tensor_plan,
            "tensor_plan_note": self.tensor_plan_note,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RankReport":
        """The report ``to_dict`` wrote."""
        return cls(rank=d["rank"], dp_rank=d["dp_rank"], stage=d["stage"], blocks=tuple(d["blocks"]),
                   timeline=d["timeline"], step_times=[tuple(t) for t in d["step_times"]], memory=d["memory"],
                   time=d.get("time", {}), bytes_sent=d.get("bytes_sent", 0), bytes_recv=d.get("bytes_recv", 0),
                   threads=d.get("threads", 1), tp_rank=d.get("tp_rank", 0),
                   stages=[tuple(t) for t in d.get("stages", [])],
                   blocked=[tuple(t) for t in d.get("blocked", [])], output=d.get("output", ""),
                   loss_parts=d.get("loss_parts", []), diverged=d.get("diverged"),
                   tensor_plan=d.get("tensor_plan") or {}, tensor_plan_note=d.get("tensor_plan_note"))


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
    """Pipelines: ``predicted`` by the schedule's formula (``formula`` says
    which), ``measured``: each rank's idle share of the timed window,
    ``replayed``: each rank's idle share when the schedule's table is
    replayed with this run's measured times (``replay.replay_run``; None if
    the recorded actions are not the table's), and ``replayed_timeline``:
    {"<rank>": [[kind, stage, micro_batch, step, start, end], ...]}, the
    replay's actions and optimizer steps (stage and micro_batch None) on
    the run's clock, in seconds."""
    schedule_table: dict[str, list[list]] | None = None
    """Pipelines: each pp rank's planned actions in order, torch's own table
    (``pipeline.schedule_table``): {"<pp_rank>": [[kind, stage, micro_batch], ...]}."""
    blocks: list[dict[str, Any]] = field(default_factory=list)
    """The full model's blocks, in order: {"index", "label", "params",
    "flops"} (parameters counted from the model; forward FLOPs per sample)."""
    traffic: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"p2p": [], "collectives": []})
    """Bytes moved per timed step (``traffic_per_step``): point-to-point
    per (src, dst) and collectives per (rank, kind, group)."""
    tensor_plan: dict[str, str] = field(default_factory=dict)
    """Tensor parallel: module name -> "colwise" or "rowwise", as the
    strategy applied it (empty for other strategies); the layers it left
    replicated, and why, are in ``notes``."""
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
            "schedule_table": self.schedule_table,
            "stage_balance": self.stage_balance,
            "blocks": self.blocks,
            "traffic": self.traffic,
            "tensor_plan": self.tensor_plan,
            "ranks": [r.to_dict() for r in self.ranks],
        }

    def to_json(self, indent: int | None = None) -> str:
        """``to_dict`` as strict JSON: a number that is NaN or +-infinity
        (a diverged loss, its parameter difference) is written as null, since
        JSON has no token for it."""
        return json.dumps(finite_or_null(self.to_dict()), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunResult":
        """The result ``to_dict`` wrote, without the trained model
        (``model`` is None): enough to draw every figure again."""
        return cls(config=RunConfig.from_dict(d["config"]), device=d["device"], backend=d["backend"],
                   world_size=d["world_size"], losses=d["losses"],
                   throughput_samples_per_s=d["throughput_samples_per_s"], baseline=d["baseline"],
                   ranks=[RankReport.from_dict(r) for r in d["ranks"]], split_points=tuple(d["split_points"]),
                   accuracy=d.get("accuracy"), wall_s=d.get("wall_s", 0.0), notes=d.get("notes", []),
                   predictions=d.get("predictions"), stage_balance=d.get("stage_balance", []),
                   bubble=d.get("bubble"), blocks=d.get("blocks", []),
                   traffic=d.get("traffic") or {"p2p": [], "collectives": []},
                   tensor_plan=d.get("tensor_plan", {}), schedule_table=d.get("schedule_table"))

    @classmethod
    def from_json(cls, text: str) -> "RunResult":
        return cls.from_dict(json.loads(text))

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
    (n - 1) / n * B for an all-gather or a reduce-scatter.
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
    cols = ("rank", "stage", "dp", "blocks", "compute ms", "comm ms", "wait ms", "overhead ms",
            "params MiB", "grads MiB", "optim MiB", "activ MiB", "sent MiB", "recv MiB")
    rows = []
    for r in result.ranks:
        t = r.time
        rows.append((str(r.rank), str(r.stage), str(r.dp_rank), f"{r.blocks[0]}-{r.blocks[1] - 1}",
                     f"{1e3 * t['compute']:.1f}", f"{1e3 * t['comm']:.1f}", f"{1e3 * t.get('wait', t['idle']):.1f}",
                     f"{1e3 * t.get('overhead', 0.0):.1f}",
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
        replayed = result.bubble.get("replayed")
        replay = f"; replayed schedule {', '.join(f'{b:.0%}' for b in replayed)}" if replayed else ""
        lines.append(f"pipeline bubble: measured idle share per rank {measured}{replay}; "
                     f"formula {result.bubble['formula']} = {result.bubble['predicted']:.0%}")
    if result.accuracy is not None:
        lines.append(f"held-out accuracy: {result.accuracy:.3f} (single-device {b['accuracy']:.3f})")
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)
