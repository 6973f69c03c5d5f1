"""Property-based: any config either fails validation with a clear message
before anything starts, or runs and matches the single-device result."""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import playground
from playground import ConfigError, RunConfig

FIELDS = {f.name for f in dataclasses.fields(RunConfig)}

odd_values = st.one_of(st.none(), st.booleans(), st.integers(-3, 70), st.floats(allow_nan=True),
                       st.text(max_size=6), st.tuples(st.integers(-2, 12)), st.lists(st.integers(0, 4), max_size=3))
field_values = {
    "model": st.sampled_from(["seed-mlp", "mlp", "cnn", "transformer", "custom", "resnet"]) | odd_values,
    "strategy": st.sampled_from(["single", "data", "model", "pipeline", "tensor", "fsdp", "hybrid", "x"]) | odd_values,
    "world_size": st.integers(-1, 10) | odd_values,
    "split_points": st.none() | st.tuples(st.integers(-1, 11)) | st.tuples(st.integers(0, 11), st.integers(0, 11)),
    "global_batch": st.integers(0, 70) | odd_values,
    "batch_partition": st.none() | st.tuples(st.integers(-1, 4), st.integers(-1, 4)) | odd_values,
    "micro_batches": st.integers(0, 9) | odd_values,
    "schedule": st.sampled_from(["gpipe", "1f1b", "interleaved1f1b", "zbvzerobubble", "nope"]) | odd_values,
    "virtual_stages": st.integers(0, 3) | odd_values,
    "dp": st.none() | st.integers(0, 4), "pp": st.none() | st.integers(0, 4), "tp": st.none() | st.integers(0, 4),
    "steps": st.integers(-1, 5) | odd_values,
    "lr": st.floats(-1, 1) | odd_values,
    "optimizer": st.sampled_from(["sgd", "adam", "lbfgs"]) | odd_values,
    "seed": st.integers(-1, 5) | odd_values,
    "device": st.sampled_from(["auto", "cpu", "cuda", "tpu"]) | odd_values,
    "backend": st.sampled_from(["auto", "gloo", "nccl", "mpi"]) | odd_values,
    "timeout_s": st.floats(-1, 1e6) | odd_values,
}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({}, optional=field_values))
def test_every_config_is_accepted_or_refused_with_field_value_and_rule(fields):
    try:
        config = RunConfig(**fields)
    except ConfigError as e:
        assert e.field in FIELDS
        assert str(e).startswith(f"{e.field}=") and len(str(e)) > len(e.field) + 4
        return
    # Accepted: the derived facts hold together.
    assert config.dp_size * config.pp_size * config.tp_size == config.world_size
    assert sum(config.rank_batches()) == config.global_batch
    assert RunConfig.from_dict(config.to_dict()) == config


runnable = st.fixed_dictionaries({
    "model": st.sampled_from(["seed-mlp", "mlp"]),
    "strategy": st.sampled_from(["single", "data", "model", "pipeline", "tensor", "fsdp"]),
    "world_size": st.integers(1, 2),
    "global_batch": st.sampled_from([8, 12, 16, 24]),
    "micro_batches": st.integers(1, 4),
    "schedule": st.sampled_from(["gpipe", "1f1b"]),
    "steps": st.integers(3, 4),
    "seed": st.integers(0, 3),
}, optional={"batch_partition": st.tuples(st.integers(1, 3), st.integers(1, 3)),
             "optimizer": st.just("sgd")})


# No shrinking: each example is a real run; the failing one is printed as found.
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(runnable)
def test_every_accepted_config_runs_and_matches_one_device(fields):
    try:
        config = RunConfig(**fields)
    except ConfigError:
        return  # refused before anything started: that is one of the two allowed outcomes
    result = playground.run(config)
    assert result.passed, (config, result.baseline["max_abs_param_diff"])
