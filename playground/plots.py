"""Matplotlib figures drawn from a RunResult, and nothing else.

Every function returns a ``matplotlib.figure.Figure`` built without pyplot:
no global figure state, no backend needed, and a notebook cell that returns
one shows it once. ``save_all`` writes them all as PNG.

Colours: one per event kind in ``KIND_COLORS`` (compute kinds cool, comm
kinds warm, plus the totals compute / comm / idle), one per memory field in
``MEMORY_COLORS``; every figure reads them from here.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, Patch, Rectangle
from matplotlib.transforms import blended_transform_factory

from .recorder import COMM_KINDS, COMPUTE_KINDS
from .result import RankReport, RunResult

KIND_COLORS: dict[str, str] = {
    # compute: blues, greens, purple
    "setup": "#B8C4D6",
    "forward": "#3A7DC9",
    "loss": "#8E6BBF",
    "backward": "#2A9D8F",
    "backward_weight": "#9BC53D",
    "optimizer": "#27476E",
    # communication: reds and oranges
    "send": "#E4572E",
    "recv": "#F3A712",
    "all_reduce": "#C0392B",
    "all_gather": "#B5651D",
    "reduce_scatter": "#8E3B46",
    # per-rank totals (time breakdown)
    "compute": "#3A7DC9",
    "comm": "#E4572E",
    "idle": "#CFCFCF",
}

KIND_LABELS = {
    "setup": "set-up (shape inference)", "forward": "forward", "loss": "loss",
    "backward": "backward", "backward_weight": "backward (weights)", "optimizer": "optimizer step",
    "send": "send", "recv": "recv", "all_reduce": "all-reduce",
    "all_gather": "all-gather", "reduce_scatter": "reduce-scatter",
}

MEMORY_FIELDS = ("params", "grads", "optimizer", "activations_peak")
MEMORY_COLORS = {"params": "#4C72B0", "grads": "#DD8452", "optimizer": "#CCB974", "activations_peak": "#55A868"}
MEMORY_LABELS = {"params": "parameters", "grads": "gradients", "optimizer": "optimizer state",
                 "activations_peak": "activations (peak saved for backward)"}

MS = 1e3
MIB = 2**20


# --------------------------------------------------------------------------
# Facts read from the result


def rank_label(result: RunResult, r: RankReport) -> str:
    """'rank r · stage s · dp d', naming only the axes the run splits along."""
    parts = [f"rank {r.rank}"]
    if len({x.stage for x in result.ranks}) > 1:
        parts.append(f"stage {r.stage}")
    if len({x.dp_rank for x in result.ranks}) > 1:
        parts.append(f"dp {r.dp_rank}")
    return " · ".join(parts)


def run_title(result: RunResult) -> str:
    c = result.config
    words = [c.model, c.strategy]
    if c.strategy == "pipeline":
        words.append(f"{c.schedule}, {c.micro_batches} micro-batches")
    if c.strategy == "data" and c.batch_partition:
        words.append("batch shares " + ":".join(map(str, c.batch_partition)))
    words.append(f"{result.world_size} rank{'s' if result.world_size > 1 else ''} on {result.device}/{result.backend}")
    return " · ".join(words)


def timed_steps(result: RunResult) -> list[int]:
    """Steps the time accounting covers: all after the warm-up step 0."""
    n = len(result.ranks[0].step_times)
    return list(range(1, n)) if n > 1 else [0]


def step_of(r: RankReport, t: float) -> int:
    """The step during which time ``t`` falls on rank ``r`` (a step runs until the next starts)."""
    step = 0
    for i, (start, _) in enumerate(r.step_times):
        if t >= start:
            step = i
    return step


def shown_steps(result: RunResult, steps: int | Sequence[int] | None) -> list[int]:
    n = len(result.ranks[0].step_times)
    if steps is None:
        return list(range(n))
    if isinstance(steps, int):
        return list(range(max(0, n - steps), n))
    chosen = sorted(set(steps))
    if not chosen or chosen[0] < 0 or chosen[-1] >= n:
        raise ValueError(f"steps={list(steps)}: must be step indices from 0 to {n - 1}")
    # A gap in the time axis would read as idle time: show every step in between.
    return list(range(chosen[0], chosen[-1] + 1))


def shown_events(r: RankReport, steps: list[int]) -> list[dict[str, Any]]:
    """The rank's events that began during one of ``steps``."""
    keep = set(steps)
    return [e for e in r.timeline if step_of(r, e["start"]) in keep]


def bytes_per_step(result: RunResult) -> dict[str, Any]:
    """Means per timed step: bytes and number of sends, keyed (from rank,
    to rank), and the all-reduced buffer bytes per rank."""
    steps = set(timed_steps(result))
    sends: dict[tuple[int, int], float] = {}
    send_counts: dict[tuple[int, int], float] = {}
    all_reduce: dict[int, float] = {}
    for r in result.ranks:
        for e in r.timeline:
            if step_of(r, e["start"]) not in steps:
                continue
            if e["kind"] == "send":
                key = (r.rank, e["peer"])
                sends[key] = sends.get(key, 0) + e["bytes"] / len(steps)
                send_counts[key] = send_counts.get(key, 0) + 1 / len(steps)
            elif e["kind"] == "all_reduce":
                all_reduce[r.rank] = all_reduce.get(r.rank, 0) + e["bytes"] / len(steps)
    return {"sends": sends, "send_counts": send_counts, "all_reduce": all_reduce}


def human_bytes(n: float) -> str:
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _footer(fig: Figure, result: RunResult) -> None:
    if result.notes:
        fig.text(0.01, 0.005, "note: " + "; ".join(result.notes), fontsize=8, color="#A33", va="bottom")


# --------------------------------------------------------------------------
# 1. Timeline


def plot_timeline(result: RunResult, steps: int | Sequence[int] | None = 2) -> Figure:
    """Per-rank Gantt chart of the measured steps.

    ``steps``: the last ``steps`` steps (an int), the steps from the first
    to the last of the given indices (a sequence), or every step (None).
    Each rank row has a compute lane (boxes numbered by micro-batch) and a
    thin communication lane below it: sends in its upper half, receives in
    its lower half, all-reduces across it. The hatched part of a transfer is
    waiting for the peer (before the last party posted, ``joined``), the
    solid part is the transfer itself. Pipelines get a thin "planned" lane
    above the compute lane (``draw_planned_lanes``).
    """
    chosen = shown_steps(result, steps)
    ranks = result.ranks
    legend_rows, note = 2, 0.25 if result.notes else 0.0  # inches under the legend for the footer
    planned = planned_actions(result) is not None
    fig = Figure(figsize=(12, 1.65 + note + 0.3 * legend_rows + (1.15 if planned else 0.95) * len(ranks)))
    inch = 1 / fig.get_figheight()
    fig.subplots_adjust(left=0.14, right=0.94, bottom=(0.6 + note + 0.3 * legend_rows) * inch, top=1 - 0.75 * inch)
    ax = fig.add_subplot()
    t0 = min(r.step_times[chosen[0]][0] for r in ranks) * MS
    t1 = max(r.step_times[chosen[-1]][1] for r in ranks) * MS
    pad = 0.01 * (t1 - t0)
    ax.set_xlim(t0 - pad, t1 + pad)
    ax.set_ylim(len(ranks) - 0.45, -0.55)  # rank 0 on top
    px_per_ms = fig.get_figwidth() * fig.dpi * ax.get_position().width / (t1 - t0 + 2 * pad)

    numbered = result.config.micro_batches > 1
    kinds_seen: set[str] = set()
    waited = False
    for row, r in enumerate(ranks):
        for e in shown_events(r, chosen):
            kind, start, end = e["kind"], e["start"] * MS, e["end"] * MS
            kinds_seen.add(kind)
            color = KIND_COLORS[kind]
            if kind in COMPUTE_KINDS:
                y, h = (row - 0.22, 0.35) if planned else (row - 0.33, 0.46)
                ax.add_patch(Rectangle((start, y), end - start, h, facecolor=color, edgecolor="white",
                                       linewidth=0.5, gid=f"compute:{kind}"))
                mb = e.get("micro_batch")
                label = str(mb) if numbered and mb is not None else ""
                if label and (end - start) * px_per_ms >= 7 * len(label) + 3:
                    ax.text((start + end) / 2, y + h / 2, label, ha="center", va="center", fontsize=7,
                            color="white", fontweight="bold", clip_on=True)
                continue
            y, h = (row + 0.18, 0.24) if kind in ("all_reduce", "all_gather", "reduce_scatter") else \
                   ((row + 0.18, 0.12) if kind == "send" else (row + 0.30, 0.12))
            # A send can finish into a buffer before its receiver posts, so 'joined' may lie past 'end'.
            joined = min(max(e.get("joined", e["start"]) * MS, start), end)
            if joined > start:
                waited = True
                ax.add_patch(Rectangle((start, y), joined - start, h, facecolor=color, alpha=0.3,
                                       hatch="////", edgecolor=color, linewidth=0, gid=f"wait:{kind}"))
            ax.add_patch(Rectangle((joined, y), end - joined, h, facecolor=color, edgecolor="none",
                                   gid=f"comm:{kind}"))

    # Step boundaries, per rank (each rank's steps start when it gets there).
    for row, r in enumerate(ranks):
        edges = [(r.step_times[s][0], f"step {s}" + (" (warm-up)" if s == 0 and len(r.step_times) > 1 else ""))
                 for s in chosen] + [(r.step_times[chosen[-1]][1], "end")]
        for x, label in edges:
            ax.plot([x * MS] * 2, [row - 0.48, row + 0.45], ls="--", lw=1, color="#333", alpha=0.7)
            ax.text(x * MS, row - 0.47, f" {label} ", fontsize=7, color="#333", va="top",
                    ha="left" if label != "end" else "right", clip_on=True)

    ax.set_yticks(range(len(ranks)), [rank_label(result, r) for r in ranks])
    if planned:
        draw_planned_lanes(ax, result, {r.rank: row for row, r in enumerate(ranks)}, chosen)
    lanes = blended_transform_factory(ax.transAxes, ax.transData)
    for row in range(len(ranks)):
        ax.text(1.003, row - (0.05 if planned else 0.1), "compute", transform=lanes, fontsize=7, color="#555",
                va="center")
        ax.text(1.003, row + 0.3, "comm", transform=lanes, fontsize=7, color="#555", va="center")
    ax.set_xlabel("time since the first rank began step 0 (ms)")
    ax.grid(axis="x", color="#EEE")
    ax.set_axisbelow(True)
    fig.suptitle(f"What each rank did, step by step — {run_title(result)}", fontsize=11, y=1 - 0.12 * inch)

    handles = [Patch(facecolor=KIND_COLORS[k], label=KIND_LABELS[k]) for k in COMPUTE_KINDS + COMM_KINDS
               if k in kinds_seen]
    if waited:
        handles.append(Patch(facecolor="#999", alpha=0.4, hatch="////", edgecolor="#666",
                             label="waiting for the peer to post"))
    handles.append(Line2D([], [], ls="--", color="#333", label="step boundary"))
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, note * inch),
               ncol=(len(handles) + legend_rows - 1) // legend_rows, fontsize=8, frameon=False,
               title=("numbers in boxes: micro-batch · " if numbered else "") + "blank: idle", title_fontsize=8)
    _footer(fig, result)
    return fig


# --------------------------------------------------------------------------
# 2. Time breakdown


def pipeline_bubble(result: RunResult) -> float | None:
    """Predicted idle share of a pipeline of p stages and m micro-batches,
    (p - 1) / (m + p - 1) (``cost.bubble_fraction``), assuming equal stages
    and free communication; None without a pipeline."""
    from .cost import bubble_fraction

    p = len({r.stage for r in result.ranks})
    if p < 2:
        return None
    c = result.config
    pipelined = c.strategy == "pipeline"  # 'model' is a pipeline of one micro-batch
    return bubble_fraction(c.schedule if pipelined else "gpipe", p, c.micro_batches if pipelined else 1)


def plot_time_breakdown(result: RunResult) -> Figure:
    """Per-rank stacked bars: compute, communication, idle (ms) over the timed steps."""
    ranks = result.ranks
    fig = Figure(figsize=(max(5.5, 1.6 + 1.3 * len(ranks)), 4.8))
    fig.subplots_adjust(left=0.14, right=0.97, top=0.84, bottom=0.28)
    ax = fig.add_subplot()
    x = range(len(ranks))
    base = [0.0] * len(ranks)
    bubble = pipeline_bubble(result)
    parts = (("compute", "compute (forward, backward, optimizer, …)"),
             ("comm", "communication not hidden under compute"),
             ("idle", "idle (waiting for peers" + (", pipeline bubble)" if bubble is not None else ")")))
    window = max(r.time["window"] for r in ranks) * MS
    for key, label in parts:
        values = [r.time[key] * MS for r in ranks]
        ax.bar(x, values, bottom=base, color=KIND_COLORS[key], width=0.6, label=label, edgecolor="white")
        for i, v in enumerate(values):
            if v >= 0.06 * window:
                ax.text(i, base[i] + v / 2, f"{v:.1f}", ha="center", va="center", fontsize=8,
                        color="white" if key != "idle" else "#333")
        base = [b + v for b, v in zip(base, values)]
    if bubble is not None:
        for i, r in enumerate(ranks):
            w = r.time["window"] * MS
            ax.plot([i + 0.31, i + 0.34, i + 0.34, i + 0.31], [w * (1 - bubble), w * (1 - bubble), w, w],
                    color="black", lw=1.2)
            ax.text(i + 0.36, w * (1 - bubble / 2), f"bubble\n{bubble:.0%}", fontsize=7, va="center")
        ax.plot([], [], color="black", lw=1.2, marker="|",
                label=f"idle predicted from the pipeline bubble alone, (p−1)/(m+p−1) = {bubble:.0%}")
    ax.set_xticks(list(x), [rank_label(result, r) for r in ranks], fontsize=9)
    ax.set_ylabel("time over the timed steps (ms)")
    steps = timed_steps(result)
    span = f"steps {steps[0]}–{steps[-1]}; step 0 is warm-up" if steps != [0] else "step 0, the only step"
    ax.set_title(f"Where each rank's time went ({span})\n{run_title(result)}", fontsize=10)
    ax.set_ylim(0, window * 1.05)
    ax.set_xlim(-0.5, len(ranks) - 0.5 + (0.25 if bubble is not None else 0))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=8, frameon=False)
    _footer(fig, result)
    return fig


# --------------------------------------------------------------------------
# 3. Memory


def _field(obj: Any, name: str) -> float:
    value = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
    return float(value or 0)


def plot_memory(result: RunResult, predicted: Sequence[Any] | None = None) -> Figure:
    """Per-rank stacked bars of parameter, gradient, optimizer-state and peak
    activation memory (MiB; KiB for models under 0.1 MiB). ``predicted``:
    one dict or object per rank with the same fields, in bytes (such as
    ``cost.predict``'s), drawn as an outlined bar beside the measured one."""
    ranks = result.ranks
    if predicted is not None and len(predicted) != len(ranks):
        raise ValueError(f"predicted has {len(predicted)} entries; the run has {len(ranks)} ranks (one per rank)")
    fig = Figure(figsize=(max(6, 1.8 + (2.0 if predicted else 1.3) * len(ranks)), 4.8))
    fig.subplots_adjust(left=0.13, right=0.97, top=0.86, bottom=0.27 if predicted else 0.24)
    ax = fig.add_subplot()
    width = 0.36 if predicted else 0.6
    shift = width / 2 + 0.02 if predicted else 0.0
    bars = [(i - shift, {f: _field(r.memory, f) for f in MEMORY_FIELDS}, False) for i, r in enumerate(ranks)]
    if predicted:
        bars += [(i + shift, {f: _field(p, f) for f in MEMORY_FIELDS}, True) for i, p in enumerate(predicted)]
    largest = max(sum(v.values()) for _, v, _ in bars)
    unit, size = ("MiB", MIB) if largest >= 0.1 * MIB else ("KiB", 2**10)
    top = largest / size or 1.0
    for x, values, is_prediction in bars:
        base = 0.0
        for f in MEMORY_FIELDS:
            v = values[f] / size
            if is_prediction:
                ax.bar(x, v, bottom=base, width=width, facecolor="none", edgecolor=MEMORY_COLORS[f],
                       linewidth=1.6, gid="predicted")
            else:
                ax.bar(x, v, bottom=base, width=width, color=MEMORY_COLORS[f], edgecolor="white", gid="measured")
            base += v
        ax.text(x, base + 0.01 * top, f"{base:.3g}", ha="center", va="bottom", fontsize=8)
        if predicted:
            ax.text(x, -0.02 * top, "predicted" if is_prediction else "measured", ha="center", va="top",
                    fontsize=7, color="#555")
    ax.set_xticks(range(len(ranks)), [rank_label(result, r) for r in ranks], fontsize=9)
    ax.tick_params(axis="x", length=0, pad=14 if predicted else 4)
    ax.set_ylim(0, top * 1.12)
    ax.set_xlim(-0.75, len(ranks) - 0.25)
    ax.set_ylabel(f"memory ({unit})")
    ax.set_title(f"Memory each rank held ({unit})\n{run_title(result)}", fontsize=10)
    empty = {f for f in MEMORY_FIELDS if all(not r.memory.get(f) for r in ranks)}
    handles = [Patch(color=MEMORY_COLORS[f], label=MEMORY_LABELS[f] + (" (none measured)" if f in empty else ""))
               for f in MEMORY_FIELDS]
    if predicted:
        handles.append(Patch(facecolor="none", edgecolor="#555", linewidth=1.6, label="predicted (outline)"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=8, frameon=False)
    return fig


# --------------------------------------------------------------------------
# 4. Losses


def plot_losses(result: RunResult) -> Figure:
    """The run's loss per step beside the single-device baseline's, and their difference."""
    b = result.baseline
    losses, base = result.losses, b["losses"]
    fig = Figure(figsize=(7.5, 5.6))
    fig.subplots_adjust(left=0.13, right=0.97, top=0.82, bottom=0.1, hspace=0.2)
    ax, diff_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    steps = list(range(len(losses)))
    ax.plot(range(len(base)), base, color="#BBB", lw=5, label="single device (baseline)")
    ax.plot(steps, losses, color=KIND_COLORS["forward"], marker="o", ms=4, lw=1.5,
            label=f"{result.config.strategy} on {result.world_size} rank{'s' if result.world_size > 1 else ''}")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8)
    ax.grid(color="#EEE")
    deltas = [abs(a - c) for a, c in zip(losses, base)]
    diff_ax.bar(steps[:len(deltas)], deltas, color=KIND_COLORS["comm"], width=0.6)
    diff_ax.set_ylabel("|run − baseline|")
    diff_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if max(deltas, default=0) == 0:
        diff_ax.set_ylim(0, 1)
        diff_ax.set_yticks([0])
        diff_ax.text(0.5, 0.5, "identical at every step", transform=diff_ax.transAxes, ha="center", fontsize=8)
    diff_ax.set_xlabel("optimizer step")
    diff_ax.xaxis.get_major_locator().set_params(integer=True)
    verdict = "PASS" if b["passed"] else "FAIL"
    diff = b["max_abs_param_diff"]
    check = f"max |Δparam| = {diff:.2e}" if diff else "max |Δparam| = 0 (bit-identical)"
    check += f" vs tolerance {b['tolerance']:.0e}: {verdict}"
    if result.accuracy is not None:
        check += f"\nheld-out accuracy {result.accuracy:.3f} (single device {b['accuracy']:.3f})"
    fig.suptitle(f"Loss per step against single-device training\n{run_title(result)}", fontsize=10, y=0.985)
    ax.set_title(check, fontsize=9, color="#1A7F37" if b["passed"] else "#C0392B")
    return fig


# --------------------------------------------------------------------------
# 5. Data flow


def _block_labels(result: RunResult, n: int) -> list[str]:
    from .models import MODELS

    spec = MODELS.get(result.config.model)
    if spec is not None and len(spec.block_labels) == n:
        return list(spec.block_labels)
    if result.model is not None:
        return [type(block).__name__ for block in result.model]
    return [f"block {i}" for i in range(n)]


def plot_dataflow(result: RunResult) -> Figure:
    """The split drawn as data flow: one row of blocks per data-parallel
    replica, each block coloured by the rank holding it; arrows across each
    cut carry the activations forward and the gradients back (bytes per step,
    measured from the send events); replicas are joined by the gradient
    all-reduce (buffer bytes B per step; a ring sends 2 (n - 1) / n * B per rank)."""
    ranks = result.ranks
    n_blocks = len(result.model) if result.model is not None else max(r.blocks[1] for r in ranks)
    labels = _block_labels(result, n_blocks)
    params = _block_params(result, n_blocks)
    replicas = sorted({r.dp_rank for r in ranks})
    traffic = bytes_per_step(result)
    cuts = len({r.stage for r in ranks}) - 1
    cut_gap, row_gap, block_h = 2.0, 2.2, 0.9
    x_lo, x_hi = -1.7, n_blocks + cuts * cut_gap + 1.0
    y_lo, y_hi = -(len(replicas) - 1) * row_gap - 0.95, 0.85
    unit = 0.8  # inches per data unit, on both axes, so blocks stay square
    widen = max(0.0, 7.5 - (x_hi - x_lo)) / 2  # room for the title on a small model
    x_lo, x_hi = x_lo - widen, x_hi + widen
    fig = Figure(figsize=((x_hi - x_lo) * unit + 0.3, (y_hi - y_lo) * unit + 0.8))
    fig.subplots_adjust(left=0.15 / fig.get_figwidth(), right=1 - 0.15 / fig.get_figwidth(),
                        top=1 - 0.8 / fig.get_figheight(), bottom=0.0)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)
    palette = ["#9ECAE1", "#FDAE6B", "#A1D99B", "#BCBDDC", "#FC9272", "#C7E9C0", "#FDD0A2", "#DADAEB"]
    row_y: dict[int, float] = {}
    for row, d in enumerate(replicas):
        y = -row * row_gap
        row_y[d] = y
        stages = sorted((r for r in ranks if r.dp_rank == d), key=lambda r: r.stage)
        ax.annotate("", xy=(0, y), xytext=(-0.6, y), arrowprops={"arrowstyle": "-|>", "color": "#555"})
        ax.text(-0.65, y, f"batch\n{_batch_of(result, d)}", ha="right", va="center", fontsize=8)
        x = 0.0
        for k, r in enumerate(stages):
            first, end = r.blocks
            x_stage = x
            for i in range(first, end):
                ax.add_patch(Rectangle((x, y - block_h / 2), 0.92, block_h, facecolor=palette[r.rank % len(palette)],
                                       edgecolor="#444", gid=f"block:{i}"))
                lines = [(labels[i], 0.22, 7 if len(labels[i]) <= 11 else 5.5, "black"),
                         (f"block {i}", 0.0, 6.5, "#444")]
                if params is not None:
                    lines.append((_count(params[i]) + " params", -0.22, 6, "#444"))
                for text, dy, size, color in lines:
                    ax.text(x + 0.46, y + dy, text, ha="center", va="center", fontsize=size, color=color)
                x += 1.0
            ax.text((x_stage + x - 0.08) / 2, y + block_h / 2 + 0.1, rank_label(result, r), ha="center",
                    va="bottom", fontsize=8, fontweight="bold")
            if k + 1 < len(stages):
                _draw_cut(ax, traffic, r, stages[k + 1], x - 0.08 + 0.12, x + cut_gap - 0.12, y)
                x += cut_gap
        ax.annotate("", xy=(x + 0.45, y), xytext=(x - 0.05, y), arrowprops={"arrowstyle": "-|>", "color": "#555"})
        ax.text(x + 0.5, y, "loss", ha="left", va="center", fontsize=8)

    if len(replicas) > 1:
        for s in sorted({r.stage for r in ranks}):
            group = [r for r in ranks if r.stage == s]
            n = len(group)
            b = max(traffic["all_reduce"].get(r.rank, 0) for r in group)
            first, end = group[0].blocks
            xs = (first + end) / 2 + s * cut_gap - 0.04
            y_top, y_bot = row_y[replicas[0]], row_y[replicas[-1]]
            ax.add_patch(FancyArrowPatch((xs, y_top - block_h / 2 - 0.05), (xs, y_bot + block_h / 2 + 0.4),
                                         arrowstyle="<|-|>", mutation_scale=12, color=KIND_COLORS["all_reduce"],
                                         gid="all-reduce-arrow"))
            ax.text(xs + 0.12, y_top - row_gap / 2 + 0.1,
                    f"all-reduce of gradients among {n} ranks: B = {human_bytes(b)} per rank per step;\n"
                    f"a ring sends 2(n−1)/n · B = {human_bytes(2 * (n - 1) * b / n)} per rank and receives as much",
                    ha="left", va="center", fontsize=8, color=KIND_COLORS["all_reduce"])
    elif cuts == 0:
        ax.text(n_blocks / 2, -0.75, "one rank holds every block: nothing crosses a device",
                ha="center", fontsize=8, color="#555")

    cut_text = (f"cut after block{'s' if cuts > 1 else ''} " + ", ".join(str(p - 1) for p in result.split_points)
                if result.split_points else "no cut")
    moved = "; bytes per step are means over the timed steps" if cuts or len(replicas) > 1 else ""
    fig.suptitle(f"How the model is split — {run_title(result)}\n{n_blocks} blocks, {cut_text}{moved}", fontsize=10)
    return fig


def _draw_cut(ax, traffic: dict[str, Any], left: RankReport, right: RankReport, a: float, b: float, y: float) -> None:
    """Two arrows across a cut: activations forward, gradients back, with bytes per step."""
    for src, dst, dy, kind, what in ((left, right, 0.15, "send", "activations"),
                                     (right, left, -0.15, "recv", "gradients")):
        total = traffic["sends"].get((src.rank, dst.rank), 0)
        count = traffic["send_counts"].get((src.rank, dst.rank), 0)
        start, end = (a, b) if src is left else (b, a)
        ax.add_patch(FancyArrowPatch((start, y + dy), (end, y + dy), arrowstyle="-|>", mutation_scale=12,
                                     color=KIND_COLORS[kind], gid="cut-arrow"))
        each = f"\n{count:g} sends × {human_bytes(total / count)}" if count > 1 else ""
        ax.text((a + b) / 2, y + dy + (0.07 if dy > 0 else -0.07), f"{what} {'→' if dy > 0 else '←'}\n"
                f"{human_bytes(total)}/step{each}", ha="center", va="bottom" if dy > 0 else "top", fontsize=7)


def _block_params(result: RunResult, n: int) -> list[int] | None:
    if result.model is None or len(result.model) != n:
        return None
    return [sum(p.numel() for p in block.parameters()) for block in result.model]


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else (f"{n / 1e3:.1f}k" if n >= 1e3 else str(n))


def _batch_of(result: RunResult, dp_rank: int) -> str:
    shares = result.config.rank_batches()
    n = shares[dp_rank] if dp_rank < len(shares) else result.config.global_batch
    return f"{n} samples"


# --------------------------------------------------------------------------
# 6. All of them


def save_all(result: RunResult, directory: str | os.PathLike, predicted: Sequence[Any] | None = None,
             steps: int | Sequence[int] | None = 2) -> list[str]:
    """Write every figure as ``<directory>/<name>.png``; return the paths."""
    os.makedirs(directory, exist_ok=True)
    figures = {
        "timeline": plot_timeline(result, steps=steps),
        "time_breakdown": plot_time_breakdown(result),
        "memory": plot_memory(result, predicted),
        "losses": plot_losses(result),
        "dataflow": plot_dataflow(result),
    }
    paths = []
    for name, fig in figures.items():
        path = os.path.join(os.fspath(directory), f"{name}.png")
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths


__all__ = ["KIND_COLORS", "MEMORY_COLORS", "plot_timeline", "plot_time_breakdown", "plot_memory",
           "plot_losses", "plot_dataflow", "save_all"]


# --------------------------------------------------------------------------
# The planned order, above each rank's measured timeline


PLANNED_LANE = (-0.335, 0.09)
"""(top, height) of the planned lane in a rank's row, above its compute lane."""


def planned_actions(result: RunResult) -> dict[int, list[list]] | None:
    """Each rank's planned actions at their replayed times
    (``bubble["replayed_timeline"]``: [kind, stage, micro_batch, step,
    start, end], seconds), keyed by rank; None when the run has none."""
    timeline = (result.bubble or {}).get("replayed_timeline")
    if not timeline:
        return None
    return {int(rank): actions for rank, actions in timeline.items()}


def draw_planned_lanes(ax, result: RunResult, rows: dict[int, int], steps: Sequence[int]) -> None:
    """A thin lane above each rank's compute lane: the schedule's planned
    actions (torch's own table) in order, drawn at the times the replay
    gives them with this run's measured costs, coloured by kind, for the
    shown ``steps``; ``rows``: rank -> row of the timeline."""
    top, height = PLANNED_LANE
    lanes = blended_transform_factory(ax.transAxes, ax.transData)
    for rank, actions in planned_actions(result).items():
        row = rows[rank]
        for kind, _stage, _mb, step, start, end in actions:
            if step in steps:
                ax.add_patch(Rectangle((start * MS, row + top), (end - start) * MS, height,
                                       facecolor=KIND_COLORS[kind], edgecolor="white", linewidth=0.3,
                                       alpha=0.8, gid=f"planned:{kind}"))
        ax.text(1.003, row + top + height / 2, "planned", transform=lanes, fontsize=7, color="#555", va="center")
