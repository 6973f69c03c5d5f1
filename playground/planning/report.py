"""The Plan: what ``plan`` predicts for one training step, per rank, and
its text. Every figure is a prediction and says so (``Plan.label``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from playground.spec.config import PlanConfig

GB = 10**9
DEFAULT_GPU_MEMORY_GB = 80.0
"""The GPU memory a plan is checked against by default (an 80 GB H100 or A100)."""
MEMORY_KEYS = ("params", "grads", "optimizer", "activations_peak")
PREDICTION = "prediction: one step of the strategy code run on fake tensors under a fake process group, not a run"


@dataclass
class Plan:
    """Predicted memory and traffic of one training step, per rank.

    Every figure is a prediction (``label``). Bytes throughout; GB = 10^9 bytes."""

    config: PlanConfig
    gpu_memory: int
    """Bytes of memory per GPU the plan is checked against."""
    num_params: int
    """Parameters of the whole model (a tied Parameter counted once)."""
    ranks: list[dict[str, Any]]
    """One per rank, in rank order: {"rank", "dp_rank", "pp_rank", "tp_rank",
    "kind" (index into ``kinds``), "params", "grads", "optimizer",
    "activations_peak", "total"} (bytes; total = the four summed)."""
    kinds: list[dict[str, Any]]
    """One per kind of rank measured: {"rank" (the rank run), "ranks" (how
    many ranks are of this kind), "comm" ({kind: {"calls_per_step",
    "bytes_per_step", "ring_bytes_per_step"}}, kind one of all_reduce,
    all_gather, reduce_scatter, send), "modules" ([{"module", "count",
    "bytes"}] per block kind, largest first: parameters, gradients,
    optimizer state and activations of one block), "seconds"}."""
    bubble: float | None
    """Idle share of a pipeline rank per step, (p - 1) / (m + p - 1) and its
    relatives (``predict.bubble_fraction``); None without a pipeline."""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    """Wall time the plan took."""
    label: str = PREDICTION

    @property
    def peak_rank(self) -> dict[str, Any]:
        """The rank that needs the most memory (the first such)."""
        return max(self.ranks, key=lambda r: r["total"])

    @property
    def fits(self) -> bool:
        """Every rank's predicted total within ``gpu_memory``."""
        return self.peak_rank["total"] <= self.gpu_memory

    @property
    def shortfall(self) -> int:
        """Bytes the fullest rank lacks (0 when the plan fits)."""
        return max(0, self.peak_rank["total"] - self.gpu_memory)

    @property
    def top_modules(self) -> list[dict[str, Any]]:
        """The blocks that take the most memory on the fullest rank, largest first."""
        return self.kinds[self.peak_rank["kind"]]["modules"]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "config": self.config.to_dict(), "gpu_memory": self.gpu_memory,
                "num_params": self.num_params, "fits": self.fits, "shortfall": self.shortfall,
                "bubble": self.bubble, "ranks": self.ranks, "kinds": self.kinds, "notes": self.notes,
                "seconds": self.seconds}

    @property
    def unit(self) -> tuple[str, float]:
        """(name, bytes) of the unit the plan's memory reads best in: GB,
        MB or kB (powers of ten, as GPU memory is sold), the largest that
        shows the fullest rank as 0.1 or more."""
        largest = self.peak_rank["total"]
        return next(((name, size) for name, size in (("GB", 1e9), ("MB", 1e6)) if largest >= 0.1 * size),
                    ("kB", 1e3))

    @property
    def parameters_text(self) -> str:
        """The parameter count as people say it: 70.6 B, 124 M, 142,218."""
        n = self.num_params
        return f"{n / 1e9:.3g} B" if n >= 1e9 else f"{n / 1e6:.3g} M" if n >= 1e6 else f"{n:,}"

    def table(self) -> list[dict[str, Any]]:
        """One row per kind of rank: the ranks of that kind, their memory in
        ``unit``."""
        rows = []
        for i, kind in enumerate(self.kinds):
            mine = [r for r in self.ranks if r["kind"] == i]
            worst = max(mine, key=lambda r: r["total"])
            rows.append({"ranks": _place(self.config, worst) + _ranges([r["rank"] for r in mine]),
                         **{k: worst[k] / self.unit[1] for k in (*MEMORY_KEYS, "total")}})
        return rows

    def summary(self) -> str:
        """The plan as text: verdict, memory per kind of rank, traffic,
        bubble, the largest modules. Every figure labelled a prediction."""
        c, peak = self.config, self.peak_rank
        mesh = f"dp {c.dp_size} x pp {c.pp_size} x tp {c.tp_size}"
        u, size = self.unit
        verdict = (f"fits: {peak['total'] / size:.2f} {u} of {self.gpu_memory / GB:.0f} GB on the fullest rank "
                   f"({peak['rank']})" if self.fits else
                   f"does NOT fit: rank {peak['rank']} needs {peak['total'] / GB:.2f} GB, "
                   f"{self.shortfall / GB:.2f} GB more than {self.gpu_memory / GB:.0f} GB")
        lines = [f"Plan ({self.label})",
                 f"{c.model} ({self.parameters_text} parameters), strategy {c.strategy}, "
                 f"{c.world_size} ranks ({mesh}), global batch {c.global_batch}, optimizer {c.optimizer}",
                 verdict, "",
                 f"{'ranks':<24}{'params':>10}{'grads':>10}{'optimizer':>11}{'activations':>13}{'total':>10}  ({u})"]
        for row in self.table():
            lines.append(f"{row['ranks']:<24}{row['params']:>10.2f}{row['grads']:>10.2f}{row['optimizer']:>11.2f}"
                         f"{row['activations_peak']:>13.2f}{row['total']:>10.2f}")
        comm = self.kinds[peak["kind"]]["comm"]
        if comm:
            lines += ["", f"traffic per step of rank {peak['rank']} (payload; a ring sends the second figure):"]
            lines += [f"  {kind:<15}{v['calls_per_step']:>6.0f} calls {v['bytes_per_step'] / size:>10.3f} {u} "
                      f"{v['ring_bytes_per_step'] / size:>10.3f} {u}" for kind, v in comm.items()]
        if self.bubble is not None:
            lines.append(f"pipeline bubble (formula): {self.bubble:.1%} of a step idle")
        lines += ["", f"largest modules on rank {peak['rank']} (parameters, gradients, optimizer, activations):"]
        lines += [f"  {m['module']:<24} x{m['count']:<4} {m['bytes'] / size:>9.3f} {u} each"
                  for m in self.top_modules[:5]]
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"planned in {self.seconds:.1f} s")
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(self.summary())


def _place(config, rank: dict[str, Any]) -> str:
    """Where a kind of rank sits on the mesh, for the axes that tell kinds
    apart: "pp 1 · " on a pipeline, "tp 0 · " on a tensor-parallel mesh."""
    axes = [(config.pp_size, "pp", rank["pp_rank"]), (config.tp_size, "tp", rank["tp_rank"])]
    return "".join(f"{name} {place} · " for size, name, place in axes if size > 1)


def _ranges(ranks: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    parts, start = [], ranks[0]
    for a, b in zip(ranks, ranks[1:] + [None]):
        if b != a + 1:
            parts.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    text = ", ".join(parts)
    return text if len(text) <= 15 else f"{len(ranks)} ranks"


