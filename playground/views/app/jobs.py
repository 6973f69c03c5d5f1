"""Background jobs for the app, without widgets: one job at a time in a
thread, a cancel event that ``run()`` honours, and the ranks' per-step
progress gathered into a live loss curve and per-rank step times."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable


class Jobs:
    """Runs one job at a time in a daemon thread.

    ``start(job)`` calls ``job(cancel)`` in the thread, ``cancel`` a fresh
    ``threading.Event`` that ``stop()`` sets; an exception the job lets out
    goes to ``on_error(exc)`` rather than being lost in the thread;
    ``on_change()`` is called whenever ``busy`` or the cancel event changes
    (in the caller's thread for start and stop, in the job's for the end).
    ``tick(elapsed_s)`` is called every ``tick_s`` seconds while a job runs,
    from a thread of its own that ends before the job's last ``on_change``.
    """

    def __init__(self, on_change: Callable[[], None] = lambda: None,
                 on_error: Callable[[BaseException], None] = lambda e: None,
                 tick: Callable[[float], None] | None = None, tick_s: float = 0.5):
        self.on_change, self.on_error, self.tick, self.tick_s = on_change, on_error, tick, tick_s
        self.cancel = threading.Event()
        self.busy = False
        self.started = 0.0
        self._thread: threading.Thread | None = None

    def start(self, job: Callable[[threading.Event], Any]) -> bool:
        """Start ``job`` unless one is running; False if one is."""
        if self.busy:
            return False
        self.cancel = threading.Event()
        self.busy, self.started = True, time.monotonic()
        self._thread = threading.Thread(target=self._work, args=(job, self.cancel), daemon=True,
                                        name="playground-job")
        self.on_change()
        self._thread.start()
        return True

    def _work(self, job: Callable[[threading.Event], Any], cancel: threading.Event) -> None:
        done = threading.Event()
        ticker = threading.Thread(target=self._tick, args=(done,), daemon=True, name="playground-tick")
        ticker.start()
        try:
            job(cancel)
        except Exception as e:  # a fault of the view itself: shown, not lost in the thread
            self.on_error(e)
        finally:
            done.set()
            ticker.join()  # else its last tick could land after what the job's end shows
            self.busy = False
            self.on_change()

    def _tick(self, done: threading.Event) -> None:
        while self.tick is not None and not done.wait(self.tick_s):
            self.tick(self.elapsed)

    def stop(self) -> None:
        """Ask the running job to end (``run()`` ends its ranks within 0.1 s)."""
        self.cancel.set()
        self.on_change()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends; False if it outlasts ``timeout`` (seconds)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.busy

    @property
    def elapsed(self) -> float:
        """Seconds since the last job started."""
        return time.monotonic() - self.started


class LiveProgress:
    """The ranks' per-step messages of one run, as they arrive.

    ``add(update)`` takes what ``run(on_progress=...)`` passes:
    {"rank": r, "step": s, "loss": this rank's part of step s's loss (None
    where the rank computes none), "step_s": seconds rank r spent in step s}.
    A step's loss is the sum of its ranks' parts (as ``RunResult.losses``),
    known once every rank has reported the step. Thread-safe: updates come
    from the run's thread while the view reads.
    """

    def __init__(self, world_size: int, steps: int):
        self.world_size, self.steps = world_size, steps
        self.parts: dict[int, dict[int, float | None]] = {}
        self.step_s: dict[int, float] = {}
        """each rank's latest step time, seconds"""
        self.last_step: dict[int, int] = {}
        self.losses: list[float] = []
        """the loss of steps 0, 1, ... that every rank has finished, in order"""
        self._lock = threading.Lock()

    def add(self, update: dict[str, Any]) -> None:
        rank, step = update["rank"], update["step"]
        with self._lock:
            self.step_s[rank], self.last_step[rank] = update["step_s"], step
            self.parts.setdefault(step, {})[rank] = update["loss"]
            while len(self.parts.get(len(self.losses), {})) == self.world_size:
                parts = self.parts.pop(len(self.losses))
                self.losses.append(sum(p for p in parts.values() if p is not None))

    @property
    def steps_done(self) -> int:
        """Steps every rank has finished."""
        return len(self.losses)

    def snapshot(self) -> tuple[list[float], dict[int, float]]:
        """(losses of finished steps, latest step time per rank) at this moment."""
        with self._lock:
            return list(self.losses), dict(self.step_s)


class Throttle:
    """True at most once per ``interval`` seconds: live views redraw at most
    1/interval times a second however fast steps finish."""

    def __init__(self, interval: float = 0.2):
        self.interval, self._last = interval, float("-inf")

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.interval:
            return False
        self._last = now
        return True
