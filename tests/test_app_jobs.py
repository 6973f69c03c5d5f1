"""The app's jobs without widgets: one thread at a time, cancel, errors
kept, ticks, and the ranks' per-step progress gathered."""

from __future__ import annotations

import threading
import time

from playground.views.app.jobs import Jobs, LiveProgress, Throttle


def test_one_job_at_a_time_and_stop_sets_its_cancel_event():
    changes, release = [], threading.Event()
    jobs = Jobs(on_change=lambda: changes.append(jobs.busy))

    def job(cancel):
        assert cancel.wait(10)
        release.set()
    assert jobs.start(job) and jobs.busy
    assert not jobs.start(lambda cancel: None)  # refused while one runs
    jobs.stop()
    assert jobs.wait(10) and release.is_set() and not jobs.busy
    assert changes[0] is True and changes[-1] is False
    assert jobs.start(lambda cancel: None) and jobs.wait(10)  # a new job, a new event
    assert not jobs.cancel.is_set()


def test_an_error_in_the_job_reaches_on_error_and_ends_the_job():
    errors = []
    jobs = Jobs(on_error=errors.append)
    jobs.start(lambda cancel: 1 / 0)
    assert jobs.wait(10) and isinstance(errors[0], ZeroDivisionError)


def test_ticks_come_while_the_job_runs_and_none_after():
    ticks = []
    jobs = Jobs(tick=ticks.append, tick_s=0.02)
    jobs.start(lambda cancel: time.sleep(0.15))
    assert jobs.wait(10)
    n = len(ticks)
    assert n >= 2 and ticks == sorted(ticks)
    time.sleep(0.1)
    assert len(ticks) == n


def test_a_steps_loss_is_known_once_every_rank_reported_it():
    live = LiveProgress(world_size=2, steps=3)
    live.add({"rank": 0, "step": 0, "loss": 0.5, "step_s": 0.01})
    live.add({"rank": 0, "step": 1, "loss": 0.25, "step_s": 0.03})
    assert live.losses == [] and live.steps_done == 0  # rank 1 has not finished step 0
    live.add({"rank": 1, "step": 0, "loss": None, "step_s": 0.02})
    assert live.losses == [0.5]
    live.add({"rank": 1, "step": 1, "loss": 0.5, "step_s": 0.04})
    assert live.losses == [0.5, 0.75] and live.steps_done == 2
    assert live.snapshot() == ([0.5, 0.75], {0: 0.03, 1: 0.04})


def test_throttle_lets_one_through_per_interval():
    t = Throttle(0.2)
    assert t.due() and not t.due()
    time.sleep(0.21)
    assert t.due()


def test_the_live_loss_curve_fills_its_width_whatever_the_run_length():
    import re

    from playground.views.app.texts import LIVE_POINTS, live_html

    def xs(html):
        points = re.search(r"points='([^']*)'", html).group(1).split()
        return [float(p.split(",")[0]) for p in points]

    short = xs(live_html([2.0, 1.5, 1.2], {0: 0.01}, steps=10))
    assert short[-1] < 220 / 2  # 3 of 10 steps: a quarter of the way
    long = xs(live_html([1.0 / (i + 1) for i in range(60)], {0: 0.01}, steps=100_000))
    assert long[-1] == 218.0  # 60 of 100 000: the steps done so far fill it
    many = xs(live_html([1.0] * 5000, {0: 0.01}, steps=100_000))
    assert len(many) <= LIVE_POINTS + 1 and many[-1] == 218.0
