"""plan(config) -> Plan: will it fit? A prediction of one training step's
memory and traffic per rank, made by running the playground's own strategy
code for one rank of each kind, on this machine, without its memory.

How: for each kind of rank (its place along the pipeline, its
tensor-parallel shard shapes, its data-parallel batch and FSDP shard
shapes), in this process,

  1. torch's fake process group (backend "fake") is joined as that rank of
     the whole world (``instrument.fake_process_group``): every collective
     returns at once and moves nothing, but is issued and recorded;
  2. the model is built under ``FakeTensorMode``: tensors with shapes and
     dtypes and no memory;
  3. the strategy the run would use (``rank.strategies.strategy_class``)
     wraps it exactly as in a run (DDP, ZeroRedundancyOptimizer at ZeRO
     stage 1, FSDP2 at stages 2 and 3 with bf16 gathers under bf16,
     DTensor tensor parallel, pipeline stages), the levers go on every
     block as a rank puts them (``zoo.levers.on_blocks``: recomputation,
     bf16 autocast over fp32 parameters), and one training step runs:
     forward and loss, backward, as k micro-steps under gradient
     accumulation, then the optimizer step (``fake_step.measure``);
  4. what the rank holds is counted as a run counts it
     (``recorder.memory_bytes``: parameters, gradients, optimizer state; the
     recorder's ``SavedTensors``: activations saved for backward), and every
     collective the strategy issued is counted by the recorder.

Pipelines: each stage the rank holds runs one micro-batch (stage input
fresh, as a received activation is); the activations of the micro-batches
in flight at the peak are combined by the schedule's own action table
(``predict.formulas.held_peak``, ``in_flight``), as ``predict`` combines
them, and the point-to-point bytes are the stages' outputs and input
gradients, m per step.

Presets (``planning.presets``): their layers are identical blocks, so each
stage is measured with 1 and then 2 of its layers, and every figure is
extended to the stage's n layers as v(1) + (n - 1) (v(2) - v(1)) (exact for
sums over layers: bytes of parameters, gradients, optimizer state,
activations, collectives). ZeRO stage 1's optimizer partition is not such
a sum, so a folded plan gives each rank's state by the partition rule
(``zero1_owned``). ``fold=False`` measures at full depth.

Nothing of this is a measurement of a run: every number is a prediction,
and the Plan says so.

Modules: ``subject`` (what is planned: model, shapes, layout, kinds of
rank), ``fake_step`` (one rank's step on fake tensors), ``report`` (the
Plan and its text), this one (``plan``: kinds measured, extended, combined).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from playground.spec.config import ConfigError, PlanConfig, RunConfig
from playground.spec.schedules import schedule_table
from playground.predict.formulas import held_peak, in_flight, optimizer_bytes, zero1_partition
from playground.predict.predict import bubble_fraction
from playground.planning.fake_step import Measured, layer_activation_bytes, measure
from playground.planning.presets import PRESETS
from playground.planning.report import DEFAULT_GPU_MEMORY_GB, GB, MEMORY_KEYS, Plan
from playground.planning.subject import Layout, Subject, kind_keys, layout_of, plan_config, subject_of

__all__ = ["Plan", "plan", "plan_config", "layer_activation_bytes", "DEFAULT_GPU_MEMORY_GB"]


def plan(config: RunConfig | dict[str, Any], gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB,
         fold: bool | None = None) -> Plan:
    """Predict one training step of ``config`` per rank: parameters,
    gradients, optimizer state, activation peak and their total against
    ``gpu_memory_gb`` (GB, 10^9 bytes), traffic per step per collective kind,
    the pipeline bubble, the modules that take the most memory.

    ``config``: a RunConfig, a PlanConfig (presets: gpt2, gpt2-xl,
    llama3-8b, llama3-70b; world_size up to 4096) or a dict of their fields.
    ``fold``: measure a preset's stages with 1 and 2 layers and extend
    (default for presets; see the module docstring); False: full depth.
    ConfigError(field, value, rule) before anything runs for a config that
    cannot be planned (``plan_config``). No process group is left behind."""
    started = time.perf_counter()
    config = plan_config(config)
    if not isinstance(gpu_memory_gb, (int, float)) or isinstance(gpu_memory_gb, bool) or gpu_memory_gb <= 0:
        raise ConfigError("gpu_memory_gb", gpu_memory_gb, "must be a number of GB > 0")
    subject = subject_of(config)
    layout = layout_of(config, subject)
    fold = subject.layers is not None and fold is not False
    with torch.device("meta"):
        sample = subject.build(1 if subject.layers else None)
    widths = sorted({d for p in sample.parameters() for d in p.shape})
    # ZeRO stage 1: which parameters' optimizer state each dp rank keeps. Measured
    # (ZeroRedundancyOptimizer ran) where the model is measured whole; a folded
    # preset's partition is not a sum over layers, so there the rule gives it.
    owned = zero1_owned(config, subject) if config.resolved_zero_stage == 1 else None
    dp_keys, pp_keys, tp_keys = kind_keys(config, widths, None if fold else owned)
    pp_keys = [tuple((layout.layers[s], layout.ranges[s][1] - layout.ranges[s][0], s == 0, s == config.stages - 1)
                     for s in stages) for stages in pp_keys]

    def first_of(keys: list) -> dict:
        return {k: keys.index(k) for k in keys}

    pp, tp = config.pp_size, config.tp_size
    kinds, kind_of, measured = [], {}, []
    for dk, d in first_of(dp_keys).items():
        for pk, s in first_of(pp_keys).items():
            for tk, t in first_of(tp_keys).items():
                rank = (d * pp + s) * tp + t
                begun = time.perf_counter()
                if fold:
                    m = _extended(config, layout, s, measure(config, subject, layout, rank, 1),
                                  measure(config, subject, layout, rank, 2))
                else:
                    m = measure(config, subject, layout, rank, None)
                kind_of[(dk, pk, tk)] = len(kinds)
                measured.append(m)
                kinds.append({"rank": rank, "ranks": 0, "comm": m.comm,
                              "modules": _modules(config, subject, layout, s, m, fold),
                              "seconds": time.perf_counter() - begun})

    peaks = _activation_peaks(config, subject)
    ranks = []
    for r in range(config.world_size):
        d, s, t = r // (pp * tp), r // tp % pp, r % tp
        k = kind_of[(dp_keys[d], pp_keys[s], tp_keys[t])]
        kinds[k]["ranks"] += 1
        m = measured[k]
        row = {"rank": r, "dp_rank": d, "pp_rank": s, "tp_rank": t, "kind": k, **m.memory,
               "activations_peak": peaks(m, s, d)}
        if owned is not None and fold:
            row["optimizer"] = optimizer_bytes(config.optimizer, owned[d])
        row["total"] = sum(row[key] for key in MEMORY_KEYS)
        ranks.append(row)

    num_params = sum(p.numel() for p in sample.parameters())
    if subject.layers:
        num_params += (subject.layers - 1) * sum(p.numel() for p in sample[1].parameters())
    notes = [f"{config.model}: {PRESETS[config.model].source}; each stage measured with 1 and 2 of its "
             f"identical layers, extended to all" if fold else None]
    notes += lever_notes(config, fold)
    if config.scheduled and config.schedule in ("interleavedzerobubble", "zbvzerobubble", "dualpipev"):
        notes.append("split-backward schedule: activations held as if a weight pass frees what its input pass kept")
    bubble = None
    if config.pipelined:
        m_, schedule = (config.micro_batches, config.schedule) if config.scheduled else (1, "gpipe")
        bubble = bubble_fraction(schedule, pp, m_, config.stages // pp)
    return Plan(config=config, gpu_memory=int(gpu_memory_gb * GB), num_params=num_params, ranks=ranks,
                kinds=kinds, bubble=bubble, notes=[n for n in notes if n],
                seconds=time.perf_counter() - started)


def zero1_owned(config: PlanConfig, subject: Subject) -> list[list[int]]:
    """Per dp rank, the bytes of each parameter whose optimizer state it
    keeps at ZeRO stage 1: torch's ZeroRedundancyOptimizer's rule
    (``formulas.zero1_partition``: whole parameters, largest first, each to
    the rank holding the fewest elements) over the whole model's parameters
    in module order, built on the meta device."""
    with torch.device("meta"):
        params = list(subject.build(None).parameters())
    parts = zero1_partition([p.numel() for p in params], config.dp_size)
    return [[params[i].numel() * params[i].element_size() for i in part] for part in parts]


def lever_notes(config: PlanConfig, fold: bool) -> list[str]:
    """How the memory levers the config pulls entered the plan."""
    notes = []
    if config.precision == "bf16":
        notes.append("precision bf16: every block and the loss under torch.autocast(bfloat16), parameters, "
                     "gradients and optimizer state in fp32 (levers.on_blocks)"
                     + ("; FSDP2 gathers bf16 parameters (MixedPrecisionPolicy)"
                        if config.resolved_zero_stage in (2, 3) else ""))
    if config.recompute == "full":
        notes.append("recompute full: every block under torch.utils.checkpoint, so the forward keeps each "
                     "block's inputs; the activation peak counts what the forward keeps, as a run's recorder "
                     "does (one block's activations exist again while backward recomputes it)")
    if config.grad_accumulation > 1:
        k = config.grad_accumulation
        notes.append(f"grad_accumulation {k}: activation peak of one micro-step of B/{k} samples; traffic per "
                     f"optimizer step ({k} micro-steps, gradients reduced in the last)")
    if config.resolved_zero_stage == 1:
        notes.append("ZeRO stage 1: torch's ZeroRedundancyOptimizer ran under the fake process group (its "
                     "broadcasts counted); " + ("each rank's optimizer state is its partition by the same rule "
                     "(predict.formulas.zero1_partition) over the whole model, since a partition does not "
                     "extend layer by layer" if fold else "each partition measured"))
    return notes


def _extended(config: PlanConfig, layout: Layout, pp_rank: int, one: Measured, two: Measured) -> Measured:
    """A rank measured with 1 and with 2 layers per stage, extended to its
    stages' n layers: v(1) + (N - H) (v(2) - v(1)) / H2, where N is the
    layers the rank holds, H the stages holding any and H2 those holding two
    or more (each of which added one layer in the second measurement)."""
    n = [layout.layers[s] for s in config.rank_stages(pp_rank)]
    extra, grew = sum(n) - sum(1 for k in n if k), sum(1 for k in n if k >= 2)

    def ext(a: float, b: float):
        return a if not grew else a + (b - a) * extra / grew

    def whole(v: float) -> int:
        return int(round(v))

    comm = {kind: {f: ext(v, two.comm.get(kind, v)[f]) for f, v in vals.items()} for kind, vals in one.comm.items()}
    for kind, vals in two.comm.items():
        comm.setdefault(kind, {f: ext(0.0, v) for f, v in vals.items()})
    stage_bytes = [whole(a + (b - a) * (k - 1)) if k >= 2 else a
                   for a, b, k in zip(one.stage_bytes, two.stage_bytes, n)]
    return Measured(memory={key: whole(ext(one.memory[key], two.memory[key])) for key in one.memory},
                    activations=whole(ext(one.activations, two.activations)), stage_bytes=stage_bytes,
                    saves_input=one.saves_input, saves_target=one.saves_target, comm=comm, blocks=two.blocks)


def _activation_peaks(config: PlanConfig, subject: Subject):
    """peak(measured, pp_rank, dp_rank): a rank's activation peak. Whole
    model: the recorder's peak of its step. Pipeline: the micro-batches in
    flight at the peak, from the schedule's action table, each holding its
    stage's measured bytes, plus the global batch's inputs and targets where
    a held stage saves them (they are views of one tensor each, as in a run)."""
    if not config.pipelined:
        return lambda m, pp_rank, dp_rank: m.activations
    pp = config.pp_size
    m_, schedule = (config.micro_batches, config.schedule) if config.scheduled else (1, "gpipe")
    table = schedule_table(schedule, pp, m_, config.stages // pp) if config.stages > pp else None
    x_bytes = config.global_batch * _numel(subject.x[0]) * torch.empty((), dtype=subject.x[1]).element_size()
    y_bytes = config.global_batch * _numel(subject.y[0]) * torch.empty((), dtype=subject.y[1]).element_size()
    cache: dict[tuple, int] = {}

    def peak(m: Measured, pp_rank: int, dp_rank: int) -> int:
        key = (id(m), pp_rank)
        if key not in cache:
            stages = config.rank_stages(pp_rank)
            held = dict(zip(stages, m.stage_bytes))
            if table is None:
                value = in_flight(schedule, pp, pp_rank, m_) * m.stage_bytes[0]
            else:
                value = held_peak(table[pp_rank], held)
            cache[key] = value + x_bytes * m.saves_input + y_bytes * m.saves_target
        return cache[key]

    return peak


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _modules(config: PlanConfig, subject: Subject, layout: Layout, pp_rank: int, m: Measured,
             fold: bool) -> list[dict[str, Any]]:
    """Per kind of block the rank holds: how many it holds in the full
    model and the bytes of one (parameters, gradients, optimizer state,
    activations of one micro-batch), largest first."""
    stages = config.rank_stages(pp_rank)
    n_layers = sum(layout.layers[s] for s in stages)
    groups: dict[str, list] = {}
    last = max(m.blocks) if m.blocks else 0
    for index, nbytes in m.blocks.items():
        if index < 0:
            continue
        if subject.layers is not None:
            name = "embed" if index == 0 else "head" if index == last and _holds_head(config, layout, stages) else "layer"
        else:
            name = subject.labels[index]
        entry = groups.setdefault(name, [0, 0])
        entry[0] = max(entry[0], nbytes)
        entry[1] += 1
    if "layer" in groups:
        groups["layer"][1] = n_layers
    rows = [{"module": name, "count": count, "bytes": nbytes} for name, (nbytes, count) in groups.items()]
    return sorted(rows, key=lambda r: -r["bytes"] * r["count"])


def _holds_head(config: PlanConfig, layout: Layout, stages: tuple[int, ...]) -> bool:
    return any(layout.ranges[s][1] == layout.ranges[-1][1] for s in stages)

