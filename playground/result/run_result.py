"""What a run produced: the config, each rank's report (accounted), the
losses, the check against one device, the predictions beside the
measurements; to JSON and back."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from playground.spec.config import RunConfig
from playground.rank.report import RankReport

BASELINE_TOLERANCE = 1e-5
BF16_SHARE = 0.2
"""In bf16 (autocast), max |Δparam| allowed as a share of the largest change
training made to any weight on one device (max |θ_T − θ_0| of the baseline).

The parallel run sums the same bf16 products in another order (per shard,
per micro-step, reduced in fp32), and each order rounds differently at
bf16's 8-bit mantissa (relative step 2^-8 ≈ 3.9e-3), so the two runs part
by an amount that grows with what training moves. Measured here (global
batch 16, lr 0.05, SGD, 2 ranks of data, fsdp, tensor and 1f1b pipeline,
3 and 10 steps): at most 0.12 of that change (mlp), 0.026 (cnn), 0.006
(transformer). A run that is wrong parts by more: on one device in bf16,
1.5× the learning rate, one step fewer or other batches moved the weights
by 0.25 to 0.75 of it. A fixed bound cannot tell these apart: 1e-2 passed
all three on the transformer after 2 steps."""
LOSS_TOLERANCE = 0.1
"""Where a run cannot equal one device (BatchNorm statistics per rank or
per micro-batch, random layers), the baseline check compares the mean loss
over the steps: |mean(run) - mean(one device)| / mean(one device) <= 0.1.
Ten percent: the spread of a few steps' mean loss under different Dropout
masks, well below what a wrong gradient (a missing reduction, a stage left
untrained) costs."""


def baseline_tolerance(precision: str, moved: float | None = None) -> tuple[float, str]:
    """(max |Δparam| allowed, why) for a run in ``precision``; in bf16,
    ``moved`` is the largest change training made to any weight on one
    device (``BF16_SHARE`` of it is allowed)."""
    if precision == "bf16":
        moved = moved or 0.0
        return BF16_SHARE * moved, (
            f"bf16 on both sides: the run and one device round the same sums in a different order at bf16's "
            f"8-bit mantissa, so parameters agree to {BF16_SHARE:.0%} of the largest change training made to "
            f"any weight ({moved:.2e} on one device), not to fp32's 1e-5 (measured on correct runs: at most 12 %; "
            f"a wrong learning rate, a step missing or other batches: 25 % or more)")
    return BASELINE_TOLERANCE, "fp32 on both sides: only the order of fp32 sums differs, so parameters agree to 1e-5"


@dataclass
class RunResult:
    config: RunConfig
    device: str
    backend: str
    world_size: int
    losses: list[float]
    throughput_samples_per_s: float
    baseline: dict[str, Any]
    ranks: list[RankReport]
    split_points: tuple[int, ...]
    accuracy: float | None = None
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    predictions: list[dict[str, Any]] | None = None
    """The cost model's per-rank figures (params, grads, optimizer,
    activations_peak, bytes_sent, bytes_recv), beside the measured ones."""
    stage_balance: list[dict[str, Any]] = field(default_factory=list)
    """Per stage: its blocks, share of parameters and FLOPs (estimates), and
    measured compute seconds over the timed steps (mean over replicas)."""
    bubble: dict[str, Any] | None = None
    """Pipelines: ``predicted`` by the schedule's formula (``formula`` says
    which), ``measured``: each rank's idle share of the timed window,
    ``replayed``: each rank's idle share when the schedule's table is
    replayed with this run's measured times (``replay.replay_run``; None if
    the recorded actions are not the table's), and ``replayed_timeline``:
    {"<rank>": [[kind, stage, micro_batch, step, start, end], ...]}, the
    replay's actions and optimizer steps (stage and micro_batch None) on
    the run's clock, in seconds."""
    schedule_table: dict[str, list[list]] | None = None
    """Pipelines: each pp rank's planned actions in order, torch's own table
    (``pipeline.schedule_table``): {"<pp_rank>": [[kind, stage, micro_batch], ...]}."""
    blocks: list[dict[str, Any]] = field(default_factory=list)
    """The full model's blocks, in order: {"index", "label", "params",
    "flops"} (parameters counted from the model; forward FLOPs per sample)."""
    traffic: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"p2p": [], "collectives": []})
    """Bytes moved per timed step (``traffic_per_step``): point-to-point
    per (src, dst) and collectives per (rank, kind, group)."""
    tensor_plan: dict[str, str] = field(default_factory=dict)
    """Tensor parallel: module name -> "colwise" or "rowwise", as the
    strategy applied it (empty for other strategies); the layers it left
    replicated, and why, are in ``notes``."""
    zero: dict[str, Any] | None = None
    """Strategies data and fsdp: the ZeRO paper's per-rank memory and
    per-step communication for the run's ZeRO stage beside the cost
    model's exact figures (``predict.zero_formulas`` gives the keys);
    None for other strategies."""
    model: Any = field(default=None, repr=False)
    """The trained full model, gathered from the ranks (not in the JSON)."""

    @property
    def passed(self) -> bool:
        return bool(self.baseline["passed"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "device": self.device,
            "backend": self.backend,
            "world_size": self.world_size,
            "losses": self.losses,
            "throughput_samples_per_s": self.throughput_samples_per_s,
            "baseline": self.baseline,
            "accuracy": self.accuracy,
            "split_points": list(self.split_points),
            "wall_s": self.wall_s,
            "notes": self.notes,
            "predictions": self.predictions,
            "bubble": self.bubble,
            "schedule_table": self.schedule_table,
            "stage_balance": self.stage_balance,
            "blocks": self.blocks,
            "traffic": self.traffic,
            "tensor_plan": self.tensor_plan,
            "zero": self.zero,
            "ranks": [r.to_dict() for r in self.ranks],
        }

    def to_json(self, indent: int | None = None) -> str:
        """``to_dict`` as strict JSON: a number that is NaN or +-infinity
        (a diverged loss, its parameter difference) is written as null, since
        JSON has no token for it."""
        return json.dumps(finite_or_null(self.to_dict()), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunResult":
        """The result ``to_dict`` wrote, without the trained model
        (``model`` is None): enough to draw every figure again."""
        return cls(config=RunConfig.from_dict(d["config"]), device=d["device"], backend=d["backend"],
                   world_size=d["world_size"], losses=d["losses"],
                   throughput_samples_per_s=d["throughput_samples_per_s"], baseline=d["baseline"],
                   ranks=[RankReport.from_dict(r) for r in d["ranks"]], split_points=tuple(d["split_points"]),
                   accuracy=d.get("accuracy"), wall_s=d.get("wall_s", 0.0), notes=d.get("notes", []),
                   predictions=d.get("predictions"), stage_balance=d.get("stage_balance", []),
                   bubble=d.get("bubble"), blocks=d.get("blocks", []),
                   traffic=d.get("traffic") or {"p2p": [], "collectives": []},
                   tensor_plan=d.get("tensor_plan", {}), schedule_table=d.get("schedule_table"),
                   zero=d.get("zero"))

    @classmethod
    def from_json(cls, text: str) -> "RunResult":
        return cls.from_dict(json.loads(text))

    def to_chrome_trace(self) -> dict[str, Any]:
        """The timeline in the Chrome trace event format (Perfetto,
        chrome://tracing): one process per rank, one thread per stream
        (compute, point-to-point, collectives), times in microseconds."""
        from playground.result.trace import chrome_trace

        return chrome_trace(self)

    def save_chrome_trace(self, path: str) -> str:
        with open(path, "w") as f:
            json.dump(self.to_chrome_trace(), f)
        return path

    def summary(self) -> str:
        """The per-rank table the CLI prints."""
        from playground.result.table import format_table

        return format_table(self)

    def rank_output(self) -> str:
        """What every rank printed, each line prefixed with ``[rank r]``,
        rank by rank (empty when none printed anything)."""
        return labelled_output({r.rank: r.output for r in self.ranks})


def labelled_output(outputs: dict[int, str]) -> str:
    """``{rank: text}`` as lines ``[rank r] line``, rank by rank."""
    return "\n".join(f"[rank {rank}] {line}" for rank, text in sorted(outputs.items())
                     for line in text.splitlines())


def finite_or_null(value: Any) -> Any:
    """``value`` with every float that is NaN or infinite replaced by None,
    through dicts, lists and tuples."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value
