"""The timeline of a run as a scene, and its two painters.

``timeline_scene(result)`` reads the RunResult once and lays the picture
out as boxes, labels and rules in the timeline's own coordinates (x:
milliseconds on the ranks' clock; y: rows, rank 0's row at 0 on top,
0.5 above and below it). ``paint`` puts a scene on a matplotlib Axes (the
CLI, the notebooks, PNG files); ``svg`` writes it as SVG text directly (the
app, where matplotlib's layout of even an empty Axes with ticks takes about
40 ms here, as long again as a warm 20-step run of seed-mlp). Both draw the
same shapes at the same places; what a box means is decided here, once.

Each rank's row has a compute lane (boxes numbered by micro-batch) and a
thin communication lane below it: sends in its upper half, receives in its
lower half, collectives across it. The hatched part of a transfer is
waiting for the peer (before the last party posted, ``joined``), the solid
part the transfer itself. Pipelines get a thin "planned" lane above the
compute lane: the schedule's own actions at their replayed times.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence
from xml.sax.saxutils import escape, quoteattr

from playground.rank.recorder import COLLECTIVE_KINDS, COMM_KINDS, COMPUTE_KINDS, NESTED_KINDS
from playground.rank.report import RankReport
from playground.result.accounting import step_of
from playground.result.run_result import RunResult
from playground.views.style import KIND_COLORS, KIND_LABELS, MS, rank_label

WIDTH_IN = 12.0
"""The picture's width, inches."""
PT = 72
"""Points per inch (the SVG's user units)."""
LEFT, RIGHT = 0.14, 0.94
"""The plot's least left edge and its right edge, fractions of the width
(rank labels left of it, lane names right of it); a scene moves its left
edge right where its longest rank label needs more room (``left_edge``)."""
LABEL_PT_PER_CHAR = 5.6
"""Room a character of a 10-pt rank label takes, points: DejaVu Sans
averages 4.6-4.8 over labels like "rank 0 · stages 0, 2 · dp 0", a digit
alone 6.4."""
LABEL_PAD_PT = 14
"""Room beside a rank label, points: the tick and its gap (7) and as much
again between the label and the picture's edge."""
DPI = 100
"""Pixels per inch at which a micro-batch number must fit in its box."""
BOTTOM_IN = 0.6
"""Room under the plot for the time axis, inches."""
PLANNED_LANE = (-0.335, 0.09)
"""(top, height) of the planned lane in a rank's row, above its compute lane."""


@dataclass(frozen=True)
class LegendEntry:
    """One entry of the timeline's legend: a swatch and its label."""

    label: str
    color: str
    hatch: str | None = None
    alpha: float = 1.0
    edge: str | None = None
    line: bool = False
    """a dashed line (the step boundary) rather than a filled swatch"""


@dataclass(frozen=True)
class Box:
    """A filled rectangle: ``x``, ``w`` in ms, ``y`` (its top), ``h`` in rows."""

    x: float
    y: float
    w: float
    h: float
    fill: str
    gid: str
    """what it shows, "compute:forward", "wait:send", "halted", "planned:backward", …"""
    alpha: float = 1.0
    hatch: str | None = None
    """matplotlib's hatch pattern, "////" or "xxxx", drawn in ``edge``"""
    edge: str = "none"
    edge_width: float = 0.0
    """points"""


@dataclass(frozen=True)
class Label:
    """Text at (``x`` ms, ``y`` rows); with ``margin``, ``x`` is a fraction
    of the plot's width instead (1.003: just right of the plot)."""

    x: float
    y: float
    text: str
    size: float = 7
    """points"""
    color: str = "#333"
    ha: str = "left"
    va: str = "center"
    bold: bool = False
    clip: bool = True
    """cut at the plot's edges"""
    margin: bool = False


@dataclass(frozen=True)
class Rule:
    """A dashed vertical line at ``x`` ms from row ``y0`` to ``y1``: a step boundary."""

    x: float
    y0: float
    y1: float


@dataclass
class Scene:
    """Everything the timeline draws, in its own coordinates."""

    xlim: tuple[float, float]
    """ms shown, left to right"""
    ylim: tuple[float, float]
    """rows shown, (bottom, top): rank 0 on top"""
    rows: list[str]
    """each row's rank label, top to bottom"""
    plot_height_in: float
    left: float = LEFT
    """the plot's left edge, a fraction of the width (``left_edge(rows)``)"""
    boxes: list[Box] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    entries: list[LegendEntry] = field(default_factory=list)
    """the legend: the kinds drawn, the hatches used, the step boundary"""
    xlabel: str = "time since the first rank began step 0 (ms)"


# --------------------------------------------------------------------------
# What to draw


def shown_steps(result: RunResult, steps: int | Sequence[int] | None) -> list[int]:
    """The steps to draw: the last ``steps`` (an int), the steps from the
    first to the last of the given indices (a sequence), or every step
    (None). Raises ValueError for an index the run does not have."""
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


def planned_actions(result: RunResult) -> dict[int, list[list]] | None:
    """Each rank's planned actions at their replayed times
    (``bubble["replayed_timeline"]``: [kind, stage, micro_batch, step,
    start, end], seconds), keyed by rank; None when the run has none."""
    timeline = (result.bubble or {}).get("replayed_timeline")
    if not timeline:
        return None
    return {int(rank): actions for rank, actions in timeline.items()}


def left_edge(rows: Sequence[str]) -> float:
    """The plot's left edge, a fraction of the picture's width, that leaves
    room for the longest of ``rows`` at 10 pt: (LABEL_PT_PER_CHAR x its
    characters + LABEL_PAD_PT) / (WIDTH_IN x PT), and never less than LEFT."""
    longest = max((len(row) for row in rows), default=0)
    return max(LEFT, (LABEL_PT_PER_CHAR * longest + LABEL_PAD_PT) / (WIDTH_IN * PT))


def timeline_scene(result: RunResult, steps: int | Sequence[int] | None = 2) -> Scene:
    """The timeline of ``steps`` (as ``shown_steps``) laid out as a Scene."""
    chosen = shown_steps(result, steps)
    ranks = result.ranks
    planned = planned_actions(result)
    t0 = min(r.step_times[chosen[0]][0] for r in ranks) * MS
    t1 = max(r.step_times[chosen[-1]][1] for r in ranks) * MS
    pad = 0.01 * (t1 - t0)
    rows = [rank_label(result, r) for r in ranks]
    scene = Scene(xlim=(t0 - pad, t1 + pad), ylim=(len(ranks) - 0.45, -0.55), rows=rows,
                  plot_height_in=0.3 + (1.15 if planned else 0.95) * len(ranks), left=left_edge(rows))
    px_per_ms = WIDTH_IN * DPI * (RIGHT - scene.left) / (t1 - t0 + 2 * pad)
    compute_lane = (-0.22, 0.35) if planned else (-0.33, 0.46)  # (top, height) in a row

    numbered = result.config.micro_batches > 1
    kinds_seen: set[str] = set()
    waited = halted = False
    for row, r in enumerate(ranks):
        # Nested spans (a recompute inside its backward) go last, drawn inset over the span around them.
        for e in sorted(shown_events(r, chosen), key=lambda e: e["kind"] in NESTED_KINDS):
            kind, start, end = e["kind"], e["start"] * MS, e["end"] * MS
            kinds_seen.add(kind)
            color = KIND_COLORS[kind]
            if kind in COMPUTE_KINDS:
                y, h = row + compute_lane[0], compute_lane[1]
                if kind in NESTED_KINDS:
                    y, h = y + h / 4, h / 2
                scene.boxes.append(Box(start, y, end - start, h, color, f"compute:{kind}", edge="white",
                                       edge_width=0.5))
                mb = e.get("micro_batch")
                label = str(mb) if numbered and mb is not None else ""
                if label and (end - start) * px_per_ms >= 7 * len(label) + 3:
                    scene.labels.append(Label((start + end) / 2, y + h / 2, label, color="white", ha="center",
                                              bold=True))
                continue
            y, h = (row + 0.18, 0.24) if kind in COLLECTIVE_KINDS else \
                   ((row + 0.18, 0.12) if kind == "send" else (row + 0.30, 0.12))
            # A send can finish into a buffer before its receiver posts, so 'joined' may lie past 'end'.
            joined = min(max(e.get("joined", e["start"]) * MS, start), end)
            if joined > start:
                waited = True
                scene.boxes.append(Box(start, y, joined - start, h, color, f"wait:{kind}", alpha=0.3,
                                       hatch="////", edge=color))
            scene.boxes.append(Box(joined, y, end - joined, h, color, f"comm:{kind}"))

    # Inside a compute span, the time the rank stood blocked on a transfer
    # (an in-line all-reduce, an FSDP all-gather) is not compute: the
    # accounting counts it as comm or wait, and the compute lane shows it so.
    lo, hi = (min(r.step_times[chosen[0]][0] for r in ranks), max(r.step_times[chosen[-1]][1] for r in ranks))
    for row, r in enumerate(ranks):
        spans = [(e["start"], e["end"]) for e in r.timeline if e["kind"] in COMPUTE_KINDS]
        stops = list(r.blocked) + [(e["start"], e["end"]) for e in r.timeline if e.get("inline")]
        for a, b in stops:
            for sa, sb in spans:
                x0, x1 = max(a, sa, lo), min(b, sb, hi)
                if x1 > x0:
                    halted = True
                    scene.boxes.append(Box(x0 * MS, row + compute_lane[0], (x1 - x0) * MS, compute_lane[1],
                                           "white", "halted", alpha=0.75, hatch="xxxx", edge=KIND_COLORS["comm"]))

    # Step boundaries, per rank (each rank's steps start when it gets there).
    for row, r in enumerate(ranks):
        edges = [(r.step_times[s][0], f"step {s}" + (" (warm-up)" if s == 0 and len(r.step_times) > 1 else ""))
                 for s in chosen] + [(r.step_times[chosen[-1]][1], "end")]
        for x, label in edges:
            scene.rules.append(Rule(x * MS, row - 0.48, row + 0.45))
            scene.labels.append(Label(x * MS, row - 0.47, f" {label} ", va="top",
                                      ha="left" if label != "end" else "right"))

    if planned:
        top, height = PLANNED_LANE
        for row, r in enumerate(ranks):
            for kind, _stage, _mb, step, start, end in planned.get(r.rank, []):
                if step in chosen:
                    scene.boxes.append(Box(start * MS, row + top, (end - start) * MS, height, KIND_COLORS[kind],
                                           f"planned:{kind}", alpha=0.8, edge="white", edge_width=0.3))
            scene.labels.append(Label(1.003, row + top + height / 2, "planned", color="#555", clip=False,
                                      margin=True))
    for row in range(len(ranks)):
        scene.labels.append(Label(1.003, row - (0.05 if planned else 0.1), "compute", color="#555", clip=False,
                                  margin=True))
        scene.labels.append(Label(1.003, row + 0.3, "comm", color="#555", clip=False, margin=True))

    scene.entries = [LegendEntry(KIND_LABELS[k], KIND_COLORS[k]) for k in COMPUTE_KINDS + COMM_KINDS
                     if k in kinds_seen]
    if waited:
        scene.entries.append(LegendEntry("waiting for the peer to post", "#999", hatch="////", alpha=0.4,
                                         edge="#666"))
    if halted:
        scene.entries.append(LegendEntry("halted on a transfer inside compute (not compute)", "white",
                                         hatch="xxxx", edge=KIND_COLORS["comm"]))
    scene.entries.append(LegendEntry("step boundary", "#333", line=True))
    return scene


# --------------------------------------------------------------------------
# Painted by matplotlib


def paint(scene: Scene, ax) -> None:
    """Draw ``scene`` on the matplotlib Axes ``ax`` (limits, boxes, rules,
    labels, rank ticks, x label, grid); each patch carries its Box's gid."""
    from matplotlib.patches import Rectangle
    from matplotlib.transforms import blended_transform_factory

    ax.set_xlim(*scene.xlim)
    ax.set_ylim(*scene.ylim)
    # Patches go in with add_artist: the limits are set above, and add_patch
    # would recompute them for each of hundreds of boxes.
    for b in scene.boxes:
        ax.add_artist(Rectangle((b.x, b.y), b.w, b.h, facecolor=b.fill, alpha=b.alpha if b.alpha < 1 else None,
                                hatch=b.hatch, edgecolor=b.edge, linewidth=b.edge_width, gid=b.gid))
    for rule in scene.rules:
        ax.plot([rule.x] * 2, [rule.y0, rule.y1], ls="--", lw=1, color="#333", alpha=0.7)
    margin = blended_transform_factory(ax.transAxes, ax.transData)
    for t in scene.labels:
        ax.text(t.x, t.y, t.text, fontsize=t.size, color=t.color, ha=t.ha, va=t.va,
                fontweight="bold" if t.bold else "normal", clip_on=t.clip,
                **({"transform": margin} if t.margin else {}))
    ax.set_yticks(range(len(scene.rows)), scene.rows)
    ax.set_xlabel(scene.xlabel)
    ax.grid(axis="x", color="#EEE")
    ax.set_axisbelow(True)


# --------------------------------------------------------------------------
# Written as SVG


TOP_IN = 0.15
"""Room above the plot in the SVG, inches."""
FONT = "DejaVu Sans, Bitstream Vera Sans, Arial, Helvetica, sans-serif"


def ticks(lo: float, hi: float, most: int = 10) -> list[float]:
    """Round tick values within [lo, hi]: steps of 1, 2, 2.5 or 5 times a
    power of ten, at most ``most`` of them (matplotlib's MaxNLocator)."""
    from matplotlib.ticker import MaxNLocator

    return [v for v in MaxNLocator(nbins=most - 1, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
            if lo <= v <= hi]


def tick_text(values: list[float]) -> list[str]:
    """Tick labels with as many decimals as the step between ticks needs
    (0 for 5, 1 for 2.5 or 0.5, 2 for 0.25)."""
    step = abs(values[1] - values[0]) if len(values) > 1 else 1.0
    decimals = next((d for d in range(7) if abs(step * 10 ** d - round(step * 10 ** d)) < 1e-6 * 10 ** d), 6)
    return [f"{v:.{decimals}f}".replace("-0", "0", 1) if abs(v) < 0.5 * 10 ** -decimals else f"{v:.{decimals}f}"
            for v in values]


def svg(scene: Scene) -> bytes:
    """``scene`` as an SVG document, ``WIDTH_IN`` inches wide at ``PT``
    units per inch, text kept as text: the same boxes, rules and labels
    ``paint`` draws, at the same places, plus the axes' frame, ticks and
    grid. Each box carries its gid as ``data-gid``."""
    width = WIDTH_IN * PT
    top, plot_h = TOP_IN * PT, scene.plot_height_in * PT
    height = top + plot_h + BOTTOM_IN * PT
    left, right = scene.left * width, RIGHT * width
    (x_lo, x_hi), (y_bottom, y_top) = scene.xlim, scene.ylim

    def X(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * (right - left)

    def Y(y: float) -> float:
        return top + (y - y_top) / (y_bottom - y_top) * plot_h

    out = ['<?xml version="1.0" encoding="utf-8"?>\n',
           f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}pt" height="{height:.1f}pt" '
           f'viewBox="0 0 {width:.0f} {height:.1f}" font-family="{FONT}">',
           f'<defs><clipPath id="plot"><rect x="{left:.2f}" y="{top:.2f}" width="{right - left:.2f}" '
           f'height="{plot_h:.2f}"/></clipPath>']
    patterns: dict[tuple[str, str], str] = {}
    for b in scene.boxes:
        if b.hatch and (b.hatch, b.edge) not in patterns:
            name = f"hatch{len(patterns)}"
            patterns[(b.hatch, b.edge)] = name
            lines = '<path d="M0,6 L6,0 M-1,1 L1,-1 M5,7 L7,5"/>'
            if "x" in b.hatch:
                lines += '<path d="M0,0 L6,6 M-1,5 L1,7 M5,-1 L7,1"/>'
            out.append(f'<pattern id="{name}" width="6" height="6" patternUnits="userSpaceOnUse">'
                       f'<g stroke="{b.edge}" stroke-width="0.8">{lines}</g></pattern>')
    out.append("</defs>")
    out.append(f'<rect width="{width:.0f}" height="{height:.1f}" fill="white"/>')

    values = ticks(x_lo, x_hi)
    out.append('<g stroke="#EEE" stroke-width="0.8">' + "".join(
        f'<line x1="{X(v):.2f}" y1="{top:.2f}" x2="{X(v):.2f}" y2="{top + plot_h:.2f}"/>' for v in values) + "</g>")

    out.append('<g clip-path="url(#plot)">')
    for b in scene.boxes:
        x0, y0 = X(b.x), Y(b.y)
        w, h = X(b.x + b.w) - x0, Y(b.y + b.h) - y0
        shape = f'x="{x0:.2f}" y="{y0:.2f}" width="{max(w, 0):.2f}" height="{h:.2f}"'
        # Each part at the box's alpha on its own, as matplotlib draws them:
        # where a hatch line crosses the fill, the two add up.
        opacity = f' opacity="{b.alpha:g}"' if b.alpha < 1 else ""
        out.append(f'<g data-gid={quoteattr(b.gid)}><rect {shape} fill="{b.fill}"{opacity}'
                   + (f' stroke="{b.edge}" stroke-width="{b.edge_width:g}"' if b.edge_width else "") + "/>"
                   + (f'<rect {shape} fill="url(#{patterns[(b.hatch, b.edge)]})"{opacity}/>' if b.hatch else "")
                   + "</g>")
    out.append('<g stroke="#333" stroke-opacity="0.7" stroke-width="1" stroke-dasharray="3.7,1.6">' + "".join(
        f'<line x1="{X(r.x):.2f}" y1="{Y(r.y0):.2f}" x2="{X(r.x):.2f}" y2="{Y(r.y1):.2f}"/>'
        for r in scene.rules) + "</g>")
    out.append("</g>")

    anchor = {"left": "start", "center": "middle", "right": "end"}
    baseline = {"center": "central", "top": "hanging", "bottom": "auto"}
    for t in scene.labels:
        x = left + t.x * (right - left) if t.margin else X(t.x)
        out.append(f'<text x="{x:.2f}" y="{Y(t.y):.2f}" font-size="{t.size:g}" fill="{t.color}" '
                   f'text-anchor="{anchor[t.ha]}" dominant-baseline="{baseline[t.va]}"'
                   + (' font-weight="bold"' if t.bold else "") + (' clip-path="url(#plot)"' if t.clip else "")
                   + f' xml:space="preserve">{escape(t.text)}</text>')

    bottom = top + plot_h
    out.append(f'<rect x="{left:.2f}" y="{top:.2f}" width="{right - left:.2f}" height="{plot_h:.2f}" '
               'fill="none" stroke="black" stroke-width="0.8"/>')
    out.append('<g stroke="black" stroke-width="0.8">' + "".join(
        f'<line x1="{X(v):.2f}" y1="{bottom:.2f}" x2="{X(v):.2f}" y2="{bottom + 3.5:.2f}"/>' for v in values)
        + "".join(f'<line x1="{left - 3.5:.2f}" y1="{Y(row):.2f}" x2="{left:.2f}" y2="{Y(row):.2f}"/>'
                  for row in range(len(scene.rows))) + "</g>")
    out.append('<g font-size="10" text-anchor="middle">' + "".join(
        f'<text x="{X(v):.2f}" y="{bottom + 14:.2f}">{s}</text>' for v, s in zip(values, tick_text(values)))
        + "</g>")
    out.append('<g font-size="10" text-anchor="end" dominant-baseline="central">' + "".join(
        f'<text x="{left - 7:.2f}" y="{Y(row):.2f}">{escape(name)}</text>' for row, name in enumerate(scene.rows))
        + "</g>")
    out.append(f'<text x="{(left + right) / 2:.2f}" y="{bottom + 30:.2f}" font-size="10" '
               f'text-anchor="middle">{escape(scene.xlabel)}</text>')
    out.append("</svg>")
    return "".join(out).encode()
