"""The workload is resolved once: one run builds its model once in the
caller, and everything after works on copies of it."""

from __future__ import annotations

import dataclasses

import pytest

import playground
from playground import RunConfig
from playground.host import runner
from playground.zoo import models, workload


@pytest.fixture
def counted(monkeypatch):
    """Count the builds of the zoo's mlp, with every per-process cache emptied."""
    builds = []
    spec = models.MODELS["mlp"]

    def build():
        builds.append(1)
        return spec.build()

    monkeypatch.setitem(models.MODELS, "mlp", dataclasses.replace(spec, build=build))
    for name, cache in (("_ZOO_BLOCK_INFOS", models), ("_ZOO_FACTS", workload), ("_PREDICTIONS", runner),
                        ("_BASELINES", runner)):
        monkeypatch.setattr(cache, name, {})  # empty, as in a fresh process; the filled ones come back after
    return builds


@pytest.mark.parametrize("strategy", ["pipeline", "data"])
def test_a_run_builds_its_model_once(counted, strategy):
    config = RunConfig(model="mlp", strategy=strategy, world_size=2, micro_batches=2, steps=2, global_batch=16)
    result = playground.run(config)
    assert result.passed
    assert len(counted) == 1, f"the caller built the model {len(counted)} times in one run"
    # The resolved cuts are the ones the result, the predictions and the ranks used.
    if strategy == "pipeline":
        assert result.config.split_points == result.split_points == (5,)
        assert [r.blocks for r in result.ranks] == [(0, 5), (5, 10)]
    assert len(result.blocks) == 10 and result.predictions is not None


def test_the_workload_never_touches_the_callers_model():
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    w = workload.resolve_workload(RunConfig(model="custom", strategy="pipeline", world_size=2, global_batch=16),
                                  model, (x, y))
    assert w.custom and w.model is not model and w.config.split_points is not None
    assert len(w.infos) == 3 and w.rank_payload()[0] is w.model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
