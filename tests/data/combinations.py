"""Every strategy (pipeline: every schedule) on every zoo model, small
enough to record: the runs whose results ``make_results.py`` saves and the
view tests draw."""

from __future__ import annotations

import os

from playground.spec.config import SCHEDULES, SINGLE_STAGE_SCHEDULES, ConfigError, RunConfig
from playground.zoo.models import MODEL_NAMES

RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")
SMALL = {"steps": 2, "global_batch": 16}


def combinations() -> dict[str, dict]:
    """File stem -> RunConfig fields, e.g. ``mlp-pipeline-dualpipev``."""
    out: dict[str, dict] = {}
    for model in MODEL_NAMES:
        out[f"{model}-single"] = dict(model=model, strategy="single", world_size=1, **SMALL)
        for strategy in ("data", "model", "tensor", "fsdp"):
            out[f"{model}-{strategy}"] = dict(model=model, strategy=strategy, world_size=2, **SMALL)
        for schedule in SCHEDULES:
            virtual = 1 if schedule in SINGLE_STAGE_SCHEDULES else 2
            out[f"{model}-pipeline-{schedule}"] = dict(model=model, strategy="pipeline", world_size=2,
                                                        schedule=schedule, virtual_stages=virtual,
                                                        micro_batches=4, **SMALL)
        out[f"{model}-hybrid-dp2pp2"] = dict(model=model, strategy="hybrid", world_size=4, dp=2, pp=2,
                                              schedule="1f1b", micro_batches=4, **SMALL)
        out[f"{model}-hybrid-dp2tp2"] = dict(model=model, strategy="hybrid", world_size=4, dp=2, tp=2, **SMALL)
    return out


def config_or_refusal(fields: dict) -> RunConfig | ConfigError:
    try:
        return RunConfig(**fields)
    except ConfigError as e:
        return e


def path_of(stem: str) -> str:
    return os.path.join(RESULTS_DIR, f"{stem}.json")
