"""Time accounting: compute, comm, wait, overhead and overlapped, computed
from the ranks' events by a pure function, then checked on real runs."""

from __future__ import annotations

import statistics

import pytest

import playground
from playground import RunConfig
from playground.rank.report import RankReport
from playground.result.accounting import account


def _rank(rank: int, timeline: list[dict], blocked: list[tuple[float, float]]) -> RankReport:
    return RankReport(rank=rank, dp_rank=rank, pp_rank=0, blocks=(0, 1), timeline=timeline,
                      step_times=[(-5.0, 0.0), (0.0, 10.0)], memory={}, blocked=blocked)


def test_each_second_of_the_window_is_compute_comm_wait_or_overhead():
    """Rank 0 computes 0-4 while its send to rank 1 runs (1-2: overlapped),
    then waits on an all-gather from 4: rank 1 joins it at 5, it ends at 6.
    Rank 1 waits for the message from 0.5 (rank 0 posts at 1), computes
    2.5-5, and joins the all-gather at 5."""
    gather = {"kind": "all_gather", "bytes": 8, "group": "g", "group_size": 2, "seq": 0}
    r0 = _rank(0, [{"kind": "forward", "start": 0.0, "end": 4.0},
                   {"kind": "send", "start": 1.0, "end": 2.0, "peer": 1, "seq": 0, "bytes": 8},
                   {"start": 3.0, "end": 6.0, **gather}], blocked=[(4.0, 6.0)])
    r1 = _rank(1, [{"kind": "recv", "start": 0.5, "end": 2.0, "peer": 0, "seq": 0, "bytes": 8},
                   {"kind": "backward", "start": 2.5, "end": 5.0},
                   {"start": 5.0, "end": 6.0, **gather}], blocked=[(0.5, 2.0), (5.0, 6.0)])
    reports = [r0, r1]
    r0, r1 = account(reports)
    assert reports[0].time == {}, "account returns new reports; the ranks' own are left as sent"
    assert r0.time == pytest.approx({"compute": 4.0, "comm": 1.0, "wait": 1.0, "overhead": 4.0, "idle": 5.0,
                                     "overlapped": 1.0, "window": 10.0})
    assert r1.time == pytest.approx({"compute": 2.5, "comm": 2.0, "wait": 0.5, "overhead": 5.0, "idle": 5.5,
                                     "overlapped": 0.0, "window": 10.0})
    # Ring volumes: an all-gather of an 8-byte output among 2 ranks moves 4 bytes each way.
    assert (r0.bytes_sent, r0.bytes_recv) == (8 + 4, 4)
    assert (r1.bytes_sent, r1.bytes_recv) == (4, 8 + 4)


def test_a_wait_inside_a_compute_span_is_not_compute():
    """A collective waited for inline (tensor parallel) halts the forward."""
    r0 = _rank(0, [{"kind": "forward", "start": 0.0, "end": 6.0},
                   {"kind": "all_reduce", "start": 2.0, "end": 4.0, "inline": True, "bytes": 8, "group": "g",
                    "group_size": 2, "seq": 0}], blocked=[])
    r1 = _rank(1, [{"kind": "all_reduce", "start": 3.0, "end": 4.0, "inline": True, "bytes": 8, "group": "g",
                    "group_size": 2, "seq": 0}], blocked=[])
    r0, r1 = account([r0, r1])
    assert r0.time["compute"] == pytest.approx(4.0)  # 0-2 and 4-6
    assert r0.time["wait"] == pytest.approx(1.0)  # 2-3: rank 1 had not joined
    assert r0.time["comm"] == pytest.approx(1.0)  # 3-4
    assert r0.time["overlapped"] == 0.0


@pytest.fixture(scope="module")
def fsdp():
    return playground.run(RunConfig(model="mlp", strategy="fsdp", world_size=2, steps=3, global_batch=64))


def test_fsdp_waits_on_its_collectives_show_as_communication(fsdp):
    """FSDP blocks inside forward and backward on its all-gathers and
    reduce-scatters: that time is communication (or waiting for the peer),
    not compute."""
    for r in fsdp.ranks:
        t = r.time
        assert r.blocked, "the rank waited on its all-gathers and reduce-scatters"
        assert t["comm"] + t["wait"] > 0
        assert t["compute"] + t["comm"] + t["wait"] + t["overhead"] == pytest.approx(t["window"], rel=1e-6)
        assert t["idle"] == pytest.approx(t["wait"] + t["overhead"])
        inside = sum(min(b, e["end"]) - max(a, e["start"]) for a, b in r.blocked for e in r.timeline
                     if e["kind"] in ("forward", "backward") and min(b, e["end"]) > max(a, e["start"]))
        assert inside > 0, "some waits happen inside forward and backward"


def test_pipeline_messages_end_when_gloo_completed_them():
    result = playground.run(RunConfig(model="mlp", strategy="pipeline", schedule="1f1b", world_size=2,
                                      split_points=(5,), micro_batches=4, global_batch=64, steps=3))
    for r in result.ranks:
        messages = [e for e in r.timeline if e["kind"] in ("send", "recv")]
        assert len(messages) == 2 * 4 * 3
        assert all(e["start"] <= e["end"] for e in messages)
        # A receive is waited on by the schedule: those waits are recorded.
        assert len(r.blocked) >= 4 * 3
        t = r.time
        assert t["compute"] + t["comm"] + t["wait"] + t["overhead"] == pytest.approx(t["window"], rel=1e-6)
    # Stage 1 cannot finish receiving an activation before stage 0 posted it.
    sends = {e["seq"]: e for e in result.ranks[0].timeline if e["kind"] == "send"}
    recvs = [e for e in result.ranks[1].timeline if e["kind"] == "recv"]
    assert all(rv["end"] >= sends[rv["seq"]]["start"] for rv in recvs)
    assert statistics.median(e["end"] - e["joined"] for e in recvs) >= 0


def test_threads_per_rank_is_the_budget_of_every_device():
    config = RunConfig(model="seed-mlp", strategy="data", world_size=2, steps=2, threads_per_rank=1)
    result = playground.run(config)
    assert [r.threads for r in result.ranks] == [1, 1]
    with pytest.raises(playground.ConfigError, match="threads_per_rank=0"):
        RunConfig(threads_per_rank=0)
