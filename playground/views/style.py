"""What every figure shares: the colours and names of event kinds and
memory fields, the labels of ranks and runs, byte counts in words."""

from __future__ import annotations

from typing import Any

from playground.rank.report import RankReport
from playground.result.run_result import RunResult

KIND_COLORS: dict[str, str] = {
    # compute: blues, greens, purple
    "setup": "#B8C4D6",
    "forward": "#3A7DC9",
    "loss": "#8E6BBF",
    "backward": "#2A9D8F",
    "backward_input": "#5FB8AD",
    "backward_weight": "#9BC53D",
    "recompute": "#D4A5E8",
    "optimizer": "#27476E",
    # communication: reds and oranges
    "send": "#E4572E",
    "recv": "#F3A712",
    "all_reduce": "#C0392B",
    "all_gather": "#B5651D",
    "reduce_scatter": "#8E3B46",
    "broadcast": "#D98E73",
    # per-rank totals (time breakdown)
    "compute": "#3A7DC9",
    "comm": "#E4572E",
    "idle": "#CFCFCF",
    "wait": "#CFCFCF",
    "overhead": "#9E9E9E",
}

KIND_LABELS = {
    "setup": "set-up (shape inference)", "forward": "forward", "loss": "loss",
    "backward": "backward", "backward_input": "backward (inputs)", "backward_weight": "backward (weights)",
    "recompute": "recompute (forward again in backward)",
    "optimizer": "optimizer step",
    "send": "send", "recv": "recv", "all_reduce": "all-reduce",
    "all_gather": "all-gather", "reduce_scatter": "reduce-scatter", "broadcast": "broadcast",
}

MEMORY_FIELDS = ("params", "grads", "optimizer", "activations_peak")
MEMORY_COLORS = {"params": "#4C72B0", "grads": "#DD8452", "optimizer": "#CCB974", "activations_peak": "#55A868"}
MEMORY_LABELS = {"params": "parameters", "grads": "gradients", "optimizer": "optimizer state",
                 "activations_peak": "activations (peak saved for backward)"}

MS = 1e3
MIB = 2**20



def rank_label(result: RunResult, r: RankReport, sep: str = " · ") -> str:
    """'rank r · stage s · dp d · tp t', naming only the axes the run splits
    along; a rank holding several stages lists them all ('stages 0, 3')."""
    parts = [f"rank {r.rank}"]
    if len({x.pp_rank for x in result.ranks}) > 1 or len(r.stages) > 1:
        held = [s for s, _, _ in r.stages] or [r.pp_rank]
        parts.append(f"stage{'s' if len(held) > 1 else ''} {', '.join(map(str, held))}")
    if len({x.dp_rank for x in result.ranks}) > 1:
        parts.append(f"dp {r.dp_rank}")
    if len({x.tp_rank for x in result.ranks}) > 1:
        parts.append(f"tp {r.tp_rank}")
    return sep.join(parts)


def rank_tick(result: RunResult, r: RankReport) -> str:
    """``rank_label`` on two lines: the rank, then its place on the mesh (x-axis ticks)."""
    head, _, rest = rank_label(result, r).partition(" · ")
    return head + ("\n" + rest if rest else "")


def run_title(result: RunResult) -> str:
    c = result.config
    words = [c.model, c.strategy]
    if c.strategy == "hybrid":
        words.append(f"dp {c.dp_size} × " + (f"pp {c.pp_size}" if c.pp_size > 1 else f"tp {c.tp_size}"))
    if c.scheduled:
        words.append(f"{c.schedule}, {c.micro_batches} micro-batches")
    if c.strategy == "data" and c.batch_partition:
        words.append("batch shares " + ":".join(map(str, c.batch_partition)))
    words.append(f"{result.world_size} rank{'s' if result.world_size > 1 else ''} on {result.device}/{result.backend}")
    return " · ".join(words)


def memory_field(record: Any, name: str) -> float:
    """Field ``name`` (one of ``MEMORY_FIELDS``) of a rank's memory: a dict
    (a report's ``memory``, a saved prediction) or an object with
    attributes (``RankPrediction``); 0 where it is missing or None."""
    value = record.get(name) if isinstance(record, dict) else getattr(record, name, None)
    return float(value or 0)


def human_bytes(n: float) -> str:
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"
