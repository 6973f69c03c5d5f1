"""What each rank records: its timeline on the shared clock, its memory and
its traffic, checked against what the run must have done."""

from __future__ import annotations

import json

import pytest

import playground
from playground import RunConfig
from playground.zoo.models import model_block_infos
from playground.spec.partition import stage_ranges

STEPS, M, BATCH, WIDTH = 3, 4, 64, 128  # mlp hidden width


@pytest.fixture(scope="module")
def gpipe():
    return playground.run(RunConfig(model="mlp", strategy="pipeline", schedule="gpipe", world_size=2,
                                    split_points=(5,), micro_batches=M, global_batch=BATCH, steps=STEPS))


@pytest.fixture(scope="module")
def one_f_one_b():
    return playground.run(RunConfig(model="mlp", strategy="pipeline", schedule="1f1b", world_size=2,
                                    split_points=(5,), micro_batches=M, global_batch=BATCH, steps=STEPS))


def _events(rank, kind):
    return [e for e in rank.timeline if e["kind"] == kind]


def test_pipeline_timeline_has_every_micro_batch_send_and_receive(gpipe):
    act_bytes = BATCH // M * WIDTH * 4  # one micro-batch's activation across the cut, fp32
    for r in gpipe.ranks:
        assert r.pp_rank == r.rank and r.blocks == stage_ranges((5,), 10)[r.rank]
        for kind in ("forward", "backward"):
            events = _events(r, kind)
            assert [e["micro_batch"] for e in events] == list(range(M)) * STEPS
            assert {e["stage"] for e in events} == {r.pp_rank}
        assert len(_events(r, "optimizer")) == STEPS
        assert len(_events(r, "setup")) == 1  # shape inference, step 0 only
        sends, recvs = _events(r, "send"), _events(r, "recv")
        assert len(sends) == len(recvs) == M * STEPS
        assert {e["bytes"] for e in sends + recvs} == {act_bytes}
        assert {e["peer"] for e in sends + recvs} == {1 - r.rank}
        assert r.bytes_sent == r.bytes_recv == M * STEPS * act_bytes
        for e in r.timeline:
            assert e["start"] <= e["end"]
        # Every event lies inside a step.
        lo, hi = r.step_times[0][0], r.step_times[-1][1]
        assert all(lo <= e["start"] and e["end"] <= hi for e in r.timeline)


def test_shared_clock_orders_cause_before_effect(gpipe):
    r0, r1 = gpipe.ranks
    sends = {(e["seq"]): e for e in _events(r0, "send")}
    for recv in _events(r1, "recv"):
        assert recv["end"] >= sends[recv["seq"]]["start"]
    # Stage 1 cannot finish a micro-batch's forward before stage 0 has done it.
    for f0, f1 in zip(_events(r0, "forward"), _events(r1, "forward")):
        assert f1["end"] >= f0["end"]


def test_time_accounting_adds_up(gpipe):
    for r in gpipe.ranks:
        t = r.time
        assert t["compute"] > 0 and t["comm"] >= 0 and t["idle"] >= 0
        assert t["compute"] + t["comm"] + t["idle"] == pytest.approx(t["window"], rel=1e-6)


def test_memory_counts_the_stage_and_activations_follow_the_schedule(gpipe, one_f_one_b):
    infos = model_block_infos("mlp")
    for r in gpipe.ranks:
        params = sum(b.params for b in infos[r.blocks[0]:r.blocks[1]])
        assert r.memory["params"] == r.memory["grads"] == 4 * params
        assert r.memory["optimizer"] == 0  # plain SGD keeps no state
        assert r.memory["allocator_peak"] is None  # CPU: no caching allocator
    # GPipe holds all M micro-batches' activations on stage 0; 1F1B at most p = 2.
    g0, f0 = gpipe.ranks[0].memory["activations_peak"], one_f_one_b.ranks[0].memory["activations_peak"]
    assert g0 > 1.6 * f0 > 0


def test_data_parallel_records_all_reduces_and_adam_state():
    result = playground.run(RunConfig(model="mlp", strategy="data", world_size=2, steps=STEPS,
                                      optimizer="adam", lr=0.001))
    param_bytes = 4 * sum(b.params for b in model_block_infos("mlp"))
    for r in result.ranks:
        reduces = _events(r, "all_reduce")
        assert sum(e["bytes"] for e in reduces) == STEPS * param_bytes
        assert {e["group_size"] for e in reduces} == {2}
        # Ring all-reduce among 2 ranks: each sends and receives B per B reduced.
        assert r.bytes_sent == r.bytes_recv == STEPS * param_bytes
        assert r.memory["params"] == r.memory["grads"] == param_bytes
        n_tensors = 2 * 10  # weight and bias of 10 blocks
        assert r.memory["optimizer"] == 2 * param_bytes + 4 * n_tensors  # exp_avg, exp_avg_sq, step
        assert len(_events(r, "forward")) == len(_events(r, "backward")) == STEPS


def test_uneven_shares_show_as_idle_time_on_the_rank_with_less_work():
    result = playground.run(RunConfig(model="mlp", strategy="data", world_size=2, global_batch=512,
                                      batch_partition=(7, 1), steps=6))
    busy, light = result.ranks
    assert result.passed
    assert light.time["compute"] < busy.time["compute"]
    assert light.time["idle"] > busy.time["idle"]


def test_result_json_has_the_documented_keys(gpipe):
    d = json.loads(gpipe.to_json())
    for key in ("config", "device", "backend", "world_size", "losses", "throughput_samples_per_s",
                "baseline", "ranks"):
        assert key in d
    assert set(d["baseline"]) >= {"max_abs_param_diff", "final_loss_diff"}
    for r in d["ranks"]:
        assert set(r) >= {"rank", "timeline", "memory", "time", "bytes_sent", "bytes_recv"}
        assert set(r["memory"]) >= {"params", "grads", "optimizer", "activations_peak"}
        assert set(r["time"]) >= {"compute", "comm", "idle"}
        kinds = {e["kind"] for e in r["timeline"]}
        assert kinds >= {"forward", "backward", "send", "recv", "optimizer"}
    assert d["throughput_samples_per_s"] > 0
    assert RunConfig.from_dict(d["config"]) == gpipe.config


def test_tensor_parallel_cuts_each_pair_of_layers_and_counts_its_all_reduces():
    from playground.zoo.plans import tensor_plan

    plan = tensor_plan(playground.build_model("seed-mlp"), 2)
    assert {k: type(v).__name__ for k, v in plan.items()} == {"0": "ColwiseParallel", "1": "RowwiseParallel"}
    result = playground.run(RunConfig(model="seed-mlp", strategy="tensor", world_size=2, steps=STEPS))
    assert result.passed
    for r in result.ranks:
        reduces = _events(r, "all_reduce")
        # y = sum_i M_i h_i: one all-reduce of the (batch x 4) output per forward.
        assert len(reduces) == STEPS and {e["bytes"] for e in reduces} == {32 * 4 * 4}
        assert r.memory["params"] == 4 * (16 * 8 // 2 + 16 // 2 + 4 * 16 // 2 + 4)  # shards + replicated bias


def test_fsdp_shards_memory_and_records_gathers_and_scatters():
    result = playground.run(RunConfig(model="mlp", strategy="fsdp", world_size=2, steps=STEPS,
                                      optimizer="adam", lr=0.001))
    whole = 4 * sum(b.params for b in model_block_infos("mlp"))
    assert result.passed
    for r in result.ranks:
        assert whole / 2 <= r.memory["params"] < whole / 2 + 4 * 1024  # a shard, rounded up per tensor
        assert r.memory["grads"] == r.memory["params"]
        assert _events(r, "all_gather") and _events(r, "reduce_scatter")
        assert r.bytes_sent > 0


def test_stage_balance_reports_shares_beside_measured_compute(gpipe):
    balance = gpipe.stage_balance
    assert [s["blocks"] for s in balance] == [[0, 5], [5, 10]]
    assert sum(s["flops_share"] for s in balance) == pytest.approx(1)
    assert sum(s["params_share"] for s in balance) == pytest.approx(1)
    assert all(s["compute_s"] > 0 for s in balance)
    assert sum(s["compute_share"] for s in balance) == pytest.approx(1)
    assert [r.stages for r in gpipe.ranks] == [[(0, 0, 5)], [(1, 5, 10)]]
    # Balanced cuts even out the estimated FLOPs of the two stages.
    assert playground.propose_split_points("mlp", 2) == (5,)
    assert playground.propose_split_points("seed-mlp", 2) == (1,)


def test_chrome_trace_has_a_process_per_rank_and_every_event(gpipe, tmp_path):
    path = gpipe.save_chrome_trace(str(tmp_path / "trace.json"))
    with open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert names == {0: "rank 0 · pp 0 · dp 0", 1: "rank 1 · pp 1 · dp 0"}
    threads = {(e["pid"], e["args"]["name"]) for e in events if e["name"] == "thread_name"}
    assert threads == {(p, s) for p in (0, 1) for s in ("compute", "p2p", "collective")}
    for r in gpipe.ranks:
        spans = [e for e in events if e["ph"] == "X" and e["pid"] == r.rank]
        assert len(spans) == len(r.timeline)
        for kind in ("forward", "backward", "send", "recv", "optimizer"):
            assert sum(e["cat"] == kind for e in spans) == len(_events(r, kind))
        sends = [e for e in spans if e["cat"] == "send"]
        assert {e["tid"] for e in sends} == {1} and all(e["args"]["bytes"] > 0 for e in sends)
        first = min(r.timeline, key=lambda e: e["start"])
        assert min(e["ts"] for e in spans) == pytest.approx(first["start"] * 1e6)
