"""Every figure, drawn for every strategy (pipeline: every schedule) on
every zoo model, from results recorded by ``tests/data/make_results.py``;
what is drawn must be what the result says. A live run keeps the recorded
files honest (and tests/test_cli.py draws a V schedule's pictures)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
import os
import sys

import pytest

pytest.importorskip("matplotlib")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "data"))

from combinations import combinations, config_or_refusal, path_of  # noqa: E402

import playground as pg  # noqa: E402
from playground.views import dataflow, plots, timeline  # noqa: E402
from playground.spec.config import ConfigError  # noqa: E402
from playground.rank.report import RankReport
from playground.result.run_result import RunResult
from playground.result.accounting import step_of, timed_steps, traffic_per_step  # noqa: E402

COMBINATIONS = combinations()
RECORDED = [stem for stem, fields in COMBINATIONS.items() if not isinstance(config_or_refusal(fields), ConfigError)]
REFUSED = [stem for stem in COMBINATIONS if stem not in RECORDED]


def load(stem: str) -> RunResult:
    with open(path_of(stem)) as f:
        return RunResult.from_json(f.read())


@pytest.fixture(scope="module")
def drawn():
    """stem -> (result, {figure name: Figure}), every figure drawn once."""
    out = {}
    for stem in RECORDED:
        r = load(stem)
        out[stem] = (r, {"timeline": plots.plot_timeline(r), "time_breakdown": plots.plot_time_breakdown(r),
                         "memory": plots.plot_memory(r, r.predictions), "losses": plots.plot_losses(r),
                         "dataflow": plots.plot_dataflow(r)})
    return out


def gids(fig, prefix: str) -> list[str]:
    found = [a.get_gid() for ax in fig.axes for a in ax.patches + ax.lines + ax.texts]
    found += [t.get_gid() for t in fig.texts]
    return [g for g in found if g and g.startswith(prefix)]


def texts(fig, gid_prefix: str | None = None) -> list[str]:
    """Every text drawn; with ``gid_prefix``, those whose gid starts with it,
    each on one line (as wrapped text reads)."""
    items = [t for ax in fig.axes for t in ax.texts] + list(fig.texts)
    if gid_prefix is None:
        return [t.get_text() for t in items]
    return [" ".join(t.get_text().split()) for t in items if (t.get_gid() or "").startswith(gid_prefix)]


def events_per_step(result: RunResult, kind: str, rank: int) -> tuple[float, float]:
    """(bytes, calls) per timed step of ``kind`` on ``rank``, summed from its events here."""
    r = next(x for x in result.ranks if x.rank == rank)
    steps = timed_steps(result.ranks)
    chosen = [e for e in r.timeline if e["kind"] == kind and step_of(r, e["start"]) in steps]
    return sum(e["bytes"] for e in chosen) / len(steps), len(chosen) / len(steps)


# -- the table of runs ------------------------------------------------------------------------


def test_every_combination_is_recorded_or_refused():
    assert {stem.split("-pipeline-")[-1] for stem in COMBINATIONS if "-pipeline-" in stem} == set(pg.spec.config.SCHEDULES)
    assert {stem.rsplit("-", 1)[0] for stem in COMBINATIONS if stem.endswith("-single")} == set(pg.zoo.models.MODEL_NAMES)
    for stem in REFUSED:
        with pytest.raises(ConfigError, match="blocks"):
            pg.RunConfig(**COMBINATIONS[stem])
        assert not os.path.exists(path_of(stem))
    assert REFUSED == [f"seed-mlp-pipeline-{s}" for s in
                       ("interleaved1f1b", "loopedbfs", "interleavedzerobubble", "zbvzerobubble", "dualpipev")]
    for stem in RECORDED:
        result = load(stem)
        config = result.config.to_dict()
        assert all(config[k] == v for k, v in COMBINATIONS[stem].items()), stem
        assert result.passed and result.model is None


@pytest.mark.parametrize("stem", RECORDED)
def test_the_traffic_is_the_events(stem):
    result = load(stem)
    assert result.traffic == json.loads(json.dumps(traffic_per_step(result.ranks)))
    for e in result.traffic["collectives"]:
        kind_bytes, calls = events_per_step(result, e["kind"], e["rank"])
        same_kind = [x for x in result.traffic["collectives"] if x["kind"] == e["kind"] and x["rank"] == e["rank"]]
        assert sum(x["bytes_per_step"] for x in same_kind) == pytest.approx(kind_bytes)
        assert sum(x["calls_per_step"] for x in same_kind) == pytest.approx(calls)
        factor = {"all_reduce": 2, "all_gather": 1, "reduce_scatter": 1}[e["kind"]]
        n = e["group_size"]
        assert e["ring_bytes_per_step"] == pytest.approx(factor * (n - 1) / n * e["bytes_per_step"])
    for e in result.traffic["p2p"]:
        r = next(x for x in result.ranks if x.rank == e["src"])
        steps = timed_steps(result.ranks)
        sends = [x for x in r.timeline
                 if x["kind"] == "send" and x["peer"] == e["dst"] and step_of(r, x["start"]) in steps]
        assert e["bytes_per_step"] == pytest.approx(sum(x["bytes"] for x in sends) / len(steps))
    assert [b["index"] for b in result.blocks] == list(range(len(result.blocks)))
    assert [b["label"] for b in result.blocks] == list(pg.zoo.models.MODELS[result.config.model].block_labels)
    model = pg.build_model(result.config.model)
    assert [b["params"] for b in result.blocks] == [sum(p.numel() for p in block.parameters()) for block in model]


def test_traffic_per_step_counts_the_timed_steps_only():
    def rank(r, events):
        return RankReport(rank=r, dp_rank=0, pp_rank=r, blocks=(r, r + 1), timeline=events,
                          step_times=[(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)], memory={})
    send = {"kind": "send", "peer": 1, "bytes": 100, "end": 0.0}
    ar = {"kind": "all_reduce", "group": "ranks:0,1", "group_size": 2, "bytes": 64, "end": 0.0}
    ranks = [rank(0, [dict(send, start=0.5), dict(send, start=1.5), dict(send, start=2.5), dict(send, start=2.6),
                      dict(ar, start=0.1), dict(ar, start=1.1)]),
             rank(1, [])]
    t = traffic_per_step(ranks)
    assert t["p2p"] == [{"src": 0, "dst": 1, "bytes_per_step": 150.0, "messages_per_step": 1.5}]
    assert t["collectives"] == [{"rank": 0, "kind": "all_reduce", "group": "ranks:0,1", "group_size": 2,
                                 "bytes_per_step": 32.0, "ring_bytes_per_step": 32.0, "calls_per_step": 0.5}]


# -- every figure ---------------------------------------------------------------------------------


def assert_formula_bars(fig, result: RunResult, zero: dict | None = "result") -> None:
    """The memory figure's hatched bars are ``zero["memory"]`` (by default
    ``result.zero``), one stack per rank, labelled with the stage; none
    where there is no record."""
    zero = result.zero if zero == "result" else zero
    ax = fig.axes[0]
    size = 2**20 if "MiB" in ax.get_ylabel() else 2**10
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    if zero is None:
        assert not gids(fig, "formula") and not any("ZeRO" in t for t in legend)
        return
    assert len(gids(fig, "formula:")) == len(plots.ZERO_FIELDS) * len(result.ranks)
    for f in plots.ZERO_FIELDS:
        bars = [p for p in ax.patches if p.get_gid() == f"formula:{f}"]
        assert [b.get_height() for b in bars] == pytest.approx([zero["memory"][f] / size] * len(result.ranks))
        assert all(b.get_hatch() and b.get_facecolor()[3] == 0 for b in bars)
    assert f"ZeRO formula, stage {zero['stage']} (hatched; no activations)" in legend
    assert texts(fig).count("formula") == len(result.ranks)



@pytest.mark.parametrize("stem", RECORDED)
def test_every_figure_draws_what_the_result_holds(drawn, stem):
    result, figs = drawn[stem]
    ranks = result.ranks
    assert [t.get_text() for t in figs["timeline"].axes[0].get_yticklabels()] == \
           [plots.rank_label(result, r) for r in ranks]
    bars = [p for p in figs["time_breakdown"].axes[0].patches if p.get_gid() == "time:compute"]
    assert [b.get_height() for b in bars] == pytest.approx([r.time["compute"] * 1e3 for r in ranks])
    assert len(gids(figs["memory"], "measured")) == len(plots.MEMORY_FIELDS) * len(ranks)
    assert_formula_bars(figs["memory"], result)
    loss = {line.get_label(): list(line.get_ydata()) for line in figs["losses"].axes[0].get_lines()}
    assert loss["single device (baseline)"] == pytest.approx(result.baseline["losses"])
    # Data flow: every block drawn, once per replica (fsdp: once per rank), labelled from result.blocks.
    flow = figs["dataflow"]
    replicas = len({r.dp_rank for r in ranks})
    rows = len(ranks) if result.config.strategy == "fsdp" else replicas
    drawn_blocks = gids(flow, "block:")
    for b in result.blocks:
        assert drawn_blocks.count(f"block:{b['index']}") == rows
    words = " ".join(texts(flow))
    assert all(b["label"] in words for b in result.blocks)


def svg_boxes(data: bytes) -> tuple[ET.Element, list[tuple[str, float, float, float, float]]]:
    """The SVG's root and each drawn box as (gid, x, y, width, height), fractions of the plot's area."""
    root = ET.fromstring(data)
    ns = {"s": "http://www.w3.org/2000/svg"}
    plot = root.find("s:defs/s:clipPath/s:rect", ns)
    x0, y0, w0, h0 = (float(plot.get(k)) for k in ("x", "y", "width", "height"))
    boxes = []
    for g in root.iter("{http://www.w3.org/2000/svg}g"):
        if g.get("data-gid"):
            rect = g.find("s:rect", ns)
            x, y, w, h = (float(rect.get(k)) for k in ("x", "y", "width", "height"))
            boxes.append((g.get("data-gid"), (x - x0) / w0, (y - y0) / h0, w / w0, h / h0))
    return root, boxes


@pytest.mark.parametrize("stem", RECORDED)
def test_the_apps_svg_timeline_draws_the_figures_boxes_at_the_same_places(drawn, stem):
    """The app writes the timeline as SVG itself (``timeline.svg``); the
    CLI and notebooks draw it with matplotlib: the same boxes, in the same
    order, at the same places of the plot, the same rows and lane names."""
    result, figs = drawn[stem]
    ax = figs["timeline"].axes[0]
    to_axes = ax.transData + ax.transAxes.inverted()
    patches = [p for p in ax.patches if p.get_gid()]
    root, boxes = svg_boxes(timeline.svg(timeline.timeline_scene(result)))
    assert [b[0] for b in boxes] == [p.get_gid() for p in patches] and boxes
    for (gid, x, y, w, h), p in zip(boxes, patches):
        (ax0, ay0), (ax1, ay1) = to_axes.transform([(p.get_x(), p.get_y()), (p.get_x() + p.get_width(),
                                                                            p.get_y() + p.get_height())])
        # SVG's y runs down from the plot's top; the axes' fraction runs up from its bottom.
        assert (x, w, y, h) == pytest.approx((ax0, ax1 - ax0, 1 - ay0, ay0 - ay1), abs=2e-4), gid
    words = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert [plots.rank_label(result, r) for r in result.ranks] == [w for w in words if w and w.startswith("rank ")]
    assert sorted(w for w in words if w in ("compute", "comm", "planned")) == \
           sorted(t.get_text() for t in ax.texts if t.get_text() in ("compute", "comm", "planned"))


def test_the_svg_timelines_ticks_read_as_the_axis_does():
    assert timeline.tick_text([0.0, 5.0, 10.0]) == ["0", "5", "10"]
    assert timeline.tick_text([0.0, 2.5, 5.0]) == ["0.0", "2.5", "5.0"]
    assert timeline.tick_text([-0.25, 0.0, 0.25]) == ["-0.25", "0.00", "0.25"]
    assert timeline.ticks(-0.3, 19.4) == [0, 2.5, 5, 7.5, 10, 12.5, 15, 17.5]


@pytest.mark.parametrize("stem", [s for s in RECORDED if "pipeline" in s or "model" in s or "dp2pp2" in s])
def test_the_bubble_is_read_from_the_result(drawn, stem):
    result, figs = drawn[stem]
    fig = figs["time_breakdown"]
    b = result.bubble
    assert b is not None
    words = texts(fig)
    replayed = b.get("replayed") or [None] * len(b["measured"])
    for m, x in zip(b["measured"], replayed):
        text = f"bubble\npredicted {b['predicted']:.0%}\nmeasured {m:.0%}"
        assert text + (f"\nreplayed {x:.0%}" if x is not None else "") in words
    assert len(gids(fig, "bubble:predicted")) == len(gids(fig, "bubble:measured")) == len(result.ranks)
    assert any(b["formula"] in label.get_text() for label in fig.axes[0].get_legend().get_texts())


def test_hybrid_bubble_is_the_results_not_a_guess(drawn):
    result, figs = drawn["mlp-hybrid-dp2pp2"]
    assert result.bubble["predicted"] == pytest.approx(1 / 5)  # (p-1)/(m+p-1), p=2, m=4
    words = " ".join(texts(figs["time_breakdown"]))
    assert "predicted 20%" in words and "predicted 50%" not in words


def test_old_time_keys_still_draw_and_new_keys_draw_four_parts(drawn):
    result, _ = drawn["mlp-data"]
    assert [k for k, _ in plots.time_parts(result.ranks[0])] == ["compute", "comm", "wait", "overhead"]
    ax = drawn["mlp-data"][1]["time_breakdown"].axes[0]
    for key in ("compute", "comm", "wait", "overhead"):
        bars = [p for p in ax.patches if p.get_gid() == f"time:{key}"]
        assert [p.get_height() for p in bars] == pytest.approx([x.time[key] * 1e3 for x in result.ranks]), key
    hidden = [p.get_height() for p in ax.patches if p.get_gid() == "time:overlapped"]
    assert hidden == pytest.approx([x.time["overlapped"] * 1e3 for x in result.ranks if x.time["overlapped"] > 0])
    assert not [p for p in ax.patches if p.get_gid() == "time:idle"]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "waiting for a peer" in labels and any(label.startswith("runtime overhead") for label in labels)
    # A result saved before wait and overhead were measured still draws, with idle whole.
    old = load("mlp-data")
    for rank in old.ranks:
        rank.time = {k: rank.time[k] for k in ("compute", "comm", "idle", "window")}
    ax = plots.plot_time_breakdown(old).axes[0]
    assert [p.get_height() for p in ax.patches if p.get_gid() == "time:idle"] == \
        pytest.approx([x.time["idle"] * 1e3 for x in old.ranks])


def test_a_replayed_bubble_is_drawn_when_present():
    r = load("cnn-pipeline-1f1b")
    r.bubble = dict(r.bubble, replayed=[0.1, 0.2])
    fig = plots.plot_time_breakdown(r)
    assert len(gids(fig, "bubble:replayed")) == 2
    assert any("replayed 10%" in t for t in texts(fig)) and any("replayed 20%" in t for t in texts(fig))


# -- data flow, per strategy --------------------------------------------------------------------


@pytest.mark.parametrize("stem", [s for s in RECORDED if s.endswith("-tensor") or s.endswith("-dp2tp2")])
def test_tensor_dataflow_splits_each_planned_layer_and_states_its_all_reduce(drawn, stem):
    result, figs = drawn[stem]
    fig = figs["dataflow"]
    plan = result.tensor_plan
    assert plan and set(plan.values()) == {"colwise", "rowwise"}
    replicas = len({r.dp_rank for r in result.ranks})
    tp = result.config.tp_size
    ax = fig.axes[0]
    for name, kind in plan.items():
        for t in range(tp):
            shards = [p for p in ax.patches if p.get_gid() == f"layer-shard:{name}:{t}"]
            assert len(shards) == replicas
            holders = sorted((r for r in result.ranks if r.tp_rank == t), key=lambda r: r.dp_rank)
            assert [p.get_facecolor()[:3] for p in shards] == \
                   [pytest.approx(_rgb(dataflow.rank_color(r.rank))) for r in holders]
        assert any(f"{name}\n{dataflow.KIND_WORDS[kind]}" == w for w in texts(fig))
    rowwise = sum(1 for k in plan.values() if k == "rowwise")
    assert len(gids(fig, "collective:all_reduce")) == rowwise * replicas
    unplanned = [b["index"] for b in result.blocks if not dataflow.planned_layers(result, b["index"])]
    assert sorted(int(g.split(":")[1]) for g in set(gids(fig, "layer-whole:"))) == unplanned
    # The all-reduce's bytes: the recorded traffic, which is the events' sum.
    notes = texts(fig, "bytes:all_reduce:")
    assert len(notes) == 1
    for r in result.ranks:
        payload, calls = events_per_step(result, "all_reduce", r.rank)
        entry = next(e for e in result.traffic["collectives"] if e["rank"] == r.rank and e["kind"] == "all_reduce")
        assert entry["bytes_per_step"] == pytest.approx(payload) and entry["calls_per_step"] == pytest.approx(calls)
        assert f"{calls:g} calls/step, B = {plots.human_bytes(payload)} per rank per step" in notes[0]
        assert plots.human_bytes(entry["ring_bytes_per_step"]) in notes[0]
    if replicas > 1:
        assert gids(fig, "collective:all_gather") and gids(fig, "collective:reduce_scatter")
        _assert_fsdp_notes(result, fig)


@pytest.mark.parametrize("stem", [s for s in RECORDED if s.endswith("-fsdp")])
def test_fsdp_dataflow_shows_shards_all_gathers_and_reduce_scatters(drawn, stem):
    result, figs = drawn[stem]
    fig = figs["dataflow"]
    n = len(result.ranks)
    ax = fig.axes[0]
    for b in result.blocks:
        for r in result.ranks:
            shard = [p for p in ax.patches if p.get_gid() == f"block-shard:{b['index']}:{r.rank}"]
            assert len(shard) == 1
            whole = next(p for p in ax.patches if p.get_gid() == f"block:{b['index']}"
                         and abs(p.get_y() + p.get_height() / 2 - (shard[0].get_y())) < 1.0)
            assert shard[0].get_height() == pytest.approx(whole.get_height() / n)
    assert len(gids(fig, "collective:all_gather")) == len(gids(fig, "collective:reduce_scatter")) == n - 1
    assert not gids(fig, "collective:all_reduce")
    _assert_fsdp_notes(result, fig)


def _assert_fsdp_notes(result: RunResult, fig) -> None:
    for kind in ("all_gather", "reduce_scatter"):
        notes = texts(fig, f"bytes:{kind}:")
        assert notes, kind
        for r in result.ranks:
            payload, calls = events_per_step(result, kind, r.rank)
            entry = next(e for e in result.traffic["collectives"] if e["rank"] == r.rank and e["kind"] == kind)
            assert entry["bytes_per_step"] == pytest.approx(payload)
            said = f"{calls:g} calls/step, B = {plots.human_bytes(payload)} per rank per step"
            assert any(said in t and plots.human_bytes(entry["ring_bytes_per_step"]) in t for t in notes)


@pytest.mark.parametrize("stem", [s for s in RECORDED if s.endswith(("interleaved1f1b", "loopedbfs",
                                                                      "interleavedzerobubble", "zbvzerobubble",
                                                                      "dualpipev"))])
def test_ranks_holding_several_stages_show_them_all(drawn, stem):
    result, figs = drawn[stem]
    fig = figs["dataflow"]
    words = texts(fig)
    for r in result.ranks:
        assert len(r.stages) == 2
        for s, first, end in r.stages:
            assert f"stage {s}\nrank {r.rank}" in words
            ax = fig.axes[0]
            held = {f"block:{i}" for i in range(first, end)}
            colors = [p.get_facecolor()[:3] for p in ax.patches if p.get_gid() in held]
            assert colors and all(c == pytest.approx(_rgb(dataflow.rank_color(r.rank))) for c in colors)
        assert f"stages {', '.join(str(s) for s, _, _ in r.stages)}" in plots.rank_label(result, r)
    # Every pair of ranks carrying several cuts has its total stated once, equal to the traffic.
    for e in result.traffic["p2p"]:
        said = texts(fig, f"bytes:p2p:{e['src']}-{e['dst']}")
        assert any(f"{plots.human_bytes(e['bytes_per_step'])}/step in {e['messages_per_step']:g} sends" in t
                   for t in said)


@pytest.mark.parametrize("stem", [s for s in RECORDED if s.endswith(("-model", "-gpipe", "-1f1b", "-dp2pp2"))])
def test_each_cut_states_the_recorded_bytes(drawn, stem):
    result, figs = drawn[stem]
    fig = figs["dataflow"]
    assert len(gids(fig, "cut-arrow")) == 2 * len({r.dp_rank for r in result.ranks}) * (len(result.split_points))
    for e in result.traffic["p2p"]:
        said = texts(fig, f"bytes:p2p:{e['src']}-{e['dst']}")
        assert said and all(f"{plots.human_bytes(e['bytes_per_step'])}/step" in t for t in said)


@pytest.mark.parametrize("stem", [s for s in RECORDED if s.endswith(("-data", "-dp2pp2"))])
def test_replicas_state_their_gradient_all_reduce(drawn, stem):
    result, figs = drawn[stem]
    fig = figs["dataflow"]
    said = texts(fig, "bytes:all_reduce:")
    assert len(said) == len(gids(fig, "collective:all_reduce")) == len(result.split_points) + 1
    for r in result.ranks:
        if r.dp_rank:
            continue
        payload, _ = events_per_step(result, "all_reduce", r.rank)
        assert any(f"B = {plots.human_bytes(payload)} per rank per step" in t for t in said)


# -- at the app's size: nothing overlaps, nothing is cut off ----------------------------------


@pytest.mark.parametrize("stem", ["mlp-hybrid-dp2pp2", "transformer-hybrid-dp2tp2", "mlp-tensor", "cnn-fsdp",
                                  "mlp-pipeline-zbvzerobubble", "seed-mlp-single"])
def test_labels_fit_at_the_apps_size(drawn, stem):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    result, figs = drawn[stem]
    for name in ("time_breakdown", "memory", "dataflow"):
        fig = figs[name]
        FigureCanvasAgg(fig)
        fig.set_dpi(90)  # app.png draws at 90 dpi
        renderer = fig.canvas.get_renderer()
        fig.draw(renderer)
        page = fig.bbox
        items = [t for ax in fig.axes for t in ax.texts] + list(fig.texts)
        for t in items:
            if t.get_text().strip() and t.get_visible():
                box = t.get_window_extent(renderer)
                assert page.x0 - 1 <= box.x0 and box.x1 <= page.x1 + 1, (name, t.get_text())
        if name != "dataflow":
            ticks = [t.get_window_extent(renderer) for t in fig.axes[0].get_xticklabels() if t.get_text()]
            assert all(a.x1 < b.x0 for a, b in zip(ticks, ticks[1:])), (name, "x labels overlap")


# -- live runs: the recorded files are what a run produces ------------------------------------


def test_a_fresh_run_matches_its_recorded_file():
    stem = "seed-mlp-tensor"
    fresh = pg.run(pg.RunConfig(**COMBINATIONS[stem]))
    recorded = load(stem)
    d, saved = fresh.to_dict(), json.loads(recorded.to_json())
    assert set(d) == set(saved)
    assert set(d["ranks"][0]) == set(saved["ranks"][0])
    assert d["blocks"] == saved["blocks"]
    assert d["tensor_plan"] == saved["tensor_plan"] == {"0": "colwise", "1": "rowwise"}
    assert d["traffic"] == saved["traffic"]  # bytes and calls do not depend on timing
    again = RunResult.from_json(fresh.to_json())
    assert json.loads(again.to_json()) == json.loads(fresh.to_json())


def _rgb(color: str) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    return to_rgb(color)


def test_the_memory_figure_draws_a_formula_it_is_given_or_none():
    result = load("mlp-data")
    assert result.zero is not None
    assert_formula_bars(plots.plot_memory(result, formula=None), result, None)
    other = {**result.zero, "stage": 3, "memory": {k: v / 2 for k, v in result.zero["memory"].items()}}
    fig = plots.plot_memory(result, predicted=result.predictions, formula=other, predicted_label="what if",
                            predicted_legend="what if: prediction, not run (outline)")
    assert_formula_bars(fig, result, other)
    assert texts(fig).count("what if") == len(result.ranks)
    assert "what if: prediction, not run (outline)" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_the_longest_rank_label_fits_left_of_the_timeline_in_both_painters():
    """A hybrid dp 2 × pp 2 run with two stages per rank (interleaved1f1b,
    virtual_stages 2) labels its rows "rank 0 · stages 0, 2 · dp 0": 27
    characters, more than the least left margin holds. Both painters must
    keep every row label inside the picture."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    result = load("mlp-hybrid-dp2pp2")
    held = {0: [(0, 0, 3), (2, 5, 7)], 1: [(1, 3, 5), (3, 7, 10)]}  # as such a run of mlp records them
    for r in result.ranks:
        r.stages = held[r.pp_rank]
    rows = [plots.rank_label(result, r) for r in result.ranks]
    assert rows[0] == "rank 0 · stages 0, 2 · dp 0"

    fig = plots.plot_timeline(result)
    renderer = FigureCanvasAgg(fig).get_renderer()
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == rows
    assert min(t.get_window_extent(renderer).x0 for t in ax.get_yticklabels()) >= 0

    # The SVG's row labels end 7 points left of the plot (text-anchor "end"); DejaVu Sans is its first font.
    root = ET.fromstring(timeline.svg(timeline.timeline_scene(result)))
    group = next(g for g in root.iter("{http://www.w3.org/2000/svg}g") if g.get("text-anchor") == "end")
    labels = list(group)
    assert [t.text for t in labels] == rows and group.get("font-size") == "10"
    font = FontProperties(family="DejaVu Sans", size=10)
    for t in labels:
        assert float(t.get("x")) - TextPath((0, 0), t.text, prop=font).get_extents().width >= 0, t.text

    # A short label keeps the least margin: the picture does not shift for it.
    assert timeline.timeline_scene(load("mlp-data")).left == timeline.LEFT
