"""The app's widgets, each drawn from what it is given: the controls and the
split strip, the result tabs (each figure rendered only when its tab is
shown), the live view of a run in progress, the history with its
side-by-side compare, and the sweep. No widget here runs anything."""

from __future__ import annotations

from typing import Any

import ipywidgets as W

from playground.views import plots, timeline
from playground.spec.config import OPTIMIZERS, PRECISIONS, RECOMPUTE, SCHEDULES, STRATEGIES, RunConfig
from playground.predict.formulas import stage_shares
from playground.zoo.models import MODELS
from playground.result.run_result import RunResult
from playground.views.app.form import INPUTS, STRATEGY_OWN, block_infos, control_value, field_value
from playground.views.app.texts import (
    GREEN, GREY, PICTURE_FORMAT, RED, SCREEN_READER_ONLY, balance_html, bubble_sentences, check_html, count,
    error_html, esc, key_numbers, legend_html, picture, zero_html,
)
from playground.views.app.whatif import LEVERS, WhatIf, what_if

PAGE_WIDTH = "1260px"  # fits a 1280 px window
STAGE_COLORS = ["#9ECAE1", "#FDAE6B", "#A1D99B", "#BCBDDC", "#FC9272", "#C7E9C0", "#FDD0A2", "#DADAEB"]
CSS = ("<style>.jupyter-widgets.jupyter-widget-tab.playground-results > .lm-TabBar .lm-TabBar-tab "
       "{ flex: 0 0 auto; }</style>")
"""Tabs as wide as their titles (ipywidgets gives each 144 px and cuts longer titles)."""
ZERO_STAGE_OPTIONS = [("strategy's own", STRATEGY_OWN), ("0 · DDP", 0), ("1 · optimizer state", 1),
                      ("2 · + gradients", 2), ("3 · + parameters", 3)]
"""The ZeRO-stage dropdown: each stage with what its ranks shard."""


def fit() -> W.Layout:
    """A figure's width, shrunk to the page's when wider."""
    return W.Layout(max_width="100%", height="auto")


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
            held = f"block {first}" if end - first == 1 else f"blocks {first}–{end - 1}"
            text = f"stage {s['stage']}: {held} · {s['flop_share']:.0%} FLOPs · {s['param_share']:.0%} params"
            if s["flop_share"] == slowest:  # the slowest stage sets a pipeline's pace
                text = f"<b>{text}</b>"
            spans.append(f"<span style='background:{color};padding:0 4px'>{text}</span>")
        self.stage_shares.value = " &nbsp;│&nbsp; ".join(spans)


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
            "no pipeline here: idle is waiting for a peer and the runtime's own overhead, shown apart"
        memory = esc("solid bars: measured; outlined bars: the cost model's prediction beside them"
                     if result.predictions else f"no cost-model prediction for strategy '{result.config.strategy}' yet")
        if result.zero:
            memory += zero_html(result.zero)
        if result.device == "cpu":  # what a CPU's communication time holds besides moving bytes
            bubble += (" On CPU, gloo's threads share the cores with the ranks' compute: a transfer's time "
                       "includes waiting for a core, more so on a busy machine.")
        return [esc("each rank's events over the last two steps; hatched: waiting for a peer"),
                esc(bubble) + balance_html(result), memory, check_html(result),
                esc("bytes per step across each cut and between replicas, as measured")]

    def draw(self, index: int | None) -> None:
        """Render tab ``index``'s figure unless it is drawn already."""
        result = self.result
        if result is None or index is None or self.TITLES[index] in self.figures:
            return
        if index == 0:  # written as SVG directly, with its title, legend and notes as text beside it
            scene = timeline.timeline_scene(result)
            data = timeline.svg(scene)
        else:
            data = picture(getattr(plots, self.PLOTS[index])(result))
        if result is not self.result:  # a newer run arrived meanwhile: this picture is stale
            return
        pane = self.children[index]
        caption = pane.children[0]
        if index == 0:  # the timeline's rows as drawn, in words: its alt text, for screen readers
            caption.value += legend_html(scene.entries, plots.legend_title(result), plots.run_title(result))
            alt = f"timeline picture: {len(scene.rows)} rows, one per rank: " + "; ".join(scene.rows)
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
        rows = " · ".join(
            f"rank {rank}: predicted {plots.human_bytes(o)} for this run (measured {plots.human_bytes(m)}) → "
            f"{plots.human_bytes(p)} with the change ({(p - o) / o:+.0%})" if o else
            f"rank {rank}: {plots.human_bytes(p)} predicted with the change (measured {plots.human_bytes(m)})"
            for rank, m, o, p in shown.totals(result))
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
    grad_accumulation.style.description_width = "136px"  # its label whole
    for toggles in (recompute, precision):
        toggles.style.button_width = "60px"
        toggles.add_class("widget-inline-hbox")
    return zero_stage, grad_accumulation, recompute, precision


class Controls(W.HBox):
    """One control per RunConfig field the form sets (``inputs``, by field),
    plus the hybrid mesh and the batch-shares text, in four columns that
    wrap onto two rows on a narrow page."""

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
        # Columns at least 290 px wide (a 120 px label and a usable control):
        # where the page is narrower (JupyterLab with its file browser open)
        # they wrap onto a second row rather than squeeze the controls.
        super().__init__([W.VBox(c, layout=W.Layout(flex="1 1 290px", min_width="290px", padding="0 8px 0 0"))
                          for c in columns], layout=W.Layout(flex_flow="row wrap", width="100%"))
