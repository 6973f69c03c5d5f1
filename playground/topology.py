"""The device mesh of a run and one rank's place in it.

Ranks are laid out on a (dp, pp) grid, pp fastest: rank = dp_rank * pp + stage.
Every fact about a rank is read from that grid, never recomputed at a call
site.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from .config import RunConfig


@dataclass(frozen=True)
class Topology:
    rank: int
    dp: int
    pp: int

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank={self.rank}: must be in [0, {self.world_size}) for mesh dp={self.dp} x pp={self.pp}")

    @classmethod
    def for_config(cls, config: RunConfig, rank: int) -> "Topology":
        dp, pp = config.dp_size, config.stages
        if dp * pp != config.world_size:
            raise ValueError(f"mesh dp={dp} x pp={pp} = {dp * pp} != world_size={config.world_size}")
        return cls(rank, dp, pp)

    @property
    def world_size(self) -> int:
        return self.dp * self.pp

    @cached_property
    def grid(self) -> list[list[int]]:
        """grid[dp_rank][stage] -> rank."""
        return [[d * self.pp + s for s in range(self.pp)] for d in range(self.dp)]

    @property
    def dp_rank(self) -> int:
        return self.rank // self.pp

    @property
    def stage(self) -> int:
        return self.rank % self.pp

    @property
    def is_first_stage(self) -> bool:
        return self.stage == 0

    @property
    def is_last_stage(self) -> bool:
        return self.stage == self.pp - 1

    @property
    def dp_group_ranks(self) -> list[int]:
        """Ranks holding the same stage: they all-reduce gradients together."""
        return [row[self.stage] for row in self.grid]

    @property
    def pp_group_ranks(self) -> list[int]:
        """Ranks of this rank's pipeline, stage 0 first."""
        return list(self.grid[self.dp_rank])

    @property
    def next_rank(self) -> int | None:
        return None if self.is_last_stage else self.grid[self.dp_rank][self.stage + 1]

    @property
    def prev_rank(self) -> int | None:
        return None if self.is_first_stage else self.grid[self.dp_rank][self.stage - 1]
