"""A rank that raises, dies or hangs ends the run with a message naming the
rank, and no process is left behind."""

from __future__ import annotations

import sys
import time

import pytest

import playground
from playground import RankDied, RankError, RunConfig, RunTimeout
from support import faulty_model, no_rank_left, rank_pids, regression_data


def _run(strategy: str, what: str, rank: int = 1, **fields):
    split = dict(split_points=(1,)) if strategy == "model" else {}
    config = RunConfig(model="custom", strategy=strategy, world_size=2, steps=3, global_batch=16, **split, **fields)
    return playground.run(config, model=faulty_model(rank, what), dataset=regression_data())


@pytest.mark.parametrize("strategy", ["data", "model"])
def test_rank_that_raises_gives_its_traceback_and_leaves_nothing(strategy):
    with pytest.raises(RankError) as info:
        _run(strategy, "raise")
    err = info.value
    assert err.rank == 1
    assert "rank 1 raised ValueError: deliberate failure on rank 1" in str(err)
    assert "--- traceback of rank 1 ---" in str(err)
    assert "faulty.py" in err.traceback and "raise ValueError" in err.traceback
    assert no_rank_left()


def test_rank_killed_mid_run_is_reported():
    started = time.monotonic()
    with pytest.raises(RankDied) as info:
        _run("data", "kill")
    assert info.value.rank == 1
    assert "killed by signal 9" in str(info.value)
    assert time.monotonic() - started < 30
    assert no_rank_left()


def test_rank_that_hangs_is_stopped_at_the_timeout():
    with pytest.raises(RunTimeout) as info:
        _run("data", "hang", timeout_s=12)
    assert "did not finish within timeout_s=12 s" in str(info.value)
    assert 1 in info.value.pending
    # Rank 1 hangs inside its forward; rank 0 waits for it in the gradient all-reduce.
    assert info.value.doing[1].startswith("forward"), info.value.doing
    assert info.value.doing[0].startswith("all_reduce"), info.value.doing
    assert "rank 1: forward" in str(info.value)
    assert no_rank_left()


def test_next_run_after_a_failure_works():
    with pytest.raises(RankError):
        _run("data", "raise")
    result = playground.run(RunConfig(strategy="data", world_size=2, steps=3))
    assert result.passed
    # What is left is the warm pool's ranks, and nothing else.
    assert sorted(rank_pids()) == sorted(playground.default_pool().process_pids())
    playground.default_pool().shutdown()
    assert rank_pids() == []


def test_a_job_the_rank_cannot_read_is_reported_with_a_hint(monkeypatch):
    import types

    import torch

    torch.manual_seed(0)
    # A module the caller imported from somewhere the ranks cannot see: its
    # classes travel by reference, and the ranks fail to import them.
    ghost = types.ModuleType("ghost_blocks")
    cls = type("GhostBlock", (torch.nn.Linear,), {"__module__": "ghost_blocks"})
    ghost.GhostBlock = cls
    monkeypatch.setitem(sys.modules, "ghost_blocks", ghost)
    model = torch.nn.Sequential(cls(8, 4))
    with pytest.raises(RankError) as info:
        playground.run(RunConfig(model="custom", strategy="data", world_size=2, steps=3, global_batch=16),
                       model=model, dataset=regression_data())
    assert "could not read the job" in str(info.value) and "ghost_blocks" in str(info.value)
    assert "importable by the ranks" in str(info.value)
    assert no_rank_left()
