"""The Playground: the form, the jobs and the panels composed.

Thin by design (DESIGN.md, principle 4): the controls' values become a
``RunConfig`` in ``form`` (every check is the config's own), Run calls the
same ``run()`` the CLI calls in a background job (``jobs``), the ranks'
per-step progress draws a live loss curve, and the result's pictures are
drawn from the ``RunResult`` alone by ``panels``, the one looked at first.
The state of the form round-trips through JSON: ``Playground(config=app.to_json())``.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from typing import Any

import ipywidgets as W
from traitlets import TraitError

from playground.host import runner
from playground.spec.config import ConfigError, RunConfig
from playground.views.plots import run_title
from playground.result.run_result import RunResult
from playground.views.app import form
from playground.views.app.jobs import Jobs, LiveProgress, Throttle
from playground.views.app.panels import (
    AMBER, CSS, GREEN, GREY, PAGE_WIDTH, RED, Controls, History, ResultsView, SplitStrip, SweepPanel, check_html, error_html, esc, live_html, notes_html, output_html, trace_link_html,
)


class Playground(W.VBox):
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
        self.message, self.way_out, self.status, self.trace_link, self.live = (W.HTML(), W.HBox(), W.HTML(),
                                                                                W.HTML(), W.HTML())
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
        self.extras = W.Accordion(children=[self.history, self.sweep, W.VBox(
            [self.state_json, W.HBox([self.export_button, self.load_button])])],
            titles=("history and compare", "sweep", "share"), layout=W.Layout(width="100%"))
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
        """PNG bytes of the latest run's figures drawn so far, by tab title."""
        return self.results.figures

    @contextmanager
    def _hold(self):
        """Set several controls without revalidating after each."""
        self._holding, outer = True, self._holding
        try:
            yield
        finally:
            self._holding = outer

    # -- state: controls <-> form values ----------------------------------

    def values(self) -> dict[str, Any]:
        """What the controls hold, as ``form`` reads it."""
        return {**self._extra, **{k: w.value for k, w in self.inputs.items()}, "mesh": self.mesh.value,
                "batch_shares": self.batch_shares.value, "cuts": self.strip.cuts if self.strip.enabled else None}

    def fields(self) -> dict[str, Any]:
        """The RunConfig fields the controls say, not yet validated."""
        return form.config_fields(self.values())

    def load(self, state: RunConfig | str | dict) -> None:
        """Set every control from a RunConfig, its dict, or JSON (``to_json``'s, a config's or a result's)."""
        values, sweep = form.state_values(state)
        self._set(values)
        with self._hold():
            self.sweep_over.value = sweep.get("over", self.sweep_over.value)
            self.sweep_counts.value = sweep.get("counts", self.sweep_counts.value)
        self._refresh()

    def _set(self, values: dict[str, Any]) -> None:
        with self._hold():
            self._extra.update({k: v for k, v in values.items() if k not in (*form.INPUTS, "mesh", "batch_shares",
                                                                               "cuts")})
            for name, v in values.items():
                if name in self.inputs:
                    self.inputs[name].value = v
            self.batch_shares.value = values.get("batch_shares", self.batch_shares.value)
            self._set_mesh(values.get("mesh"))
            self._set_model(self.model.value)
            self._stages = None
            if values.get("cuts") is not None:
                self.strip.set_cuts(values["cuts"])
                self._stages = form.applies(self.values()).stages

    def _on_load(self, _) -> None:
        try:
            self.load(self.state_json.value)
        except (ValueError, TypeError, KeyError, AttributeError, TraitError) as e:  # a JSON the form cannot hold
            self.status.value = f"<span style='color:{RED}'>cannot load that state: {esc(e)}</span>"

    def to_json(self) -> str:
        """The whole state: the controls' RunConfig fields (valid or not) and the sweep's settings."""
        return json.dumps({"config": self.fields(),
                           "sweep": {"over": self.sweep_over.value, "counts": self.sweep_counts.value}})

    def _set_model(self, model: str) -> None:
        if self.strip.model != model:
            self.strip.set_model(model)
            for t in self.strip.toggles:
                t.observe(self._refresh, names="value")
            self._stages = None

    def _set_mesh(self, want: tuple | None = None) -> None:
        """Offer the meshes of the number of devices; keep pp and tp when they still divide it."""
        options = form.mesh_options(self.world.value)
        if self.mesh.options != tuple(options):
            self.mesh.options = options
        self.mesh.value = form.mesh_choice(self.world.value, want or self.mesh.value)

    # -- validation ---------------------------------------------------------

    def _on_strategy(self, change) -> None:
        if self._holding:
            return
        if change["new"] == "single":
            self.world.value = 1
        elif change["old"] == "single" and self.world.value == 1:
            self.world.value = min(2, self.cap)

    def _refresh(self, _=None) -> None:
        """After any change: fit the dependent controls, then build the RunConfig."""
        if self._holding:
            return
        with self._hold():
            self._set_model(self.model.value)
            self._set_mesh()
            a = form.applies(self.values())
            self.mesh.layout.display = "" if a.mesh else "none"
            if a.stages is not None:
                for k in form.SCHEDULE_FIELDS:
                    self.inputs[k].disabled = not a.schedule
                self.batch_shares.disabled = not a.batch_shares
                if a.stages != self._stages:  # the number of cuts changed: start from balanced ones
                    self.strip.set_cuts(form.balanced_cuts(self.model.value, a.stages))
                    self._stages = a.stages
                self.strip.set_enabled(a.stages > 1)
            self.strip.draw()
        values = self.values()
        built = form.build(values)
        self.way_out.children = []
        if isinstance(built, ConfigError):
            self.config, self.error = None, built
            self.message.value = error_html(built)
            self.way_out.children = [W.HTML(f"<span style='color:{GREY}'>ways out:&nbsp;</span>")] + [
                self._way_out_button(label, changes) for label, changes in form.way_out(values)]
            if len(self.way_out.children) == 1:
                self.way_out.children = []
        else:
            self.config, self.error = built, None
            self.message.value = (f"<div style='color:{GREEN}'>{esc(form.summary(built))}</div>" + "".join(
                f"<div style='color:{AMBER}'>⚠ {esc(n)}</div>" for n in form.run_notes(built, self.cores)))
        self._sync_buttons()

    def _way_out_button(self, label: str, changes: dict[str, Any]) -> W.Button:
        button = W.Button(description=label, tooltip=label, layout=W.Layout(width="auto"))
        button.on_click(lambda _: (self._set(changes), self._refresh()))
        return button

    def _rebalance(self) -> None:
        stages = form.applies(self.values()).stages
        if stages is not None:
            with self._hold():
                self.strip.set_cuts(form.balanced_cuts(self.model.value, stages))
            self._refresh()

    def _sync_buttons(self) -> None:
        busy = self.jobs.busy
        self.run_button.disabled = self.sweep_button.disabled = self.config is None or busy
        self.stop_button.disabled = not busy or self.jobs.cancel.is_set()
        self.trace_button.disabled = self.result is None
        if not busy and self.jobs.started:
            self.progress.description = f"{self.jobs.elapsed:.0f} s"

    # -- running, in a background job --------------------------------------

    @property
    def running(self) -> bool:
        return self.jobs.busy

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current run or sweep ends; False if it outlasts ``timeout`` seconds."""
        return self.jobs.wait(timeout)

    def start_run(self) -> None:
        """Run the current config (what the Run button does)."""
        config = self.config
        if config is None or self.jobs.busy:
            return
        self._live, self._throttle = LiveProgress(config.world_size, config.steps), Throttle(0.2)
        self._begin(config.steps, f"starting {form.plural(config.world_size, 'device')}… (the first run with a new number of "
                                  f"devices starts a process per device and loads PyTorch in each)")
        self.live.value = ""
        self.jobs.start(lambda cancel: self._run_job(config, cancel))

    def start_sweep(self) -> None:
        """Run the current config at each count (what the Sweep button does)."""
        counts = form.parse_counts(self.sweep_counts.value)
        if isinstance(counts, str) or not counts or min(counts) < 1:
            self.status.value = f"<span style='color:{RED}'>counts: give positive integers, e.g. 1,2,4</span>"
            return
        config, over = self.config, self.sweep_over.value
        if config is not None and not self.jobs.busy:
            self._begin(len(counts), f"sweep: {over} = {counts[0]} (1 of {len(counts)})…")
            self.jobs.start(lambda cancel: self._sweep_job(config, over, counts, cancel))

    def offer_trace(self) -> None:
        """Show a link that saves the last run's Chrome trace (what the Chrome trace button does)."""
        if self.result is not None:
            self.trace_link.value = trace_link_html(self.result)

    def stop(self) -> None:
        """End the current run's ranks at once; a sweep stops with them."""
        self.jobs.stop()
        self.status.value = "stopping: ending every rank…"

    def _begin(self, total: int, status: str) -> None:
        self.progress.max, self.progress.value, self.progress.bar_style = max(1, total), 0, "info"
        self.progress.description = "0 s"
        self.status.value = esc(status)

    def _tick(self, elapsed: float) -> None:
        self.progress.description = f"{elapsed:.0f} s"  # time passes, even before the first step ends

    def _on_error(self, e: BaseException) -> None:
        self.status.value = f"<span style='color:{RED}'>playground error: {esc(type(e).__name__)}: {esc(e)}</span>"

    def _on_progress(self, update: dict) -> None:
        """A rank finished a step (called in the job's thread): the bar at
        every finished step, the live view at most 5 times a second."""
        first = not self._live.last_step
        self._live.add(update)
        done = self._live.steps_done
        if done != self.progress.value:
            self.progress.value = done
        if first or self._throttle.due() or done == self._live.steps:
            losses, step_s = self._live.snapshot()
            self.live.value = live_html(losses, step_s, self._live.steps)
            if not self.jobs.cancel.is_set():
                self.status.value = f"running: step {done} of {self._live.steps} finished on every rank"

    def _failed(self, config: RunConfig, e: Exception, cancel: threading.Event) -> None:
        stopped = cancel.is_set()
        what = "stopped" if stopped else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        self.history.add(config, error=what)
        self.progress.bar_style = "warning" if stopped else "danger"
        self.status.value = ("stopped: every rank was ended" if stopped else
                             f"<span style='color:{RED}'>run failed: {esc(what)}</span>"
                             + output_html(getattr(e, "outputs", {})))
        if self.result is not None:  # the tabs below still hold it: say so, lest they pass for this run's
            self.status.value += (f" <span style='color:{GREY}'>· the pictures below are from the last run "
                                  f"that finished ({esc(run_title(self.result))})</span>")

    def _run_job(self, config: RunConfig, cancel: threading.Event) -> None:
        try:
            result = runner.run(config, cancel=cancel, on_progress=self._on_progress)
        except Exception as e:
            return self._failed(config, e, cancel)
        # The check and the key numbers first, then the one figure looked at.
        self.result = result
        self.progress.value, self.progress.bar_style = self.progress.max, "success" if result.passed else "danger"
        self.status.value = check_html(result) + notes_html(result)
        self.trace_link.value = ""  # it held the previous run's trace
        self.history.add(config, result)
        self.results.show(result)

    def _sweep_job(self, config: RunConfig, over: str, counts: tuple[int, ...], cancel: threading.Event) -> None:
        points: list[tuple[int, RunResult]] = []
        skipped: list[str] = []
        for i, n in enumerate(counts):
            if cancel.is_set():
                break
            try:
                cfg = form.sweep_config(config, over, n)
            except ConfigError as e:
                skipped.append(f"{n}: {e}")
                continue
            self.status.value = f"sweep: {over} = {n} ({i + 1} of {len(counts)})…"
            try:
                result = runner.run(cfg, cancel=cancel)
            except Exception as e:
                self._failed(cfg, e, cancel)
                skipped.append(f"{n}: {type(e).__name__}")
                continue
            self.history.add(cfg, result)
            points.append((n, result))
            self.progress.value = i + 1
            self.sweep.show(over, points)
        done = f"sweep: {len(points)} of {len(counts)} point(s) ran" + (" (stopped)" if cancel.is_set() else "")
        self.status.value = esc(done) + "".join(f"<div style='color:{GREY}'>skipped {esc(s)}</div>" for s in skipped)
        self.progress.bar_style = "success" if len(points) == len(counts) else "warning"
