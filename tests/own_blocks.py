"""Small user models of the kinds people bring (BatchNorm, Dropout, tied
weights, parameter-free blocks, unused branches) and their data. They live
in an importable module so the ranks can unpickle them."""

from __future__ import annotations

import torch
from torch import nn

VOCAB, WIDTH, CONTEXT = 12, 8, 4


class MainAndSpare(nn.Module):
    """A layer with a spare head that the forward never uses."""

    def __init__(self, d_in: int = 8, d_out: int = 16):
        super().__init__()
        self.main = nn.Linear(d_in, d_out)
        self.spare = nn.Linear(d_in, d_out)

    def forward(self, x):
        return self.main(x)


class GaussianNoise(nn.Module):
    """Adds N(0, sigma^2) noise in training mode: random without being a Dropout."""

    def __init__(self, sigma: float = 0.1):
        super().__init__()
        self.sigma = sigma

    def forward(self, x):
        return x + self.sigma * torch.randn_like(x) if self.training else x


def batchnorm_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
        nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 3)),
    )


def batchnorm_mlp() -> nn.Sequential:
    """BatchNorm1d: fails in training mode on a single sample."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU()), nn.Linear(16, 4))


def images(n: int = 96):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 4, 4, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 1).long()
    return x[:64], y[:64], x[64:], y[64:]


def regression(d_in: int = 8, d_out: int = 4, n: int = 64):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, d_in, generator=g)
    return x, torch.sin(x[:, :d_out]) + 0.05 * torch.randn(n, d_out, generator=g)


def dropout_mlp(p: float = 0.5) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(p), nn.Linear(32, 4))


def noisy_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), GaussianNoise(0.2), nn.Tanh(), nn.Linear(16, 4))


def tied_lm(blocks_between: int = 1) -> nn.Sequential:
    """Embedding and output head sharing one weight, GPT-2 style."""
    torch.manual_seed(0)
    emb = nn.Embedding(VOCAB, WIDTH)
    head = nn.Linear(WIDTH, VOCAB, bias=False)
    head.weight = emb.weight
    middle = [m for _ in range(blocks_between) for m in (nn.Linear(WIDTH, WIDTH), nn.Tanh())]
    return nn.Sequential(emb, nn.Tanh(), *middle, head)


def tokens(n: int = 80):
    g = torch.Generator().manual_seed(6)
    x = torch.randint(0, VOCAB, (n, CONTEXT), generator=g)
    return x[:64], (x[:64] + 1) % VOCAB, x[64:], (x[64:] + 1) % VOCAB


def flatten_first() -> nn.Sequential:
    """Block 0 holds no parameters."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 4))


def planes(n: int = 64):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(n, 2, 4, generator=g)
    return x, x.flatten(1)[:, :4] * 0.5 + 0.05 * torch.randn(n, 4, generator=g)


def with_spare(relu_tail: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    blocks = [MainAndSpare(), nn.ReLU(), nn.Linear(16, 4)]
    return nn.Sequential(*blocks, *([nn.ReLU()] if relu_tail else []))


class Residual(nn.Module):
    """x + inner(x): a block a tensor-parallel plan cannot see into."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return x + self.inner(x)
