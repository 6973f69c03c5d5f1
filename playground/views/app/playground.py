"""The Playground: the form, the jobs and the panels composed.

Thin by design (DESIGN.md, principle 4): the controls' values become a
``RunConfig`` in ``form`` (every check is the config's own), Run calls the
same ``run()`` the CLI calls in a background job (``jobs``), the ranks'
per-step progress draws a live loss curve, and the result's pictures are
drawn from the ``RunResult`` alone by ``panels``, the one looked at first.
The state of the form round-trips through JSON: ``Playground(config=app.to_json())``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import ipywidgets as W

from playground.spec.config import ConfigError, RunConfig
from playground.result.run_result import RunResult
from playground.views.app import form
from playground.views.app.jobs import Jobs, LiveProgress, Throttle
from playground.views.app.binding import FormBinding
from playground.views.app.runs import Runs
from playground.views.app.plan_panel import PlanPanel
from playground.views.app.panels import CSS, PAGE_WIDTH, Controls, History, ResultsView, SplitStrip, SweepPanel


class Playground(FormBinding, Runs, W.VBox):
    """Choose a model, a strategy and its split; run it for real; see every rank."""

    def __init__(self, config: RunConfig | str | dict | None = None):
        self.cap, self.cores, self.gpus = form.device_limit()
        self.config: RunConfig | None = None
        self.error: ConfigError | None = None
        self.result: RunResult | None = None
        self._extra: dict[str, Any] = {}
        self._holding, self._stages = False, None
        self._live, self._throttle = LiveProgress(1, 1), Throttle(0.2)
        self.jobs = Jobs(on_change=self._sync_buttons, on_error=self._on_error, tick=self._tick)
        self.controls, self.strip, self.results = Controls(self.cap), SplitStrip(), ResultsView()
        self.history, self.sweep = History(), SweepPanel()
        c = self.controls
        self.inputs, self.mesh, self.batch_shares, self.world = c.inputs, c.mesh, c.batch_shares, c.world
        for name, w in c.inputs.items():  # each control also as app.<field>, as the notebooks use them
            setattr(self, "world" if name == "world_size" else name, w)
        # The ways out wrap onto more lines rather than squeeze their labels.
        self.way_out = W.HBox(layout=W.Layout(flex_flow="row wrap", align_items="center"))
        self.message, self.status, self.trace_link, self.live = W.HTML(), W.HTML(), W.HTML(), W.HTML()
        self.status.add_class("playground-status")
        self.run_button = W.Button(description="Run", button_style="primary", icon="play")
        self.stop_button = W.Button(description="Stop", icon="stop", disabled=True)
        self.progress = W.IntProgress(description="idle", min=0, max=1, style={"description_width": "120px"},
                                      layout=W.Layout(width="320px"))
        self.trace_button = W.Button(description="Chrome trace", icon="download", disabled=True,
                                     tooltip="the last run's timeline as a Chrome trace (JSON), for "
                                             "ui.perfetto.dev or chrome://tracing",
                                     layout=W.Layout(width="130px", flex="0 0 auto"))
        self.sweep_over, self.sweep_counts, self.sweep_button, self.sweep_plot = (
            self.sweep.over, self.sweep.counts, self.sweep.button, self.sweep.plot)
        self.state_json = W.Textarea(placeholder="state JSON: export, or paste and load",
                                layout=W.Layout(width="100%", height="110px"))
        self.export_button, self.load_button = W.Button(description="export"), W.Button(description="load")
        self.plan_panel = PlanPanel(self.jobs)  # plans in the runs' job: one at a time
        self.extras = W.Accordion(children=[self.history, self.sweep, W.VBox(
            [self.state_json, W.HBox([self.export_button, self.load_button])]), self.plan_panel],
            titles=("history and compare", "sweep", "share", "plan at scale"), layout=W.Layout(width="100%"))
        self.extras.observe(lambda ch: self.history.show(ch["new"] == 0), names="selected_index")
        super().__init__([W.HTML(CSS + "<h3 style='margin:4px 0'>Model and data parallelism playground</h3>"),
                          c, self.strip, self.message, self.way_out,
                          W.HBox([self.run_button, self.stop_button, self.progress, self.trace_button],
                                 layout=W.Layout(align_items="center")),
                          self.live, self.status, self.trace_link, self.results, self.extras],
                         layout=W.Layout(width="100%", max_width=PAGE_WIDTH))
        for w in (*self.inputs.values(), self.mesh, self.batch_shares):
            w.observe(self._refresh, names="value")
        self.strategy.observe(self._on_strategy, names="value")
        self.strip.balance.on_click(lambda _: self._rebalance())
        self.run_button.on_click(lambda _: self.start_run())
        self.stop_button.on_click(lambda _: self.stop())
        self.sweep_button.on_click(lambda _: self.start_sweep())
        self.trace_button.on_click(lambda _: self.offer_trace())
        self.export_button.on_click(lambda _: setattr(self.state_json, "value", self.to_json()))
        self.load_button.on_click(self._on_load)
        self.load(config if config is not None else form.START)

    @property
    def figures(self) -> dict[str, bytes]:
        """SVG bytes of the latest run's figures drawn so far, by tab title."""
        return self.results.figures

    @contextmanager
    def _hold(self):
        """Set several controls without revalidating after each."""
        self._holding, outer = True, self._holding
        try:
            yield
        finally:
            self._holding = outer
