"""The data-flow picture: how the model and the batch are split among the
ranks, and what crosses between them, drawn from a RunResult alone.

Three layouts, one per way of splitting:

  stages     single, data, model, pipeline, hybrid dp x pp: one row of
             blocks per data-parallel replica, each stage coloured by the
             rank holding it (a looped or V schedule places several stages
             on one rank); arrows across each cut carry activations forward
             and gradients back; replicas are joined by the gradient
             all-reduce.
  tensor     tensor, hybrid dp x tp: every planned layer split into tp
             parts, one per rank (column-parallel: each rank some output
             features; row-parallel: some input features, its partial sums
             joined by an all-reduce, marked Σ); replicated layers whole.
  shards     fsdp: one row per rank, each holding a 1/n shard of every
             block; all-gathers assemble the parameters before use and
             reduce-scatters leave each rank its shard of the gradients.

Every byte count is read from ``result.traffic`` (means over the timed
steps), block labels and parameter counts from ``result.blocks``, the
layers' split from ``result.tensor_plan``. Drawn elements carry gids:
``block:<i>``, ``block-shard:<i>:<rank>``, ``layer-shard:<name>:<tp_rank>``,
``layer-whole:<i>``, ``cut-arrow``, ``cut-local``, ``collective:<kind>``;
texts that state a collective's bytes carry ``bytes:<kind>:<group>``.
"""

from __future__ import annotations

import textwrap
from typing import Any

from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, Patch, Rectangle

from playground.views.style import KIND_COLORS, human_bytes, rank_label, run_title
from playground.rank.report import RankReport
from playground.result.run_result import RunResult

PALETTE = ["#9ECAE1", "#FDAE6B", "#A1D99B", "#BCBDDC", "#FC9272", "#C7E9C0", "#FDD0A2", "#DADAEB"]
UNIT = 0.8
"""Inches per data unit, on both axes, so blocks stay square."""
MIN_WIDTH = 9.0
"""Inches: room for the title and the notes under a small model."""
NOTE_LINE = 0.19
"""Inches per line of the notes under the picture."""


BYTES_NOTE = ("bytes per step are means over the timed steps; a collective's are the ring model applied to "
              "the recorded payload B, not bytes counted on the wire (gloo and NCCL choose their own algorithms)")
"""The last note under a picture that shows bytes."""

def rank_color(rank: int) -> str:
    return PALETTE[rank % len(PALETTE)]


# --------------------------------------------------------------------------
# Facts read from the result


def block_facts(result: RunResult) -> list[dict[str, Any]]:
    """``result.blocks``; for a result saved before it carried them, one
    entry per block the ranks hold, with no label or parameter count."""
    if result.blocks:
        return result.blocks
    n = max(end for r in result.ranks for _, _, end in held_stages(r))
    return [{"index": i, "label": f"block {i}", "params": None, "flops": None} for i in range(n)]


def held_stages(r: RankReport) -> list[tuple[int, int, int]]:
    """(stage, first block, end block) of every stage the rank holds."""
    return [tuple(s) for s in r.stages] or [(r.pp_rank, *r.blocks)]


def p2p(result: RunResult, src: int, dst: int) -> tuple[float, float]:
    """(bytes, messages) per step sent from ``src`` to ``dst``."""
    for e in result.traffic.get("p2p", []):
        if e["src"] == src and e["dst"] == dst:
            return e["bytes_per_step"], e["messages_per_step"]
    return 0.0, 0.0


def collectives(result: RunResult, kind: str) -> dict[str, dict[str, Any]]:
    """group -> the traffic entry of the group's lowest rank for ``kind``
    (every member of a group moves the same bytes)."""
    out: dict[str, dict[str, Any]] = {}
    for e in sorted(result.traffic.get("collectives", []), key=lambda e: e["rank"]):
        if e["kind"] == kind:
            out.setdefault(e["group"], e)
    return out


def collective_of(result: RunResult, kind: str, rank: int) -> list[dict[str, Any]]:
    return [e for e in result.traffic.get("collectives", []) if e["kind"] == kind and e["rank"] == rank]


def count(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e6:.1f}M" if n >= 1e6 else (f"{n / 1e3:.1f}k" if n >= 1e3 else str(n))


def batch_of(result: RunResult, dp_rank: int) -> str:
    shares = result.config.rank_batches()
    n = shares[dp_rank] if dp_rank < len(shares) else result.config.global_batch
    return f"{n} samples"


def layout_of(result: RunResult) -> str:
    c = result.config
    if c.strategy == "fsdp":
        return "shards"
    if c.tp_size > 1 or result.tensor_plan:
        return "tensor"
    return "stages"


# --------------------------------------------------------------------------
# The canvas: data units, with notes in the margin below


class Canvas:
    """An axes whose data units are ``UNIT`` inches on both axes, sized to
    what is drawn, with lines of notes under it (``note``)."""

    def __init__(self, x_lo: float, x_hi: float, y_lo: float, y_hi: float, notes: list[tuple[str, str, str]],
                 title: str):
        width = max(MIN_WIDTH, (x_hi - x_lo) * UNIT + 0.3)
        chars = int(width * 72 / (8 * 0.52))
        wrapped = [(line, gid, color) for text, gid, color in notes
                   for line in [textwrap.fill(text, chars, subsequent_indent="   ")]]
        lines = sum(t.count("\n") + 1 for t, _, _ in wrapped)
        notes_h = 0.15 + NOTE_LINE * lines + 0.1 * len(wrapped)
        title_h = 0.75
        height = (y_hi - y_lo) * UNIT + title_h + notes_h
        self.fig = Figure(figsize=(width, height))
        self.ax = self.fig.add_axes((0.15 / width, notes_h / height, 1 - 0.3 / width, (y_hi - y_lo) * UNIT / height))
        self.ax.set_axis_off()
        pad = (width - 0.3 - (x_hi - x_lo) * UNIT) / UNIT / 2  # centre the picture in a wider figure
        self.ax.set_xlim(x_lo - pad, x_hi + pad)
        self.ax.set_ylim(y_lo, y_hi)
        self.fig.suptitle(title, fontsize=10, y=1 - 0.08 / height, va="top")
        y = notes_h - 0.1
        for text, gid, color in wrapped:
            self.fig.text(0.2 / width, y / height, text, fontsize=8, va="top", color=color, gid=gid or None)
            y -= NOTE_LINE * (text.count("\n") + 1) + 0.1


def _arrow(ax, a, b, color: str, gid: str, style: str = "-|>", **kw) -> None:
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle=style, mutation_scale=12, color=color, gid=gid, **kw))


def _block_text(ax, block: dict[str, Any], x: float, y: float, width: float) -> None:
    """Label, index and parameters of a block, centred on (x, y)."""
    label = block["label"]
    lines = [(label, 0.22, 7 if len(label) <= 11 else 5.5, "black"), (f"block {block['index']}", 0.0, 6.5, "#444")]
    if block.get("params") is not None:
        lines.append((count(block["params"]) + " params", -0.22, 6, "#444"))
    for text, dy, size, color in lines:
        ax.text(x + width / 2, y + dy, text, ha="center", va="center", fontsize=size, color=color)


def _rank_legend(canvas: Canvas, ranks: list[RankReport], result: RunResult) -> None:
    handles = [Patch(facecolor=rank_color(r.rank), edgecolor="#444", label=rank_label(result, r)) for r in ranks]
    canvas.ax.legend(handles=handles, loc="upper right", fontsize=7, frameon=False,
                     ncol=min(4, len(handles)), bbox_to_anchor=(1.0, 1.0))


# --------------------------------------------------------------------------
# The figure


def plot_dataflow(result: RunResult) -> Figure:
    """The split drawn as data flow (see the module's docstring): blocks,
    the ranks holding them, and the bytes per step that cross between
    ranks, all read from ``result``."""
    layout = layout_of(result)
    if layout == "shards":
        return _shards(result)
    if layout == "tensor":
        return _tensor(result)
    return _stages(result)


def _title(result: RunResult, what: str) -> str:
    return f"How the model is split — {run_title(result)}\n{what}"


# -- stages: single, data, model, pipeline, hybrid dp x pp ---------------------------------


CUT_GAP, ROW_GAP, BLOCK_H = 1.9, 2.6, 0.9


def _stages(result: RunResult) -> Figure:
    ranks = result.ranks
    blocks = block_facts(result)
    replicas = sorted({r.dp_rank for r in ranks})
    owner: dict[tuple[int, int], RankReport] = {}
    ranges: dict[int, tuple[int, int]] = {}
    for r in ranks:
        for s, first, end in held_stages(r):
            owner[(r.dp_rank, s)] = r
            ranges[s] = (first, end)
    stages = sorted(ranges)
    cuts = len(stages) - 1
    # Which (cut, direction) each pair of ranks carries: a pair serving one cut is labelled on its arrows.
    uses: dict[tuple[int, int], list[str]] = {}
    for d in replicas:
        for s in stages[:-1]:
            a, b = owner[(d, s)].rank, owner[(d, s + 1)].rank
            if a != b:
                uses.setdefault((a, b), []).append(f"activations across cut {s}|{s + 1}")
                uses.setdefault((b, a), []).append(f"gradients across cut {s}|{s + 1}")
    notes: list[tuple[str, str, str]] = []
    for (a, b), what in sorted(uses.items()):
        if len(what) > 1:
            total, n = p2p(result, a, b)
            notes.append((f"rank {a} → rank {b}: {human_bytes(total)}/step in {n:g} sends ({', '.join(what)})",
                          f"bytes:p2p:{a}-{b}", "#333"))
    if len(replicas) > 1:
        notes.append((f"all-reduce of gradients among the {len(replicas)} replicas of each stage (DDP): B per rank "
                      f"per step as labelled; by the ring model each rank sends 2(n−1)/n · B and receives as much.", "",
                      KIND_COLORS["all_reduce"]))
    elif cuts == 0 and len(ranks) == 1:
        notes.append(("one rank holds every block: nothing crosses a device", "", "#555"))
    if any(owner[(d, s)].rank == owner[(d, s + 1)].rank for d in replicas for s in stages[:-1]):
        notes.append(("dotted: consecutive stages on the same rank (a V schedule's turn): the activations stay "
                      "in memory, nothing is sent", "", "#555"))
    if cuts or len(replicas) > 1:
        notes.append((BYTES_NOTE, "", "#555"))

    x_lo, x_hi = -1.9, len(blocks) + cuts * CUT_GAP + 1.1
    y_lo, y_hi = -(len(replicas) - 1) * ROW_GAP - 1.0, 1.45
    cut_text = (f"cut after block{'s' if cuts > 1 else ''} " + ", ".join(str(p - 1) for p in result.split_points)
                if result.split_points else "no cut")
    canvas = Canvas(x_lo, x_hi, y_lo, y_hi, notes, _title(result, f"{len(blocks)} blocks, {cut_text}"))
    ax = canvas.ax
    stage_x: dict[int, float] = {}
    x = 0.0
    for s in stages:
        stage_x[s] = x
        x += ranges[s][1] - ranges[s][0] + CUT_GAP
    for row, d in enumerate(replicas):
        y = -row * ROW_GAP
        _arrow(ax, (-0.6, y), (0, y), "#555", "input")
        ax.text(-0.65, y, f"batch\n{batch_of(result, d)}", ha="right", va="center", fontsize=8)
        for s in stages:
            r, (first, end) = owner[(d, s)], ranges[s]
            for i in range(first, end):
                bx = stage_x[s] + i - first
                ax.add_patch(Rectangle((bx, y - BLOCK_H / 2), 0.92, BLOCK_H, facecolor=rank_color(r.rank),
                                       edgecolor="#444", gid=f"block:{i}"))
                _block_text(ax, blocks[i], bx, y, 0.92)
            head = f"stage {s}\nrank {r.rank}" if len(stages) > 1 else rank_label(result, r)
            ax.text(stage_x[s] + (end - first - 0.08) / 2, y + BLOCK_H / 2 + 0.08, head, ha="center", va="bottom",
                    fontsize=8, fontweight="bold")
            if s != stages[-1]:
                a_x = stage_x[s] + end - first - 0.08 + 0.1
                _cut(ax, result, uses, r, owner[(d, s + 1)], a_x, stage_x[s + 1] - 0.1, y)
        end_x = stage_x[stages[-1]] + ranges[stages[-1]][1] - ranges[stages[-1]][0]
        _arrow(ax, (end_x - 0.05, y), (end_x + 0.45, y), "#555", "output")
        ax.text(end_x + 0.5, y, "loss", ha="left", va="center", fontsize=8)
    if len(replicas) > 1:
        y_top, y_bot = 0.0, -(len(replicas) - 1) * ROW_GAP
        for s in stages:
            r = owner[(replicas[0], s)]
            xs = stage_x[s] + (ranges[s][1] - ranges[s][0]) / 2 - 0.04
            _arrow(ax, (xs, y_top - BLOCK_H / 2 - 0.05), (xs, y_bot + BLOCK_H / 2 + 0.55),
                   KIND_COLORS["all_reduce"], "collective:all_reduce", style="<|-|>")
            b = _dp_bytes(result, r)
            ax.text(xs + 0.1, y_top - ROW_GAP / 2 + 0.05, f"all-reduce\nB = {human_bytes(b)}\nper rank per step",
                    ha="left", va="center", fontsize=7, color=KIND_COLORS["all_reduce"],
                    gid=f"bytes:all_reduce:{_dp_group(result, r)}")
    return canvas.fig


def _dp_entries(result: RunResult, r: RankReport) -> list[dict[str, Any]]:
    """The rank's gradient all-reduces among replicas (DDP records group "dp")."""
    return [e for e in collective_of(result, "all_reduce", r.rank) if e["group"] == "dp" or e["group_size"] > 1]


def _dp_bytes(result: RunResult, r: RankReport) -> float:
    return sum(e["bytes_per_step"] for e in _dp_entries(result, r))


def _dp_group(result: RunResult, r: RankReport) -> str:
    return ",".join(sorted({e["group"] for e in _dp_entries(result, r)})) or "dp"


def _cut(ax, result: RunResult, uses: dict, left: RankReport, right: RankReport, a: float, b: float,
         y: float) -> None:
    """Arrows across a cut: activations forward, gradients back, with bytes
    per step when the pair of ranks carries this cut alone."""
    if left.rank == right.rank:
        ax.plot([a, b], [y, y], ls=":", color="#777", lw=1.5, gid="cut-local")
        ax.text((a + b) / 2, y + 0.1, f"same rank {left.rank}\nnothing sent", ha="center", va="bottom", fontsize=7,
                color="#555")
        return
    for src, dst, dy, kind, what in ((left, right, 0.15, "send", "activations"),
                                     (right, left, -0.15, "recv", "gradients")):
        start, end = (a, b) if src is left else (b, a)
        _arrow(ax, (start, y + dy), (end, y + dy), KIND_COLORS[kind], "cut-arrow")
        head = f"{what} {'→' if dy > 0 else '←'}"
        if len(uses.get((src.rank, dst.rank), [])) == 1:
            total, n = p2p(result, src.rank, dst.rank)
            text = f"{head}\n{human_bytes(total)}/step" + (f"\n{n:g} sends × {human_bytes(total / n)}" if n > 1 else "")
        else:
            text = f"{head}\nrank {src.rank} → {dst.rank}\n(see below)"
        ax.text((a + b) / 2, y + dy + (0.07 if dy > 0 else -0.07), text, ha="center",
                va="bottom" if dy > 0 else "top", fontsize=7, gid=f"bytes:p2p:{src.rank}-{dst.rank}")


# -- tensor: tensor, hybrid dp x tp ------------------------------------------------------------

COL_W, LAYER_H, COL_GAP = 1.3, 0.5, 0.35
KIND_WORDS = {"colwise": "column-parallel", "rowwise": "row-parallel"}


def planned_layers(result: RunResult, index: int) -> list[tuple[str, str]]:
    """(module name, colwise | rowwise) of block ``index``'s planned layers, in plan order."""
    return [(name, kind) for name, kind in result.tensor_plan.items() if name.split(".")[0] == str(index)]


def _tensor(result: RunResult) -> Figure:
    ranks = result.ranks
    blocks = block_facts(result)
    replicas = sorted({r.dp_rank for r in ranks})
    tp = result.config.tp_size
    layers = {b["index"]: planned_layers(result, b["index"]) for b in blocks}
    rows_h = max(1, *(len(v) for v in layers.values())) * LAYER_H + 0.8
    row_gap = rows_h + 1.2

    notes: list[tuple[str, str, str]] = []
    tp_groups = {}
    for d in replicas:
        members = sorted((r for r in ranks if r.dp_rank == d), key=lambda r: r.tp_rank)
        tp_groups[d] = members
    tp_reduced = {g: e for g, e in collectives(result, "all_reduce").items()
                  if e["group_size"] == tp and _same_replica(ranks, g)}
    for groups, e in _by_numbers(tp_reduced):
        notes.append((f"Σ all-reduce among tp ranks {_among(groups)}: sums the "
                      f"row-parallel parts' partial outputs (forward) and the column-parallel layers' input "
                      f"gradients (backward): {e['calls_per_step']:g} calls/step, "
                      f"B = {human_bytes(e['bytes_per_step'])} per rank per step; by the ring model each rank sends 2(n−1)/n · B = "
                      f"{human_bytes(e['ring_bytes_per_step'])} and receives as much", f"bytes:all_reduce:{'|'.join(groups)}", KIND_COLORS["all_reduce"]))
    if len(replicas) > 1:
        notes += _fsdp_notes(result, "over the dp replicas (FSDP on each tp shard): ")
    if not result.tensor_plan:
        notes.append(("no layer of this model was planned for tensor parallelism: every rank holds every block whole",
                      "", "#555"))
    notes.append((BYTES_NOTE, "", "#555"))

    width = len(blocks) * (COL_W + COL_GAP)
    x_lo, x_hi = -1.9, width + 0.6
    y_lo, y_hi = -(len(replicas) - 1) * row_gap - rows_h + 0.4, 1.6
    planned = sum(1 for v in layers.values() if v)
    what = (f"{planned} of {len(blocks)} blocks have layers split among {tp} tensor-parallel ranks"
            + ("; the others are replicated" if planned < len(blocks) else ""))
    canvas = Canvas(x_lo, x_hi, y_lo, y_hi, notes, _title(result, what))
    ax = canvas.ax
    for row, d in enumerate(replicas):
        top = -row * row_gap + 0.5
        members = tp_groups[d]
        ax.text(-0.65, top - rows_h / 2, f"batch\n{batch_of(result, d)}\n" +
                "\n".join(f"rank {r.rank}" for r in members), ha="right", va="center", fontsize=8)
        for b in blocks:
            i = b["index"]
            x = i * (COL_W + COL_GAP)
            if row == 0:  # every replica holds the same blocks
                _block_text(ax, b, x, top + 0.45, COL_W)
            frame_h = rows_h - 0.6
            ax.add_patch(Rectangle((x, top - frame_h), COL_W, frame_h, facecolor="white", edgecolor="#444",
                                   gid=f"block:{i}"))
            if i + 1 < len(blocks):
                _arrow(ax, (x + COL_W + 0.03, top - frame_h / 2), (x + COL_W + COL_GAP - 0.03, top - frame_h / 2),
                       "#555", "activation")
            if not layers[i]:
                ax.add_patch(Rectangle((x + 0.08, top - frame_h + 0.08), COL_W - 0.16, frame_h - 0.16,
                                       facecolor="#EEE", edgecolor="none", gid=f"layer-whole:{i}"))
                ax.text(x + COL_W / 2, top - frame_h / 2, "replicated:\nevery rank\nholds it whole",
                        ha="center", va="center", fontsize=6.5, color="#444")
                continue
            for k, (name, kind) in enumerate(layers[i]):
                ly = top - 0.1 - (k + 1) * LAYER_H
                part = (COL_W - 0.16) / len(members)
                for t, r in enumerate(members):
                    ax.add_patch(Rectangle((x + 0.08 + t * part, ly + 0.04), part, LAYER_H - 0.08,
                                           facecolor=rank_color(r.rank), edgecolor="white", linewidth=0.8,
                                           gid=f"layer-shard:{name}:{r.tp_rank}"))
                ax.text(x + COL_W / 2, ly + LAYER_H / 2, f"{name}\n{KIND_WORDS[kind]}", ha="center", va="center",
                        fontsize=5.5, linespacing=1.0)
                if kind == "rowwise":
                    cx, cy = x + COL_W + 0.02, ly + LAYER_H / 2
                    ax.add_patch(Circle((cx, cy), 0.13, facecolor="white", edgecolor=KIND_COLORS["all_reduce"],
                                        linewidth=1.2, gid="collective:all_reduce", zorder=3))
                    ax.text(cx, cy, "Σ", ha="center", va="center", fontsize=7, color=KIND_COLORS["all_reduce"],
                            zorder=4)
        if row + 1 < len(replicas):
            _fsdp_arrows(ax, width / 2, top - rows_h + 0.55, top - row_gap + 0.05)
    _rank_legend(canvas, ranks, result)
    return canvas.fig


def _same_replica(ranks: list[RankReport], group: str) -> bool:
    """A group of ranks that all share one dp replica (a tensor-parallel group)."""
    if not group.startswith("ranks:"):
        return True
    members = {int(x) for x in group[6:].split(",")}
    return len({r.dp_rank for r in ranks if r.rank in members}) == 1


def _members(group: str) -> str:
    return group[6:] if group.startswith("ranks:") else group


def _by_numbers(entries: dict[str, dict[str, Any]]) -> list[tuple[list[str], dict[str, Any]]]:
    """Groups whose members moved the same bytes in as many calls, together: one note for them all."""
    out: dict[tuple, tuple[list[str], dict[str, Any]]] = {}
    for group, e in entries.items():
        key = (e["group_size"], e["calls_per_step"], e["bytes_per_step"])
        out.setdefault(key, ([], e))[0].append(group)
    return list(out.values())


def _among(groups: list[str]) -> str:
    return " and ".join(_members(g) for g in groups) + (" (each group)" if len(groups) > 1 else "")


def _fsdp_notes(result: RunResult, prefix: str = "") -> list[tuple[str, str, str]]:
    notes = []
    for kind, what, ring in (("all_gather", "all-gather of parameters before each block's forward and backward",
                              "(n−1)/n · B"),
                             ("reduce_scatter", "reduce-scatter of gradients after backward, each rank keeping "
                              "the sum for its own shard", "(n−1)/n · B")):
        for groups, e in _by_numbers(collectives(result, kind)):
            notes.append((f"{prefix}{what}, among ranks {_among(groups)}: {e['calls_per_step']:g} calls/step, "
                          f"B = {human_bytes(e['bytes_per_step'])} per rank per step; by the ring model each rank sends {ring} = "
                          f"{human_bytes(e['ring_bytes_per_step'])} and receives as much",
                          f"bytes:{kind}:{'|'.join(groups)}", KIND_COLORS[kind]))
    return notes


def _fsdp_arrows(ax, x: float, y_top: float, y_bot: float) -> None:
    """All-gather (parameters, down) and reduce-scatter (gradients) between two rows of ranks."""
    for dx, kind, text in ((-0.5, "all_gather", "all-gather\nparameters"),
                           (0.5, "reduce_scatter", "reduce-scatter\ngradients")):
        _arrow(ax, (x + dx, y_top), (x + dx, y_bot), KIND_COLORS[kind], f"collective:{kind}", style="<|-|>")
        ax.text(x + dx + (0.1 if dx > 0 else -0.1), (y_top + y_bot) / 2, text, ha="left" if dx > 0 else "right",
                va="center", fontsize=7, color=KIND_COLORS[kind])


# -- shards: fsdp ------------------------------------------------------------------------------


def _shards(result: RunResult) -> Figure:
    ranks = sorted(result.ranks, key=lambda r: r.rank)
    blocks = block_facts(result)
    n = len(ranks)
    row_gap = BLOCK_H + 1.5
    notes = _fsdp_notes(result)
    notes.append((f"each rank keeps 1/{n} of every block's parameters, gradients and optimizer state (its shard, "
                  f"filled); the outline is the whole block, assembled only while it runs", "", "#555"))
    notes.append((BYTES_NOTE, "", "#555"))
    x_lo, x_hi = -1.9, len(blocks) + 1.1
    y_lo, y_hi = -(n - 1) * row_gap - 0.8, 1.45
    canvas = Canvas(x_lo, x_hi, y_lo, y_hi, notes,
                    _title(result, f"{len(blocks)} blocks, each sharded among {n} ranks (FSDP)"))
    ax = canvas.ax
    for row, r in enumerate(ranks):
        y = -row * row_gap
        _arrow(ax, (-0.6, y), (0, y), "#555", "input")
        ax.text(-0.65, y, f"rank {r.rank}\nbatch\n{batch_of(result, r.dp_rank)}", ha="right", va="center", fontsize=8)
        for b in blocks:
            i = b["index"]
            ax.add_patch(Rectangle((i, y - BLOCK_H / 2), 0.92, BLOCK_H, facecolor="white", edgecolor="#444",
                                   linestyle="--", gid=f"block:{i}"))
            ax.add_patch(Rectangle((i, y + BLOCK_H / 2 - (row + 1) * BLOCK_H / n), 0.92, BLOCK_H / n,
                                   facecolor=rank_color(r.rank), edgecolor="none", alpha=0.9,
                                   gid=f"block-shard:{i}:{r.rank}"))
            _block_text(ax, b, i, y, 0.92)
        _arrow(ax, (len(blocks) - 0.05, y), (len(blocks) + 0.45, y), "#555", "output")
        ax.text(len(blocks) + 0.5, y, "loss", ha="left", va="center", fontsize=8)
        if row + 1 < n:
            _fsdp_arrows(ax, len(blocks) / 2, y - BLOCK_H / 2 - 0.05, y - row_gap + BLOCK_H / 2 + 0.05)
    ax.text(len(blocks) / 2, 1.0, "filled: the rank's shard of each block", ha="center", fontsize=8, color="#444")
    return canvas.fig


__all__ = ["plot_dataflow", "layout_of", "planned_layers", "block_facts"]
