"""Every class of bad input is refused at construction, naming the field,
the value and what is allowed; the CLI turns that into exit code 2."""

from __future__ import annotations

import pytest

import playground
import playground.host.runner  # noqa: F401 - patched below; run() imports it only when first called
from playground import ConfigError, RunConfig
from playground import __main__ as cli


@pytest.mark.parametrize("fields, field, words", [
    (dict(strategy="model", world_size=2, model="mlp", split_points=(10,)), "split_points", "from 1 to 9"),
    (dict(strategy="model", world_size=2, model="mlp", split_points=(0,)), "split_points", "from 1 to 9"),
    (dict(strategy="pipeline", world_size=3, model="mlp", split_points=(4, 4)), "split_points", "empty stage"),
    (dict(strategy="model", world_size=2, model="mlp", split_points=(3, 6)), "split_points", "more stages than ranks"),
    (dict(strategy="model", world_size=3, model="seed-mlp"), "world_size", "need at least 3 blocks"),
    (dict(strategy="data", world_size=2, global_batch=33), "global_batch", "cannot be shared"),
    (dict(strategy="data", world_size=2, global_batch=32, batch_partition=(3, 2)), "global_batch", "cannot be shared"),
    (dict(strategy="pipeline", world_size=2, global_batch=30, micro_batches=4), "micro_batches", "4 equal micro-batches"),
    (dict(strategy="data", world_size=2, batch_partition=(1, 0)), "batch_partition", "positive"),
    (dict(strategy="data", world_size=2, batch_partition=(-1, 3)), "batch_partition", "positive"),
    (dict(strategy="data", world_size=2, batch_partition=(1, 1, 1)), "batch_partition", "one share per"),
    (dict(strategy="data", world_size=0), "world_size", "from 1 to 8"),
    (dict(strategy="data", world_size=9), "world_size", "max_world_size=8"),
    (dict(lr=0.0), "lr", "> 0"),
    (dict(lr=-0.1), "lr", "> 0"),
    (dict(lr=float("nan")), "lr", "> 0"),
    (dict(model="resnet"), "model", "seed-mlp, mlp, cnn, transformer"),
    (dict(strategy="magic"), "strategy", "single, data, model, pipeline"),
    (dict(optimizer="lbfgs"), "optimizer", "sgd, adam"),
    (dict(device="tpu"), "device", "auto, cpu, cuda"),
    (dict(backend="mpi"), "backend", "auto, gloo, nccl"),
    (dict(steps=0), "steps", "between 1 and 100000"),
    (dict(world_size=2), "world_size", "exactly 1 rank"),
    (dict(strategy="model", world_size=2, micro_batches=2), "micro_batches", "use strategy 'pipeline'"),
    (dict(schedule="zigzag"), "schedule", "gpipe, 1f1b"),
    (dict(global_batch=2.5), "global_batch", "integer"),
    (dict(device="cpu", backend="nccl"), "backend", "nccl needs device 'cuda'"),
    (dict(strategy="hybrid", world_size=4, dp=2, pp=3), "world_size", "dp x pp x tp = 2 x 3 x 1 = 6"),
    (dict(strategy="hybrid", world_size=8, dp=2, pp=2, tp=2, model="mlp"), "tp", "use dp x pp or dp x tp"),
    (dict(strategy="hybrid", world_size=2, dp=2), "pp", "needs pp > 1"),
    (dict(strategy="data", world_size=2, dp=2), "dp", "mesh sizes are for strategy 'hybrid'"),
    (dict(strategy="hybrid", world_size=4, dp=2, pp=2, model="mlp", split_points=(3, 6)), "split_points",
     "more stages than ranks"),
])
def test_bad_input_names_field_value_and_what_is_allowed(fields, field, words):
    with pytest.raises(ConfigError) as info:
        RunConfig(**fields)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.field == field
    assert str(err).startswith(f"{field}=")
    assert repr(fields[field] if field in fields else err.value)[:3] in str(err)
    assert words in str(err)


def test_good_configs_resolve_shares_and_balanced_splits():
    c = RunConfig(strategy="data", world_size=2, global_batch=32, batch_partition=(3, 1))
    assert c.rank_batches() == (24, 8)
    assert RunConfig(strategy="data", world_size=4, global_batch=32).rank_batches() == (8, 8, 8, 8)
    p = RunConfig(model="mlp", strategy="pipeline", world_size=2)
    assert p.stages == 2 and p.split_points is None


def test_config_round_trips_through_json():
    c = RunConfig(model="mlp", strategy="pipeline", world_size=2, split_points=(4,), micro_batches=4,
                  schedule="1f1b", optimizer="adam", lr=0.01)
    assert RunConfig.from_dict(__import__("json").loads(c.to_json())) == c
    with pytest.raises(ConfigError, match="unknown field"):
        RunConfig.from_dict({"modle": "mlp"})


def test_cli_bad_arguments_exit_2_with_one_line_and_start_nothing(monkeypatch, capsys):
    def no_launch(*args, **kwargs):
        raise AssertionError("a process was started for bad input")

    monkeypatch.setattr(playground.host.runner, "launch", no_launch)
    for argv in (["run", "--model", "mlp", "--strategy", "model", "--world-size", "2", "--split-points", "4,4"],
                 ["run", "--lr", "-1"],
                 ["run", "--world-size", "x"],
                 ["run", "--split-points", "a,b"],
                 ["run", "--strategy", "data", "--world-size", "2", "--batch-partition", "3,0"],
                 ["launch"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error" in err, err


def test_custom_model_is_checked_before_launch(monkeypatch):
    import torch

    monkeypatch.setattr(playground.host.runner, "launch", lambda *a, **k: pytest.fail("launched"))
    seq = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    data = (torch.randn(64, 4), torch.randn(64, 2))
    with pytest.raises(ConfigError, match="split_points"):
        playground.run(RunConfig(model="custom", strategy="model", world_size=2, split_points=(2,)), model=seq, dataset=data)
    with pytest.raises(ConfigError, match="nn.Sequential"):
        playground.run(RunConfig(), model=torch.nn.Linear(4, 4), dataset=data)
    with pytest.raises(ConfigError, match="dataset"):
        playground.run(RunConfig(model="custom"), model=seq, dataset=[1, 2])
    with pytest.raises(ConfigError, match="pass the module and dataset"):
        playground.run(RunConfig(model="custom"))


def test_the_configs_catalog_of_models_is_the_zoos():
    from playground.spec.config import MODEL_BLOCKS
    from playground.zoo.models import MODELS, build_model

    assert MODEL_BLOCKS == {name: spec.num_blocks for name, spec in MODELS.items()}
    assert all(len(build_model(name)) == n for name, n in MODEL_BLOCKS.items())


@pytest.mark.parametrize("cores, words", [(1, "share 1 CPU core: "), (2, "share 2 CPU cores: ")])
def test_the_contention_note_counts_cores_in_words(monkeypatch, cores, words):
    monkeypatch.setattr(playground.host.runner, "cpu_count", lambda: cores)
    notes = playground.host.runner._notes(RunConfig(model="mlp", strategy="data", world_size=4), "cpu")
    assert notes == [f"4 ranks × 1 thread {words}timings include contention"]
