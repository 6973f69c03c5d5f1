"""Blocks that misbehave on one rank, for fault tests. They live in an
importable module of their own so the ranks can unpickle them by its name;
tests import them through ``support``."""

from __future__ import annotations

import os
import signal
import time

import torch
from torch import nn

__all__ = ["Fault", "faulty_model", "regression_data"]


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else -1


class Fault(nn.Module):
    """Identity, except on ``rank`` from forward number ``after`` on."""

    def __init__(self, rank: int, what: str, after: int = 1):
        super().__init__()
        self.rank, self.what, self.after, self.calls = rank, what, after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if _rank() == self.rank and self.calls > self.after:
            if self.what == "raise":
                raise ValueError(f"deliberate failure on rank {self.rank}")
            if self.what == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.what == "hang":
                time.sleep(3600)
        return x


def faulty_model(rank: int, what: str) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), Fault(rank, what), nn.Linear(16, 4))


def regression_data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 8, generator=g), torch.randn(n, 4, generator=g)
