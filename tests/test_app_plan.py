"""The app's "plan at scale" panel: control values become a PlanConfig or
the ConfigError that names the field; the Plan is drawn from the Plan
alone, labelled a prediction; the widget plans in the background job and
shows refusals without starting one."""

from __future__ import annotations

import html

import pytest

from playground.planning.planner import plan
from playground.spec.config import ConfigError, PlanConfig
from playground.views.app.plan_panel import PLAN_LABEL, START, PlanPanel, error_html, plan_config_of, plan_html

SMALL = {**START, "model": "gpt2", "strategy": "data", "world_size": 2, "global_batch": 2, "sequence_length": 16,
         "optimizer": "adam"}


@pytest.fixture(scope="module")
def small_plan():
    return plan(plan_config_of(SMALL), gpu_memory_gb=80)


def test_the_start_values_are_a_plan_config_of_hundreds_of_ranks():
    config = plan_config_of(START)
    assert isinstance(config, PlanConfig)
    assert (config.world_size, config.dp_size, config.tp_size, config.model) == (256, 32, 8, "llama3-8b")


@pytest.mark.parametrize("changes,field", [
    ({"strategy": "hybrid", "world_size": 6, "dp": 4, "pp": 1, "tp": 2}, "world_size"),
    ({"world_size": 8192}, "world_size"),
    ({"strategy": "fsdp", "zero_stage": 1}, "zero_stage"),
    ({"grad_accumulation": 3}, "grad_accumulation"),
    ({"precision": "fp16"}, "precision"),
])
def test_bad_values_give_the_config_error_by_field(changes, field):
    error = plan_config_of({**SMALL, **changes})
    assert isinstance(error, ConfigError) and error.field == field
    shown = error_html(error)
    assert html.escape(field) in shown and html.escape(error.allowed) in shown


def test_mesh_and_sequence_are_read_only_where_they_apply():
    data = plan_config_of({**SMALL, "dp": 3, "pp": 5, "tp": 7})
    assert (data.dp_size, data.pp_size, data.tp_size) == (2, 1, 1)
    zoo = plan_config_of({**SMALL, "model": "mlp", "global_batch": 8})
    assert zoo.sequence_length is None
    assert plan_config_of({**SMALL, "sequence_length": 0}).sequence_length is None


def test_the_html_draws_the_plan_and_labels_it_a_prediction(small_plan):
    shown = plan_html(small_plan)
    assert PLAN_LABEL in shown
    for row in small_plan.table():
        assert f"<td>{html.escape(row['ranks'])}</td>" in shown
        assert f"{row['total']:.2f}" in shown and f"{row['optimizer']:.2f}" in shown
    for kind in small_plan.kinds[small_plan.peak_rank["kind"]]["comm"]:
        assert f"<td>{kind}</td>" in shown
    assert small_plan.top_modules[0]["module"] in shown
    assert ("fits" in shown) == small_plan.fits and ("does not fit" in shown) != small_plan.fits


def test_a_shortfall_is_shown_in_gb(small_plan):
    tight = plan(small_plan.config, gpu_memory_gb=small_plan.peak_rank["total"] / 2e9)
    shown = plan_html(tight)
    assert not tight.fits and "does not fit" in shown
    assert f"{tight.shortfall / 1e9:.2f} GB</b> more" in shown


def _set(panel: PlanPanel, values: dict) -> None:
    for name, value in values.items():
        panel.inputs[name].value = value


def test_the_panel_plans_in_the_background_and_refuses_by_name():
    panel = PlanPanel()
    _set(panel, {**SMALL, "gpu_memory_gb": 0.5})
    panel.button.click()
    assert panel.wait(timeout=120), "the plan did not finish within 120 s"
    assert panel.error is None and panel.plan is not None and not panel.button.disabled
    assert panel.plan.gpu_memory == 0.5e9 and panel.output.value == plan_html(panel.plan)

    _set(panel, {"strategy": "hybrid", "world_size": 6, "dp": 4, "tp": 2})
    assert panel.start() is False and not panel.jobs.busy  # refused before any job
    assert panel.error.field == "world_size" and "world_size" in panel.output.value

    # plan()'s own check (tp must divide a preset's heads) comes back from the job.
    _set(panel, {"model": "gpt2-xl", "world_size": 8, "dp": 4, "pp": 1, "tp": 2, "global_batch": 4})
    assert panel.start() is True
    assert panel.wait(timeout=60)
    assert panel.error is not None and panel.error.field == "tp" and "cannot plan" in panel.output.value


def test_the_app_has_a_plan_at_scale_panel_sharing_its_jobs():
    from playground.views.app import Playground

    app = Playground()
    titles = [app.extras.get_title(i) for i in range(len(app.extras.children))]
    assert "plan at scale" in titles
    assert app.extras.children[titles.index("plan at scale")] is app.plan_panel
    assert app.plan_panel.jobs is app.jobs


def test_a_pipelined_plan_names_each_kind_of_rank_by_its_stage():
    from playground import plan

    planned = plan(dict(model="gpt2", strategy="hybrid", world_size=8, dp=4, pp=2, micro_batches=4,
                        global_batch=16))
    labels = [row["ranks"] for row in planned.table()]
    assert labels == ["pp 0 · 0, 2, 4, 6", "pp 1 · 1, 3, 5, 7"], labels
    small = plan(dict(model="mlp", strategy="data", world_size=2))
    assert small.unit[0] in ("MB", "kB") and " 0.00" not in small.summary().split("\n")[4]
