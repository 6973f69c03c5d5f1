"""The device mesh of a run and one rank's place in it.

Ranks are laid out on a (dp, pp, tp) grid, tp fastest:
rank = (dp_rank * pp + pp_rank) * tp + tp_rank. Every fact about a rank is
read from that grid, never recomputed at a call site.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from playground.spec.config import RunConfig


@dataclass(frozen=True)
class Topology:
    rank: int
    dp: int
    pp: int
    tp: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank={self.rank}: must be in [0, {self.world_size}) for mesh "
                             f"dp={self.dp} x pp={self.pp} x tp={self.tp}")

    @classmethod
    def for_config(cls, config: RunConfig, rank: int) -> "Topology":
        dp, pp, tp = config.dp_size, config.pp_size, config.tp_size
        if dp * pp * tp != config.world_size:
            raise ValueError(f"mesh dp={dp} x pp={pp} x tp={tp} = {dp * pp * tp} != world_size={config.world_size}")
        return cls(rank, dp, pp, tp)

    @property
    def world_size(self) -> int:
        return self.dp * self.pp * self.tp

    @cached_property
    def grid(self) -> list[list[list[int]]]:
        """grid[dp_rank][pp_rank][tp_rank] -> rank."""
        return [[[(d * self.pp + s) * self.tp + t for t in range(self.tp)] for s in range(self.pp)]
                for d in range(self.dp)]

    @property
    def dp_rank(self) -> int:
        return self.rank // (self.pp * self.tp)

    @property
    def pp_rank(self) -> int:
        """Position along the pipeline, 0 first (with one stage per rank, also
        the index of the stage it holds)."""
        return self.rank // self.tp % self.pp

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    @property
    def dp_group_ranks(self) -> list[int]:
        """Ranks holding the same part of the model: gradients are reduced among them."""
        return [plane[self.pp_rank][self.tp_rank] for plane in self.grid]

    @property
    def pp_group_ranks(self) -> list[int]:
        """Ranks of this rank's pipeline, first stage first."""
        return [row[self.tp_rank] for row in self.grid[self.dp_rank]]

    @property
    def tp_group_ranks(self) -> list[int]:
        """Ranks sharing each layer of this rank's stage."""
        return list(self.grid[self.dp_rank][self.pp_rank])

    @property
    def next_rank(self) -> int | None:
        return None if self.is_last_stage else self.grid[self.dp_rank][self.pp_rank + 1][self.tp_rank]

    @property
    def prev_rank(self) -> int | None:
        return None if self.is_first_stage else self.grid[self.dp_rank][self.pp_rank - 1][self.tp_rank]
