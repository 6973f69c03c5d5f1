"""The figures, drawn from real runs: what each one shows must match the
RunResult it was drawn from."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("matplotlib")

import playground as pg  # noqa: E402
from playground.views import plots  # noqa: E402
from playground.rank.recorder import COMM_KINDS, COMPUTE_KINDS  # noqa: E402

RUNS = {
    "pipeline": pg.RunConfig(model="mlp", strategy="pipeline", schedule="1f1b", world_size=2, micro_batches=4,
                             global_batch=128, steps=4),
    "data": pg.RunConfig(model="mlp", strategy="data", world_size=2, batch_partition=(3, 1), global_batch=128,
                         steps=3),
    "model": pg.RunConfig(model="seed-mlp", strategy="model", world_size=2, split_points=(1,), steps=3),
    "single": pg.RunConfig(model="seed-mlp", strategy="single", world_size=1, steps=3),
}


@pytest.fixture(scope="module")
def results():
    return {name: pg.run(config) for name, config in RUNS.items()}


def patches(ax, prefix: str):
    return [p for p in ax.patches if (p.get_gid() or "").startswith(prefix)]


def legend_labels(fig) -> list[str]:
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    return [t.get_text() for legend in legends for t in legend.get_texts()]


def test_colours_cover_every_event_kind():
    for kind in COMPUTE_KINDS + COMM_KINDS + ("compute", "comm", "wait", "overhead", "idle"):
        assert kind in plots.KIND_COLORS
    assert len({plots.KIND_COLORS[k] for k in COMPUTE_KINDS + COMM_KINDS}) == len(COMPUTE_KINDS + COMM_KINDS)


# -- timeline -----------------------------------------------------------------


@pytest.mark.parametrize("name", list(RUNS))
def test_timeline_has_one_row_per_rank_and_a_box_per_compute_event(results, name):
    result = results[name]
    fig = plots.plot_timeline(result)  # the last 2 steps
    ax = fig.axes[0]
    assert len(ax.get_yticks()) == len(result.ranks)
    assert [t.get_text() for t in ax.get_yticklabels()] == [plots.rank_label(result, r) for r in result.ranks]
    expected = 0
    for r in result.ranks:
        first_shown = r.step_times[-2][0]
        expected += sum(1 for e in r.timeline if e["kind"] in COMPUTE_KINDS and e["start"] >= first_shown)
    boxes = patches(ax, "compute:")
    assert len(boxes) == expected > 0
    for box in boxes:
        kind = box.get_gid().split(":")[1]
        assert box.get_facecolor()[:3] == pytest.approx(_rgb(plots.KIND_COLORS[kind]))
    assert "time" in ax.get_xlabel() and "(ms)" in ax.get_xlabel()


def test_timeline_steps_option(results):
    result = results["pipeline"]
    compute_events = sum(1 for r in result.ranks for e in r.timeline if e["kind"] in COMPUTE_KINDS)
    assert len(patches(plots.plot_timeline(result, steps=None).axes[0], "compute:")) == compute_events
    one = plots.plot_timeline(result, steps=[1]).axes[0]
    lo = min(r.step_times[1][0] for r in result.ranks) * 1e3
    hi = max(r.step_times[1][1] for r in result.ranks) * 1e3
    assert one.get_xlim()[0] <= lo and one.get_xlim()[1] >= hi
    assert all(lo <= p.get_x() and p.get_x() + p.get_width() <= hi for p in patches(one, "compute:"))
    with pytest.raises(ValueError, match="steps"):
        plots.plot_timeline(result, steps=[99])


def test_timeline_pipeline_shows_micro_batches_and_p2p_lanes(results):
    result = results["pipeline"]
    fig = plots.plot_timeline(result)
    ax = fig.axes[0]
    texts = {t.get_text() for t in ax.texts}
    assert {"0", "1", "2", "3"} <= texts  # micro-batch numbers, where they fit
    labels = legend_labels(fig)
    for label in ("forward", "backward", "send", "recv", "step boundary"):
        assert label in labels
    shown = sum(1 for r in result.ranks for e in r.timeline
                if e["kind"] in COMM_KINDS and e["start"] >= r.step_times[-2][0])
    assert len(patches(ax, "comm:")) == shown  # one solid part per transfer


def test_timeline_data_parallel_draws_all_reduce(results):
    fig = plots.plot_timeline(results["data"])
    assert "all-reduce" in legend_labels(fig)
    assert patches(fig.axes[0], "comm:all_reduce")
    assert not patches(fig.axes[0], "comm:send")


# -- time breakdown -----------------------------------------------------------


@pytest.mark.parametrize("name", ["pipeline", "data"])
def test_time_breakdown_bars_are_the_accounted_times(results, name):
    result = results[name]
    fig = plots.plot_time_breakdown(result)
    ax = fig.axes[0]
    for k, (key, _) in enumerate(plots.time_parts(result.ranks[0])):
        bars = [p for p in ax.patches if p.get_gid() == f"time:{key}"]
        expected = [plots.time_parts(r)[k][1] * 1e3 for r in result.ranks]
        assert [bar.get_height() for bar in bars] == pytest.approx(expected)
        assert bars[0].get_facecolor()[:3] == pytest.approx(_rgb(plots.KIND_COLORS[key]))
    labels = legend_labels(fig)
    assert any(label.startswith("compute") for label in labels)
    assert any(label.startswith("bubble predicted by") for label in labels) == (name == "pipeline")
    if name == "pipeline":  # the bracket and its text come from result.bubble, not a formula redone here
        b = result.bubble
        assert any(f"= {b['predicted']:.0%}" in label and b["formula"] in label for label in labels)
        assert [t.get_text() for t in ax.texts if t.get_text().startswith("bubble")] == \
               [f"bubble\npredicted {b['predicted']:.0%}\nmeasured {m:.0%}\nreplayed {x:.0%}"
                for m, x in zip(b["measured"], b["replayed"])]
    assert "(ms)" in ax.get_ylabel()


# -- memory -------------------------------------------------------------------


def test_memory_bars_and_predictions(results):
    result = results["pipeline"]
    fig = plots.plot_memory(result, predicted=None)
    ax = fig.axes[0]
    measured = patches(ax, "measured")
    assert len(measured) == len(plots.MEMORY_FIELDS) * len(result.ranks)
    tops = [max(p.get_y() + p.get_height() for p in measured if abs(p.get_x() + p.get_width() / 2 - i) < 0.5)
            for i in range(len(result.ranks))]
    assert tops == pytest.approx([sum(r.memory[f] for f in plots.MEMORY_FIELDS) / 2**20 for r in result.ranks])
    assert not patches(ax, "predicted")

    # dicts and objects both serve as predictions
    predicted = [dict(r.memory) for r in result.ranks[:1]] + [SimpleNamespace(**result.ranks[1].memory)]
    fig = plots.plot_memory(result, predicted=predicted)
    outlined = patches(fig.axes[0], "predicted")
    assert len(outlined) == len(plots.MEMORY_FIELDS) * len(result.ranks)
    assert all(p.get_facecolor()[3] == 0 for p in outlined)
    assert "predicted (outline)" in legend_labels(fig)
    with pytest.raises(ValueError, match="one per rank"):
        plots.plot_memory(result, predicted=predicted[:1])
    # By default the figure draws the prediction the result carries.
    assert len(patches(plots.plot_memory(result).axes[0], "predicted")) == len(plots.MEMORY_FIELDS) * len(result.ranks)


def test_memory_of_a_tiny_model_is_in_kib(results):
    assert "KiB" in plots.plot_memory(results["model"]).axes[0].get_ylabel()


# -- losses -------------------------------------------------------------------


def test_losses_show_run_and_baseline(results):
    result = results["data"]
    fig = plots.plot_losses(result)
    ax = fig.axes[0]
    lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    assert lines["single device (baseline)"] == pytest.approx(result.baseline["losses"])
    assert lines["data on 2 ranks"] == pytest.approx(result.losses)
    assert "PASS" in ax.get_title() and "held-out accuracy" in ax.get_title()
    assert "max |Δparam|" in ax.get_title()


# -- data flow ----------------------------------------------------------------


def test_dataflow_pipeline_annotates_bytes_across_the_cut(results):
    result = results["pipeline"]
    ax = plots.plot_dataflow(result).axes[0]
    assert len(patches(ax, "block:")) == len(result.model)
    assert len(patches(ax, "cut-arrow")) == 2
    # mlp: 128 features of fp32 per sample cross the cut, 128 samples per step
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "activations →\n64.0 KiB/step\n4 sends × 16.0 KiB" in texts
    assert "gradients ←\n64.0 KiB/step" in texts
    colors = {p.get_facecolor() for p in patches(ax, "block:")}
    assert len(colors) == 2  # one per stage


def test_dataflow_data_parallel_annotates_the_all_reduce(results):
    result = results["data"]
    ax = plots.plot_dataflow(result).axes[0]
    assert len(patches(ax, "block:")) == 2 * len(result.model)  # every rank holds every block
    assert patches(ax, "collective:all_reduce") and not patches(ax, "cut-arrow")
    # DDP all-reduces every gradient once per step: as many bytes as the parameters
    said = [t.get_text() for t in ax.texts if (t.get_gid() or "").startswith("bytes:all_reduce")]
    assert said == [f"all-reduce\nB = {plots.human_bytes(result.ranks[0].memory['params'])}\nper rank per step"]
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "96 samples" in texts and "32 samples" in texts


def test_dataflow_single_rank(results):
    ax = plots.plot_dataflow(results["single"]).axes[0]
    assert len(patches(ax, "block:")) == 2
    assert not patches(ax, "cut-arrow") and not patches(ax, "collective:")


# -- all of them ---------------------------------------------------------------


def test_save_all_writes_png_files(results, tmp_path):
    import matplotlib.pyplot as plt

    paths = plots.save_all(results["model"], tmp_path / "figures")
    assert [p.rsplit("/", 1)[1] for p in paths] == ["timeline.png", "time_breakdown.png", "memory.png",
                                                     "losses.png", "dataflow.png"]
    for path in paths:
        with open(path, "rb") as f:
            head = f.read(8)
        assert head == b"\x89PNG\r\n\x1a\n"
    assert not plt.get_fignums()  # no pyplot figure left open behind the caller's back


def _rgb(color: str) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    return to_rgb(color)


def test_a_check_of_losses_says_so_in_the_table_and_the_figure(results):
    # Where one device is not expected to match (BatchNorm per shard, random
    # layers), the check compares losses: the CLI's line and the loss figure
    # name that check and its tolerance, not the parameters' 1e-5.
    import dataclasses

    from playground.result.table import format_table

    result = results["data"]
    b = dict(result.baseline, compares="loss", why=["BatchNorm normalises each rank's shard"],
             max_abs_param_diff=1.23e-2, mean_loss_rel_diff=0.004, passed=True)
    shown = dataclasses.replace(result, baseline=b)
    line = next(x for x in format_table(shown).splitlines() if "check" in x)
    assert line.startswith("loss check: PASS  mean loss 0.4% from one device's (tolerance 10%)"), line
    assert "not expected to match" in line and "tolerance 1e-05" not in line
    title = plots.plot_losses(shown).axes[0].get_title()
    assert title.startswith("loss check: PASS") and "1e-05" not in title
