"""The job side of the Playground: Run, Sweep, Stop, live progress and
what a finished or failed run shows (the thread and cancel are ``jobs``';
the pictures are ``panels``')."""

from __future__ import annotations

import threading


from playground.host import runner
from playground.spec.config import ConfigError, RunConfig
from playground.views.plots import run_title
from playground.result.run_result import RunResult
from playground.views.app import form
from playground.views.app.jobs import LiveProgress, Throttle
from playground.views.app.texts import (
    GREY, RED, check_html, esc, live_html, notes_html, output_html, trace_link_html,
)



def headline(message: str) -> str:
    """An error's first line; where it ends on ":", the indented lines that
    follow it too, joined by "; " (a timeout's "Each rank was in:" and where
    each rank was)."""
    lines = message.splitlines() or [""]
    first = lines[0]
    if first.endswith(":"):
        rest = [line.strip() for line in lines[1:] if line.startswith((" ", "\t")) and line.strip()]
        first += " " + "; ".join(rest)
    return first


class Runs:
    """Starts and stops the background jobs and shows what they report."""

    _live_behind = False
    """A rank's message arrived that the live view and status do not show
    yet (the throttle held it back); the job's next tick draws it."""

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
        self._live_behind, self._live_lock = False, threading.Lock()
        # The factory's one import of PyTorch: seconds here, 15-35 s on mybinder.org's 1 CPU.
        slow = "; on 1 CPU core up to about half a minute" if self.cores == 1 else ""
        self._begin(config.steps, f"starting {form.plural(config.world_size, 'device')}… (the first run starts a "
                                  f"rank factory that imports PyTorch once{slow}; each device is a rank forked "
                                  "from it, and a new number of devices forks more in well under a second)")
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
        if self._live_behind:
            self._draw_live(only_if_behind=True)

    def _on_error(self, e: BaseException) -> None:
        self.status.value = f"<span style='color:{RED}'>playground error: {esc(type(e).__name__)}: {esc(e)}</span>"

    def _on_progress(self, update: dict) -> None:
        """A rank finished a step (called in the job's thread): the bar at
        every finished step, the live view and status at most 5 times a
        second. A message the throttle holds back is drawn by the job's next
        tick (every ``jobs.tick_s``) unless a later message draws it first:
        a step's last rank reports within milliseconds of its first, and
        without the tick the view would stay a step behind until the next."""
        first = not self._live.last_step
        self._live.add(update)
        done = self._live.steps_done
        if done != self.progress.value:
            self.progress.value = done
        if first or self._throttle.due() or done == self._live.steps:
            self._draw_live()
        else:
            self._live_behind = True

    def _draw_live(self, only_if_behind: bool = False) -> None:
        """The live loss curve, step times and status as the ranks' messages so far say."""
        with self._live_lock:  # the job's thread and the ticker both draw; the run's end waits for either
            if only_if_behind and not self._live_behind:
                return
            self._live_behind = False  # before the snapshot: a message after it sets it again
            losses, step_s = self._live.snapshot()
            self.live.value = live_html(losses, step_s, self._live.steps)
            if not self.jobs.cancel.is_set():
                self.status.value = (f"running: step {len(losses)} of {self._live.steps} "
                                     "finished on every rank")

    def _end_live(self) -> None:
        """The run returned or failed: no tick may draw "running" over what it shows next."""
        with self._live_lock:
            self._live_behind = False

    def _failed(self, config: RunConfig, e: Exception, cancel: threading.Event) -> None:
        stopped = cancel.is_set()
        what = "stopped" if stopped else f"{type(e).__name__}: {headline(str(e))}"
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
            self._end_live()
            return self._failed(config, e, cancel)
        self._end_live()
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
        if self.result is not None:  # the tabs still hold it: say so, lest they pass for a sweep point's
            self.status.value += (f"<div style='color:{GREY}'>the sweep's points are in the sweep panel and the "
                                  f"history; the tabs below show the last single run "
                                  f"({esc(run_title(self.result))})</div>")
        self.progress.bar_style = "success" if len(points) == len(counts) else "warning"
