"""What one rank reports: built by the rank, sent to the caller over the
pool's pipe or written to torchrun's folder, read back unchanged."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RankReport:
    """What one rank did, built by the rank itself (``worker.run_rank``):
    one schema for the pool's pipes, the JSON and torchrun's files. The
    accounting fields (``time``, ``bytes_sent``, ``bytes_recv``) are empty
    as the rank sends it; ``account`` returns copies with them filled and
    the timeline put on the run's clock."""

    rank: int
    dp_rank: int
    pp_rank: int
    """The rank's place along the pipeline, 0 first (with one stage per
    rank, also the index of the stage it holds; ``stages`` lists them all)."""
    blocks: tuple[int, int]
    """[first, end) block indices of this rank's first (usually only) stage."""
    timeline: list[dict[str, Any]]
    step_times: list[tuple[float, float]]
    memory: dict[str, int | None]
    time: dict[str, float] = field(default_factory=dict)
    bytes_sent: int = 0
    bytes_recv: int = 0
    threads: int = 1
    tp_rank: int = 0
    stages: list[tuple[int, int, int]] = field(default_factory=list)
    """(stage, first block, end block) of every stage this rank holds."""
    blocked: list[tuple[float, float]] = field(default_factory=list)
    """(start, end) seconds in which the rank's thread waited on a transfer."""
    output: str = ""
    """What the rank's process printed during the run: stdout and stderr
    together, in the order written (at most the last MiB); filled in by the
    launcher, which holds the rank's output file."""
    loss_parts: list[float | None] = field(default_factory=list)
    """This rank's part of each step's global loss (the parts of all ranks
    sum to it), or None where the rank never sees the loss."""
    diverged: dict[str, Any] | None = None
    """{"step", "ranks"} when a loss part became inf or NaN, else None."""
    tensor_plan: dict[str, str] = field(default_factory=dict)
    """Tensor parallel: module name -> "colwise" / "rowwise" as applied."""
    tensor_plan_note: str | None = None
    """Tensor parallel: the layers the plan left whole, and why."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank, "dp_rank": self.dp_rank, "pp_rank": self.pp_rank,
            "blocks": list(self.blocks), "timeline": self.timeline,
            "step_times": [list(t) for t in self.step_times], "memory": self.memory,
            "time": self.time, "bytes_sent": self.bytes_sent, "bytes_recv": self.bytes_recv,
            "threads": self.threads, "tp_rank": self.tp_rank,
            "stages": [list(t) for t in self.stages],
            "blocked": [list(t) for t in self.blocked], "output": self.output,
            "loss_parts": self.loss_parts, "diverged": self.diverged, "tensor_plan": self.tensor_plan,
            "tensor_plan_note": self.tensor_plan_note,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RankReport":
        """The report ``to_dict`` wrote; a report saved before ``pp_rank`` was
        named so carries it as "stage"."""
        return cls(rank=d["rank"], dp_rank=d["dp_rank"], pp_rank=d["pp_rank"] if "pp_rank" in d else d["stage"], blocks=tuple(d["blocks"]),
                   timeline=d["timeline"], step_times=[tuple(t) for t in d["step_times"]], memory=d["memory"],
                   time=d.get("time", {}), bytes_sent=d.get("bytes_sent", 0), bytes_recv=d.get("bytes_recv", 0),
                   threads=d.get("threads", 1), tp_rank=d.get("tp_rank", 0),
                   stages=[tuple(t) for t in d.get("stages", [])],
                   blocked=[tuple(t) for t in d.get("blocked", [])], output=d.get("output", ""),
                   loss_parts=d.get("loss_parts", []), diverged=d.get("diverged"),
                   tensor_plan=d.get("tensor_plan") or {}, tensor_plan_note=d.get("tensor_plan_note"))
