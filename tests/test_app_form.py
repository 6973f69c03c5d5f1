"""The app's form without widgets: values in, a RunConfig or the
ConfigError that refuses it out, which controls apply, the ways out."""

from __future__ import annotations

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
    code = ("import sys, playground.views.app.form, playground.views.app.jobs; "
            "assert not {'ipywidgets', 'matplotlib'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("config", [
    BASE,
    BASE.replace(split_points=(1,)),
    RunConfig(model="mlp", strategy="data", world_size=2, batch_partition=(3, 1)),
    RunConfig(model="cnn", strategy="hybrid", world_size=4, dp=2, pp=2, micro_batches=2, schedule="1f1b"),
    RunConfig(model="transformer", strategy="tensor", world_size=2, steps=3, lr=0.01, optimizer="adam"),
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
