"""The app's widgets, each drawn from what it is given: the controls and the
split strip, the result tabs (each figure rendered only when its tab is
shown), the live view of a run in progress, the history with its
side-by-side compare, and the sweep. No widget here runs anything."""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

import ipywidgets as W
from matplotlib.figure import Figure

from playground.views import plots
from playground.spec.config import OPTIMIZERS, PRECISIONS, RECOMPUTE, SCHEDULES, STRATEGIES, ConfigError, RunConfig
from playground.predict.formulas import stage_shares
from playground.zoo.models import MODELS
from playground.result.run_result import RunResult, labelled_output
from playground.views.app.form import INPUTS, STRATEGY_OWN, block_infos, control_value, field_value
from playground.views.app.whatif import LEVERS, WhatIf, what_if

PAGE_WIDTH = "1260px"  # fits a 1280 px window
STAGE_COLORS = ["#9ECAE1", "#FDAE6B", "#A1D99B", "#BCBDDC", "#FC9272", "#C7E9C0", "#FDD0A2", "#DADAEB"]
GREEN, RED, GREY, AMBER = "#1A7F37", "#B00020", "#555", "#8A5A00"
CSS = ("<style>.jupyter-widgets.jupyter-widget-tab.playground-results > .lm-TabBar .lm-TabBar-tab "
       "{ flex: 0 0 auto; }</style>")
"""Tabs as wide as their titles (ipywidgets gives each 144 px and cuts longer titles)."""
ZERO_STAGE_OPTIONS = [("strategy's own", STRATEGY_OWN), ("0 · DDP", 0), ("1 · optimizer state", 1),
                      ("2 · + gradients", 2), ("3 · + parameters", 3)]
"""The ZeRO-stage dropdown: each stage with what its ranks shard."""
SCREEN_READER_ONLY = "position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap"


PICTURE_FORMAT = "svg+xml"
"""The app's pictures are SVG with text kept as text: the browser sets the
type, and matplotlib only writes it out, two to four times faster than
rendering a PNG of the same figure at 90 dpi."""


def picture(fig: Figure) -> bytes:
    """``fig`` as SVG, its text as text (``svg.fonttype`` "none"): the
    figure's inches at 72 points each, scaled to the page by ``fit``."""
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg")
    return buf.getvalue()


def bubble_sentences(bubble: dict) -> str:
    """What the formula, the replay and the measurement of a pipeline's
    idle share each are, one sentence each, with their numbers
    (``RunResult.bubble``)."""
    def shares(xs):
        return ", ".join(f"{x:.0%}" for x in xs)

    text = (f"The formula {bubble['formula']} gives {bubble['predicted']:.0%}: the idle share of equal stages "
            f"when only compute takes time. ")
    if bubble.get("replayed"):
        text += (f"The replay of the schedule's own action order (the 'planned' lanes) with this run's measured "
                 f"compute, message and host times leaves {shares(bubble['replayed'])} idle per rank. ")
    return text + (f"The measurement: each rank's time outside compute and communication (waiting for peers, "
                   f"host work between actions) was {shares(bubble['measured'])} of the timed steps.")



def fit() -> W.Layout:
    """A figure's width, shrunk to the page's when wider."""
    return W.Layout(max_width="100%", height="auto")


def count(n: float) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else (f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:g}")


def esc(x: Any) -> str:
    return html.escape(str(x))


def error_html(e: ConfigError) -> str:
    return (f"<div style='color:{RED}'>✗ <b>{esc(e.field)}</b> = <code>{esc(repr(e.value))}</code>: "
            f"{esc(e.allowed)}</div>")


def check_html(result: RunResult) -> str:
    """The status line: the baseline check, then the headline numbers."""
    b = result.baseline
    diff = f"max |Δparam| = {b['max_abs_param_diff']:.2e}"
    text = (f"baseline check passed ({diff} ≤ {b['tolerance']:.0e})" if b["passed"] else
            f"baseline check FAILED ({diff} > tolerance {b['tolerance']:.0e})")
    if b.get("compares") == "loss":  # equality with one device is not expected: the run says why
        loss = f"mean loss {b['mean_loss_rel_diff']:.1%} from one device's"
        text = (f"loss check passed ({loss} ≤ {b['loss_tolerance']:.0%}; {diff}, not expected to match)"
                if b["passed"] else f"loss check FAILED ({loss} > {b['loss_tolerance']:.0%})")
        why = "".join(f"<div style='color:{AMBER};font-weight:normal'>≠ {esc(w)}</div>" for w in b["why"])
        more = f" · {result.throughput_samples_per_s:.0f} samples/s · wall {result.wall_s:.1f} s"
        return f"<b style='color:{GREEN if b['passed'] else RED}'>{text}</b>{esc(more)}{why}"
    more = f" · {result.throughput_samples_per_s:.0f} samples/s · wall {result.wall_s:.1f} s"
    if result.accuracy is not None:
        more += f" · accuracy {result.accuracy:.3f} (single device {b['accuracy']:.3f})"
    return f"<b style='color:{GREEN if b['passed'] else RED}'>{text}</b>{esc(more)}"


def notes_html(result: RunResult) -> str:
    """The run's notes (a diverged loss, layers left whole by the tensor
    plan, targets cast), then what the ranks printed, labelled by rank."""
    notes = "".join(f"<div style='color:{AMBER}'>⚠ {esc(n)}</div>" for n in result.notes)
    return notes + output_html({r.rank: r.output for r in result.ranks})


def output_html(outputs: dict[int, str]) -> str:
    """What each rank printed, folded away under one line: ``[rank r]``
    before every line, rank by rank, never interleaved."""
    text = labelled_output(outputs)
    if not text:
        return ""
    lines = text.count("\n") + 1
    return (f"<details class='playground-rank-output'><summary style='color:{GREY}'>what the ranks printed "
            f"({lines} line{'s' if lines > 1 else ''})</summary><pre style='max-height:16em;overflow:auto'>"
            f"{esc(text)}</pre></details>")


def balance_html(result: RunResult) -> str:
    """Each stage's estimated FLOP share beside the compute share measured for it."""
    stages = getattr(result, "stage_balance", None) or []
    if len(stages) < 2:
        return ""
    return "<br>stage balance: " + esc(" · ".join(
        f"stage {s['stage']}: {s['flops_share']:.0%} of FLOPs, {s['compute_share']:.0%} of measured compute"
        for s in stages))


def signed_bytes(n: float) -> str:
    """'+48 B', '−1.2 KiB'."""
    return ("+" if n > 0 else "−") + plots.human_bytes(abs(n))


def zero_html(zero: dict[str, Any]) -> str:
    """The ZeRO paper's bars in words (``RunResult.zero``): the stage, its
    formulas with Ψ, N_d and K, the source, and where the cost model's exact
    bytes part from the formula (``gap``, per rank), with the record's notes
    on why."""
    f = zero["formula"]
    text = (f"hatched bars: the ZeRO paper's bytes per rank at stage {zero['stage']}: parameters {f['params']}, "
            f"gradients {f['grads']}, optimizer state {f['optimizer']}, with Ψ = {zero['psi']:,} parameters, "
            f"N_d = {zero['n_d']} ranks, K = {zero['k']} bytes of optimizer state per parameter "
            f"(source: {zero['source']}). ")
    gaps = [(g["rank"], [(name, g[name]) for name in ("params", "grads", "optimizer") if g[name]])
            for g in zero["gap"]]
    if any(parts for _, parts in gaps):
        text += "The cost model's prediction minus the formula: " + "; ".join(
            f"rank {rank} " + (", ".join(f"{name} {signed_bytes(v)}" for name, v in parts) or "none")
            for rank, parts in gaps) + "."
    else:
        text += "The prediction equals the formula on every rank."
    if zero.get("partition"):
        text += f" Elements whose optimizer state each rank keeps (Ψ_r): {zero['partition']}."
    notes = "".join(f"<li>{esc(n)}</li>" for n in zero.get("notes", []))
    return (f"<div class='playground-zero'>{esc(text)}</div>"
            + (f"<details><summary style='color:{GREY}'>notes on the formula</summary><ul style='margin:2px 0'>{notes}"
               f"</ul></details>" if notes else ""))


def trace_link_html(result: RunResult) -> str:
    """A link that saves the run's Chrome trace (``RunResult.to_chrome_trace``).
    The JSON travels in a data URI, so it works alike in JupyterLab and Voila
    and writes no file on the server."""
    c = result.config
    name = f"trace-{c.model}-{c.strategy}-{result.world_size}ranks.json"
    data = json.dumps(result.to_chrome_trace()).encode()
    href = "data:application/json;base64," + base64.b64encode(data).decode("ascii")
    return (f"<a class='playground-trace' download='{esc(name)}' href='{href}' style='color:#0969DA'>"
            f"⬇ save {esc(name)}</a> <span style='color:{GREY}'>({plots.human_bytes(len(data))}; "
            f"open it in ui.perfetto.dev or chrome://tracing)</span>")


def key_numbers(n: int, result: RunResult) -> str:
    c = result.config
    t = {k: sum(r.time.get(k, 0.0) for r in result.ranks) / len(result.ranks) * 1e3
         for k in ("compute", "comm", "wait", "overhead", "overlapped")}
    rows = [("run", f"#{n} {plots.run_title(result)}"), ("split", list(result.split_points) or "-"),
            ("samples/s", f"{result.throughput_samples_per_s:.0f}"), ("wall", f"{result.wall_s:.1f} s"),
            ("per rank (mean)", f"compute {t['compute']:.1f} ms · comm {t['comm']:.1f} ms · waiting for peers "
                                f"{t['wait']:.1f} ms · runtime overhead {t['overhead']:.1f} ms "
                                f"(comm hidden under compute {t['overlapped']:.1f} ms)"),
            ("sent (all ranks)", plots.human_bytes(sum(r.bytes_sent for r in result.ranks))),
            ("max |Δparam|", f"{result.baseline['max_abs_param_diff']:.2e} "
                             f"({'passed' if result.passed else 'FAILED'})")]
    if result.bubble:
        measured, replayed = result.bubble["measured"], result.bubble.get("replayed")
        rows.append(("bubble", f"measured {sum(measured) / len(measured):.0%}"
                     + (f" · replayed {sum(replayed) / len(replayed):.0%}" if replayed else "")
                     + f" · formula {result.bubble['predicted']:.0%} (means over ranks)"))
    if result.accuracy is not None:
        rows.append(("accuracy", f"{result.accuracy:.3f}"))
    rows.append(("steps · lr", f"{c.steps} · {c.lr:g} {c.optimizer}"))
    cells = "".join(f"<tr><td style='color:{GREY};padding-right:8px'>{esc(k)}</td><td>{esc(v)}</td></tr>"
                    for k, v in rows)
    return f"<table style='font-size:12px'>{cells}</table>"



def live_html(losses: list[float], step_s: dict[int, float], steps: int) -> str:
    """A run in progress, drawn as inline SVG (no figure to render): the
    loss of each finished step (summed over ranks) against the step, and
    each rank's latest step time as a bar (ms)."""
    w, h = 220, 56
    parts = [f"<span style='color:{GREY}'>loss</span> "]
    if losses:
        lo, hi = min(losses), max(losses)
        span = (hi - lo) or 1.0
        pts = " ".join(f"{2 + (w - 4) * i / max(1, steps - 1):.1f},{h - 4 - (h - 8) * (v - lo) / span:.1f}"
                       for i, v in enumerate(losses))
        parts.append(f"<svg class='playground-live-loss' width='{w}' height='{h}' style='vertical-align:middle;"
                     f"border:1px solid #DDD'><polyline points='{pts}' fill='none' stroke='{plots.KIND_COLORS['forward']}'"
                     f" stroke-width='1.5'/></svg> <code>{losses[-1]:.4f}</code> at step {len(losses) - 1}")
    else:
        parts.append("<i>no step finished yet</i>")
    if step_s:
        top = max(step_s.values()) or 1.0
        bars = "".join(
            f"<div class='playground-live-rank' style='font-size:11px;line-height:13px'>rank {r} "
            f"<span style='display:inline-block;width:{int(120 * s / top)}px;height:9px;"
            f"background:{plots.KIND_COLORS['forward']}'></span> {s * 1e3:.1f} ms</div>"
            for r, s in sorted(step_s.items()))
        parts.append(f"<div style='display:inline-block;vertical-align:middle;margin-left:16px'>"
                     f"<span style='color:{GREY}'>step time per rank</span>{bars}</div>")
    return "".join(parts)


class SplitStrip(W.VBox):
    """The model's blocks in a row with a toggle in every gap: the toggles
    that are on are the cuts (split points), which define the stages."""

    def __init__(self):
        super().__init__(layout=W.Layout(width="100%"))
        self.model: str | None = None
        self.toggles: list[W.ToggleButton] = []
        self.cells: list[W.HTML] = []
        self.balance = W.Button(description="balance", tooltip="cuts that balance the stages' FLOPs",
                                layout=W.Layout(width="90px"))
        self.stage_shares = W.HTML()
        self.row = W.Box(layout=W.Layout(flex_flow="row wrap", align_items="center"))
        self.children = [W.HBox([W.HTML("<b>split points</b> (✂ = cut between two blocks)"), self.balance]),
                         self.row, self.stage_shares]

    def set_model(self, model: str) -> None:
        self.model = model
        infos = block_infos(model)
        self.cells = [W.HTML(layout=W.Layout(width="86px")) for _ in infos]
        self.toggles = [W.ToggleButton(description="✂", tooltip=f"cut between block {i - 1} and block {i}",
                                       layout=W.Layout(width="30px", padding="0")) for i in range(1, len(infos))]
        parts: list[W.Widget] = [self.cells[0]]
        for toggle, cell in zip(self.toggles, self.cells[1:]):
            parts += [toggle, cell]
        self.row.children = parts

    @property
    def enabled(self) -> bool:
        return not self.balance.disabled

    @property
    def cuts(self) -> tuple[int, ...]:
        return tuple(i + 1 for i, t in enumerate(self.toggles) if t.value)

    def set_cuts(self, cuts: tuple[int, ...]) -> None:
        for i, t in enumerate(self.toggles):
            t.value = i + 1 in cuts

    def set_enabled(self, on: bool) -> None:
        for t in self.toggles:
            t.disabled = not on
        self.balance.disabled = not on

    def draw(self) -> None:
        """Colour each block by its stage; list each stage's share of the model."""
        infos = block_infos(self.model)
        on = self.enabled
        shares = stage_shares(infos, self.cuts if on else ())
        for s in shares:
            for i in range(*s["blocks"]):
                b = infos[i]
                color = STAGE_COLORS[s["stage"] % len(STAGE_COLORS)] if on else "#EEE"
                self.cells[i].value = (
                    f"<div style='background:{color};border:1px solid #999;border-radius:3px;padding:2px;"
                    f"font-size:11px;line-height:1.25;text-align:center'><b>{esc(b.label)}</b><br>"
                    f"{count(b.params)} params<br>{count(b.flops)} FLOPs</div>")
        if not on:
            self.stage_shares.value = f"<span style='color:{GREY}'>this strategy does not cut the model</span>"
            return
        slowest = max(s["flop_share"] for s in shares)
        spans = []
        for s in shares:
            (first, end), color = s["blocks"], STAGE_COLORS[s["stage"] % len(STAGE_COLORS)]
            text = (f"stage {s['stage']}: blocks {first}–{end - 1} · {s['flop_share']:.0%} FLOPs · "
                    f"{s['param_share']:.0%} params")
            if s["flop_share"] == slowest:  # the slowest stage sets a pipeline's pace
                text = f"<b>{text}</b>"
            spans.append(f"<span style='background:{color};padding:0 4px'>{text}</span>")
        self.stage_shares.value = " &nbsp;│&nbsp; ".join(spans)


def legend_html(entries: list[plots.LegendEntry], title: str, run: str) -> str:
    """The timeline's title and legend as HTML swatches (``timeline_figure``'s
    entries), for the picture drawn without them."""
    def swatch(e: plots.LegendEntry) -> str:
        if e.line:
            return (f"<span style='display:inline-block;width:18px;border-top:2px dashed {e.color};"
                    "margin-bottom:3px'></span>")
        pattern = ("background-image:repeating-linear-gradient(45deg,{0} 0 1px,transparent 1px 4px);"
                   .format(e.edge or e.color) if e.hatch else "")
        return (f"<span style='display:inline-block;width:14px;height:10px;background-color:{e.color};"
                f"opacity:{e.alpha};{pattern}border:1px solid {e.edge or e.color}'></span>")

    items = "".join(f"<span style='margin-right:12px;white-space:nowrap'>{swatch(e)} {esc(e.label)}</span>"
                    for e in entries)
    return (f"<div class='playground-timeline-legend' style='font-size:12px;line-height:1.8'>"
            f"<b>What each rank did, step by step — {esc(run)}</b><br>{items}"
            f"<span style='color:{GREY}'>{esc(title)}</span></div>")


class ResultsView(W.Tab):
    """One tab per picture of the latest run, each drawn from the RunResult
    when its tab is first shown (``selected_index``), never before: a run
    costs the rendering of the one figure looked at."""

    TITLES = ("timeline", "compute / comm / idle", "memory", "loss and check", "data flow")
    PLOTS = ("plot_timeline", "plot_time_breakdown", "plot_memory", "plot_losses", "plot_dataflow")

    def __init__(self):
        super().__init__(children=[W.HTML("no run yet")], layout=W.Layout(width="100%"))
        self.add_class("playground-results")
        self.titles = ("results",)
        self.result: RunResult | None = None
        self.figures: dict[str, bytes] = {}
        """SVG bytes of the figures drawn so far for ``result``, by tab title"""
        self.what_if = WhatIfPanel()
        """Under the memory figure: other settings of the memory levers, predicted"""
        # One caption, picture and pane per tab, made once and refilled by
        # each run: a widget made anew costs more than its value set.
        self._captions = [W.HTML() for _ in self.TITLES]
        self._pictures = [W.Image(format=PICTURE_FORMAT, layout=fit()) for _ in self.TITLES]
        self._pictures[0].add_class("playground-timeline")
        self._panes = [W.VBox([caption]) for caption in self._captions]
        self.observe(lambda change: self.draw(change["new"]), names="selected_index")

    def show(self, result: RunResult) -> None:
        """Set the captions of every tab and draw the selected tab's figure."""
        self.result, self.figures = result, {}
        self.what_if.set_result(result)
        for pane, caption, text in zip(self._panes, self._captions, self.captions(result)):
            caption.value = text
            pane.children = [caption]
        if self.titles != self.TITLES:
            self.children = self._panes
            self.titles = self.TITLES
        self.draw(self.selected_index or 0)

    @staticmethod
    def captions(result: RunResult) -> list[str]:
        bubble = bubble_sentences(result.bubble) if result.bubble else \
            "no pipeline here: idle time is waiting for peers"
        memory = esc("solid bars: measured; outlined bars: the cost model's prediction beside them"
                     if result.predictions else f"no cost-model prediction for strategy '{result.config.strategy}' yet")
        if result.zero:
            memory += zero_html(result.zero)
        return [esc("each rank's events over the last two steps; hatched: waiting for a peer"),
                esc(bubble) + balance_html(result), memory, check_html(result),
                esc("bytes per step across each cut and between replicas, as measured")]

    def draw(self, index: int | None) -> None:
        """Render tab ``index``'s figure unless it is drawn already."""
        result = self.result
        if result is None or index is None or self.TITLES[index] in self.figures:
            return
        if index == 0:  # the title, legend and notes as text beside the picture, not drawn in it
            fig, entries = plots.timeline_figure(result, framed=False)
        else:
            fig = getattr(plots, self.PLOTS[index])(result)
        data = picture(fig)
        if result is not self.result:  # a newer run arrived meanwhile: this picture is stale
            return
        pane = self.children[index]
        caption = pane.children[0]
        if index == 0:  # the timeline's rows as drawn, in words: its alt text, for screen readers
            caption.value += legend_html(entries, plots.legend_title(result), plots.run_title(result))
            rows = [t.get_text() for t in fig.axes[0].get_yticklabels()]
            alt = f"timeline picture: {len(rows)} rows, one per rank: " + "; ".join(rows)
            caption.value += f"<span class='playground-timeline-rows' style='{SCREEN_READER_ONLY}'>{esc(alt)}</span>"
        img = self._pictures[index]
        img.value = data
        pane.children = [caption, img] + ([self.what_if] if self.TITLES[index] == "memory" else [])
        self.figures[self.TITLES[index]] = data


class WhatIfPanel(W.VBox):
    """The run's config with other settings of the memory levers, and the
    cost model's per-rank bars for it beside the run's measured ones
    (``whatif.what_if``): a prediction, never a run. A setting the config
    refuses shows the refusal instead."""

    def __init__(self):
        def make(cls, description, **kw):
            return cls(description=description, style={"description_width": "120px"},
                       layout=W.Layout(width="25%"), **kw)

        self.result: RunResult | None = None
        self.shown: WhatIf | None = None
        """The latest what-if drawn (or refused); None until a lever differs from the run's"""
        self.figure: bytes | None = None
        """SVG bytes of the what-if figure on screen"""
        self._holding = False
        self.inputs = dict(zip(LEVERS, lever_controls(make)))
        self.message, self.plot = W.HTML(), W.Box(layout=W.Layout(width="100%"))
        for w in self.inputs.values():
            w.observe(self._update, names="value")
        super().__init__([W.HTML("<b>What if</b> <span style='color:#555'>the memory levers were set otherwise? "
                                 "The cost model predicts each rank's bytes for this run's config with the levers "
                                 "below; nothing is run.</span>"),
                          W.HBox(list(self.inputs.values()), layout=W.Layout(width="100%")), self.message, self.plot],
                         layout=W.Layout(width="100%", border_top="1px solid #DDD", padding="4px 0 0 0"))

    def set_result(self, result: RunResult) -> None:
        """Start from ``result``'s own levers, nothing predicted yet."""
        self.result, self.shown, self.figure = result, None, None
        self._holding = True
        try:
            for name, w in self.inputs.items():
                w.value = control_value(name, getattr(result.config, name))
        finally:
            self._holding = False
        self.message.value = f"<span style='color:{GREY}'>set a lever to see its predicted bars</span>"
        self.plot.children = []

    def levers(self) -> dict[str, Any]:
        """The levers as the controls hold them, as RunConfig fields."""
        return {name: field_value(name, w.value) for name, w in self.inputs.items()}

    def _update(self, _=None) -> None:
        if self._holding or self.result is None:
            return
        result = self.result
        self.shown = shown = what_if(result, **self.levers())
        self.figure, self.plot.children = None, []
        if shown.error is not None:
            self.message.value = f"<span style='color:{GREY}'>what if: refused, nothing predicted</span>" + \
                error_html(shown.error)
            return
        if not shown.changes:
            self.message.value = (f"<span style='color:{GREY}'>the run's own levers: its measured and predicted "
                                  "bars are above</span>")
            return
        changed = ", ".join(f"{k} {v}" if v is not None else f"{k}: the strategy's own"
                            for k, v in shown.changes.items())
        rows = " · ".join(f"rank {rank}: measured {plots.human_bytes(m)} → {plots.human_bytes(p)} predicted "
                          f"({(p - m) / m:+.0%})" if m else f"rank {rank}: {plots.human_bytes(p)} predicted"
                          for rank, m, p in shown.totals(result))
        self.message.value = (f"<div class='playground-what-if'><b>prediction, not run</b>: this run with "
                              f"{esc(changed)}<br>{esc(rows)}</div>")
        self.figure = picture(plots.plot_memory(result, predicted=shown.predictions, formula=shown.zero,
                                                predicted_label="what if",
                                                predicted_legend="what if: prediction, not run (outline)"))
        self.plot.children = [W.Image(value=self.figure, format=PICTURE_FORMAT, layout=fit())]


class History(W.VBox):
    """Every run of this Playground in a table; two of them side by side,
    their timelines rendered only while the compare is ``shown``."""

    def __init__(self):
        self.runs: list[dict[str, Any]] = []
        self.shown = False
        self.table = W.HTML("<i>no runs yet</i>")
        self.a = W.Dropdown(description="run A", layout=W.Layout(width="300px"))
        self.b = W.Dropdown(description="run B", layout=W.Layout(width="300px"))
        self.side = W.HBox(layout=W.Layout(width="100%"))
        for d in (self.a, self.b):
            d.observe(lambda _: self.compare(), names="value")
        super().__init__([self.table, W.HBox([self.a, self.b]), self.side])

    def add(self, config: RunConfig, result: RunResult | None = None, error: str | None = None) -> None:
        self.runs.append({"n": len(self.runs) + 1, "config": config, "result": result, "error": error,
                          "timeline": None})
        self.table.value = self._table()
        done = [(f"#{r['n']} {r['config'].strategy} ×{r['config'].world_size}", r["n"])
                for r in self.runs if r["result"] is not None]
        if result is not None:
            previous = done[-2][1] if len(done) > 1 else done[-1][1]
            self.a.options = self.b.options = done
            self.a.value, self.b.value = previous, done[-1][1]

    def show(self, on: bool) -> None:
        """Whether the compare is on screen; it is drawn when it comes there."""
        self.shown = on
        self.compare()

    def _table(self) -> str:
        head = ("#", "model", "strategy", "ranks", "split", "m", "schedule", "steps", "samples/s", "wall s",
                "max |Δparam|", "check", "accuracy")
        rows = []
        for r in reversed(self.runs):
            c, res = r["config"], r["result"]
            split = res.split_points if res else c.split_points  # the result's: resolved when balanced
            cells = [r["n"], c.model, c.strategy, c.world_size, ",".join(map(str, split or ())) or "-",
                     c.micro_batches, c.schedule if c.scheduled else "-", c.steps]
            if res is None:
                failed = f"<span style='color:{RED}'>{esc(r['error'])}</span>"
                cells = [esc(v) for v in cells] + ["", "", "", failed, ""]
            else:
                cells = [esc(v) for v in cells + [f"{res.throughput_samples_per_s:.0f}", f"{res.wall_s:.1f}",
                                                  f"{res.baseline['max_abs_param_diff']:.1e}"]]
                cells += [f"<span style='color:{GREEN if res.passed else RED}'>"
                          f"{'passed' if res.passed else 'FAILED'}</span>",
                          "-" if res.accuracy is None else f"{res.accuracy:.3f}"]
            rows.append("".join(f"<td>{v}</td>" for v in cells))
        th = "".join(f"<th style='text-align:left;padding-right:10px'>{esc(h)}</th>" for h in head)
        body = "".join(f"<tr>{row}</tr>" for row in rows)
        return (f"<div style='max-height:220px;overflow:auto'><table style='font-size:12px'>"
                f"<tr>{th}</tr>{body}</table></div>")

    def compare(self) -> None:
        chosen = [next((r for r in self.runs if r["n"] == v), None) for v in (self.a.value, self.b.value)]
        if not self.shown or None in chosen:
            return
        panes = []
        for r in chosen:
            if r["timeline"] is None:
                r["timeline"] = picture(plots.plot_timeline(r["result"]))
            img = W.Image(value=r["timeline"], format=PICTURE_FORMAT, layout=W.Layout(width="100%", height="auto"))
            panes.append(W.VBox([W.HTML(key_numbers(r["n"], r["result"])), img], layout=W.Layout(width="50%")))
        self.side.children = panes


class SweepPanel(W.VBox):
    """The sweep's settings and its figure (``plots.plot_sweep``)."""

    def __init__(self):
        self.over = W.Dropdown(description="sweep over", options=[("devices", "world_size"),
                                                                   ("micro-batches", "micro_batches")])
        self.counts = W.Text(value="1,2,4", description="counts", layout=W.Layout(width="260px"))
        self.button = W.Button(description="Sweep", icon="line-chart")
        self.plot = W.Box(layout=W.Layout(width="100%"))
        super().__init__([W.HBox([self.over, self.counts, self.button]), self.plot])

    def show(self, over: str, points: list[tuple[int, RunResult]]) -> None:
        self.plot.children = [W.Image(value=picture(plots.plot_sweep(over, points)), format=PICTURE_FORMAT, layout=fit())]


def lever_controls(make) -> tuple[W.Dropdown, W.BoundedIntText, W.ToggleButtons, W.ToggleButtons]:
    """The memory levers' controls (zero_stage, grad_accumulation,
    recompute, precision), each made by ``make(cls, description, **kw)``;
    the ZeRO stage holds ``form.STRATEGY_OWN`` for None."""
    zero_stage = make(W.Dropdown, "ZeRO stage", options=ZERO_STAGE_OPTIONS,
                      tooltip="how much of the training state the data-parallel ranks shard (Rajbhandari et al. "
                              "2019)")
    grad_accumulation = make(W.BoundedIntText, "grad accumulation", min=1, max=1024,
                             tooltip="micro-steps per optimizer step: each rank's batch in k slices, gradients "
                                     "reduced once, after the last")
    recompute = make(W.ToggleButtons, "recompute", options=list(RECOMPUTE),
                     tooltip="full: each block under torch.utils.checkpoint, its forward run again in backward "
                             "instead of saving its activations")
    precision = make(W.ToggleButtons, "precision", options=list(PRECISIONS),
                     tooltip="bf16: forward and loss under autocast; parameters, gradients and optimizer state "
                             "stay fp32")
    for toggles in (recompute, precision):
        toggles.style.button_width = "60px"
        toggles.add_class("widget-inline-hbox")
    return zero_stage, grad_accumulation, recompute, precision


class Controls(W.HBox):
    """One control per RunConfig field the form sets (``inputs``, by field),
    plus the hybrid mesh and the batch-shares text, in three columns."""

    def __init__(self, cap: int):
        style = {"description_width": "120px"}

        def make(cls, description, **kw):  # each its own Layout: hiding one must not hide the others
            return cls(description=description, style=style, layout=W.Layout(width="100%"), **kw)

        self.model = make(W.Dropdown, "model", options=list(MODELS))
        self.strategy = make(W.Dropdown, "strategy", options=list(STRATEGIES))
        self.world = make(W.IntSlider, "devices", min=1, max=cap, continuous_update=False)
        self.mesh = make(W.Dropdown, "mesh", options=[])  # the options say "dp 2 × pp 2 × tp 1"
        self.global_batch = make(W.IntText, "global batch")
        self.batch_shares = make(W.Text, "batch shares", placeholder="even; e.g. 3,1")
        self.micro_batches = make(W.BoundedIntText, "micro-batches", min=1, max=1024)
        self.schedule = make(W.Dropdown, "schedule", options=list(SCHEDULES))
        self.virtual_stages = make(W.BoundedIntText, "virtual stages", min=1, max=64)
        self.steps = make(W.BoundedIntText, "steps", min=1, max=100_000)
        self.lr = make(W.FloatText, "learning rate")
        self.optimizer = make(W.ToggleButtons, "optimizer", options=list(OPTIMIZERS))
        self.optimizer.style.button_width = "60px"
        self.optimizer.add_class("widget-inline-hbox")  # label and buttons on one line, as in the other controls
        self.seed = make(W.IntText, "seed")
        self.threads_per_rank = make(W.BoundedIntText, "threads / device", min=1, max=256,
                                     tooltip="CPU threads of each rank and of the single-device reference: "
                                             "one device is a fixed compute budget")
        self.sync_batchnorm = make(W.Checkbox, "sync BatchNorm", indent=False,
                                   tooltip="normalise BatchNorm over the whole batch, not each data-parallel "
                                           "rank's shard (SyncBatchNorm)")
        self.zero_stage, self.grad_accumulation, self.recompute, self.precision = lever_controls(make)
        self.inputs = {name: getattr(self, "world" if name == "world_size" else name) for name in INPUTS}
        columns = ([self.model, self.strategy, self.world, self.mesh],
                   [self.global_batch, self.batch_shares, self.micro_batches, self.schedule, self.virtual_stages],
                   [self.steps, self.lr, self.optimizer, self.seed, self.threads_per_rank, self.sync_batchnorm],
                   [W.HTML(f"<span style='color:{GREY}'>memory levers</span>"), self.zero_stage,
                    self.grad_accumulation, self.recompute, self.precision])
        super().__init__([W.VBox(c, layout=W.Layout(width="25%", padding="0 8px 0 0")) for c in columns])
