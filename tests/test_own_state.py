"""A user's model with state beyond its parameters: BatchNorm (batch
statistics, running buffers) and random layers (field cases BR-01, BR-05).
Runs at world size 2, a few steps, on the warm pool."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import own_blocks as ob
import playground
from playground import RunConfig
from playground.zoo.facts import inspect_model
from playground.host.runner import evaluate
from playground.zoo.datasets import Dataset, loss_fn
from playground.spec.topology import Topology
from playground.rank.training import rng_stream, seeded


def run(model, data, warm=True, **fields):
    fields = {"world_size": 2, "global_batch": 16, "steps": 3, "lr": 0.1, "timeout_s": 120, **fields}
    config = RunConfig(model="custom", **fields)
    return playground.run(config, model=model, dataset=data, warm=warm)


# -- BatchNorm ------------------------------------------------------------


def test_batchnorm_per_rank_is_explained_and_compared_by_loss():
    result = run(ob.batchnorm_cnn(), ob.images(), strategy="data")
    b = result.baseline
    assert b["compares"] == "loss" and b["max_abs_param_diff"] > b["tolerance"]  # really differs
    assert len(b["why"]) == 1 and "block 0 (0.1 BatchNorm2d)" in b["why"][0] and "sync_batchnorm" in b["why"][0]
    assert b["why"][0] in result.notes
    assert b["passed"] == (b["mean_loss_rel_diff"] <= b["loss_tolerance"]) and result.passed
    assert int(result.model[0][1].num_batches_tracked) == 3


@pytest.mark.parametrize("strategy", ["data", "fsdp"])
def test_sync_batchnorm_matches_one_device_buffers_included(strategy):
    model = ob.batchnorm_cnn()
    result = run(model, ob.images(), strategy=strategy, sync_batchnorm=True)
    b = result.baseline
    assert b["compares"] == "parameters" and b["why"] == []
    assert b["max_abs_param_diff"] <= 1e-5 and result.passed
    bn = result.model[0][1]
    assert type(bn) is nn.BatchNorm2d and int(bn.num_batches_tracked) == 3
    assert not torch.equal(bn.running_mean, model[0][1].running_mean)  # trained, and compared above
    assert any("SyncBatchNorm" in n for n in result.notes)


@pytest.mark.parametrize("fields", [dict(strategy="model"), dict(strategy="tensor")], ids=["model", "tensor"])
def test_batchnorm_seeing_the_whole_batch_matches(fields):
    """One stage (or every tensor-parallel rank) normalises the whole batch;
    the pipeline's shape inference must not count as a BatchNorm step."""
    result = run(ob.batchnorm_cnn(), ob.images(), **fields)
    assert result.baseline["compares"] == "parameters" and result.passed
    assert int(result.model[0][1].num_batches_tracked) == 3


def test_batchnorm_per_micro_batch_is_explained():
    result = run(ob.batchnorm_cnn(), ob.images(), strategy="pipeline", schedule="1f1b", micro_batches=2)
    assert result.baseline["compares"] == "loss"
    assert "2 micro-batches" in result.baseline["why"][0] and result.passed


def test_run_leaves_the_callers_module_tensors_and_generators_alone():
    """BatchNorm1d fails in training mode on one sample: the probes work on
    eval-mode copies. Nothing the caller holds changes."""
    model, (x, y) = ob.batchnorm_mlp(), ob.regression()
    model[0][1].eval()  # a mode the caller chose, kept per module
    state = {k: v.clone() for k, v in model.state_dict().items()}
    data = (x.clone(), y.clone())
    rng = torch.get_rng_state()
    result = run(model, (x, y), strategy="data", sync_batchnorm=True)
    assert result.passed
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert [m.training for m in model.modules()] == [True, True, True, False, True, True]
    assert torch.equal(x, data[0]) and torch.equal(y, data[1])
    assert torch.equal(torch.get_rng_state(), rng)


def test_accuracy_is_measured_in_eval_mode_and_modes_are_kept():
    class ModeSensitive(nn.Module):
        def forward(self, x):
            return x if not self.training else -x

    model = nn.Sequential(nn.Identity(), ModeSensitive())
    x = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    data = Dataset(x, torch.tensor([1, 0]), x, torch.tensor([1, 0]))
    assert evaluate(model, data) == 1.0 and model.training and model[1].training


# -- Randomness -----------------------------------------------------------


def test_dropout_same_seed_same_result_cold_or_warm_and_says_why():
    model, data = ob.dropout_mlp(), ob.regression()
    warm1 = run(model, data, strategy="data", seed=7)
    warm2 = run(model, data, strategy="data", seed=7)
    cold = run(model, data, strategy="data", seed=7, warm=False)
    assert warm1.losses == warm2.losses == cold.losses
    assert warm1.baseline["losses"] == warm2.baseline["losses"] == cold.baseline["losses"]
    assert all(torch.equal(p, q) for p, q in zip(warm1.model.parameters(), cold.model.parameters()))
    b = warm1.baseline
    assert b["compares"] == "loss" and "block 2 (Dropout)" in b["why"][0] and b["why"][0] in warm1.notes
    assert b["max_abs_param_diff"] > b["tolerance"] and warm1.passed
    other = run(model, data, strategy="data", seed=8)
    assert other.losses != warm1.losses


@pytest.mark.parametrize("fields", [dict(strategy="tensor"), dict(strategy="pipeline", schedule="gpipe", micro_batches=2)],
                         ids=["tensor", "pipeline"])
def test_random_layers_compare_losses_under_every_strategy(fields):
    result = run(ob.noisy_mlp(), ob.regression(), lr=0.05, **fields)
    b = result.baseline
    assert b["compares"] == "loss" and "block 1 (GaussianNoise)" in b["why"][0]
    assert result.passed and b["mean_loss_rel_diff"] <= b["loss_tolerance"]


def test_single_device_with_dropout_matches_exactly():
    """Rank 0 draws from the baseline's stream: one rank alone equals it."""
    result = run(ob.dropout_mlp(), ob.regression(), strategy="single", world_size=1)
    assert result.baseline["compares"] == "parameters" and result.baseline["max_abs_param_diff"] == 0.0


def test_random_streams_per_rank():
    """Data-parallel ranks and stages draw their own; a tensor-parallel group draws alike."""
    assert [rng_stream(Topology(r, 2, 1, 1)) for r in range(2)] == [0, 1]
    assert [rng_stream(Topology(r, 1, 2, 1)) for r in range(2)] == [0, 1]
    assert [rng_stream(Topology(r, 2, 1, 2)) for r in range(4)] == [0, 0, 1, 1]
    draws = []
    for stream in (0, 1, 0):
        with seeded(7, stream):
            draws.append(torch.rand(3))
    assert torch.equal(draws[0], draws[2]) and not torch.equal(draws[0], draws[1])


def test_inspect_finds_random_and_batchnorm_blocks_on_a_copy():
    model, (x, y) = ob.noisy_mlp(), ob.regression()
    facts = inspect_model(model, x, y, loss_fn("regression"))
    assert facts.random_blocks == (1,) and facts.random_labels == ("block 1 (GaussianNoise)",)
    assert inspect_model(ob.dropout_mlp(0.0), x, y, loss_fn("regression")).random_blocks == ()
    bn = ob.batchnorm_cnn()
    before = bn[0][1].running_mean.clone()
    x, y, *_ = ob.images()
    facts = inspect_model(bn, x, y, loss_fn("classification"))
    assert facts.batchnorm == ("0.1",) and facts.batchnorm_labels(bn) == ["block 0 (0.1 BatchNorm2d)"]
    assert torch.equal(bn[0][1].running_mean, before)
