"""'What if': a finished run's config with other settings of the memory
levers, and what the cost model predicts each rank would hold. Nothing is
run: ``predict.predict`` profiles the model in this process, starts no
rank and joins no process group. No widgets here (``panels.WhatIfPanel``
draws it).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from playground.result.run_result import RunResult
from playground.spec.config import ConfigError, RunConfig
from playground.views.style import MEMORY_FIELDS, memory_field

LEVERS = ("zero_stage", "grad_accumulation", "recompute", "precision")
"""The RunConfig fields a what-if may change."""


@dataclass(frozen=True)
class WhatIf:
    """The run's config with ``changes``, and its predicted memory; or the
    refusal where the config cannot run."""

    changes: dict[str, Any]
    """The levers set to values other than the run's: {field: value}"""
    config: RunConfig | None
    """The changed config; None where it is refused"""
    error: ConfigError | None
    """Why the changed config cannot run (RunConfig's own refusal); None where it can"""
    predictions: list[dict[str, Any]] | None
    """Per rank, in rank order, ``predict.RankPrediction``'s fields in bytes (params, grads, optimizer,
    activations_peak, bytes_sent, bytes_recv over the run, rank, pp_rank, dp_rank); None where refused"""
    zero: dict[str, Any] | None
    """The ZeRO paper's record for the changed config (``predict.zero_formulas``, shaped as
    ``RunResult.zero``); None for strategies other than data and fsdp, or where refused"""

    def totals(self, result: RunResult) -> list[tuple[int, int, int | None, int]]:
        """Per rank: (rank, bytes measured in the run, bytes the cost model
        predicted for the run (None where the result has no prediction),
        bytes predicted for the changed config), each the sum of params,
        grads, optimizer and the activation peak. The lever's effect is the
        last against the third: prediction against prediction, so that the
        model's own error on this run is not counted as the lever's. Empty
        where refused."""
        if self.predictions is None:
            return []
        own = result.predictions or [None] * len(result.ranks)
        def total(record) -> int:
            return sum(int(memory_field(record, f)) for f in MEMORY_FIELDS)

        return [(r.rank, total(r.memory), None if o is None else total(o), total(p))
                for r, o, p in zip(result.ranks, own, self.predictions)]


def what_if(result: RunResult, **levers: Any) -> WhatIf:
    """``result.config`` with ``levers`` (any of ``LEVERS``: zero_stage None
    or 0..3, grad_accumulation k >= 1, recompute "none"/"full", precision
    "fp32"/"bf16") and the cost model's per-rank prediction for it, without
    running it. A lever equal to the run's is not a change. A config the
    RunConfig refuses comes back with ``error`` set and no prediction; so
    does a custom model, whose module the result does not carry.
    ``ValueError`` for a field that is not one of ``LEVERS``."""
    unknown = sorted(set(levers) - set(LEVERS))
    if unknown:
        raise ValueError(f"{unknown[0]}: what if changes only {', '.join(LEVERS)}")
    base = result.config
    changes = {k: v for k, v in levers.items() if getattr(base, k) != v}
    if base.model == "custom":
        return WhatIf(changes, None, ConfigError("model", base.model, "what if predicts the zoo's models; for a "
                                                 "custom model call cost.predict(config, model=..., sample=...)"),
                      None, None)
    try:
        config = base.replace(**changes)
    except ConfigError as e:
        return WhatIf(changes, None, e, None, None)
    predictions, zero = _predicted(config)
    return WhatIf(changes, config, None, [dict(p) for p in predictions], copy.deepcopy(zero))


@lru_cache(maxsize=32)
def _predicted(config: RunConfig) -> tuple[tuple[dict[str, Any], ...], dict[str, Any] | None]:
    """``predict`` and ``zero_formulas`` for a zoo model's config, once per config."""
    from playground.predict.predict import predict, zero_formulas
    from playground.zoo.models import build_model

    predictions = [dataclasses.asdict(p) for p in predict(config)]
    zero = zero_formulas(config, build_model(config.model, config.seed), predictions)
    return tuple(predictions), zero
