"""A custom model and dataset are checked in the caller, on a copy, before
any process starts (BR-12, BR-20 and their kin), and the tensor-parallel
plan pairs layers only where that is valid (BR-11). No test here starts a
process: ``launch`` is replaced by one that fails the test."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import playground
from playground import ConfigError, RunConfig
from playground.zoo.custom import prepare_custom
from playground.zoo.plans import plan_tensor_parallel
from own_blocks import Residual


@pytest.fixture(autouse=True)
def no_process(monkeypatch):
    """Any attempt to start ranks fails the test."""
    def launch(*args, **kwargs):
        raise AssertionError("a process was started for a run that should have been refused")

    monkeypatch.setattr("playground.host.runner.launch", launch)
    monkeypatch.setattr("playground.host.launcher._Rank", launch)


class Returns(nn.Module):
    """Returns whatever ``make(x)`` builds: a tuple, a dict, None."""

    def __init__(self, make):
        super().__init__()
        self.make = make

    def forward(self, x):
        return self.make(x)


def _data(n=64, d_in=8, y=None):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d_in, generator=g)
    return x, (torch.randn(n, 4, generator=g) if y is None else y)


def _config(strategy, **fields):
    fields.setdefault("world_size", 2)
    if strategy == "model":
        fields.setdefault("split_points", (1,))
    return RunConfig(model="custom", strategy=strategy, global_batch=16, steps=2, **fields)


STRATEGIES = ["data", "model", "pipeline", "tensor", "fsdp"]


def _refused(config, model, dataset) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        playground.run(config, model=model, dataset=dataset)
    message = str(info.value)
    assert "\n" not in message  # the CLI prints it as one line
    return info.value


# -- every block returns one tensor (BR-20) --------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_lstm_block_returning_a_tuple_is_refused_naming_the_block(strategy):
    vocab, t = 10, 5
    x = torch.randint(0, vocab, (64, t))
    y = (x + 1) % vocab
    net = nn.Sequential(nn.Embedding(vocab, 8), nn.LSTM(8, 8, batch_first=True), nn.Linear(8, vocab))
    err = _refused(_config(strategy), net, (x, y))
    assert err.field == "model" and err.value == "block 1 (LSTM)"
    assert "returned a tuple (Tensor[2, 5, 8], (Tensor[1, 2, 8], Tensor[1, 2, 8]))" in str(err)
    assert "one tensor" in str(err)


@pytest.mark.parametrize("make, said", [
    (lambda x: {"out": x}, "a dict {'out': Tensor[2, 16]}"),
    (lambda x: None, "None"),
    (lambda x: [x, x], "a list [Tensor[2, 16], Tensor[2, 16]]"),
])
def test_other_blocks_returning_anything_but_one_tensor_are_refused(make, said):
    net = nn.Sequential(nn.Linear(8, 16), Returns(make), nn.Linear(16, 4))
    err = _refused(_config("pipeline", micro_batches=2), net, _data())
    assert err.value == "block 1 (Returns)" and f"returned {said};" in str(err)


def test_a_block_that_fails_on_one_device_is_refused_naming_it():
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(12, 4))  # 16 features into a 12-wide layer
    err = _refused(_config("data"), net, _data())
    assert err.field == "model" and err.value == "block 2 (Linear)"
    assert "raised RuntimeError" in str(err) and "Tensor[2, 8]" in str(err)


def test_the_probe_leaves_the_model_and_the_random_state_alone():
    net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.Linear(16, 4))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    state = torch.get_rng_state()
    _, (model, _), _ = prepare_custom(_config("data"), net, _data())
    assert model is net and net.training
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BatchNorm's running stats too


# -- targets fit the output and the loss (BR-12) ---------------------------


@pytest.mark.parametrize("strategy", ["data", "tensor", "pipeline"])
def test_a_flat_regression_target_for_a_one_column_output_is_refused(strategy):
    x, _ = _data()
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    err = _refused(_config(strategy), net, (x, x[:, 0]))
    assert err.field == "dataset" and err.value == "regression targets of shape (64,)"
    assert "(N, 1)" in str(err) and "broadcast" in str(err)


def test_class_labels_that_do_not_fit_the_output_are_refused():
    x, _ = _data()
    net = nn.Sequential(nn.Linear(8, 3))
    err = _refused(_config("data"), net, (x, torch.zeros(64, 2, dtype=torch.long)))
    assert err.field == "dataset" and "class labels of shape (64, 2)" in str(err) and "(N)" in str(err)
    labels = torch.arange(64) % 5  # 5 classes for a 3-class output
    err = _refused(_config("data"), net, (x, labels))
    assert err.value == "training class labels 0..4" and "0..2" in str(err)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_integer_class_labels_are_cast_to_int64_and_said(dtype):
    x, _ = _data()
    labels = (torch.arange(64) % 3).to(dtype)
    net = nn.Sequential(nn.Linear(8, 3))
    _, (_, data), notes = prepare_custom(_config("data"), net, (x[:48], labels[:48], x[48:], labels[48:]))
    assert data.task == "classification"
    assert data.train_y.dtype == data.test_y.dtype == torch.long
    assert torch.equal(data.train_y, labels[:48].long())
    assert notes == [f"dataset: targets of dtype {dtype} were cast to torch.int64 (int64 class labels, "
                     f"as cross-entropy needs)"]


def test_float64_regression_targets_are_cast_to_the_output_dtype():
    x, y = _data()
    _, (_, data), notes = prepare_custom(_config("data"), nn.Sequential(nn.Linear(8, 4)), (x, y.double()))
    assert data.train_y.dtype == torch.float32 and len(notes) == 1 and "torch.float64" in notes[0]


def test_bool_targets_and_test_sets_of_another_shape_are_refused():
    x, y = _data()
    net = nn.Sequential(nn.Linear(8, 4))
    assert _refused(_config("data"), net, (x, y > 0)).value == "targets of dtype torch.bool"
    err = _refused(_config("data"), net, (x, y, x[:, :4], y))
    assert err.value == "test inputs of shape (64, 4)"


# -- enough samples ---------------------------------------------------------


def test_a_dataset_smaller_than_one_global_batch_is_refused():
    x, y = _data(n=12)
    err = _refused(_config("data"), nn.Sequential(nn.Linear(8, 4)), (x, y))
    assert err.field == "dataset" and err.value == "12 training samples" and "global_batch=16" in str(err)


@pytest.mark.parametrize("strategy, fields", [
    ("data", dict(global_batch=2)),  # one sample per data-parallel rank
    ("pipeline", dict(global_batch=4, micro_batches=4)),  # one sample per micro-batch
    ("fsdp", dict(global_batch=4, batch_partition=(3, 1))),  # rank 1's share is one sample
])
def test_batch_norm_fed_one_sample_per_forward_is_refused(strategy, fields):
    net = nn.Sequential(nn.Linear(8, 16), nn.Sequential(nn.BatchNorm1d(16), nn.ReLU()), nn.Linear(16, 4))
    config = RunConfig(model="custom", strategy=strategy, world_size=2, steps=2, **fields)
    err = _refused(config, net, _data())
    assert err.field == "model" and err.value == "block 1 (Sequential), layer 1.0 (BatchNorm1d)"
    assert "1 sample(s)" in str(err) and "at least 2 values per channel" in str(err)


def test_batch_norm_with_enough_values_per_channel_or_in_eval_mode_is_accepted():
    one_each = RunConfig(model="custom", strategy="data", world_size=2, global_batch=2, steps=2)
    images = torch.randn(16, 1, 4, 4)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(32, 4))
    prepare_custom(one_each, conv, (images, torch.randn(16, 4)))  # 16 values per channel per sample
    frozen = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 4))
    frozen[1].eval()  # normalizes with its running statistics
    prepare_custom(one_each, frozen, _data())


# -- the tensor-parallel plan (BR-11) --------------------------------------


def test_a_residual_block_is_left_replicated_and_breaks_the_pair_across_it():
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), Residual(nn.Linear(16, 16)), nn.Linear(16, 4))
    plan = plan_tensor_parallel(net, 2)
    assert plan.styles == {}
    assert plan.replicated == {
        "0": "Linear: followed by Residual, not by a Linear through elementwise layers",
        "2": "Residual: a block the plan cannot see into",
        "3": "Linear: no row-parallel partner follows it",
    }
    assert plan.note().startswith("tensor plan: no layer split; left replicated on every rank: 0 (Linear")


@pytest.mark.parametrize("net, styles, replicated", [
    # A nested nn.Sequential is opened: its layers run one after another.
    (lambda: nn.Sequential(nn.Sequential(nn.Linear(8, 16), nn.SiLU()), nn.Sequential(nn.Linear(16, 4))),
     {"0.0": "colwise", "1.0": "rowwise"}, set()),
    # A pair on each side of a residual block.
    (lambda: nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 16), Residual(nn.Linear(16, 16)),
                           nn.Linear(16, 8), nn.Dropout(0.0), nn.Linear(8, 4)),
     {"0": "colwise", "2": "rowwise", "4": "colwise", "6": "rowwise"}, {"3"}),
    # A LayerNorm between two linears is not elementwise: no pair.
    (lambda: nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4)), {}, {"0", "1", "2"}),
    # Output features that do not divide among the ranks: the next pair starts later.
    (lambda: nn.Sequential(nn.Linear(8, 15), nn.Linear(15, 16), nn.Linear(16, 4)),
     {"1": "colwise", "2": "rowwise"}, {"0"}),
])
def test_plan_pairs_linears_only_through_elementwise_layers(net, styles, replicated):
    plan = plan_tensor_parallel(net(), 2)
    assert plan.styles == styles and set(plan.replicated) == replicated


def test_a_sequential_subclass_with_its_own_forward_is_opaque():
    class Skip(nn.Sequential):
        def forward(self, x):
            return x + super().forward(x)

    plan = plan_tensor_parallel(nn.Sequential(nn.Linear(8, 16), Skip(nn.Linear(16, 16), nn.ReLU()),
                                              nn.Linear(16, 4)), 2)
    assert plan.styles == {} and plan.replicated["1"] == "Skip: a block the plan cannot see into"


def test_a_layer_used_at_two_places_is_left_replicated():
    shared = nn.Linear(16, 16)
    plan = plan_tensor_parallel(nn.Sequential(nn.Linear(8, 16), shared, nn.ReLU(), shared, nn.Linear(16, 8),
                                              nn.Linear(8, 4)), 2)
    assert plan.styles == {"4": "colwise", "5": "rowwise"}
    assert plan.replicated["1"] == plan.replicated["3"] == "Linear: used at 2 places in the model"


def test_named_models_keep_their_plans():
    assert plan_tensor_parallel(playground.build_model("seed-mlp"), 2).styles == {"0": "colwise", "1": "rowwise"}
    mlp = plan_tensor_parallel(playground.build_model("mlp"), 2)
    assert len(mlp.styles) == 10 and mlp.replicated == {}
    transformer = plan_tensor_parallel(playground.build_model("transformer"), 2)
    assert len(transformer.styles) == 24 and set(transformer.replicated) == {"0", "5"}


# -- strict JSON ------------------------------------------------------------


def test_non_finite_numbers_become_null():
    from playground.result.run_result import finite_or_null

    assert finite_or_null({"a": [1.0, math.inf, (math.nan, -math.inf)], "b": 2, "c": "nan"}) == \
        {"a": [1.0, None, [None, None]], "b": 2, "c": "nan"}


def test_subclasses_that_change_forward_are_not_taken_for_what_they_extend():
    class Scaled(nn.Linear):
        def forward(self, x):
            return super().forward(x).flip(-1)  # not what a column shard of nn.Linear computes

    class RowSum(nn.ReLU):
        def forward(self, x):
            return x - x.sum(-1, keepdim=True)  # mixes features: not elementwise

    plan = plan_tensor_parallel(nn.Sequential(Scaled(8, 16), nn.Linear(16, 16), RowSum(), nn.Linear(16, 4)), 2)
    assert plan.styles == {} and plan.replicated["0"] == "Scaled: only Linear layers are split"
    assert plan.replicated["1"].startswith("Linear: followed by RowSum")


def test_cli_turns_a_refusal_into_exit_2_and_one_line(monkeypatch, capsys):
    from playground.__main__ import _run_and_print

    real_run = playground.host.runner.run
    net = nn.Sequential(nn.Linear(8, 16), nn.LSTM(16, 4), nn.Linear(4, 4))
    monkeypatch.setattr("playground.host.runner.run",
                        lambda config, warm=True: real_run(config, model=net, dataset=_data(), warm=warm))
    assert _run_and_print(_config("data")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("playground: error: model='block 1 (LSTM)': returned a tuple")


def test_numpy_arrays_are_taken_and_anything_else_is_named_by_its_place():
    import numpy as np

    from playground.zoo.custom import as_dataset

    x, y = np.zeros((8, 4), dtype="float32"), np.arange(8, dtype="int32") % 2
    data = as_dataset((x, y))
    assert isinstance(data.train_x, torch.Tensor) and data.task == "classification"
    with pytest.raises(ConfigError, match=r"element 1: list"):
        as_dataset((x, [0, 1]))
