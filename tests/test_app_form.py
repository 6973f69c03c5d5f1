"""The app's form without widgets: values in, a RunConfig or the
ConfigError that refuses it out, which controls apply, the ways out."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from playground.views.app import form
from playground.spec.config import ConfigError, RunConfig


def values(config: RunConfig, **changes) -> dict:
    v, _ = form.state_values(config)
    return {**v, **changes}


BASE = RunConfig(model="mlp", strategy="pipeline", world_size=2, micro_batches=4)


def test_the_form_imports_no_widgets():
    code = ("import sys, playground.views.app.form, playground.views.app.jobs, playground.views.app.whatif; "
            "assert not {'ipywidgets', 'matplotlib'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("config", [
    BASE,
    BASE.replace(split_points=(1,)),
    RunConfig(model="mlp", strategy="data", world_size=2, batch_partition=(3, 1)),
    RunConfig(model="cnn", strategy="hybrid", world_size=4, dp=2, pp=2, micro_batches=2, schedule="1f1b"),
    RunConfig(model="transformer", strategy="tensor", world_size=2, steps=3, lr=0.01, optimizer="adam"),
    RunConfig(model="mlp", strategy="data", world_size=2, zero_stage=1, grad_accumulation=2, recompute="full",
              precision="bf16", optimizer="adam", lr=1e-3),
    RunConfig(model="mlp", strategy="fsdp", world_size=2, zero_stage=2),
    RunConfig(model="transformer", strategy="hybrid", world_size=4, dp=2, tp=2, zero_stage=2, precision="bf16"),
    BASE.replace(recompute="full", precision="bf16"),
])
def test_a_config_comes_back_from_its_values(config):
    assert form.build(values(config)) == config


@pytest.mark.parametrize("changes, field", [
    ({"lr": -1.0}, "lr"),
    ({"schedule": "1f1b", "micro_batches": 1}, "micro_batches"),
    ({"strategy": "data", "batch_shares": "3,x"}, "batch_partition"),
    ({"cuts": (1, 2)}, "split_points"),
])
def test_a_bad_value_comes_back_as_the_configs_error(changes, field):
    out = form.build(values(BASE, **changes))
    assert isinstance(out, ConfigError) and out.field == field


@pytest.mark.parametrize("strategy, world, schedule, shares, stages, mesh", [
    ("single", 1, False, False, 1, False),
    ("data", 2, False, True, 1, False),
    ("model", 2, False, False, 2, False),
    ("pipeline", 4, True, False, 4, False),
    ("tensor", 2, False, False, 1, False),
    ("fsdp", 2, False, True, 1, False),
])
def test_which_controls_apply(strategy, world, schedule, shares, stages, mesh):
    a = form.applies(values(BASE, strategy=strategy, world_size=world))
    assert (a.schedule, a.batch_shares, a.stages, a.mesh) == (schedule, shares, stages, mesh)


@pytest.mark.parametrize("strategy, world, mesh, zero, accumulate", [
    ("single", 1, None, False, True),
    ("data", 2, None, True, True),
    ("fsdp", 2, None, True, True),
    ("tensor", 2, None, False, True),
    ("model", 2, None, False, False),
    ("pipeline", 2, None, False, False),
    ("hybrid", 4, (2, 2, 1), True, False),
    ("hybrid", 4, (2, 1, 2), True, True),
])
def test_which_memory_levers_apply(strategy, world, mesh, zero, accumulate):
    a = form.applies(values(BASE, strategy=strategy, world_size=world, mesh=mesh, virtual_stages=1))
    assert (a.zero_stage, a.grad_accumulation) == (zero, accumulate)


def test_levers_that_do_not_apply_are_left_at_their_defaults():
    """As the schedule's fields are: switching to a pipeline with ZeRO stage 3
    and 2 micro-steps still set runs the pipeline, not a refusal."""
    v = values(BASE, zero_stage=3, grad_accumulation=2, recompute="full", precision="bf16")
    f = form.config_fields(v)
    assert "zero_stage" not in f and "grad_accumulation" not in f
    assert (f["recompute"], f["precision"]) == ("full", "bf16")
    assert form.build(v) == BASE.replace(recompute="full", precision="bf16")
    data = form.config_fields({**v, "strategy": "data"})
    assert (data["zero_stage"], data["grad_accumulation"]) == (3, 2)


def test_the_zero_stage_control_holds_the_strategys_own_as_a_value():
    assert form.control_value("zero_stage", None) == form.STRATEGY_OWN
    assert form.field_value("zero_stage", form.STRATEGY_OWN) is None
    assert [form.field_value("zero_stage", form.control_value("zero_stage", z)) for z in (0, 1, 2, 3)] == [0, 1, 2, 3]
    assert form.control_value("steps", None) is None


def test_the_summary_names_the_levers_in_use():
    line = form.summary(RunConfig(model="mlp", strategy="data", world_size=2, zero_stage=1, grad_accumulation=2,
                                  recompute="full", precision="bf16"))
    assert line.endswith(" · ZeRO stage 1 · 2 micro-steps per step · recompute full · bf16")
    assert "ZeRO stage 3 (the strategy's own)" in form.summary(RunConfig(model="mlp", strategy="fsdp", world_size=2))
    assert "ZeRO" not in form.summary(BASE) and "recompute" not in form.summary(BASE)


def test_hybrid_reads_its_mesh_and_an_unknown_probe_says_none():
    a = form.applies(values(BASE, strategy="hybrid", world_size=4, mesh=(2, 2, 1), virtual_stages=1))
    assert (a.schedule, a.batch_shares, a.stages, a.mesh) == (True, True, 2, True)
    assert form.applies(values(BASE, lr=-1.0)) == form.Applies(None, None, None, False)


def test_fields_leave_out_what_does_not_apply_and_balanced_cuts():
    f = form.config_fields(values(BASE, strategy="data", schedule="1f1b", batch_shares="3,1", cuts=None))
    assert "schedule" not in f and f["batch_partition"] == (3, 1) and "split_points" not in f
    f = form.config_fields(values(BASE, batch_shares="3,1", cuts=form.balanced_cuts("mlp", 2)))
    assert "batch_partition" not in f and "split_points" not in f and f["schedule"] == BASE.schedule
    assert form.config_fields(values(BASE, cuts=(1,)))["split_points"] == (1,)


def test_ways_out_of_more_stages_than_blocks_each_lead_to_a_valid_config():
    v = values(RunConfig(model="seed-mlp", strategy="model", world_size=2), world_size=4)
    assert isinstance(form.build(v), ConfigError)
    outs = form.way_out(v)
    assert [label for label, _ in outs] == ["model mlp (10 blocks)", "model cnn (5 blocks)",
                                            "model transformer (6 blocks)",
                                            "strategy data (4 devices, each with the whole model)",
                                            "2 devices (one per block)"]
    for _, changes in outs:
        assert isinstance(form.build({**v, **changes}), RunConfig)
    assert form.way_out(values(BASE)) == []


def test_notes_say_core_and_cores():
    one = RunConfig(model="seed-mlp", strategy="data", world_size=2)
    assert form.run_notes(one, 1) == ["2 devices × 1 thread share 1 CPU core: timings include contention "
                                      "(the check against one device still holds)"]
    assert "share 2 CPU cores" not in " ".join(form.run_notes(one, 2))
    assert "share 2 CPU cores" in form.run_notes(one.replace(threads_per_rank=2), 2)[0]


def test_state_round_trips_through_values():
    c = BASE.replace(split_points=(3,), steps=7)
    v, sweep = form.state_values('{"config": %s, "sweep": {"over": "micro_batches"}}' % c.to_json())
    assert form.build(v) == c and sweep == {"over": "micro_batches"}
    assert form.build(form.state_values(c.to_dict())[0]) == c


@pytest.mark.parametrize("changes, field, offered", [
    (dict(schedule="interleaved1f1b"), "virtual_stages", "2 virtual stages"),
    (dict(schedule="zbvzerobubble"), "virtual_stages", "2 virtual stages"),
    (dict(strategy="data", world_size=2, global_batch=7, micro_batches=1), "global_batch", "global batch 8"),
])
def test_a_refused_schedule_or_batch_offers_the_nearest_values_that_run(changes, field, offered):
    v = values(BASE, **changes)
    assert form.build(v).field == field
    ways = form.way_out(v)
    assert offered in [label for label, _ in ways]
    assert all(not isinstance(form.build({**v, **c}), ConfigError) for _, c in ways)


@pytest.mark.parametrize("config, changes, field, offered", [
    (RunConfig(model="mlp", strategy="fsdp", world_size=2), dict(zero_stage=1), "zero_stage",
     "strategy data (ZeRO stage 1)"),
    (RunConfig(model="mlp", strategy="hybrid", world_size=4, dp=2, pp=2), dict(zero_stage=3), "zero_stage",
     "the strategy's own ZeRO stage"),
    (RunConfig(model="mlp", strategy="data", world_size=2, global_batch=16), dict(grad_accumulation=3),
     "grad_accumulation", "grad accumulation 2"),
])
def test_a_refused_lever_offers_ways_out_that_run(config, changes, field, offered):
    v = values(config, **changes)
    error = form.build(v)
    assert isinstance(error, ConfigError) and error.field == field
    ways = form.way_out(v)
    assert offered in [label for label, _ in ways] and len(ways) <= 3
    assert all(isinstance(form.build({**v, **c}), RunConfig) for _, c in ways)


# -- what if: predicted, never run ---------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded():
    """A recorded run (mlp, data, 2 ranks, SGD, ZeRO stage 0): no process is started here."""
    from pathlib import Path

    from playground.result.run_result import RunResult

    path = Path(__file__).parent / "data" / "results" / "mlp-data.json"
    return RunResult.from_json(path.read_text())


def test_what_if_predicts_the_changed_config_without_a_process(recorded, monkeypatch):
    import playground.host.runner as runner
    from playground.predict.predict import predict, zero_formulas
    from playground.views.app.whatif import what_if
    from playground.zoo.models import build_model
    from support import rank_pids

    def launch(*args, **kwargs):
        raise AssertionError("what if must not start a process")
    monkeypatch.setattr(runner, "launch", launch)
    monkeypatch.setattr(runner, "run", launch)
    before = set(rank_pids())
    w = what_if(recorded, zero_stage=3, precision="bf16", recompute="none", grad_accumulation=1)
    assert w.changes == {"zero_stage": 3, "precision": "bf16"} and w.error is None
    config = recorded.config.replace(zero_stage=3, precision="bf16")
    expected = [dataclasses.asdict(p) for p in predict(config)]
    assert w.config == config and w.predictions == expected
    assert w.zero == zero_formulas(config, build_model("mlp", 0), expected) and w.zero["stage"] == 3
    # ZeRO-3 halves each rank's parameters and gradients on 2 ranks (mlp's dims divide evenly).
    for r, p in zip(recorded.ranks, w.predictions):
        assert 2 * p["params"] == r.memory["params"] and 2 * p["grads"] == r.memory["grads"]
    fields = ("params", "grads", "optimizer", "activations_peak")
    assert [(rank, m, o) for rank, m, o, _ in w.totals(recorded)] == \
        [(r.rank, sum(r.memory[f] for f in fields), sum(p[f] for f in fields))
         for r, p in zip(recorded.ranks, recorded.predictions)]
    assert set(rank_pids()) == before


def test_what_if_shows_the_configs_refusal_instead_of_bars(recorded):
    from playground.views.app.whatif import what_if

    w = what_if(recorded, grad_accumulation=3)  # 8 samples per rank
    assert w.predictions is None and w.config is None and w.totals(recorded) == []
    assert w.error.field == "grad_accumulation" and w.error.value == 3
    assert what_if(recorded, zero_stage=1).error is None
    assert what_if(recorded).changes == {}
    with pytest.raises(ValueError, match="what if changes only"):
        what_if(recorded, world_size=4)


def test_recompute_with_a_split_backward_schedule_offers_ways_out():
    values = form.state_values(RunConfig(model="mlp", strategy="pipeline", world_size=2, micro_batches=4,
                                         schedule="zbvzerobubble", virtual_stages=2))[0]
    values["recompute"] = "full"
    error = form.build(values)
    assert isinstance(error, ConfigError) and error.field == "recompute"
    labels = [label for label, _ in form.way_out(values)]
    assert labels[0] == "recompute none" and "schedule interleaved1f1b" in labels
    for _, changes in form.way_out(values):
        assert not isinstance(form.build({**values, **changes}), ConfigError)
