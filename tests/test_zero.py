"""ZeRO stages as a RunConfig knob: each stage trains as one device does,
its per-rank memory and traffic equal the cost model's exactly, and the
ZeRO paper's formulas sit beside them."""

from __future__ import annotations

import json

import pytest

import playground.host.runner
from playground import ConfigError, RunConfig
from playground import __main__ as cli
from playground.predict.formulas import zero1_partition, zero_memory, zero_step_volume
from playground.predict.predict import predict
from playground.result.run_result import RunResult

from measured import compare_bytes, runs_once

STAGES = (0, 1, 2, 3)
CONFIGS = {stage: RunConfig(model="mlp", strategy="data", world_size=2, global_batch=32, steps=3,
                            optimizer="adam", lr=1e-3, zero_stage=stage) for stage in STAGES}


@pytest.fixture(scope="module")
def measured():
    return runs_once(CONFIGS)


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_trains_as_one_device_does(measured, stage):
    result = measured(stage)
    assert result.baseline["compares"] == "parameters"
    assert result.baseline["max_abs_param_diff"] <= 1e-5
    assert result.passed


@pytest.mark.parametrize("stage", STAGES)
def test_measured_memory_and_traffic_equal_the_prediction(measured, stage):
    compare_bytes(measured(stage), predict(CONFIGS[stage]))


def test_stage_1_shards_the_optimizer_state_and_only_it(measured):
    """Each rank keeps the state of its own parameters; together they hold
    what one DDP rank holds, and neither holds it all."""
    ddp, zero1 = measured(0).ranks, measured(1).ranks
    held = [r.memory["optimizer"] for r in zero1]
    assert sum(held) == ddp[0].memory["optimizer"] > 0
    assert all(0 < h < ddp[0].memory["optimizer"] for h in held)
    assert [r.memory["params"] for r in zero1] == [r.memory["params"] for r in ddp]
    assert [r.memory["grads"] for r in zero1] == [r.memory["grads"] for r in ddp]


def test_each_stage_shards_what_the_paper_says(measured):
    """Bytes per rank against DDP's: stage 1 the optimizer state, stage 2
    gradients too, stage 3 the parameters too (stage 2's parameters are
    sharded at rest as well: FSDP2 frees the gathered ones after backward)."""
    full = measured(0).ranks[0].memory
    for stage in (2, 3):
        for r in measured(stage).ranks:
            assert r.memory["grads"] == full["grads"] // 2
            assert r.memory["params"] == full["params"] // 2


def test_stage_1_broadcasts_every_parameter_each_step(measured):
    result = measured(1)
    n_params = sum(1 for p in result.model.parameters())
    for rank in range(2):
        kinds = {e["kind"]: e for e in result.traffic["collectives"] if e["rank"] == rank}
        assert set(kinds) == {"all_reduce", "broadcast"}
        assert kinds["broadcast"]["calls_per_step"] == n_params
        assert kinds["broadcast"]["bytes_per_step"] == result.ranks[rank].memory["params"]
    assert any(e["kind"] == "broadcast" for e in result.ranks[0].timeline)


@pytest.mark.parametrize("stage", STAGES)
def test_traffic_per_step_sits_beside_the_papers_volume(measured, stage):
    """Measured bytes per step and rank equal the prediction; the paper's
    2Ψ (3Ψ at stage 3) is the ring's (n - 1) / n of it, except torch's
    stage 1, which all-reduces the gradients and broadcasts the parameters:
    3Ψ."""
    result = measured(stage)
    comm = result.zero["communication"]
    for rank in range(2):
        per_step = sum(e["ring_bytes_per_step"] for e in result.traffic["collectives"] if e["rank"] == rank)
        assert per_step == comm["predicted_bytes_per_step"]
    ring_per_psi = comm["ring_bytes_per_step"] / zero_step_volume(stage)
    assert comm["predicted_bytes_per_step"] == (3 if stage in (1, 3) else 2) * ring_per_psi
    assert comm["formula"] == ("3Ψ" if stage == 3 else "2Ψ")


@pytest.mark.parametrize("stage", STAGES)
def test_the_papers_memory_formulas_beside_the_prediction(measured, stage):
    result = measured(stage)
    zero = result.zero
    psi = sum(p.numel() for p in result.model.parameters())
    assert (zero["stage"], zero["psi"], zero["n_d"], zero["k"]) == (stage, psi, 2, 8)
    assert "Rajbhandari" in zero["source"]
    assert zero["memory"] == zero_memory(stage, psi, 2, 8)
    for gap, p in zip(zero["gap"], result.predictions):
        assert gap["rank"] == p["rank"]
        assert {k: p[k] - zero["memory"][k] for k in ("params", "grads", "optimizer")} == \
            {k: gap[k] for k in ("params", "grads", "optimizer")}
    n_tensors = sum(1 for _ in result.model.parameters())
    if stage != 1:
        # Adam's step counters, 4 bytes per tensor (each rank holds a piece of every tensor), are all
        # the formula leaves out: mlp's dims divide evenly among 2 ranks.
        assert [g["optimizer"] for g in zero["gap"]] == [4 * n_tensors] * 2
    else:
        # Whole tensors, unevenly: the ranks' elements differ, and so do their gaps.
        assert sum(zero["partition"]) == psi and zero["partition"][0] != zero["partition"][1]
        # The formula's KΨ/N_d per rank adds up to KΨ: the gaps, to the step counters.
        assert sum(g["optimizer"] for g in zero["gap"]) == 4 * n_tensors


def test_the_zero_record_survives_json(measured):
    result = measured(1)
    again = RunResult.from_json(result.to_json())
    assert again.zero == json.loads(json.dumps(result.zero))
    assert again.config.zero_stage == 1
    assert "ZeRO stage 1 (paper's formulas" in again.summary()


def test_zero1_partition_is_greedy_largest_first():
    # sorted: 30 (index 1), 20 (2), 20 (3), 10 (0), 5 (4); ties go to the lower rank
    assert zero1_partition([10, 30, 20, 20, 5], 2) == [[1, 0, 4], [2, 3]]
    assert zero1_partition([4, 4, 4], 3) == [[0], [1], [2]]
    assert zero1_partition([7], 2) == [[0], []]


def test_zero_memory_by_hand():
    assert zero_memory(0, 100, 4, 8) == {"params": 400.0, "grads": 400.0, "optimizer": 800.0}
    assert zero_memory(1, 100, 4, 8) == {"params": 400.0, "grads": 400.0, "optimizer": 200.0}
    assert zero_memory(2, 100, 4, 8) == {"params": 400.0, "grads": 100.0, "optimizer": 200.0}
    assert zero_memory(3, 100, 4, 0) == {"params": 100.0, "grads": 100.0, "optimizer": 0.0}
    with pytest.raises(ValueError, match="stage"):
        zero_memory(4, 100, 4, 8)


def test_fsdp_is_stage_3_and_runs_stage_2_on_request():
    fsdp = RunConfig(model="mlp", strategy="fsdp", world_size=2)
    assert fsdp.resolved_zero_stage == 3
    assert RunConfig(model="mlp", strategy="data", world_size=2).resolved_zero_stage == 0
    assert predict(fsdp) == predict(RunConfig(model="mlp", strategy="data", world_size=2, zero_stage=3))
    stage2 = predict(fsdp.replace(zero_stage=2))
    # one all-gather and a reduce-scatter per step, against two all-gathers and a reduce-scatter
    assert [3 * p.bytes_sent for p in stage2] == [2 * p.bytes_sent for p in predict(fsdp)]


@pytest.mark.parametrize("fields", [
    {"strategy": "pipeline", "world_size": 2, "zero_stage": 1},
    {"strategy": "tensor", "world_size": 2, "zero_stage": 3},
    {"strategy": "single", "zero_stage": 2},
    {"strategy": "fsdp", "world_size": 2, "zero_stage": 1},
    {"strategy": "fsdp", "world_size": 2, "zero_stage": 0},
    {"strategy": "hybrid", "world_size": 4, "dp": 2, "pp": 2, "zero_stage": 1},
    {"strategy": "hybrid", "world_size": 4, "dp": 2, "tp": 2, "zero_stage": 1},
    {"strategy": "data", "world_size": 2, "zero_stage": 4},
    {"strategy": "data", "world_size": 2, "zero_stage": "1"},
])
def test_combinations_that_cannot_run_are_refused(fields):
    with pytest.raises(ConfigError) as info:
        RunConfig(model="mlp", **fields)
    assert info.value.field == "zero_stage" and info.value.value == fields["zero_stage"]
    assert str(info.value).startswith(f"zero_stage={fields['zero_stage']!r}: ")


def test_config_round_trips_and_the_cli_takes_the_flag(monkeypatch, capsys):
    c = RunConfig(model="mlp", strategy="data", world_size=2, zero_stage=1)
    assert RunConfig.from_dict(json.loads(c.to_json())) == c
    parser = cli._Parser()
    cli._add_run_flags(parser)
    assert cli.config_from_args(parser.parse_args(["--strategy", "fsdp", "--zero-stage", "2"])).zero_stage == 2

    def no_launch(*args, **kwargs):
        raise AssertionError("a process was started for a refused combination")

    monkeypatch.setattr(playground.host.runner, "launch", no_launch)
    with pytest.raises(SystemExit) as info:
        cli.main(["run", "--strategy", "pipeline", "--model", "mlp", "--zero-stage", "1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "zero_stage=1" in err
