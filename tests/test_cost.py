"""The cost model on the named models: the schedules' bubble, stage shares,
saved activations, and its predictions against real runs (bytes must match
exactly, activation peaks within 10%). The formulas alone: test_formulas."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from measured import compare_bytes, runs_once
from playground import RunConfig, run
from playground.predict.predict import bubble_fraction, predict
from playground.predict.formulas import ddp_buckets, stage_shares
from playground.predict.profile import stage_activations
from playground.zoo.models import CLASSES, MLP_WIDTH, build_model, model_block_infos


# --------------------------------------------------------------------------
# Bubble and stages


@pytest.mark.parametrize("schedule, p, m, v, expected", [
    ("gpipe", 1, 4, 1, 0.0),
    ("gpipe", 2, 1, 1, 1 / 2),
    ("gpipe", 2, 4, 1, 1 / 5),
    ("gpipe", 4, 4, 1, 3 / 7),
    ("1f1b", 4, 4, 1, 3 / 7),
    ("1f1b", 4, 12, 1, 3 / 15),
    ("interleaved", 4, 4, 1, 3 / 7),
    ("interleaved", 4, 4, 2, 3 / 11),
    ("interleaved", 8, 16, 4, 7 / 71),
])
def test_bubble_fraction(schedule, p, m, v, expected):
    assert bubble_fraction(schedule, p, m, v) == pytest.approx(expected)


@pytest.mark.parametrize("args", [("gpipe", 2, 4, 2), ("zero-bubble", 2, 4, 1), ("1f1b", 0, 4, 1), ("gpipe", 2, 0, 1)])
def test_bubble_fraction_rejects(args):
    with pytest.raises(ValueError):
        bubble_fraction(*args)


@pytest.mark.parametrize("name, split_points", [
    ("seed-mlp", (1,)), ("mlp", ()), ("mlp", (4,)), ("mlp", (3, 6)), ("cnn", (1, 2, 4)), ("transformer", (3,)),
])
def test_stage_shares_cover_the_model(name, split_points):
    infos = model_block_infos(name)
    shares = stage_shares(infos, split_points)
    assert len(shares) == len(split_points) + 1
    assert sum(s["param_share"] for s in shares) == pytest.approx(1)
    assert sum(s["flop_share"] for s in shares) == pytest.approx(1)
    assert sum(s["params"] for s in shares) == sum(b.params for b in infos)
    assert [s["blocks"][0] for s in shares] == [0, *split_points]


def test_stage_shares_of_the_mlp_cut_after_block_4():
    first, second = stage_shares(model_block_infos("mlp"), (4,))
    assert (first["params"], second["params"]) == (8320 + 3 * 16512, 5 * 16512 + 1290)
    assert first["flop_share"] == pytest.approx((16384 + 3 * 32768) / (16384 + 8 * 32768 + 2560))


# --------------------------------------------------------------------------
# Predictions, without processes


def test_saved_activations_of_the_mlp_per_sample():
    model = build_model("mlp")
    act = stage_activations(model, 0, len(model), torch.zeros(64), torch.tensor(3),
                            lambda out, y: nn.functional.cross_entropy(out, y))
    # nine ReLU outputs, the log-softmax of the logits; cross-entropy's
    # total_weight scalar is the fixed part; input and target are the batch's
    assert act.per_sample == 9 * MLP_WIDTH * 4 + CLASSES * 4
    assert act.fixed == 4
    assert act.saves_input and act.saves_target


def test_single_device_prediction():
    infos = model_block_infos("mlp")
    config = RunConfig(model="mlp", global_batch=32, optimizer="adam")
    (p,) = predict(config)
    param_bytes = 4 * sum(b.params for b in infos)
    assert p.params == p.grads == param_bytes
    assert p.optimizer == 2 * param_bytes + 4 * 2 * len(infos)
    assert p.bytes_sent == p.bytes_recv == 0
    assert not torch.distributed.is_initialized()


def test_pipeline_stages_hold_the_whole_model_and_gpipe_holds_more():
    whole = predict(RunConfig(model="mlp"))[0]
    gpipe = predict(RunConfig(model="mlp", strategy="pipeline", world_size=4, micro_batches=8))
    one_f_one_b = predict(RunConfig(model="mlp", strategy="pipeline", world_size=4, micro_batches=8, schedule="1f1b"))
    assert sum(p.params for p in gpipe) == whole.params
    assert [p.pp_rank for p in gpipe] == [0, 1, 2, 3]
    for g, f in zip(gpipe, one_f_one_b):
        assert f.activations_peak < g.activations_peak
        assert f.bytes_sent == g.bytes_sent
    # middle stages move activations both ways, so twice an end stage's bytes
    assert gpipe[1].bytes_sent == 2 * gpipe[0].bytes_sent


def test_custom_model_needs_a_sample():
    config = RunConfig(model="custom", num_blocks=2)
    with pytest.raises(ValueError, match="sample"):
        predict(config, model=nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)))


# --------------------------------------------------------------------------
# Predictions against real runs

REAL_RUNS = {
    "data": RunConfig(model="mlp", strategy="data", world_size=2, steps=3),
    "data-adam": RunConfig(model="mlp", strategy="data", world_size=2, steps=3, optimizer="adam", lr=1e-3),
    "model": RunConfig(model="mlp", strategy="model", world_size=2, split_points=(4,), steps=3),
    "gpipe": RunConfig(model="mlp", strategy="pipeline", world_size=2, micro_batches=4, schedule="gpipe", steps=3),
    "1f1b": RunConfig(model="mlp", strategy="pipeline", world_size=2, micro_batches=4, schedule="1f1b", steps=3),
}


@pytest.fixture(scope="module")
def measured():
    return runs_once(REAL_RUNS)


def _compare(result, predictions):
    compare_bytes(result, predictions)
    for r, p in zip(result.ranks, predictions):
        assert p.activations_peak == pytest.approx(r.memory["activations_peak"], rel=0.10)


@pytest.mark.parametrize("name", list(REAL_RUNS))
def test_prediction_matches_a_real_run(measured, name):
    config = REAL_RUNS[name]
    _compare(measured(name), predict(config))


def test_ddp_buckets_match_a_real_run():
    """Four 512-wide linears hold 3 MiB of gradients: step 0 all-reduces one
    bucket; from step 1 the rebuilt buckets are 1 MiB (first) and the rest."""
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(512, 512) for _ in range(3)), nn.Linear(512, 10))
    x, y = torch.randn(64, 512), torch.randn(64, 10)
    config = RunConfig(model="custom", num_blocks=4, strategy="data", world_size=2, steps=3)
    result = run(config, model=model, dataset=(x, y))
    param_bytes = [p.numel() * 4 for p in model.parameters()]
    # Buckets are all-reduced concurrently and recorded as each completes, in either order.
    reduced = sorted(e["bytes"] for e in result.ranks[0].timeline if e["kind"] == "all_reduce")
    assert reduced == sorted([sum(param_bytes)] + 2 * ddp_buckets(param_bytes))
    assert len(ddp_buckets(param_bytes)) == 2
    _compare(result, predict(result.config, model=model, sample=x[0], target=y[0]))
