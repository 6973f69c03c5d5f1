"""Datasets, the batch each step draws, and how it is cut among ranks.

Nothing is downloaded: the digits images ship with scikit-learn, the text
corpus ships inside this package, and the seed-mlp task is generated.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from playground.zoo.corpus import corpus_text, corpus_vocab
from playground.zoo.models import LM_CONTEXT, MODELS, SEED_IN, SEED_OUT


@dataclass(frozen=True)
class Dataset:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor | None = None
    test_y: torch.Tensor | None = None
    task: str = "classification"
    """classification (cross-entropy, accuracy) or regression (MSE)."""

    def batch(self, step: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The global batch of ``step``: the same on every rank and in the
        single-device baseline, drawn from (seed, step) alone."""
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(0, len(self.train_x), (size,), generator=g)
        return self.train_x[idx], self.train_y[idx]


def loss_fn(task: str):
    """Mean loss over a batch: cross-entropy over the last dim, or MSE."""
    if task == "regression":
        return torch.nn.functional.mse_loss

    def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))

    return cross_entropy


@dataclass(frozen=True)
class BatchShare:
    """One data-parallel rank's part of the global batch of B samples.

    The rank trains on its b_r samples, and its loss (a mean over them) is
    weighted by ``weight`` = dp * b_r / B before backward: the gradient
    reduction averages over the dp ranks, so the sum is sum_r (b_r / B) *
    grad(mean_r) = the gradient of the mean over the whole batch, even when
    the shares are uneven. Its part of the global loss is mean_r * ``share``.

    With k ``micro_steps`` (gradient accumulation) the rank sees the global
    batch as k micro-steps of B / k samples, takes b_r / k of each, and
    weights each micro-step's loss by a further 1 / k: the k gradients sum
    to the gradient of the mean over the whole batch.
    """

    batches: tuple[int, ...]
    dp_rank: int
    micro_steps: int = 1

    @classmethod
    def of(cls, config, dp_rank: int) -> "BatchShare":
        """Rank ``dp_rank``'s part of ``config``'s batch (a RunConfig)."""
        return cls(config.rank_batches(), dp_rank, config.grad_accumulation)

    @property
    def share(self) -> float:
        """b_r / (B k)."""
        return self.batches[self.dp_rank] / sum(self.batches) / self.micro_steps

    @property
    def weight(self) -> float:
        """dp * b_r / (B k)."""
        return len(self.batches) * self.share

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch tensor (of one micro-step)."""
        return shard(x, tuple(b // self.micro_steps for b in self.batches), self.dp_rank)


def shard(x: torch.Tensor, sizes: tuple[int, ...], index: int) -> torch.Tensor:
    """The ``index``-th contiguous slice of ``x`` when cut into ``sizes``."""
    start = sum(sizes[:index])
    return x[start:start + sizes[index]]


# --------------------------------------------------------------------------
# The built-in datasets


@functools.lru_cache(maxsize=None)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    return x[perm], y[perm]


def _digits_dataset(flat: bool) -> Dataset:
    x, y = _digits()
    if not flat:
        x = x.view(-1, 1, 8, 8)
    n_test = len(x) // 5
    return Dataset(x[n_test:], y[n_test:], x[:n_test], y[:n_test])


def _seed_mlp_dataset() -> Dataset:
    g = torch.Generator().manual_seed(4321)
    teacher = torch.randn(SEED_OUT, SEED_IN, generator=g) / SEED_IN ** 0.5
    x = torch.randn(640, SEED_IN, generator=g)
    y = x @ teacher.T + 0.05 * torch.randn(640, SEED_OUT, generator=g)
    return Dataset(x[128:], y[128:], x[:128], y[:128], task="regression")


def _corpus_dataset() -> Dataset:
    text = corpus_text()
    lookup = {ch: i for i, ch in enumerate(corpus_vocab())}
    ids = torch.tensor([lookup[ch] for ch in text], dtype=torch.long)
    windows = ids.unfold(0, LM_CONTEXT + 1, 1)  # every (context + 1)-long window
    x, y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
    n_train = int(len(x) * 0.9)
    # Leave a gap of one context between train and test so no test target is trained on.
    return Dataset(x[:n_train], y[:n_train], x[n_train + LM_CONTEXT:], y[n_train + LM_CONTEXT:])


_DATASETS = {
    "seed-mlp": _seed_mlp_dataset,
    "mlp": lambda: _digits_dataset(flat=True),
    "cnn": lambda: _digits_dataset(flat=False),
    "transformer": _corpus_dataset,
}
assert set(_DATASETS) == set(MODELS)


@functools.lru_cache(maxsize=None)
def load_dataset(model_name: str) -> Dataset:
    """The dataset the named model trains on."""
    return _DATASETS[model_name]()
