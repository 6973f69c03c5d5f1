"""Matplotlib figures drawn from a RunResult, and nothing else.

Every function returns a ``matplotlib.figure.Figure`` built without pyplot:
no global figure state, no backend needed, and a notebook cell that returns
one shows it once. ``save_all`` writes them all as PNG.

Colours: one per event kind in ``KIND_COLORS`` (compute kinds cool, comm
kinds warm, plus the totals compute / comm / wait / overhead / idle), one per memory field in
``MEMORY_COLORS``; every figure reads them from here.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from playground.rank.report import RankReport
from playground.result.run_result import RunResult
from playground.result.table import check_sentence
from playground.result.accounting import step_of  # noqa: F401 - notebooks read it from here
from playground.result.accounting import timed_steps as _timed_steps
from playground.views.timeline import (  # noqa: F401 - the timeline's parts, also read from here
    BOTTOM_IN, LEFT, PLANNED_LANE, RIGHT, TOP_IN, WIDTH_IN, LegendEntry, paint, planned_actions, shown_events,
    shown_steps, timeline_scene,
)
from playground.views.style import (  # noqa: F401 - the figures' shared look, also read from here
    KIND_COLORS, KIND_LABELS, MEMORY_COLORS, MEMORY_FIELDS, MEMORY_LABELS, MIB, MS, human_bytes, memory_field,
    rank_label, rank_tick, run_title,
)

# --------------------------------------------------------------------------
# Facts read from the result


def timed_steps(result: RunResult) -> list[int]:
    """Steps the time accounting covers: all after the warm-up step 0."""
    return _timed_steps(result.ranks)


def _footer(fig: Figure, result: RunResult) -> None:
    """The run's notes on one line at the foot of the figure, cut to its
    width (about 15 characters per inch at 8 pt); the app and the CLI show
    them whole."""
    if result.notes:
        text = "note: " + "; ".join(result.notes)
        room = int(fig.get_figwidth() * 15)
        if len(text) > room:
            more = f" … ({len(result.notes)} note{'s' if len(result.notes) > 1 else ''} in full in the result)"
            cut = text[:room - len(more)]
            text = (cut.rsplit(" ", 1)[0] if " " in cut else cut).rstrip(" ;,") + more
        fig.text(0.01, 0.005, text, fontsize=8, color="#A33", va="bottom")


# --------------------------------------------------------------------------
# 1. Timeline


def plot_timeline(result: RunResult, steps: int | Sequence[int] | None = 2) -> Figure:
    """Per-rank Gantt chart of the measured steps, with its title, legend
    and the run's notes (``timeline_figure``)."""
    return timeline_figure(result, steps)[0]


def timeline_figure(result: RunResult, steps: int | Sequence[int] | None = 2,
                    framed: bool = True) -> tuple[Figure, list[LegendEntry]]:
    """Per-rank Gantt chart of the measured steps (``timeline.timeline_scene``
    lays it out: lanes, boxes and hatches are described there), and its
    legend's entries. ``framed`` False leaves the title, the legend and the
    notes out of the picture (the app shows them as text beside it).

    ``steps``: the last ``steps`` steps (an int), the steps from the first
    to the last of the given indices (a sequence), or every step (None);
    ValueError for an index the run does not have.
    """
    scene = timeline_scene(result, steps)
    legend_rows, note = (2, 0.25 if result.notes else 0.0) if framed else (0, 0.0)  # inches for legend, footer
    title = 0.75 if framed else TOP_IN
    bottom = BOTTOM_IN + note + 0.3 * legend_rows
    fig = Figure(figsize=(WIDTH_IN, title + scene.plot_height_in + bottom))
    inch = 1 / fig.get_figheight()
    fig.subplots_adjust(left=scene.left, right=RIGHT, bottom=bottom * inch, top=1 - title * inch)
    paint(scene, fig.add_subplot())
    if not framed:
        return fig, scene.entries
    fig.suptitle(f"What each rank did, step by step — {run_title(result)}", fontsize=11, y=1 - 0.12 * inch)
    handles = [Line2D([], [], ls="--", color=e.color, label=e.label) if e.line else
               Patch(facecolor=e.color, alpha=e.alpha, hatch=e.hatch, edgecolor=e.edge, label=e.label)
               for e in scene.entries]
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, note * inch),
               ncol=(len(handles) + legend_rows - 1) // legend_rows, fontsize=8, frameon=False,
               title=legend_title(result), title_fontsize=8)
    _footer(fig, result)
    return fig, scene.entries


def legend_title(result: RunResult) -> str:
    """What the timeline's boxes mean beyond their colours."""
    return ("numbers in boxes: micro-batch · " if result.config.micro_batches > 1 else "") + "blank: idle"


# --------------------------------------------------------------------------
# 2. Time breakdown


TIME_PARTS = (
    ("compute", "compute (forward, backward, optimizer, …)"),
    ("comm", "communication not hidden under compute"),
    ("wait", "waiting for a peer"),
    ("overhead", "runtime overhead (host work between actions)"),
)
IDLE_LABEL = "idle (waiting for peers, runtime overhead)"


def time_parts(r: RankReport) -> list[tuple[str, float]]:
    """(key, seconds) stacked in a rank's bar: compute, comm, wait and
    overhead; a result accounted before wait and overhead were told apart
    has one ``idle`` part instead."""
    if "wait" in r.time or "overhead" in r.time:
        return [(key, r.time.get(key, 0.0)) for key, _ in TIME_PARTS]
    return [("compute", r.time.get("compute", 0.0)), ("comm", r.time.get("comm", 0.0)),
            ("idle", r.time.get("idle", 0.0))]


def plot_time_breakdown(result: RunResult) -> Figure:
    """Per-rank stacked bars of the accounted time over the timed steps
    (ms): compute, communication, waiting for a peer, runtime overhead; a
    thin hatched bar beside shows communication overlapped with compute
    (not part of the sum). Pipelines: a bracket at the top of each bar spans
    the bubble ``result.bubble`` predicts, and markers show the idle share
    measured on the rank (and replayed, when the result has it)."""
    ranks = result.ranks
    fig = Figure(figsize=(max(6.5, 2.2 + 1.5 * len(ranks)), 5.2))
    fig.subplots_adjust(left=0.12, right=0.97, top=0.86, bottom=0.33)
    ax = fig.add_subplot()
    x = list(range(len(ranks)))
    base = [0.0] * len(ranks)
    window = max(r.time.get("window", 0.0) for r in ranks) * MS or 1.0
    parts = [time_parts(r) for r in ranks]
    labels = dict(TIME_PARTS, idle=IDLE_LABEL)
    for k, key in enumerate(key for key, _ in parts[0]):
        values = [p[k][1] * MS for p in parts]
        ax.bar(x, values, bottom=base, color=KIND_COLORS[key], width=0.55, label=labels[key], edgecolor="white",
               gid=f"time:{key}")
        for i, v in enumerate(values):
            if v >= 0.06 * window:
                ax.text(i, base[i] + v / 2, f"{v:.1f}", ha="center", va="center", fontsize=8,
                        color="white" if key in ("compute", "comm") else "#333")
        base = [b + v for b, v in zip(base, values)]
    overlapped = [r.time.get("overlapped", 0.0) * MS for r in ranks]
    if any(overlapped):
        ax.bar([i - 0.33 for i in x], overlapped, width=0.08, facecolor="none", edgecolor=KIND_COLORS["comm"],
               hatch="////", linewidth=0.8, gid="time:overlapped",
               label="comm hidden under compute (not in the sum)")
    bubble = result.bubble
    if bubble is not None:
        _bubble_marks(ax, ranks, bubble)
    ax.set_xticks(x, [rank_tick(result, r) for r in ranks], fontsize=8)
    ax.set_ylabel("time over the timed steps (ms)")
    steps = timed_steps(result)
    span = ("step 0, the only step" if steps == [0] else
            f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}–{steps[-1]}") + \
        ("; step 0 is warm-up" if steps != [0] else "")
    ax.set_title(f"Where each rank's time went ({span})\n{run_title(result)}", fontsize=10)
    ax.set_ylim(0, window * 1.08)
    ax.set_xlim(-0.6, len(ranks) - 0.4 + (0.3 if bubble is not None else 0))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=8, frameon=False, ncol=2)
    _footer(fig, result)
    return fig


def _bubble_marks(ax, ranks: list[RankReport], bubble: dict[str, Any]) -> None:
    """The predicted bubble as a bracket from the top of each bar, the
    measured (and replayed) idle share as markers on the same scale."""
    predicted = bubble["predicted"]
    measured = bubble.get("measured") or []
    replayed = bubble.get("replayed") or []
    for i, r in enumerate(ranks):
        w = r.time.get("window", 0.0) * MS
        ax.plot([i + 0.29, i + 0.32, i + 0.32, i + 0.29], [w * (1 - predicted)] * 2 + [w] * 2,
                color="black", lw=1.2, gid="bubble:predicted")
        lines = [f"predicted {predicted:.0%}"]
        if i < len(measured):
            ax.plot([i + 0.32], [w * (1 - measured[i])], marker="<", color="#C0392B", ms=6, gid="bubble:measured")
            lines.append(f"measured {measured[i]:.0%}")
        if i < len(replayed):
            ax.plot([i + 0.32], [w * (1 - replayed[i])], marker="D", color="#555", ms=4, gid="bubble:replayed")
            lines.append(f"replayed {replayed[i]:.0%}")
        ax.text(i + 0.35, w * (1 - predicted / 2), "bubble\n" + "\n".join(lines), fontsize=6.5, va="center")
    ax.plot([], [], color="black", lw=1.2, marker="|",
            label=f"bubble predicted by {bubble['formula']} = {predicted:.0%} (bracket)")
    ax.plot([], [], ls="none", marker="<", color="#C0392B", label="idle share measured on the rank")
    if replayed:
        ax.plot([], [], ls="none", marker="D", color="#555", ms=4, label="idle share replayed")


# --------------------------------------------------------------------------
# 3. Memory


ZERO_FIELDS = ("params", "grads", "optimizer")
"""The memory fields the ZeRO paper's formula covers (activations are not in it)."""


def plot_memory(result: RunResult, predicted: Sequence[Any] | None | str = "result",
                formula: dict[str, Any] | None | str = "result", predicted_label: str = "predicted",
                predicted_legend: str = "predicted (outline)") -> Figure:
    """Per-rank stacked bars of parameter, gradient, optimizer-state and peak
    activation memory (MiB; KiB for models under 0.1 MiB), up to three per
    rank: measured (solid); ``predicted`` (by default the result's own
    ``predictions``; None: none drawn), one dict or object per rank with the
    same fields, in bytes (such as ``cost.predict``'s), outlined and named
    ``predicted_label`` under the bar, ``predicted_legend`` in the legend;
    and ``formula`` (by default ``result.zero``, where the result has it;
    None: none drawn), a record shaped as ``RunResult.zero``, whose
    ``memory`` (params, grads and optimizer: the ZeRO paper's bytes per
    rank, the same for every rank) is drawn hatched, labelled with its
    ``stage``.
    ``ValueError`` when ``predicted`` has not one entry per rank."""
    ranks = result.ranks
    if isinstance(predicted, str):  # the default: the prediction the result carries
        predicted = result.predictions
    if isinstance(formula, str):
        formula = result.zero
    if predicted is not None and len(predicted) != len(ranks):
        raise ValueError(f"predicted has {len(predicted)} entries; the run has {len(ranks)} ranks (one per rank)")
    kinds = ["measured"] + ["predicted"] * bool(predicted) + ["formula"] * (formula is not None)
    per_rank = len(kinds)
    fig = Figure(figsize=(max(6, 1.8 + (0.6 + 0.7 * per_rank) * len(ranks)), 4.8))
    fig.subplots_adjust(left=0.13, right=0.97, top=0.86, bottom=0.27 if per_rank > 1 else 0.24)
    ax = fig.add_subplot()
    width = 0.6 if per_rank == 1 else 0.8 / per_rank - 0.02
    shifts = {kind: (k - (per_rank - 1) / 2) * (width + 0.02) for k, kind in enumerate(kinds)}
    bars = [(i + shifts["measured"], {f: memory_field(r.memory, f) for f in MEMORY_FIELDS}, "measured")
            for i, r in enumerate(ranks)]
    if predicted:
        bars += [(i + shifts["predicted"], {f: memory_field(p, f) for f in MEMORY_FIELDS}, "predicted")
                 for i, p in enumerate(predicted)]
    if formula is not None:
        bars += [(i + shifts["formula"], {f: float(formula["memory"][f]) for f in ZERO_FIELDS}, "formula")
                 for i in range(len(ranks))]
    largest = max(sum(v.values()) for _, v, _ in bars)
    unit, size = ("MiB", MIB) if largest >= 0.1 * MIB else ("KiB", 2**10)
    top = largest / size or 1.0
    under = {"measured": "measured", "predicted": predicted_label, "formula": "formula"}
    for x, values, kind in bars:
        base = 0.0
        for f, value in values.items():
            v = value / size
            if kind == "predicted":
                ax.bar(x, v, bottom=base, width=width, facecolor="none", edgecolor=MEMORY_COLORS[f],
                       linewidth=1.6, gid="predicted")
            elif kind == "formula":
                ax.bar(x, v, bottom=base, width=width, facecolor="none", edgecolor=MEMORY_COLORS[f], hatch="////",
                       linewidth=1.0, linestyle=":", gid=f"formula:{f}")
            else:
                ax.bar(x, v, bottom=base, width=width, color=MEMORY_COLORS[f], edgecolor="white", gid="measured")
            base += v
        ax.text(x, base + 0.01 * top, f"{base:.3g}", ha="center", va="bottom", fontsize=8 if per_rank < 3 else 7)
        if per_rank > 1:
            ax.text(x, -0.02 * top, under[kind], ha="center", va="top", fontsize=7, color="#555")
    ax.set_xticks(range(len(ranks)), [rank_tick(result, r) for r in ranks], fontsize=8)
    ax.tick_params(axis="x", length=0, pad=16 if per_rank > 1 else 4)
    ax.set_ylim(0, top * 1.12)
    ax.set_xlim(-0.75, len(ranks) - 0.25)
    ax.set_ylabel(f"memory ({unit})")
    ax.set_title(f"Memory each rank held ({unit})\n{run_title(result)}", fontsize=10)
    empty = {f for f in MEMORY_FIELDS if all(not r.memory.get(f) for r in ranks)}
    handles = [Patch(color=MEMORY_COLORS[f], label=MEMORY_LABELS[f] + (" (none measured)" if f in empty else ""))
               for f in MEMORY_FIELDS]
    if predicted:
        handles.append(Patch(facecolor="none", edgecolor="#555", linewidth=1.6, label=predicted_legend))
    if formula is not None:
        handles.append(Patch(facecolor="none", edgecolor="#555", hatch="////", linewidth=1.0, linestyle=":",
                             label=f"ZeRO formula, stage {formula['stage']} (hatched; no activations)"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2,
              fontsize=8, frameon=False)
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
    check = check_sentence(b)
    if result.accuracy is not None:
        check += f"\nheld-out accuracy {result.accuracy:.3f} (single device {b['accuracy']:.3f})"
    fig.suptitle(f"Loss per step against single-device training\n{run_title(result)}", fontsize=10, y=0.985)
    ax.set_title(check, fontsize=9, color="#1A7F37" if b["passed"] else "#C0392B")
    return fig


# --------------------------------------------------------------------------
# 5. Data flow: see dataflow.py


def plot_dataflow(result: RunResult) -> Figure:
    """How the model and the batch are split, and what crosses between the
    ranks (``dataflow.plot_dataflow``)."""
    from playground.views.dataflow import plot_dataflow as draw

    return draw(result)


# --------------------------------------------------------------------------
# 6. All of them


def save_all(result: RunResult, directory: str | os.PathLike, predicted: Sequence[Any] | None | str = "result",
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


def idle_share(result: RunResult) -> float:
    """Mean over ranks of idle / window (``RankReport.time``)."""
    return sum(r.time["idle"] / max(1e-12, r.time["window"]) for r in result.ranks) / len(result.ranks)


def plot_sweep(over: str, points: Sequence[tuple[int, RunResult]]) -> Figure:
    """Throughput T(n), speedup S(n) = T(n) / T(n0), efficiency S(n) / ideal
    and the idle share against the count swept (``over``: "world_size" or
    "micro_batches"; ``points``: (n, the run at n), ascending). Ideal
    speedup: n / n0 for device counts; for micro-batches (1 - b(n)) /
    (1 - b(n0)), with b the run's predicted pipeline bubble
    (``RunResult.bubble["predicted"]``)."""
    counts = [n for n, _ in points]
    throughput = [r.throughput_samples_per_s for _, r in points]
    speedup = [t / throughput[0] for t in throughput]
    bubble = [r.bubble["predicted"] if r.bubble else None for _, r in points]
    if over == "world_size":
        ideal = [n / counts[0] for n in counts]
    elif None not in bubble:
        ideal = [(1 - b) / (1 - bubble[0]) for b in bubble]
    else:
        ideal = [1.0] * len(counts)
    what = "devices" if over == "world_size" else "micro-batches"
    fig = Figure(figsize=(11, 6.4))
    fig.subplots_adjust(left=0.08, right=0.98, top=0.88, bottom=0.09, hspace=0.38, wspace=0.22)
    axes = fig.subplots(2, 2).ravel()
    panels = [("throughput (samples/s)", throughput, None),
              (f"speedup over {what} = {counts[0]}", speedup, ideal),
              ("efficiency = speedup / ideal", [s / i for s, i in zip(speedup, ideal)], [1.0] * len(counts)),
              ("idle share (mean over ranks)", [idle_share(r) for _, r in points], bubble)]
    for ax, (title, measured, theory) in zip(axes, panels):
        ax.plot(counts, measured, marker="o", color=KIND_COLORS["forward"], label="measured")
        if theory is not None and None not in theory:
            label = "predicted bubble" if theory is bubble else "ideal"
            ax.plot(counts, theory, ls="--", color="#555", label=label)
            ax.legend(fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(counts)
        ax.set_xlabel(what)
        ax.grid(color="#EEE")
    c = points[0][1].config
    fixed = f"{c.world_size} ranks" if over != "world_size" else f"batch {c.global_batch}"
    fig.suptitle(f"Sweep over {what} = {', '.join(map(str, counts))}: {c.model} · {c.strategy}"
                 f"{f' · {c.schedule}' if c.scheduled else ''} · {fixed} · {c.steps} steps", fontsize=11)
    return fig
