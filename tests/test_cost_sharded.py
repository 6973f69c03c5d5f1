"""The cost model for sharded strategies (tensor, fsdp, hybrid) and the
zero-bubble schedules: what it reads off the model, and its predictions
against real runs (bytes exactly, activation peaks within 10%)."""

from __future__ import annotations

import pytest
import torch

from measured import compare_bytes, runs_once
from playground import RunConfig
from playground.predict.formulas import chunk_rows
from playground.predict.profile import (
    fsdp_gather_bytes, fsdp_shard_bytes, fsdp_units, split_backward_step, tensor_all_reduces, tensor_local_model,
)
from playground.predict.predict import predict
from playground.zoo.models import LM_CONTEXT, LM_LAYERS, LM_WIDTH, MLP_WIDTH, build_model
from playground.spec.partition import stage_ranges
from playground.spec.schedules import schedule_table


# --------------------------------------------------------------------------
# What each rank holds and moves, read off the model


@pytest.mark.parametrize("n, parts, index, expected", [
    (128, 2, 0, 64), (128, 2, 1, 64), (10, 3, 0, 4), (10, 3, 2, 2), (128, 3, 2, 42), (5, 4, 2, 1), (5, 4, 3, 0),
])
def test_chunk_rows_cuts_as_torch_chunk(n, parts, index, expected):
    assert chunk_rows(n, parts, index) == expected
    pieces = torch.arange(n).chunk(parts)
    assert expected == (len(pieces[index]) if index < len(pieces) else 0)


def test_tensor_local_model_of_the_mlp():
    """Blocks pair up (0, 1), (2, 3), ... (8, 9): column then row."""
    model = build_model("mlp")
    local, plan = tensor_local_model(model, 2, 1)
    assert [plan[f"{i}.0"] for i in range(10)] == ["colwise", "rowwise"] * 5
    assert tuple(local[0][0].weight.shape) == (64, 64) and tuple(local[0][0].bias.shape) == (64,)
    assert tuple(local[1][0].weight.shape) == (128, 64) and tuple(local[1][0].bias.shape) == (128,)
    assert tuple(local[9][0].weight.shape) == (10, 64) and tuple(local[9][0].bias.shape) == (10,)
    torch.testing.assert_close(local[1][0].weight, model[1][0].weight[:, 64:])
    x = torch.randn(3, 64)
    assert local(x).shape == (3, 10)


def test_tensor_all_reduces_of_the_mlp_and_the_transformer():
    mlp = build_model("mlp")
    _, plan = tensor_local_model(mlp, 2, 0)
    found = tensor_all_reduces(mlp, plan, torch.zeros(64))
    # forward: every row layer's output; backward: every column layer's input but the first (the data)
    assert sorted(found) == sorted([("forward", MLP_WIDTH * 4)] * 4 + [("forward", 10 * 4)]
                                   + [("backward", MLP_WIDTH * 4)] * 4)
    lm = build_model("transformer")
    _, plan = tensor_local_model(lm, 2, 0)
    found = tensor_all_reduces(lm, plan, torch.zeros(LM_CONTEXT, dtype=torch.long))
    # per block: attention out and fc2 forward; q, k, v and fc1 backward; t x d each
    assert sorted(found) == sorted(([("forward", LM_CONTEXT * LM_WIDTH * 4)] * 2
                                    + [("backward", LM_CONTEXT * LM_WIDTH * 4)] * 4) * LM_LAYERS)


def test_fsdp_shards_and_gathers_pad_to_the_first_rank():
    model = build_model("mlp")
    units = fsdp_units(model)
    assert len(units) == 10
    last = units[-1]  # Linear(128, 10): 10 rows over 3 ranks are 4, 4, 2
    assert [sum(fsdp_shard_bytes(last, 3, r)) for r in range(3)] == [4 * 129 * 4, 4 * 129 * 4, 2 * 129 * 4]
    assert fsdp_gather_bytes(last, 3) == 3 * 4 * 129 * 4
    whole = sum(p.numel() * 4 for p in model.parameters())
    assert sum(sum(fsdp_shard_bytes(u, 3, r)) for u in units for r in range(3)) == whole


def test_split_backward_step_frees_every_saved_tensor_by_the_steps_end():
    """zbv rank 0 holds stages 0 and 3: its weight passes free what the
    input passes kept, so nothing saved outlives the step."""
    model = build_model("mlp")
    ranges = stage_ranges((2, 5, 8), len(model))
    actions = schedule_table("zbvzerobubble", 2, 4, 2)[0]
    peaks, left = split_backward_step(model, ranges, (0, 3), actions, torch.zeros(64), torch.tensor(3),
                                      torch.nn.functional.cross_entropy, 2)
    assert len(peaks) == len(actions) and max(peaks) > 0
    assert left == 0
    assert all(p.grad is None for p in model.parameters())


def test_sharded_predictions_cover_the_model():
    whole = 4 * sum(p.numel() for p in build_model("mlp").parameters())
    fsdp = predict(RunConfig(model="mlp", strategy="fsdp", world_size=3, global_batch=48))
    assert sum(p.params for p in fsdp) == whole
    tensor = predict(RunConfig(model="mlp", strategy="tensor", world_size=2))
    assert len({p.params for p in tensor}) == 1
    # the row layers' biases are replicated, 4 * 128 + 10 floats on each rank
    assert 2 * tensor[0].params == whole + 4 * (4 * MLP_WIDTH + 10)
    hybrid = predict(RunConfig(model="mlp", strategy="hybrid", world_size=4, dp=2, tp=2))
    assert [p.dp_rank for p in hybrid] == [0, 0, 1, 1]
    assert sum(p.params for p in hybrid) == 2 * tensor[0].params
    assert not torch.distributed.is_initialized()


# --------------------------------------------------------------------------
# Predictions against real runs

REAL_RUNS = {
    "tensor-adam": RunConfig(model="mlp", strategy="tensor", world_size=2, steps=3, optimizer="adam", lr=1e-3),
    # 3 ranks: uneven shards (128 rows as 43, 43, 42; 10 as 4, 4, 2) and padded gathers
    "fsdp-adam": RunConfig(model="mlp", strategy="fsdp", world_size=3, global_batch=48, steps=3,
                           optimizer="adam", lr=1e-3),
    "zbv": RunConfig(model="mlp", strategy="pipeline", world_size=2, virtual_stages=2, schedule="zbvzerobubble",
                     micro_batches=4, steps=3),
    "hybrid-dp-pp": RunConfig(model="mlp", strategy="hybrid", world_size=4, dp=2, pp=2, split_points=(4,),
                              micro_batches=4, steps=3),
    "hybrid-dp-tp": RunConfig(model="mlp", strategy="hybrid", world_size=4, dp=2, tp=2, steps=3),
}


@pytest.fixture(scope="module")
def measured():
    return runs_once(REAL_RUNS)




@pytest.mark.parametrize("name", list(REAL_RUNS))
def test_sharded_bytes_match_a_real_run(measured, name):
    compare_bytes(measured(name), predict(REAL_RUNS[name]))


@pytest.mark.parametrize("name", ["zbv", "hybrid-dp-pp"])
def test_activation_peaks_match_a_real_run(measured, name):
    """zbv: the peak of one step with the backward split, measured by
    ``split_backward_step``."""
    result = measured(name)
    for r, p in zip(result.ranks, predict(REAL_RUNS[name])):
        assert p.activations_peak == pytest.approx(r.memory["activations_peak"], rel=0.10)


@pytest.mark.parametrize("name", ["fsdp-adam", "hybrid-dp-tp"])
def test_fsdp_activation_peaks_match_a_real_run(measured, name):
    """FSDP's gathered weights are not counted while their block's forward
    runs, and an activation allocated at their address after FSDP frees
    them is (``fsdp._ignore_gathered_weights``): every rank's peak matches."""
    result = measured(name)
    for r, p in zip(result.ranks, predict(REAL_RUNS[name])):
        assert p.activations_peak == pytest.approx(r.memory["activations_peak"], rel=0.10)


def test_tensor_activation_peaks_match_a_real_run(measured):
    result = measured("tensor-adam")
    for r, p in zip(result.ranks, predict(REAL_RUNS["tensor-adam"])):
        assert p.activations_peak == pytest.approx(r.memory["activations_peak"], rel=0.10)
