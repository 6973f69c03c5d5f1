"""recompute, precision and grad_accumulation: each on every strategy it
applies to equals one device (fp32 within 1e-5, bf16 within the stated
tolerance), recompute lowers the activation peak and shows its spans,
accumulation keeps one gradient reduction per step, and what cannot run
is refused before any process starts."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from playground.host.runner import max_abs_param_diff, run, train_single
from playground.result.run_result import BF16_SHARE
from playground.spec.config import ConfigError, PlanConfig, RunConfig
from playground.zoo.datasets import load_dataset
from playground.zoo.models import build_model

BASE = dict(model="mlp", steps=2, global_batch=16)
STRATEGIES = {
    "data": dict(strategy="data", world_size=2),
    "fsdp": dict(strategy="fsdp", world_size=2),
    "tensor": dict(strategy="tensor", world_size=2),
    "pipeline": dict(strategy="pipeline", world_size=2, schedule="1f1b", micro_batches=2),
}
LEVERS = {
    "plain": {},
    "recompute": dict(recompute="full"),
    "bf16": dict(precision="bf16"),
    "accumulate": dict(grad_accumulation=2),
}
CASES = [(s, lever) for s in STRATEGIES for lever in LEVERS if not (s == "pipeline" and lever == "accumulate")]


@pytest.fixture(scope="module")
def results():
    return {(s, lever): run(RunConfig(**BASE, **STRATEGIES[s], **LEVERS[lever])) for s, lever in CASES}


@pytest.mark.parametrize("strategy,lever", [c for c in CASES if c[1] != "plain"])
def test_each_lever_equals_one_device(results, strategy, lever):
    b = results[strategy, lever].baseline
    assert b["compares"] == "parameters"
    if lever == "bf16":  # a share of what training moved the weights, said in the result
        assert 0 < b["tolerance"] < 1e-2 and f"{BF16_SHARE:.0%} of the largest change" in b["tolerance_why"]
    else:
        assert b["tolerance"] == 1e-5
    assert b["passed"] and b["max_abs_param_diff"] <= b["tolerance"], b
    assert b["tolerance_why"] and b["compares_with"].startswith("one device")


@pytest.fixture(scope="module")
def transformer_tensor():
    """The transformer, whose blocks save far more than their inputs."""
    config = RunConfig(model="transformer", steps=2, global_batch=8, strategy="tensor", world_size=2)
    return run(config), run(config.replace(recompute="full"))


def test_recompute_keeps_only_block_inputs_and_repeats_the_forward_all_reduces(transformer_tensor):
    plain, again = transformer_tensor
    assert again.baseline["passed"] and again.baseline["max_abs_param_diff"] <= 1e-5
    for p, r, pred in zip(plain.ranks, again.ranks, again.predictions):
        assert r.memory["activations_peak"] < p.memory["activations_peak"] / 4
        assert pred["activations_peak"] == r.memory["activations_peak"]
        assert r.bytes_sent > p.bytes_sent and pred["bytes_sent"] == r.bytes_sent


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_recompute_shows_its_spans_and_never_raises_the_activation_peak(results, strategy):
    plain, again = results[strategy, "plain"], results[strategy, "recompute"]
    for p, r in zip(plain.ranks, again.ranks):
        # The mlp's blocks save their own input and the next one's (ReLU's
        # output): recompute keeps the same, no less.
        assert r.memory["activations_peak"] <= p.memory["activations_peak"]
        spans = [e for e in r.timeline if e["kind"] == "recompute"]
        assert spans and all(isinstance(e["block"], int) for e in spans)
        assert not any(e["kind"] == "recompute" for e in p.timeline)
        # After step 0 (whose pipeline set-up runs an unrecorded backward on
        # the last stage) each recompute lies inside a backward span of the rank.
        backwards = [(e["start"], e["end"]) for e in r.timeline if e["kind"].startswith("backward")]
        timed = [e for e in spans if e["start"] >= r.step_times[1][0]]
        assert timed and all(any(a <= e["start"] and e["end"] <= b for a, b in backwards) for e in timed)


@pytest.mark.parametrize("strategy,lever", [c for c in CASES if c[1] != "plain"])
def test_predictions_follow_the_levers(results, strategy, lever):
    result = results[strategy, lever]
    for r, p in zip(result.ranks, result.predictions):
        assert p["activations_peak"] == r.memory["activations_peak"]
        assert p["bytes_sent"] == r.bytes_sent


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_bf16_halves_what_crosses_a_cut_or_a_tensor_parallel_all_reduce(results, strategy):
    plain, half = results[strategy, "plain"], results[strategy, "bf16"]
    for p, h in zip(plain.ranks, half.ranks):
        assert h.memory["activations_peak"] < p.memory["activations_peak"]
    if strategy in ("pipeline", "tensor"):
        assert [r.bytes_sent * 2 for r in half.ranks] == [r.bytes_sent for r in plain.ranks]
    if strategy == "data":  # DDP's gradients stay fp32
        assert [r.bytes_sent for r in half.ranks] == [r.bytes_sent for r in plain.ranks]
    if strategy == "fsdp":  # bf16 gathers, fp32 reduce-scatters
        gathers = {tuple(sorted(e["bytes"] for e in r.timeline if e["kind"] == "all_gather")) for r in half.ranks}
        full = {tuple(sorted(e["bytes"] for e in r.timeline if e["kind"] == "all_gather")) for r in plain.ranks}
        assert [[2 * b for b in g] for g in gathers] == [list(g) for g in full]


def _calls(result, kind: str) -> list[int]:
    return [sum(1 for e in r.timeline if e["kind"] == kind) for r in result.ranks]


@pytest.mark.parametrize("strategy,reduction", [("data", "all_reduce"), ("fsdp", "reduce_scatter"),
                                                ("tensor", "all_reduce")])
def test_accumulation_reduces_gradients_once_per_step(results, strategy, reduction):
    plain, twice = results[strategy, "plain"], results[strategy, "accumulate"]
    if strategy == "tensor":  # no data-parallel reduction; the activations' all-reduces double
        assert _calls(twice, reduction) == [2 * n for n in _calls(plain, reduction)]
        return
    assert _calls(twice, reduction) == _calls(plain, reduction)
    assert [r.bytes_sent for r in twice.ranks] >= [r.bytes_sent for r in plain.ranks]
    for p, t in zip(plain.ranks, twice.ranks):  # each micro-step holds half the samples' activations
        assert t.memory["activations_peak"] < p.memory["activations_peak"]


@pytest.mark.parametrize("model", ["mlp", "transformer"])
@pytest.mark.parametrize("lever", [dict(recompute="full"), dict(grad_accumulation=2)])
def test_one_device_with_a_lever_equals_the_plain_fp32_one_device_run(model, lever):
    data = load_dataset(model)
    config = RunConfig(model=model, steps=2, global_batch=8)
    plain, levered = build_model(model, 0), build_model(model, 0)
    assert train_single(config, plain, data) == pytest.approx(train_single(config.replace(**lever), levered, data),
                                                             abs=1e-5)
    with torch.no_grad():
        diff = max(float((a - b).abs().max()) for a, b in zip(plain.parameters(), levered.parameters()))
    assert diff <= 1e-5


def test_the_levers_leave_the_model_as_it_was():
    data = load_dataset("mlp")
    model = build_model("mlp", 0)
    train_single(RunConfig(model="mlp", steps=1, global_batch=8, precision="bf16", recompute="full"), model, data)
    assert all("forward" not in block.__dict__ for block in model)
    assert model(data.train_x[:2]).dtype == torch.float32


@pytest.mark.parametrize("changes,field", [
    (dict(recompute="selective"), "recompute"),
    (dict(precision="fp16"), "precision"),
    (dict(grad_accumulation=0), "grad_accumulation"),
    (dict(strategy="pipeline", world_size=2, grad_accumulation=2), "grad_accumulation"),
    (dict(strategy="model", world_size=2, grad_accumulation=2), "grad_accumulation"),
    (dict(strategy="data", world_size=2, global_batch=12, grad_accumulation=4), "grad_accumulation"),
    (dict(strategy="data", world_size=2, global_batch=16, batch_partition=(3, 1), grad_accumulation=8),
     "grad_accumulation"),
])
def test_combinations_that_cannot_run_are_refused_with_field_value_and_rule(changes, field):
    with pytest.raises(ConfigError) as err:
        RunConfig(model="mlp", **changes)
    assert err.value.field == field and err.value.value == changes[field] and err.value.allowed


def test_the_levers_round_trip_through_json_and_the_command_line():
    c = RunConfig(model="mlp", strategy="fsdp", world_size=2, recompute="full", precision="bf16",
                  grad_accumulation=2)
    assert RunConfig.from_dict(c.to_dict()) == c
    from playground.__main__ import _Parser, _add_run_flags, config_from_args

    parser = _Parser()
    _add_run_flags(parser)
    args = parser.parse_args(["--model", "mlp", "--strategy", "fsdp", "--recompute", "full", "--precision", "bf16",
                              "--grad-accumulation", "2"])
    assert config_from_args(args) == c


def test_the_command_line_refuses_a_bad_lever_before_any_process():
    out = subprocess.run([sys.executable, "-m", "playground", "run", "--strategy", "pipeline", "--world-size", "2",
                          "--grad-accumulation", "2"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "grad_accumulation=2" in out.stderr and len(out.stderr.splitlines()) == 1


@pytest.mark.parametrize("model", ["mlp", "transformer"])
def test_the_bf16_check_fails_a_run_with_the_wrong_learning_rate_or_a_step_missing(model):
    # On one device in bf16 (2 steps, where the weights have moved least):
    # 1.5x the learning rate, or one step fewer, parts from the right run by
    # more than the share of the weights' change the bf16 check allows.
    data = load_dataset(model)
    right_config = RunConfig(model=model, global_batch=16, steps=2, precision="bf16")

    def trained(config):
        net = build_model(model, 0)
        train_single(config, net, data)
        return net

    right = trained(right_config)
    moved = max_abs_param_diff(right, build_model(model, 0))
    for wrong in (right_config.replace(lr=1.5 * right_config.lr), right_config.replace(steps=1)):
        assert max_abs_param_diff(trained(wrong), right) > BF16_SHARE * moved, wrong


@pytest.mark.parametrize("schedule", ["zbvzerobubble", "dualpipev", "interleavedzerobubble"])
def test_recompute_is_refused_with_a_split_backward_schedule(schedule):
    # Run, it failed inside the ranks (checkpoint cannot recompute for the
    # separate backward_weight pass); refused before any process starts.
    with pytest.raises(ConfigError) as info:
        RunConfig(model="mlp", strategy="pipeline", world_size=2, micro_batches=4, schedule=schedule,
                  virtual_stages=2, recompute="full")
    assert info.value.field == "recompute" and "backward_weight" in str(info.value)
    with pytest.raises(ConfigError):
        PlanConfig(model="llama3-70b", strategy="pipeline", world_size=4, micro_batches=8, global_batch=8,
                   schedule=schedule, virtual_stages=2, recompute="full")


def test_adam_in_bf16_is_checked_by_its_losses_and_says_why():
    result = run(RunConfig(model="mlp", strategy="data", world_size=2, optimizer="adam", lr=1e-3,
                           precision="bf16", steps=2, global_batch=16))
    b = result.baseline
    assert b["compares"] == "loss" and any(w.startswith("Adam in bf16") for w in b["why"])
    assert b["passed"] and b["mean_loss_rel_diff"] <= b["loss_tolerance"]


@pytest.mark.parametrize("levers", [dict(), dict(recompute="full")])
def test_the_transformer_under_fsdp_in_bf16_saves_what_the_cost_model_predicts(levers):
    # FSDP2 gathers bf16 weights, so even the embedding's output is bf16
    # (autocast alone leaves it fp32): the prediction profiles bf16 copies.
    result = run(RunConfig(model="transformer", strategy="fsdp", world_size=2, precision="bf16", steps=2,
                           global_batch=8, **levers))
    assert result.passed
    assert [r.memory["activations_peak"] for r in result.ranks] == \
        [p["activations_peak"] for p in result.predictions]


def test_bf16_on_a_gpu_without_it_is_refused_before_any_process(monkeypatch):
    from playground.host import runner

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100")
    with pytest.raises(ConfigError) as info:
        runner.resolve_device(RunConfig(model="mlp", strategy="data", world_size=2, precision="bf16"))
    assert info.value.field == "precision" and "Tesla V100" in str(info.value)
    assert runner.resolve_device(RunConfig(model="mlp", strategy="data", world_size=2)) == ("cuda", "nccl")
