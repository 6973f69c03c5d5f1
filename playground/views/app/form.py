"""The form, without widgets: control values in, a ``RunConfig`` or the
``ConfigError`` that refuses it out, with which controls apply to the
strategy chosen and, where a choice is a dead end, the ways out.

``values`` is a flat dict: one entry per control that holds a RunConfig
field (``INPUTS``), plus ``mesh`` (the hybrid (dp, pp, tp), or None),
``batch_shares`` (the text of the batch-shares box, e.g. ``"3,1"``) and
``cuts`` (the split-point toggles that are on, or None where the split
strip is off). Any other key is a RunConfig field the controls do not set
(``device``, ``timeout_s`` ...), passed through as loaded.
"""

from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from typing import Any

from playground.host import runner
from playground.spec.config import DEFAULT_MAX_WORLD_SIZE, ConfigError, RunConfig, cpu_count
from playground.zoo.models import MODELS, model_block_infos, model_num_blocks, propose_split_points

START = RunConfig(model="mlp", strategy="pipeline", world_size=2, micro_batches=4)
INPUTS = ("model", "strategy", "world_size", "global_batch", "micro_batches", "schedule", "virtual_stages", "steps",
          "lr", "optimizer", "seed", "threads_per_rank", "sync_batchnorm", "zero_stage", "grad_accumulation",
          "recompute", "precision")
"""RunConfig fields held by one control each."""
CONTROLLED = INPUTS + ("dp", "pp", "tp", "split_points", "batch_partition")
"""RunConfig fields the form sets; the others (device, timeout_s, ...) are kept as loaded."""
SCHEDULE_FIELDS = ("schedule", "virtual_stages", "micro_batches")
"""Read by pipelining schedules only: set where the config is scheduled, else left at their defaults."""
LEVER_FIELDS = ("zero_stage", "grad_accumulation")
"""Memory levers that only some strategies read: set where they apply
(``Applies``), else left at their defaults. recompute and precision apply
to every strategy."""
CUT_STRATEGIES = ("model", "pipeline", "hybrid")
STRATEGY_OWN = -1
"""The ZeRO-stage control's value for zero_stage None (the strategy's own
stage): a dropdown cannot show None as a choice."""


def plural(n: int, word: str) -> str:
    """'1 CPU core', '2 CPU cores'."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def device_limit() -> tuple[int, int, int]:
    """(most ranks offered, CPU cores, visible GPUs): the GPUs when there are
    several, else 4 ranks per core, never above the config's limit."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cores = cpu_count()
    return max(1, min(DEFAULT_MAX_WORLD_SIZE, gpus if gpus >= 2 else 4 * cores)), cores, gpus


def mesh_options(n: int) -> list[tuple[str, tuple[int, int, int]]]:
    """The (dp, pp, tp) with dp * pp * tp = n that hybrid runs: a second
    axis beside dp, pp or tp but not both (the config refuses the rest),
    labelled for a dropdown; every factorisation when none is (n = 1)."""
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    every = [(f"dp {n // (pp * tp)} × pp {pp} × tp {tp}", (n // (pp * tp), pp, tp))
             for pp in divisors for tp in divisors if (n // pp) % tp == 0]
    runnable = [(label, m) for label, m in every if (m[1] > 1) != (m[2] > 1)]
    return runnable or every


def mesh_choice(n: int, old: tuple | None) -> tuple[int, int, int]:
    """The mesh of ``n`` devices to show: ``old`` when it still fits, else one
    that keeps its pp and tp, else a pipeline of the fewest stages (hybrid
    needs a second axis): (n/2, 2, 1), or (1, 3, 1) for 3."""
    values = [v for _, v in mesh_options(n)]
    if old and tuple(old) in values:
        return tuple(old)
    keep = [v for v in values if old and v[1:] == tuple(old)[1:]]
    piped = [v for v in values if v[1] > 1 and v[2] == 1]
    return (keep or [max(piped) if piped else values[0]])[0]


def parse_counts(text: str) -> tuple[int, ...] | str:
    """'3,1' or '3 1' -> (3, 1); '' -> (); anything else comes back as given,
    for the config to refuse with its own message."""
    parts = text.replace(",", " ").replace(":", " ").split()
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        return text


@lru_cache(maxsize=None)
def block_infos(model: str):
    return model_block_infos(model)


@lru_cache(maxsize=None)
def balanced_cuts(model: str, stages: int) -> tuple[int, ...]:
    """The cuts run() picks when none are given: the stages' FLOPs balanced."""
    try:
        return propose_split_points(model, stages)
    except ValueError:  # no stages, or more stages than blocks: the config says so
        return ()


def state_values(state: RunConfig | str | dict) -> tuple[dict[str, Any], dict[str, Any]]:
    """(form values, sweep settings) from a RunConfig, its dict, or JSON: the
    app's ``to_json``, a config's, or a result's (its ``config`` key)."""
    if isinstance(state, RunConfig):
        fields, sweep = state.to_dict(), {}
    else:
        if isinstance(state, str):
            state = json.loads(state)
        fields, sweep = (dict(state["config"]), dict(state.get("sweep", {}))) if "config" in state else (dict(state), {})
    f = {x.name: x.default for x in dataclasses.fields(RunConfig)} | fields
    bp, cuts = f.pop("batch_partition"), f.pop("split_points")
    values = {**f, "mesh": (f.pop("dp"), f.pop("pp"), f.pop("tp")),
              "batch_shares": ",".join(map(str, bp)) if isinstance(bp, (list, tuple)) else str(bp or ""),
              "cuts": None if cuts is None else tuple(cuts)}
    return values, sweep


def control_value(field: str, value: Any) -> Any:
    """A RunConfig field's value as its control holds it (zero_stage None:
    ``STRATEGY_OWN``)."""
    return STRATEGY_OWN if field == "zero_stage" and value is None else value


def field_value(field: str, value: Any) -> Any:
    """A control's value as the RunConfig field takes it (``control_value`` undone)."""
    return None if field == "zero_stage" and value == STRATEGY_OWN else value


def base_fields(values: dict[str, Any]) -> dict[str, Any]:
    """The config fields that do not depend on the others: all but the
    schedule's, the strategy-bound levers', the batch shares and the cuts."""
    f = {k: v for k, v in values.items()
         if k not in ("mesh", "batch_shares", "cuts", *SCHEDULE_FIELDS, *LEVER_FIELDS)}
    if f["strategy"] == "hybrid" and values.get("mesh"):
        f["dp"], f["pp"], f["tp"] = values["mesh"]
    return f


def probe(values: dict[str, Any]) -> RunConfig | None:
    """The config without the fields that depend on it (cuts, shares,
    schedule): it tells which of those apply. It admits everything the full
    config admits, so when it fails the full one fails too."""
    try:
        return RunConfig.from_dict(base_fields(values))
    except ConfigError:
        return None


@dataclasses.dataclass(frozen=True)
class Applies:
    """Which dependent controls the strategy reads (None: not known, the
    probe config failed)."""

    schedule: bool | None
    """schedule, micro-batches and virtual stages (pipelining schedules)"""
    batch_shares: bool | None
    """batch shares (more than one data-parallel rank)"""
    stages: int | None
    """the stages the cuts make: pp_size * virtual_stages when scheduled; the strip applies when above 1"""
    mesh: bool
    """the dp × pp × tp mesh (hybrid)"""
    zero_stage: bool | None = None
    """the ZeRO stage (data-parallel ranks holding copies of the same
    parameters: ``RunConfig.resolved_zero_stage`` is not None)"""
    grad_accumulation: bool | None = None
    """gradient accumulation (not a pipeline schedule, which accumulates over its micro-batches)"""


def applies(values: dict[str, Any]) -> Applies:
    p = probe(values)
    mesh = values["strategy"] == "hybrid"
    if p is None:
        return Applies(None, None, None, mesh)
    return Applies(p.scheduled, p.dp_size > 1, p.pp_size * (values["virtual_stages"] if p.scheduled else 1), mesh,
                   zero_stage=p.resolved_zero_stage is not None, grad_accumulation=not p.pipelined)


def config_fields(values: dict[str, Any]) -> dict[str, Any]:
    """The RunConfig fields the form says, not yet validated. A cut list
    equal to the balanced one is left out (None): run() balances the same way."""
    f = base_fields(values)
    a = applies(values)
    if a.schedule is not False:
        f.update({k: values[k] for k in SCHEDULE_FIELDS})
    f.update({k: values[k] for k in LEVER_FIELDS if k in values and getattr(a, k) is not False})
    shares = parse_counts(values.get("batch_shares", ""))
    if a.batch_shares is not False and shares != ():
        f["batch_partition"] = shares
    cuts = values.get("cuts")
    if cuts is not None and tuple(cuts) != balanced_cuts(values["model"], a.stages or 0):
        f["split_points"] = tuple(cuts)
    return f


def build(values: dict[str, Any]) -> RunConfig | ConfigError:
    """The config the form says, or the ConfigError that names the field,
    the value and what is allowed."""
    try:
        return RunConfig.from_dict(config_fields(values))
    except ConfigError as e:
        return e


def stages_wanted(values: dict[str, Any]) -> int:
    """Stages the strategy would cut the model into, read from the values
    alone (the config may refuse them): pp ranks × virtual stages."""
    if values["strategy"] not in CUT_STRATEGIES:
        return 1
    pp = (values.get("mesh") or (1, 1, 1))[1] if values["strategy"] == "hybrid" else values["world_size"]
    scheduled = values["strategy"] == "pipeline" or (values["strategy"] == "hybrid" and pp > 1)
    return pp * (values["virtual_stages"] if scheduled else 1)


def way_out(values: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Where the model has fewer blocks than the stages asked for (2-block
    seed-mlp on 4 pipeline ranks): [(label, changes to the values)] that
    each lead to a config that cuts: a model with enough blocks, the data
    strategy (every rank holds the whole model), or as many devices as
    blocks. Empty where there is no such dead end."""
    stages, blocks = stages_wanted(values), model_num_blocks(values["model"])
    if stages <= blocks:
        return _other_ways_out(values)
    out = [(f"model {m} ({n} blocks)", {"model": m, "cuts": None})
           for m in MODELS if (n := model_num_blocks(m)) >= stages]
    out.append((f"strategy data ({plural(values['world_size'], 'device')}, each with the whole model)",
                {"strategy": "data", "cuts": None}))
    if values["strategy"] != "hybrid" and blocks >= 2 and values["virtual_stages"] == 1:
        out.append((f"{blocks} devices (one per block)", {"world_size": blocks, "cuts": None}))
    return [(label, changes) for label, changes in out if not isinstance(build({**values, **changes}), ConfigError)]


def _other_ways_out(values: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """For a refused schedule, batch or memory lever: the nearest values
    that run (the stages per rank the schedule needs; a global batch the
    shares divide; micro-steps that divide every rank's batch; the
    strategy's own ZeRO stage, or one it runs)."""
    error = build(values)
    if not isinstance(error, ConfigError):
        return []
    out: list[tuple[str, dict[str, Any]]] = []
    if error.field == "virtual_stages":
        out += [(f"{v} virtual stages", {"virtual_stages": v, "cuts": None}) for v in (2, 3)]
    elif error.field == "global_batch" and isinstance(values.get("global_batch"), int):
        b = values["global_batch"]
        near = sorted({max(1, b - k) for k in range(1, 9)} | {b + k for k in range(1, 9)}, key=lambda n: abs(n - b))
        out += [(f"global batch {n}", {"global_batch": n}) for n in near]
    elif error.field == "recompute":  # a split-backward schedule: keep one, or the recompute
        out += [("recompute none", {"recompute": "none"})]
        out += [(f"schedule {s}", {"schedule": s, "cuts": None}) for s in ("interleaved1f1b", "1f1b")]
    elif error.field == "micro_batches" and isinstance(values.get("micro_batches"), int):
        m = values["micro_batches"]
        near = sorted((n for n in range(max(1, m - 4), m + 5) if n != m), key=lambda n: abs(n - m))
        out += [(f"{n} micro-batches", {"micro_batches": n}) for n in near]
    elif error.field == "grad_accumulation" and isinstance(values.get("grad_accumulation"), int):
        k = values["grad_accumulation"]
        near = sorted((n for n in range(1, 2 * k + 9) if n != k), key=lambda n: (abs(n - k), n))
        out += [(f"grad accumulation {n}", {"grad_accumulation": n}) for n in near]
    elif error.field == "zero_stage":
        z = values.get("zero_stage")
        out.append(("the strategy's own ZeRO stage", {"zero_stage": None}))
        if z in (0, 1) and values["strategy"] != "data":
            out.append((f"strategy data (ZeRO stage {z})", {"strategy": "data"}))
        out += [(f"ZeRO stage {n}", {"zero_stage": n}) for n in range(4) if n != z]
    return [(label, changes) for label, changes in out if not isinstance(build({**values, **changes}), ConfigError)][:3]


def sweep_config(config: RunConfig, over: str, n: int) -> RunConfig:
    """``config`` with ``over`` (world_size or micro_batches) set to n. Across
    numbers of devices the cuts and batch shares go back to balanced and even,
    since their number follows the count; a hybrid mesh keeps pp and tp."""
    if over == "micro_batches":
        return config.replace(micro_batches=n)
    changes: dict[str, Any] = {"world_size": n, "split_points": None, "batch_partition": None}
    if config.strategy == "hybrid":
        changes["dp"] = max(1, n // (config.pp_size * config.tp_size))
    return config.replace(**changes)


def run_notes(config: RunConfig, cores: int) -> list[str]:
    """What the user should know about the timings before running."""
    device, backend = runner.resolve_device(config)
    if device == "cuda":
        return [f"{plural(config.world_size, 'device')}: one CUDA GPU each ({backend})"]
    if config.world_size * config.threads_per_rank > cores:
        return [f"{plural(config.world_size, 'device')} × {plural(config.threads_per_rank, 'thread')} share "
                f"{plural(cores, 'CPU core')}: timings include contention (the check against one device still holds)"]
    return []


def summary(config: RunConfig) -> str:
    """One line on what the config will run, its memory levers included
    where they are not the defaults."""
    levers = []
    if config.resolved_zero_stage is not None:
        levers.append(f"ZeRO stage {config.resolved_zero_stage}" + (" (the strategy's own)" if config.zero_stage is None
                                                                    else ""))
    if config.grad_accumulation > 1:
        levers.append(f"{config.grad_accumulation} micro-steps per step")
    if config.recompute != "none":
        levers.append(f"recompute {config.recompute}")
    if config.precision != "fp32":
        levers.append(config.precision)
    return (f"✓ {plural(config.world_size, 'device')} · {plural(config.stages, 'stage')} · samples per data-parallel rank "
            f"{list(config.rank_batches())}" + (f" in {config.micro_batches} micro-batches" if config.scheduled else "")
            + "".join(f" · {x}" for x in levers))
