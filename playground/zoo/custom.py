"""A model and dataset the user brings, checked in the caller before any
process starts.

A custom model is an ``nn.Sequential`` whose blocks each take one tensor and
return one tensor: that is what a split point between two blocks can send
from one stage to the next. ``prepare_custom`` runs a copy of the model on
a couple of training samples (in eval mode, without gradients, with the
random number generators restored afterwards) and refuses, with a
``ConfigError`` naming the field (``model`` or ``dataset``), the value and
what is allowed:

  - a block that raises, or returns anything but one tensor (a tuple, as
    nn.LSTM returns, a dict, None);
  - targets whose shape does not fit the output for the task's loss:
    classification (integer targets, cross-entropy over the last dim)
    needs targets shaped like the output without its last dim, with labels
    in 0..classes-1; regression (float targets, MSE) needs targets shaped
    exactly like the output, since an (N,) target against an (N, 1) output
    would broadcast to (N, N) without an error;
  - a BatchNorm layer in training mode that one forward would feed a
    single value per channel (one sample per rank or micro-batch);
  - fewer training samples than one global batch.

Integer class labels of another dtype (int32 from numpy, say) are cast to
int64, which cross-entropy needs; float targets of another precision than
the output are cast to the output's dtype. Each cast is said in a note.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from playground.spec.config import ConfigError, RunConfig
from playground.zoo.datasets import Dataset
from playground.zoo.models import GLOBAL_RNG

PROBE_SAMPLES = 2
"""Training samples the copy of the model is run on."""

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def prepare_custom(config: RunConfig, model: Any, dataset: Any) -> tuple[RunConfig, tuple | None, list[str]]:
    """(config with the model's block count, (model, dataset), notes) for a
    custom run, or (config, None, []) for a named model. Raises
    ``ConfigError`` for anything the ranks would fail on (see the module)."""
    if model is None and dataset is None:
        if config.model == "custom":
            raise ConfigError("model", "custom", "pass the module and dataset: run(config, model=..., dataset=...)")
        return config, None, []
    if not isinstance(model, nn.Sequential) or len(model) == 0:
        raise ConfigError("model", type(model).__name__,
                          "a custom model must be a non-empty nn.Sequential of blocks, each taking and returning "
                          "one tensor")
    if config.model != "custom":
        raise ConfigError("model", config.model, "must be 'custom' when a module is passed to run()")
    data = as_dataset(dataset)
    n = len(data.train_x)
    if n < config.global_batch:
        raise ConfigError("dataset", f"{n} training samples",
                          f"needs at least one global batch (global_batch={config.global_batch})")
    out, norms = probe(model, data.train_x[:PROBE_SAMPLES])
    notes: list[str] = []
    data = fit_targets(data, out, notes)
    check_batch_norms(config, model, norms)
    fields = config.to_dict()
    fields.update(num_blocks=len(model))
    return RunConfig.from_dict(fields), (model, data), notes


def as_dataset(dataset: Any) -> Dataset:
    """A ``Dataset`` from itself or from a tuple (x, y[, x_test, y_test]);
    the task is classification for integer targets, regression for float."""
    usage = "must be a Dataset or a tuple (x, y[, x_test, y_test]) of tensors or NumPy arrays"
    if isinstance(dataset, (tuple, list)):
        if len(dataset) not in (2, 4):
            raise ConfigError("dataset", f"a {type(dataset).__name__} of {len(dataset)}", usage)
        # NumPy arrays (a common source of int32 labels) become tensors sharing their memory.
        dataset = tuple(torch.from_numpy(t) if type(t).__module__ == "numpy" and hasattr(t, "dtype") else t
                        for t in dataset)
        wrong = [f"element {i}: {type(t).__name__}" for i, t in enumerate(dataset) if not isinstance(t, torch.Tensor)]
        if wrong:
            raise ConfigError("dataset", "; ".join(wrong), usage)
        y = dataset[1]
        if y.dtype == torch.bool or y.is_complex():
            raise ConfigError("dataset", f"targets of dtype {y.dtype}",
                              "use integer class labels (int64) for classification or floats for regression")
        dataset = Dataset(*dataset, task="regression" if y.is_floating_point() else "classification")
    if not isinstance(dataset, Dataset):
        raise ConfigError("dataset", type(dataset).__name__, usage)
    if len(dataset.train_x) != len(dataset.train_y) or len(dataset.train_x) == 0:
        raise ConfigError("dataset", f"{len(dataset.train_x)} inputs, {len(dataset.train_y)} targets",
                          "needs as many targets as inputs, at least one")
    if (dataset.test_x is None) != (dataset.test_y is None):
        raise ConfigError("dataset", "a test set without inputs or targets", "give both x_test and y_test, or neither")
    if dataset.test_x is not None:
        if len(dataset.test_x) != len(dataset.test_y):
            raise ConfigError("dataset", f"{len(dataset.test_x)} test inputs, {len(dataset.test_y)} test targets",
                              "needs as many test targets as test inputs")
        for part, train, test in (("inputs", dataset.train_x, dataset.test_x),
                                  ("targets", dataset.train_y, dataset.test_y)):
            if train.shape[1:] != test.shape[1:]:
                raise ConfigError("dataset", f"test {part} of shape {tuple(test.shape)}",
                                  f"each test sample must have the training {part}' shape {tuple(train.shape[1:])}")
    return dataset


def probe(model: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, tuple[int, ...]]]:
    """Run a copy of ``model`` block by block on ``x``: its output, and the
    input shape each BatchNorm layer saw (by module name). Raises
    ``ConfigError`` naming the first block that fails or returns anything
    but one tensor."""
    replica = copy.deepcopy(model).eval()
    norms: dict[str, tuple[int, ...]] = {}

    def seen(name: str):
        def hook(_module, args) -> None:
            norms.setdefault(name, tuple(args[0].shape))
        return hook

    hooks = [m.register_forward_pre_hook(seen(name)) for name, m in replica.named_modules()
             if isinstance(m, BATCH_NORMS)]
    out: Any = x
    try:
        with torch.no_grad(), GLOBAL_RNG, torch.random.fork_rng(devices=[]):
            for i, block in enumerate(replica):
                label = f"block {i} ({type(block).__name__})"
                try:
                    out = block(out)
                except Exception as e:  # noqa: BLE001 - whatever it is, the ranks would fail on it too
                    message = str(e).strip().splitlines()[0] if str(e).strip() else ""
                    raise ConfigError("model", label, f"raised {type(e).__name__}: {message[:300]} on a batch of "
                                      f"{len(x)} training samples (input {describe(x)})") from e
                if not isinstance(out, torch.Tensor):
                    raise ConfigError("model", label,
                                      f"returned {describe(out)}; every block must return one tensor (wrap the "
                                      f"layer in a block that keeps the tensor it needs, e.g. an LSTM's output "
                                      f"without its (h, c))")
    finally:
        for h in hooks:
            h.remove()
    if not out.is_floating_point():
        raise ConfigError("model", f"output of dtype {out.dtype}", "the last block must return floating-point values")
    return out, norms


def describe(value: Any) -> str:
    """A short description of a block's output: ``Tensor[2, 5, 8]``, ``a
    tuple (Tensor[2, 5, 8], (Tensor[1, 2, 8], Tensor[1, 2, 8]))``."""
    if isinstance(value, torch.Tensor):
        return _sketch(value)
    if value is None:
        return "None"
    return f"a {type(value).__name__} {_sketch(value)}"


def _sketch(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"Tensor[{', '.join(map(str, value.shape))}]"
    if isinstance(value, tuple):
        return f"({', '.join(_sketch(v) for v in value)})"
    if isinstance(value, list):
        return f"[{', '.join(_sketch(v) for v in value)}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_sketch(v)}" for k, v in list(value.items())[:5]) + "}"
    return type(value).__name__


def fit_targets(data: Dataset, out: torch.Tensor, notes: list[str]) -> Dataset:
    """The dataset with targets that fit ``out`` (the model's output on a
    few samples) for the task's loss; casts are said in ``notes``."""
    y = data.train_y
    per_sample = tuple(out.shape[1:])
    if data.task == "classification":
        if out.dim() < 2:
            raise ConfigError("dataset", f"class labels of shape {tuple(y.shape)}",
                              f"classification needs an output with a class dimension last; the model returns "
                              f"{describe(out)} per {len(out)} samples")
        classes = out.shape[-1]
        if tuple(y.shape[1:]) != per_sample[:-1]:
            want = ", ".join(["N", *map(str, per_sample[:-1])])
            raise ConfigError("dataset", f"class labels of shape {tuple(y.shape)}",
                              f"the model returns {describe(out)} for {len(out)} samples ({classes} classes last), "
                              f"so the labels must have shape ({want}) (one class index per output row)")
        for name, labels in (("training", y), ("test", data.test_y)):
            if labels is not None and len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= classes):
                raise ConfigError("dataset", f"{name} class labels {int(labels.min())}..{int(labels.max())}",
                                  f"the model's output has {classes} classes, so labels must lie in 0..{classes - 1}")
        target_dtype = torch.long
    else:
        if tuple(y.shape[1:]) != per_sample:
            shape = ", ".join(["N", *map(str, per_sample)])
            raise ConfigError("dataset", f"regression targets of shape {tuple(y.shape)}",
                              f"the model returns {describe(out)} for {len(out)} samples, so the targets must have "
                              f"shape ({shape}); another shape would broadcast in the MSE loss "
                              f"(reshape them, e.g. y.view(-1, 1))")
        target_dtype = out.dtype
    if y.dtype == target_dtype:
        return data
    notes.append(f"dataset: targets of dtype {y.dtype} were cast to {target_dtype}"
                 + (" (int64 class labels, as cross-entropy needs)" if target_dtype == torch.long else
                    " (the model's output dtype, as the MSE loss needs)"))
    test_y = data.test_y.to(target_dtype) if data.test_y is not None else None
    return Dataset(data.train_x, y.to(target_dtype), data.test_x, test_y, task=data.task)


def smallest_forward(config: RunConfig) -> int:
    """Fewest samples one forward of one rank sees: the smallest data-parallel
    share of the global batch, cut into micro-batches where the model is
    pipelined."""
    pieces = config.micro_batches if config.pipelined else 1
    return min(config.rank_batches()) // pieces


def check_batch_norms(config: RunConfig, model: nn.Sequential, norms: dict[str, tuple[int, ...]]) -> None:
    """Refuse a BatchNorm layer in training mode that one forward would give
    a single value per channel: batch statistics need at least two."""
    samples = smallest_forward(config)
    for name, shape in norms.items():
        layer = model.get_submodule(name)
        if not layer.training:
            continue  # eval mode normalizes with running statistics
        values = samples * math.prod(shape[2:])
        if values < 2:
            top = name.split(".")[0]
            block = list(model._modules).index(top)
            raise ConfigError("model", f"block {block} ({type(model[block]).__name__}), layer {name} "
                              f"({type(layer).__name__})",
                              f"normalizes over the samples of one forward in training, and this run gives one "
                              f"forward {samples} sample(s) of shape {shape[1:]} (global_batch={config.global_batch}, "
                              f"{config.dp_size} data-parallel rank(s), {config.micro_batches if config.pipelined else 1} "
                              f"micro-batch(es)): at least 2 values per channel are needed; use a larger global_batch")
