"""A user's model with tied weights, parameter-free blocks and stages, and
parameters that get no gradient (field cases BR-06, BR-08, BR-10), under
each strategy they can meet. World size 2, plus one 4-rank hybrid mesh."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import own_blocks as ob
import playground
from playground import ConfigError, RunConfig
from playground.rank.strategies.fsdp import shard_units
from playground.zoo.plans import plan_tensor_parallel, tensor_plan


def run(model, data, **fields):
    fields = {"world_size": 2, "global_batch": 16, "steps": 3, "lr": 0.05, "timeout_s": 120, **fields}
    return playground.run(RunConfig(model="custom", **fields), model=model, dataset=data)


def matches(result) -> bool:
    b = result.baseline
    return b["compares"] == "parameters" and b["max_abs_param_diff"] <= 1e-5 and result.passed


# -- tied weights ---------------------------------------------------------

TIED_CASES = [dict(strategy="model", split_points=(2,)),
              dict(strategy="pipeline", schedule="1f1b", micro_batches=2, split_points=(3,)),
              dict(strategy="pipeline", schedule="interleaved1f1b", virtual_stages=2, micro_batches=2,
                   split_points=(1, 2, 4)),
              dict(strategy="fsdp"), dict(strategy="tensor")]


@pytest.mark.parametrize("fields", TIED_CASES, ids=lambda f: "-".join(str(v) for v in f.values()))
def test_tied_weights_stay_tied_and_match_one_device(fields):
    result = run(ob.tied_lm(), ob.tokens(), **fields)
    assert matches(result)
    assert torch.equal(result.model[0].weight, result.model[-1].weight)
    cut = fields["strategy"] in ("model", "pipeline")
    assert any("tied parameter 0.weight" in n for n in result.notes) == cut


def test_tied_weights_across_a_hybrid_pipeline():
    result = run(ob.tied_lm(), ob.tokens(), strategy="hybrid", world_size=4, dp=2, pp=2, split_points=(2,),
                 micro_batches=1)
    assert matches(result) and torch.equal(result.model[0].weight, result.model[-1].weight)


def test_tie_two_ddp_stages_would_reduce_is_refused_before_start():
    """Looped stages 0 and 2 (embedding, head) both on pipeline rank 0, each its own DDP module."""
    config = RunConfig(model="custom", strategy="hybrid", world_size=4, dp=2, pp=2, schedule="interleaved1f1b",
                       virtual_stages=2, micro_batches=2, global_batch=8, split_points=(1, 2, 7))
    with pytest.raises(ConfigError) as e:
        playground.run(config, model=nn.Sequential(*ob.tied_lm(2), nn.Identity()), dataset=ob.tokens())
    assert e.value.field == "split_points" and "0.weight" in str(e.value) and "stages 0, 2" in str(e.value)


def test_tensor_plan_leaves_tied_and_unused_layers_whole():
    assert tensor_plan(ob.tied_lm(), 2) == {}  # the head's pair partner is tied
    # The unused branch sits in a block of its own class: the plan cannot see
    # into it, so the block stays whole and nothing in it is split.
    plan = plan_tensor_parallel(ob.with_spare(), 2, unused=("0.spare.weight", "0.spare.bias"))
    assert "0" in plan.replicated and not any(name.startswith("0.") for name in plan.styles)


def test_fsdp_units_put_tied_blocks_together():
    model = ob.tied_lm()
    units = shard_units(model)
    assert [[list(model).index(b) for b in u] for u in units] == [[0, 4], [2]]


# -- blocks and stages without parameters -----------------------------------

FLAT_CASES = [dict(strategy="model", split_points=(1,)), dict(strategy="fsdp"), dict(strategy="tensor")]


@pytest.mark.parametrize("fields", FLAT_CASES, ids=lambda f: "-".join(str(v) for v in f.values()))
def test_parameter_free_block_or_stage(fields):
    assert matches(run(ob.flatten_first(), ob.planes(), **fields))


def test_parameter_free_stage_in_a_hybrid_mesh():
    """Stage 0 (Flatten) has no gradients for DDP to reduce among its replicas."""
    result = run(ob.flatten_first(), ob.planes(), strategy="hybrid", world_size=4, dp=2, pp=2, split_points=(1,))
    assert matches(result)


# -- parameters without gradients ------------------------------------------

SPARE_CASES = [dict(strategy="data"), dict(strategy="fsdp"), dict(strategy="tensor"),
               dict(strategy="pipeline", schedule="zbvzerobubble", virtual_stages=2, micro_batches=2,
                    split_points=(1, 2, 3))]


@pytest.mark.parametrize("fields", SPARE_CASES, ids=lambda f: "-".join(str(v) for v in f.values()))
def test_unused_branch_keeps_its_weights_and_matches(fields):
    model = ob.with_spare(relu_tail=True)
    spare = [p.detach().clone() for p in model[0].spare.parameters()]
    result = run(model, ob.regression(), **fields)
    assert matches(result)
    assert all(torch.equal(p, q) for p, q in zip(result.model[0].spare.parameters(), spare))
    reduces = fields["strategy"] in ("data", "fsdp")
    assert any("0.spare.weight, 0.spare.bias receive no gradient" in n for n in result.notes) == reduces
    assert result.config.unused_parameters == ("0.spare.weight", "0.spare.bias")


def test_unused_branch_in_a_hybrid_pipeline():
    result = run(ob.with_spare(relu_tail=True), ob.regression(), strategy="hybrid", world_size=4, dp=2, pp=2,
                 split_points=(2,))
    assert matches(result)
