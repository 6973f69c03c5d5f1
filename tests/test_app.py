"""The Playground widget without a browser: set traits, click buttons, read
what the widgets show. One real run (a module fixture); the rest replace
``run`` with stand-ins, or forbid the launcher outright."""

from __future__ import annotations

import base64
import html
import json
import threading
import time

import pytest


import playground.host.runner as runner  # noqa: E402
from support import no_rank_left, rank_pids  # noqa: E402
from playground.views.app import Playground, form, mesh_options, plot_sweep, sweep_config  # noqa: E402
from playground.spec.config import RunConfig  # noqa: E402
from playground.host.launcher import RunCancelled, default_pool  # noqa: E402

SVG = b"<?xml"
SMALL = RunConfig(model="mlp", strategy="pipeline", world_size=2, micro_batches=2, steps=3)


@pytest.fixture
def no_launch(monkeypatch):
    def launch(*args, **kwargs):
        raise AssertionError("no process may start for an invalid config")
    monkeypatch.setattr(runner, "launch", launch)


@pytest.fixture(scope="module")
def finished():
    """A Playground after one real run: mlp, pipeline, 2 ranks, 3 steps."""
    app = Playground(config=SMALL)
    app.seen = {"live": [], "progress": [], "status": []}  # what the widgets showed while it ran
    for name, widget in (("live", app.live), ("progress", app.progress), ("status", app.status)):
        widget.observe(lambda ch, name=name: app.seen[name].append(ch["new"]), names="value")
    app.run_button.click()
    assert app.running
    assert app.wait(timeout=180), "the run did not finish within 180 s"
    yield app
    default_pool().shutdown()  # run() keeps its ranks warm between runs


def test_invalid_choices_show_the_field_disable_run_and_spawn_nothing(no_launch):
    before = set(rank_pids())
    app = Playground(config=SMALL)
    assert app.error is None and not app.run_button.disabled
    settings = [
        ({"schedule": "1f1b", "micro_batches": 1}, "micro_batches"),
        ({"strategy": "data", "batch_shares": "3,1", "global_batch": 30}, "global_batch"),
        ({"strategy": "data", "batch_shares": "3,x"}, "batch_partition"),
        ({"lr": -1.0}, "lr"),
    ]
    for changes, field in settings:
        app.load(SMALL)
        for name, value in changes.items():
            getattr(app, name).value = value
        assert app.error is not None and app.error.field == field, (changes, app.error)
        assert f"<b>{field}</b>" in app.message.value and html.escape(app.error.allowed) in app.message.value
        assert app.run_button.disabled and app.sweep_button.disabled
        app.run_button.click()
        app.start_run()  # the method behind the button refuses too
        assert not app.running and app.history.runs == []
    assert set(rank_pids()) == before


def test_a_cut_too_many_is_refused_and_balance_repairs_it(no_launch):
    app = Playground(config=SMALL)
    balanced = app.strip.cuts
    assert len(balanced) == 1 and app.config.split_points is None  # None: run() balances the same way
    free = next(t for i, t in enumerate(app.strip.toggles) if i + 1 not in balanced)
    free.value = True
    assert app.error.field == "split_points" and app.run_button.disabled
    assert app.strip.stage_shares.value.count("stage ") == 3
    # The cuts as a person writes them, "(1, 5)", not Python's tuple of one, "(5,)".
    assert f"<code>({', '.join(map(str, app.strip.cuts))})</code>" in app.message.value
    app.strip.balance.click()
    assert app.strip.cuts == balanced and app.error is None
    app.strip.toggles[0].value, app.strip.toggles[balanced[0] - 1].value = True, False
    assert app.config.split_points == (1,) and "stage 0: block 0 · " in app.strip.stage_shares.value
    assert "blocks 0–0" not in app.strip.stage_shares.value and "stage 1: blocks 1–" in app.strip.stage_shares.value
    app.world.value = 4  # three cuts now: start again from balanced ones
    assert len(app.strip.cuts) == 3 and app.error is None
    app.strategy.value = "data"
    assert all(t.disabled for t in app.strip.toggles) and app.config.split_points is None


def test_a_refused_value_reads_as_the_form_writes_it():
    from playground.spec.config import ConfigError
    from playground.views.app.texts import error_html

    with pytest.raises(ConfigError) as one:
        RunConfig(model="mlp", strategy="model", world_size=3, split_points=(4,))
    assert one.value.value == (4,) and "<b>split_points</b> = <code>4</code>: " in error_html(one.value)
    with pytest.raises(ConfigError) as two:
        RunConfig(model="mlp", strategy="model", world_size=2, split_points=(1, 3))
    assert "<b>split_points</b> = <code>(1, 3)</code>: " in error_html(two.value)
    with pytest.raises(ConfigError) as word:
        RunConfig(model="mlp", recompute="some")
    assert "<b>recompute</b> = <code>&#x27;some&#x27;</code>: " in error_html(word.value)


def test_strategy_single_means_one_rank_and_hybrid_keeps_the_mesh_product(no_launch):
    app = Playground(config=SMALL)
    app.strategy.value = "single"
    assert app.world.value == 1 and app.error is None
    app.strategy.value = "hybrid"
    for n in (2, 4, 6, 8):
        app.world.value = n
        assert app.mesh.value in [v for _, v in mesh_options(n)]
        dp, pp, tp = app.mesh.value
        assert dp * pp * tp == n
        if app.config is not None:
            assert (app.config.dp, app.config.pp, app.config.tp) == app.mesh.value
    app.world.value = 4
    # Only meshes hybrid runs are offered: a second axis beside dp, pp or tp, not both.
    offered = [v for _, v in mesh_options(4)]
    assert (1, 2, 2) not in offered and (4, 1, 1) not in offered and (2, 2, 1) in offered
    assert app.error is None and app.world.max >= 2


def test_layout_fits_the_page_and_hides_only_the_mesh(no_launch):
    app = Playground(config=SMALL)
    assert app.layout.max_width == "1260px"
    controls = [app.model, app.strategy, app.world, app.global_batch, app.batch_shares, app.micro_batches,
                app.schedule, app.virtual_stages, app.steps, app.lr, app.optimizer, app.seed, app.zero_stage,
                app.grad_accumulation, app.recompute, app.precision]
    assert app.mesh.layout.display == "none" and all(w.layout.display != "none" for w in controls)
    assert len({id(w.layout) for w in controls + [app.mesh]}) == len(controls) + 1
    app.strategy.value = "hybrid"
    assert app.mesh.layout.display == ""
    strip = sum(int(w.layout.width.rstrip("px")) for w in app.strip.row.children)
    assert strip <= 1260, f"the split strip of '{app.model.value}' is {strip} px wide"


def test_json_round_trip_restores_the_same_state(no_launch):
    app = Playground()
    app.model.value = "cnn"
    app.strategy.value = "pipeline"
    app.world.value = 2
    app.schedule.value = "1f1b"
    app.micro_batches.value = 4
    app.strip.toggles[0].value = True
    app.strip.toggles[[i + 1 for i, t in enumerate(app.strip.toggles) if t.value][-1] - 1].value = False
    app.steps.value, app.lr.value, app.optimizer.value, app.seed.value = 7, 0.01, "adam", 3
    app.sweep_over.value, app.sweep_counts.value = "micro_batches", "2,4,8"
    assert app.config is not None and app.config.split_points == (1,)
    state = app.to_json()
    again = Playground(config=state)
    assert again.config == app.config and again.to_json() == state
    assert (again.sweep_over.value, again.sweep_counts.value) == ("micro_batches", "2,4,8")
    assert Playground(config=app.config).config == app.config
    assert Playground(config=json.loads(state)["config"]).config == app.config
    app.export_button.click()
    assert json.loads(app.state_json.value) == json.loads(state)

    app.micro_batches.value = 3  # an invalid state round-trips too, error and all
    assert app.error.field == "micro_batches"
    broken = Playground(config=app.to_json())
    assert broken.error is not None and broken.error.field == "micro_batches" and broken.run_button.disabled
    broken.state_json.value = "{not json"
    broken.load_button.click()
    assert "cannot load" in broken.status.value


def test_memory_levers_apply_where_the_strategy_reads_them_and_round_trip(no_launch):
    app = Playground(config=RunConfig(model="mlp", strategy="data", world_size=2, global_batch=16))
    assert not app.zero_stage.disabled and not app.grad_accumulation.disabled
    assert app.zero_stage.value == form.STRATEGY_OWN and app.config.zero_stage is None
    app.zero_stage.value, app.grad_accumulation.value = 1, 2
    app.recompute.value, app.precision.value = "full", "bf16"
    assert (app.config.zero_stage, app.config.grad_accumulation, app.config.recompute, app.config.precision) == \
        (1, 2, "full", "bf16")
    assert "ZeRO stage 1 · 2 micro-steps per step · recompute full · bf16" in app.message.value
    state = app.to_json()
    again = Playground(config=state)
    assert again.config == app.config and again.to_json() == state and again.zero_stage.value == 1
    app.strategy.value = "pipeline"  # reads neither: both disabled and left at their defaults
    assert app.zero_stage.disabled and app.grad_accumulation.disabled and app.error is None
    assert (app.config.zero_stage, app.config.grad_accumulation, app.config.recompute) == (None, 1, "full")
    assert "zero_stage" not in json.loads(app.to_json())["config"]
    app.strategy.value = "data"
    assert app.config.zero_stage == 1 and not app.zero_stage.disabled


def test_a_refused_lever_shows_the_field_and_its_ways_out_lead_to_runs(no_launch):
    app = Playground(config=RunConfig(model="mlp", strategy="fsdp", world_size=2))
    app.zero_stage.value = 1
    assert app.error.field == "zero_stage" and "<b>zero_stage</b>" in app.message.value and app.run_button.disabled
    labels = [b.description for b in app.way_out.children[1:]]
    assert "strategy data (ZeRO stage 1)" in labels
    next(b for b in app.way_out.children[1:] if b.description == "strategy data (ZeRO stage 1)").click()
    assert app.error is None and app.config.strategy == "data" and app.config.zero_stage == 1
    app.global_batch.value, app.grad_accumulation.value = 16, 3
    assert app.error.field == "grad_accumulation"
    app.way_out.children[1].click()
    assert app.error is None and app.config.global_batch % (2 * app.config.grad_accumulation) == 0


def test_what_if_draws_predicted_bars_beside_the_measured_and_starts_nothing(no_launch, monkeypatch):
    from pathlib import Path

    from playground.result.run_result import RunResult
    from playground.views.app.panels import ResultsView
    from playground.views.app.whatif import what_if

    monkeypatch.setattr(runner, "run", runner.launch)  # the no_launch stand-in: raises
    result = RunResult.from_json((Path(__file__).parent / "data" / "results" / "mlp-data.json").read_text())
    before = set(rank_pids())
    view = ResultsView()
    view.show(result)
    view.selected_index = view.TITLES.index("memory")
    pane = view.children[view.selected_index]
    caption, _, panel = pane.children
    assert panel is view.what_if and "Rajbhandari" in caption.value and "stage 0" in caption.value
    assert panel.figure is None and panel.levers() == {"zero_stage": None, "grad_accumulation": 1,
                                                       "recompute": "none", "precision": "fp32"}
    panel.inputs["zero_stage"].value = 3
    panel.inputs["precision"].value = "bf16"
    assert panel.shown.changes == {"zero_stage": 3, "precision": "bf16"}
    assert panel.shown.predictions == what_if(result, zero_stage=3, precision="bf16").predictions
    assert "prediction, not run" in panel.message.value and bytes(panel.figure).startswith(SVG)
    assert b"prediction, not run" in bytes(panel.figure) and b"ZeRO formula, stage 3" in bytes(panel.figure)
    assert bytes(panel.plot.children[0].value) == bytes(panel.figure)
    panel.inputs["grad_accumulation"].value = 3  # 8 samples per rank: refused, no bars
    assert panel.figure is None and panel.plot.children == ()
    assert "<b>grad_accumulation</b>" in panel.message.value and "refused" in panel.message.value
    view.show(result)  # a new result starts from its own levers
    assert panel.levers()["zero_stage"] is None and panel.figure is None
    assert set(rank_pids()) == before


def test_the_memory_caption_names_the_formulas_source_and_every_gap():
    from playground.predict.formulas import ZERO_MEMORY_FORMULAS, ZERO_SOURCE
    from playground.views.app.texts import zero_html

    # A stage-1 record as predict.zero_formulas writes it: whole tensors, shared out unevenly.
    zero = {"stage": 1, "source": ZERO_SOURCE, "psi": 100, "n_d": 2, "k": 8, "formula": ZERO_MEMORY_FORMULAS[1],
            "memory": {"params": 400.0, "grads": 400.0, "optimizer": 400.0}, "partition": [60, 40],
            "gap": [{"rank": 0, "params": 0.0, "grads": 0.0, "optimizer": 2048.0},
                    {"rank": 1, "params": 0.0, "grads": 0.0, "optimizer": -160.0}],
            "notes": ["ZeroRedundancyOptimizer gives each rank whole parameters"]}
    text = html.unescape(zero_html(zero))
    assert ZERO_SOURCE in text and "stage 1" in text and "optimizer state KΨ/N_d" in text
    assert "rank 0 optimizer +2.0 KiB; rank 1 optimizer −160 B" in text and "[60, 40]" in text
    assert "ZeroRedundancyOptimizer gives each rank whole parameters" in text
    even = {**zero, "partition": None, "gap": [{"rank": r, "params": 0.0, "grads": 0.0, "optimizer": 0.0}
                                                for r in (0, 1)]}
    assert "equals the formula on every rank" in zero_html(even) and "Ψ_r" not in zero_html(even)


def test_a_real_run_draws_the_visible_tab_then_each_tab_when_selected(finished):
    app = finished
    r = app.result
    assert r is not None and r.passed and r.world_size == 2
    assert "baseline check passed (max |Δparam| = " in app.status.value
    assert app.progress.bar_style == "success" and app.progress.value == app.progress.max
    assert app.results.titles == ("timeline", "compute / comm / idle", "memory", "loss and check", "data flow")
    assert app.results.selected_index == 0
    # Only the tab on screen was rendered; every caption is there already.
    assert set(app.figures) == {"timeline"}
    assert bytes(app.results.children[0].children[1].value).startswith(SVG)
    # The timeline's title and legend are text beside the picture, not drawn in it.
    legend = app.results.children[0].children[0].value
    assert "playground-timeline-legend" in legend and "What each rank did, step by step" in legend
    assert "forward" in legend and "step boundary" in legend
    assert b"What each rank did" not in bytes(app.results.children[0].children[1].value)
    assert all(len(pane.children) == 1 and pane.children[0].value for pane in app.results.children[1:])
    for i, title in enumerate(app.results.titles[1:], start=1):
        app.results.selected_index = i
        caption, img, *under = app.results.children[i].children
        assert bytes(img.value).startswith(SVG) and caption.value and title in app.figures
        assert under == ([app.results.what_if] if title == "memory" else [])
    app.results.selected_index = 0
    assert "formula (p-1)/(m+p-1)" in app.results.children[1].children[0].value
    assert "The replay of the schedule" in app.results.children[1].children[0].value
    assert "stage balance: stage 0: " in app.results.children[1].children[0].value
    assert "prediction" in app.results.children[2].children[0].value
    assert set(app.figures) == set(app.results.titles)
    assert len(app.history.runs) == 1 and "passed" in app.history.table.value
    assert app.history.side.children == ()  # the compare is drawn when it is opened
    app.extras.selected_index = 0
    assert len(app.history.side.children) == 2
    assert set(rank_pids()) <= set(default_pool().process_pids())  # nothing but the warm ranks
    assert not app.run_button.disabled and app.stop_button.disabled


def test_a_real_run_shows_progress_and_the_loss_live(finished):
    seen, r = finished.seen, finished.result
    assert seen["status"][0].startswith("starting 2 devices")  # until the first rank reports a step
    assert any(v.startswith("running: step ") for v in seen["status"])
    assert [v for v in seen["progress"] if v] == list(range(1, SMALL.steps + 1))
    last = seen["live"][-1]
    assert "playground-live-loss" in last and last.count("playground-live-rank") == 2
    assert f"<code>{r.losses[-1]:.4f}</code> at step {SMALL.steps - 1}" in last


def test_chrome_trace_button_offers_the_last_runs_trace_as_a_download(finished, no_launch):
    assert Playground(config=SMALL).trace_button.disabled  # no run yet, nothing to save
    app = finished
    assert not app.trace_button.disabled and app.trace_link.value == ""
    app.trace_button.click()
    link = app.trace_link.value
    assert "download='trace-mlp-pipeline-2ranks.json'" in link
    href = link.split("href='", 1)[1].split("'", 1)[0]
    assert href.startswith("data:application/json;base64,")
    trace = json.loads(base64.b64decode(href.split(",", 1)[1]))
    assert trace == json.loads(json.dumps(app.result.to_chrome_trace()))
    names = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "process_name"}
    assert sorted(names) == [0, 1] and names[1].startswith("rank 1 · pp 1")
    caption = app.results.children[0].children[0].value  # the timeline's alt text, its rows as drawn
    assert "timeline picture: 2 rows, one per rank: rank 0 · stage 0; rank 1 · stage 1" in caption


def test_sweep_fills_history_and_compare(finished, monkeypatch):
    seen = []

    def fake_run(config, **kwargs):
        seen.append(config.micro_batches)
        return finished.result
    monkeypatch.setattr(runner, "run", fake_run)
    app = Playground(config=SMALL)
    app.sweep_over.value, app.sweep_counts.value = "micro_batches", "1,2,3"
    app.sweep_button.click()
    assert app.wait(timeout=60)
    assert seen == [1, 2]  # 3 does not divide the batch of 32: skipped, and said so
    assert "skipped 3" in app.status.value and "2 of 3" in app.status.value
    assert bytes(app.sweep_plot.children[0].value).startswith(SVG)
    assert len(app.history.runs) == 2
    assert (app.history.a.value, app.history.b.value) == (1, 2)
    assert app.history.side.children == ()  # closed: no timeline rendered for it
    app.extras.selected_index = 0
    assert len(app.history.side.children) == 2
    assert all(bytes(p.children[1].value).startswith(SVG) for p in app.history.side.children)
    assert "the tabs below show the last single run" not in app.status.value  # there is none
    app.result = finished.result  # a single run before the sweep: its tabs stay, and the status says whose
    app.sweep_button.click()
    assert app.wait(timeout=60)
    assert "the tabs below show the last single run (" in app.status.value


def test_sweep_helpers():
    c = RunConfig(model="mlp", strategy="pipeline", world_size=2, split_points=(3,), micro_batches=4)
    assert sweep_config(c, "world_size", 4).split_points is None
    h = RunConfig(model="mlp", strategy="hybrid", world_size=4, dp=2, pp=2)
    assert (sweep_config(h, "world_size", 8).dp, sweep_config(h, "world_size", 8).pp) == (4, 2)
    for n in range(1, 9):
        assert {dp * pp * tp for _, (dp, pp, tp) in mesh_options(n)} == {n}


def test_plot_sweep_draws_four_panels(finished):
    fig = plot_sweep("world_size", [(1, finished.result), (2, finished.result)])
    assert len(fig.axes) == 4


def test_stop_with_a_cancel_hook_reports_stopped(monkeypatch):
    started = threading.Event()

    def fake_run(config, *, cancel=None, on_progress=None):
        started.set()
        assert cancel.wait(30), "Stop did not set the cancel event"
        raise RunCancelled()
    monkeypatch.setattr(runner, "run", fake_run)
    app = Playground(config=SMALL)
    app.run_button.click()
    assert started.wait(10) and not app.stop_button.disabled
    app.stop_button.click()
    assert app.wait(timeout=30)
    assert app.status.value.startswith("stopped") and app.history.runs[-1]["error"] == "stopped"
    assert not app.run_button.disabled


def test_progress_follows_every_ranks_steps(finished, monkeypatch):
    def fake_run(config, *, cancel=None, on_progress=None):
        for step in range(config.steps):  # rank 1 finishes a step after rank 0; the step is done then
            on_progress({"rank": 0, "step": step, "loss": None, "step_s": 0.01})
            on_progress({"rank": 1, "step": step, "loss": 2.0 - step / 4, "step_s": 0.02})
        return finished.result
    monkeypatch.setattr(runner, "run", fake_run)
    app = Playground(config=SMALL)
    steps = []
    app.progress.observe(lambda ch: steps.append(ch["new"]), names="value")
    app.run_button.click()
    assert app.wait(timeout=60)
    assert steps == list(range(1, SMALL.steps + 1))
    assert app.progress.value == app.progress.max == SMALL.steps
    assert "<code>1.5000</code> at step 2" in app.live.value and "20.0 ms" in app.live.value


def test_stop_ends_a_real_run_and_its_processes():
    app = Playground(config=SMALL.replace(steps=100_000, timeout_s=300))
    app.run_button.click()
    deadline = time.monotonic() + 60
    while app.progress.value < 2 and time.monotonic() < deadline:  # into training: steps are finishing
        time.sleep(0.1)
    assert app.running and app.progress.value >= 2 and len(rank_pids()) >= 2
    app.stop_button.click()
    assert app.wait(timeout=30), "Stop did not end the run within 30 s"
    assert app.status.value.startswith("stopped")
    assert no_rank_left()
    assert app.result is None and app.history.runs[-1]["error"] == "stopped"


def test_too_few_blocks_for_the_devices_offers_ways_out(no_launch):
    app = Playground(config=RunConfig(model="seed-mlp", strategy="pipeline", world_size=2, micro_batches=4))
    assert app.error is None and app.way_out.children == ()
    app.world.value = 4  # 4 stages of a 2-block model: a dead end without the buttons
    assert app.error is not None and app.run_button.disabled
    labels = [b.description for b in app.way_out.children[1:]]
    assert "model mlp (10 blocks)" in labels and "2 devices (one per block)" in labels
    assert any(label.startswith("strategy data") for label in labels)
    for label in labels:
        app.load(RunConfig(model="seed-mlp", strategy="pipeline", world_size=2, micro_batches=4))
        app.world.value = 4
        next(b for b in app.way_out.children[1:] if b.description == label).click()
        assert app.error is None and not app.run_button.disabled and app.way_out.children == (), label


@pytest.mark.parametrize("cores, expect", [(1, True), (4, False)])
def test_the_start_status_says_how_long_the_first_run_takes_on_one_core(monkeypatch, cores, expect):
    app = Playground(config=SMALL)
    app.cores = cores
    monkeypatch.setattr(app.jobs, "start", lambda job: None)  # the status alone: no run
    app.start_run()
    assert app.status.value.startswith("starting 2 devices")
    assert ("on 1 CPU core up to about half a minute" in app.status.value) == expect, app.status.value
    # The warm pool's factory imports PyTorch once and forks the ranks (host/launcher.py), not a process per device.
    assert "rank factory that imports PyTorch once" in app.status.value and "forks more" in app.status.value
    assert "in each" not in app.status.value


def test_the_live_view_catches_up_at_the_next_tick_when_the_throttle_held_a_step_back(no_launch, monkeypatch):
    """A step's last rank reports within milliseconds of its first: the
    throttle holds that message back, and the job's tick draws it, so the
    status does not stay a step behind what every rank has finished."""
    from playground.views.app.jobs import Throttle

    app = Playground(config=SMALL)
    monkeypatch.setattr(app.jobs, "start", lambda job: None)  # the ranks' messages come from here instead
    app.start_run()
    app._throttle = Throttle(3600)  # no window ends during the test: only the tick can catch up
    assert app._throttle.due()  # the window starts now
    drawn = []
    app.live.observe(lambda ch: drawn.append(ch["new"]), names="value")

    def finish(step: int) -> None:
        app._on_progress({"rank": 0, "step": step, "loss": None, "step_s": 0.5})
        app._on_progress({"rank": 1, "step": step, "loss": 2.0 - step / 4, "step_s": 1.0})

    finish(0)
    assert len(drawn) == 1 and app.progress.value == 1  # rank 0's first message drew; rank 1's was held
    assert "step 0 of 3" in app.status.value
    app._tick(1.0)
    assert "running: step 1 of 3 finished on every rank" in app.status.value and len(drawn) == 2
    assert "<code>2.0000</code> at step 0" in app.live.value and "1000.0 ms" in app.live.value
    app._tick(1.5)  # nothing new: nothing redrawn
    assert len(drawn) == 2
    finish(1)
    assert len(drawn) == 2 and "step 1 of 3" in app.status.value  # held back, not drawn per message
    app._tick(2.0)
    assert "step 2 of 3" in app.status.value and "<code>1.7500</code> at step 1" in app.live.value
    finish(2)  # the last step is drawn at once
    assert "step 3 of 3" in app.status.value and len(drawn) == 4


def test_a_tick_after_a_failed_run_leaves_the_failure_shown(monkeypatch):
    def fake_run(config, *, cancel=None, on_progress=None):
        on_progress({"rank": 0, "step": 0, "loss": None, "step_s": 0.01})
        on_progress({"rank": 1, "step": 0, "loss": 2.0, "step_s": 0.01})  # held back by the throttle
        raise RuntimeError("rank 1 died")
    monkeypatch.setattr(runner, "run", fake_run)
    app = Playground(config=SMALL)
    app.run_button.click()
    assert app.wait(timeout=30)
    assert "run failed: RuntimeError: rank 1 died" in app.status.value
    app._tick(1.0)
    assert "run failed: RuntimeError: rank 1 died" in app.status.value


@pytest.mark.parametrize("path", ["app.ipynb", "notebooks/00_playground.ipynb"])
def test_what_to_expect_describes_the_rank_factory(path):
    """The first run starts one rank factory that imports PyTorch once and
    forks the ranks (host/launcher.py); the notebooks' texts say so."""
    from pathlib import Path

    cells = json.loads((Path(__file__).parent.parent / path).read_text(encoding="utf-8"))["cells"]
    text = " ".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown").replace("\n", " ")
    expect = next(part for part in text.split("**") if "rank factory" in part)
    assert "imports PyTorch once" in expect and "forks more ranks" in expect
    assert "loads PyTorch in each" not in text and "15–35 s" in text


def test_a_timeouts_status_names_where_each_rank_was():
    from playground.host.launcher import RunTimeout
    from playground.views.app.runs import headline

    said = headline(str(RunTimeout([0, 1], 3, {0: "all_reduce (step 4)", 1: "forward (step 4)"})))
    assert said.endswith("Each rank was in: rank 0: all_reduce (step 4); rank 1: forward (step 4)"), said
    assert headline("rank 1 raised ValueError: boom\n--- traceback of rank 1 ---\n  File x") == \
        "rank 1 raised ValueError: boom"
