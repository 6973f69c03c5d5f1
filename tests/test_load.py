"""Many runs in one process leave nothing behind: no processes, no
listening sockets, no open files, little memory (bench/load.py does 200)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import load  # noqa: E402


def test_thirty_runs_warm_and_cold_leave_nothing_behind():
    out = load.main(runs=30, cold_every=10)
    before, after = out["before"], out["after"]
    assert after["ranks"] == before["ranks"] == 0
    assert after["children"] == before["children"]
    assert after["listening"] == before["listening"] == 0
    assert after["fds"] <= before["fds"]
    assert after["rss_mb"] - before["rss_mb"] < 50
