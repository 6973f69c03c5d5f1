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
  3. the strategy (``rank.strategies``) wraps it exactly as in a run (DDP,
     FSDP2, DTensor tensor parallel, pipeline stages), and one training step
     runs: forward and loss, backward, optimizer step;
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
activations, collectives). ``fold=False`` measures at full depth.

Nothing of this is a measurement of a run: every number is a prediction,
and the Plan says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from playground import instrument
from playground.spec.config import PRESET_BLOCKS, ConfigError, PlanConfig, RunConfig
from playground.spec.partition import stage_ranges
from playground.spec.schedules import schedule_table
from playground.spec.topology import Topology
from playground.zoo.datasets import load_dataset, loss_fn as task_loss
from playground.zoo.models import MODELS, build_model, model_block_infos
from playground.predict.formulas import all_reduce_bytes, chunk_rows, ddp_initial_buckets, held_peak, in_flight
from playground.predict.predict import bubble_fraction
from playground.predict.saved import SavedTensors
from playground.rank.recorder import Recorder, local_bytes, memory_bytes
from playground.rank.strategies import STRATEGY_CLASSES
from playground.rank.training import make_groups, make_optimizer
from playground.planning.presets import PRESETS, block_labels, build_preset

GB = 10**9
DEFAULT_GPU_MEMORY_GB = 80.0
"""The GPU memory a plan is checked against by default (an 80 GB H100 or A100)."""
MEMORY_KEYS = ("params", "grads", "optimizer", "activations_peak")
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter")
PREDICTION = "prediction: one step of the strategy code run on fake tensors under a fake process group, not a run"


# --------------------------------------------------------------------------
# The result


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

    def table(self) -> list[dict[str, Any]]:
        """One row per kind of rank: the ranks of that kind, their memory in GB."""
        rows = []
        for i, kind in enumerate(self.kinds):
            mine = [r for r in self.ranks if r["kind"] == i]
            worst = max(mine, key=lambda r: r["total"])
            rows.append({"ranks": _ranges([r["rank"] for r in mine]),
                         **{k: worst[k] / GB for k in (*MEMORY_KEYS, "total")}})
        return rows

    def summary(self) -> str:
        """The plan as text: verdict, memory per kind of rank, traffic,
        bubble, the largest modules. Every figure labelled a prediction."""
        c, peak = self.config, self.peak_rank
        mesh = f"dp {c.dp_size} x pp {c.pp_size} x tp {c.tp_size}"
        verdict = (f"fits: {peak['total'] / GB:.2f} GB of {self.gpu_memory / GB:.0f} GB on the fullest rank "
                   f"({peak['rank']})" if self.fits else
                   f"does NOT fit: rank {peak['rank']} needs {peak['total'] / GB:.2f} GB, "
                   f"{self.shortfall / GB:.2f} GB more than {self.gpu_memory / GB:.0f} GB")
        lines = [f"Plan ({self.label})",
                 f"{c.model} ({self.num_params / 1e9:.3g} B parameters), strategy {c.strategy}, "
                 f"{c.world_size} ranks ({mesh}), global batch {c.global_batch}, optimizer {c.optimizer}",
                 verdict, "",
                 f"{'ranks':<16}{'params':>10}{'grads':>10}{'optimizer':>11}{'activations':>13}{'total':>10}  (GB)"]
        for row in self.table():
            lines.append(f"{row['ranks']:<16}{row['params']:>10.2f}{row['grads']:>10.2f}{row['optimizer']:>11.2f}"
                         f"{row['activations_peak']:>13.2f}{row['total']:>10.2f}")
        comm = self.kinds[peak["kind"]]["comm"]
        if comm:
            lines += ["", f"traffic per step of rank {peak['rank']} (payload; a ring sends the second figure):"]
            lines += [f"  {kind:<15}{v['calls_per_step']:>6.0f} calls {v['bytes_per_step'] / GB:>10.3f} GB "
                      f"{v['ring_bytes_per_step'] / GB:>10.3f} GB" for kind, v in comm.items()]
        if self.bubble is not None:
            lines.append(f"pipeline bubble (formula): {self.bubble:.1%} of a step idle")
        lines += ["", f"largest modules on rank {peak['rank']} (parameters, gradients, optimizer, activations):"]
        lines += [f"  {m['module']:<24} x{m['count']:<4} {m['bytes'] / GB:>9.3f} GB each" for m in self.top_modules[:5]]
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"planned in {self.seconds:.1f} s")
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(self.summary())


def _ranges(ranks: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    parts, start = [], ranks[0]
    for a, b in zip(ranks, ranks[1:] + [None]):
        if b != a + 1:
            parts.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    text = ", ".join(parts)
    return text if len(text) <= 15 else f"{len(ranks)} ranks"


# --------------------------------------------------------------------------
# What is planned: the model, its data, its layout


@dataclass(frozen=True)
class Subject:
    """The model and one batch's shapes, as ``plan`` needs them."""

    build: Callable[[int | None], nn.Sequential]
    """Builds the model; the argument: layers to build (presets), None all."""
    labels: tuple[str, ...]
    x: tuple[tuple[int, ...], torch.dtype]
    """Shape of one sample (no batch dimension) and dtype of the input."""
    y: tuple[tuple[int, ...], torch.dtype]
    task: str
    layers: int | None
    """Identical layers (blocks 1..layers) when the model is a preset, else None."""
    block_costs: list[float]
    """Forward FLOPs per sample of each block, for balanced split points."""


def subject_of(config: PlanConfig) -> Subject:
    if config.model in PRESETS:
        p = PRESETS[config.model]
        s = config.sequence_length or p.context
        layer_params = sum(q.numel() for q in _layer_shapes(p))
        costs = [1.0] + [2.0 * layer_params * s + 4.0 * s * s * p.d_model] * p.layers + [2.0 * p.d_model * p.vocab * s]
        dtype = _precision_dtype(config)
        return Subject(build=lambda n: _in_dtype(dtype, build_preset, config.model, n), labels=block_labels(config.model),
                       x=((s,), torch.long), y=((s,), torch.long), task="classification", layers=p.layers,
                       block_costs=costs)
    spec, data = MODELS[config.model], load_dataset(config.model)
    return Subject(build=lambda n: build_model(config.model, config.seed), labels=spec.block_labels,
                   x=(spec.sample_shape, spec.sample_dtype), y=(tuple(data.train_y.shape[1:]), data.train_y.dtype),
                   task=data.task, layers=None, block_costs=[max(1, b.flops) for b in model_block_infos(config.model)])


def _in_dtype(dtype: torch.dtype, build, *args):
    """``build(*args)`` with ``dtype`` as torch's default: parameters made in it."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return build(*args)
    finally:
        torch.set_default_dtype(before)


def _layer_shapes(p) -> list[torch.Tensor]:
    with torch.device("meta"):
        return list(build_preset(p.name, 1)[1].parameters())


def _precision_dtype(config: RunConfig) -> torch.dtype:
    """Parameters' dtype: 16-bit throughout for precision "bf16" or "fp16"
    (read where the config has the field), else float32."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(getattr(config, "precision", "fp32"), torch.float32)


def plan_config(config: RunConfig | dict[str, Any]) -> PlanConfig:
    """``config`` as a PlanConfig, checked for planning: ConfigError(field,
    value, rule) for an unknown model or preset, a mesh that does not
    divide the world, tensor parallelism that does not divide a preset's
    heads, a sequence longer than a learned position table."""
    if isinstance(config, dict):
        config = PlanConfig.from_dict(config)
    elif not isinstance(config, PlanConfig):
        fields = config.to_dict()
        fields.pop("max_world_size")
        config = PlanConfig.from_dict(fields)
    if config.model == "custom":
        raise ConfigError("model", config.model, f"plan() builds the zoo's models or a preset "
                                                 f"({', '.join(PRESET_BLOCKS)}), not a custom module")
    p = PRESETS.get(config.model)
    if p is not None:
        tp = config.tp_size
        tp_field = "tp" if config.strategy == "hybrid" else "world_size"
        if p.heads % tp or p.kv_heads % tp:
            raise ConfigError(tp_field, tp, f"tensor parallelism cuts attention by heads: {config.model} has "
                                            f"{p.heads} heads and {p.kv_heads} key-value heads, tp must divide both")
        if p.family == "gpt2" and (config.sequence_length or 0) > p.context:
            raise ConfigError("sequence_length", config.sequence_length,
                              f"{config.model} has learned positions for {p.context} tokens at most")
    return config


# --------------------------------------------------------------------------
# Kinds of rank


@dataclass(frozen=True)
class Layout:
    """Where the blocks go, in the full model and in the model measured
    (each stage's layers cut to ``keep``)."""

    ranges: list[tuple[int, int]]
    """Each stage's blocks [first, end) in the full model."""
    layers: list[int]
    """Identical layers each stage holds (0 for a model that is not a preset)."""

    def measured(self, keep: int | None) -> tuple[tuple[int, ...], int | None]:
        """(split points, layers to build) of the model measured with at
        most ``keep`` layers per stage (None: the full model)."""
        if keep is None:
            return tuple(e for _, e in self.ranges[:-1]), None
        lengths = [(end - first) - n + min(n, keep) for (first, end), n in zip(self.ranges, self.layers)]
        cuts = [sum(lengths[:i + 1]) for i in range(len(lengths) - 1)]
        return tuple(cuts), sum(min(n, keep) for n in self.layers)


def layout_of(config: PlanConfig, subject: Subject) -> Layout:
    n_blocks = len(subject.labels)
    split = config.resolved_split_points(subject.block_costs) if config.stages > 1 else ()
    ranges = stage_ranges(split, n_blocks)
    if subject.layers is None:
        return Layout(ranges, [0] * len(ranges))
    return Layout(ranges, [max(0, min(end, subject.layers + 1) - max(first, 1)) for first, end in ranges])


def kind_keys(config: PlanConfig, widths: list[int]) -> tuple[list, list, list]:
    """Per axis, a key for each place on it such that ranks with equal keys
    on every axis run the same step on tensors of the same shapes: the
    pp rank (its stages), the tp rank (the shard of every width), the dp
    rank (its batch, and its FSDP shard of every width)."""
    dp, pp, tp = config.dp_size, config.pp_size, config.tp_size
    sharded = config.strategy == "fsdp" or (tp > 1 and dp > 1)
    tp_keys = [tuple(chunk_rows(w, tp, r) for w in widths) for r in range(tp)]
    local = sorted({c for key in tp_keys for c in key} | set(widths))
    batches = config.rank_batches()
    dp_keys = [(batches[r], tuple(chunk_rows(w, dp, r) for w in local) if sharded else ()) for r in range(dp)]
    pp_keys = [config.rank_stages(r) for r in range(pp)]
    return dp_keys, pp_keys, tp_keys


# --------------------------------------------------------------------------
# One rank's step on fake tensors


@dataclass
class Measured:
    """What one rank's step held and moved."""

    memory: dict[str, int]
    """params, grads, optimizer (bytes), as ``recorder.memory_bytes``."""
    activations: int
    """Whole-model strategies: the recorder's activation peak of the step."""
    stage_bytes: list[int]
    """Pipelines: activation bytes saved by one micro-batch, per stage held
    in ``rank_stages`` order (the batch's inputs and targets left out)."""
    saves_input: bool
    saves_target: bool
    comm: dict[str, dict[str, float]]
    blocks: dict[int, int]
    """Bytes per block of the model measured: parameters, gradients,
    optimizer state, activations saved while it ran."""


def measure(config: PlanConfig, subject: Subject, layout: Layout, rank: int, keep: int | None) -> Measured:
    """Run ``rank``'s training step of ``config`` on fake tensors under a
    fake process group (left destroyed on return)."""
    split, layers = layout.measured(keep)
    cfg = config.replace(split_points=split) if config.stages > 1 else config
    topology = Topology.for_config(cfg, rank)
    with instrument.quiet_known_warnings(), instrument.fake_process_group(rank, cfg.world_size), \
            instrument.unchecked_ddp_shapes(), instrument.real_device_meshes():
        groups = make_groups(topology, "cpu")
        with instrument.fake_tensor_mode():
            model = subject.build(layers)
            recorder = Recorder()
            recorder.ignore_storages_of(model.parameters())
            loss_fn = task_loss(subject.task)
            strategy = STRATEGY_CLASSES[cfg.strategy](model, topology, cfg, recorder, loss_fn, groups)
            optimizer = make_optimizer(cfg, strategy.module.parameters())
            x = torch.zeros((cfg.global_batch, *subject.x[0]), dtype=subject.x[1])
            y = torch.zeros((cfg.global_batch, *subject.y[0]), dtype=subject.y[1])
            with strategy.context(), BlockActivations(model, recorder.saved) as activations:
                if cfg.pipelined:
                    stage_bytes, saves, comm = _pipeline_step(cfg, strategy, model, x, y, loss_fn, activations)
                else:
                    recorder.ignore_only_storages_of(strategy.module.parameters())
                    part = getattr(strategy, "part", None)  # 'single' trains on the whole batch
                    xs, ys, weight = (part.take(x), part.take(y), part.weight) if part is not None else (x, y, 1.0)
                    loss = recorder.forward_and_loss(strategy.module, loss_fn, xs, ys)
                    (loss * weight).backward()
                    stage_bytes, saves, comm = [], (False, False), {}
                if optimizer is not None:
                    optimizer.step()
            memory = memory_bytes(strategy.local_model, optimizer)
            blocks = _block_bytes(strategy.local_model, optimizer, activations.bytes)
    comm.update(_collectives(recorder.events))
    return Measured(memory=memory, activations=recorder.activations_peak, stage_bytes=stage_bytes,
                    saves_input=saves[0], saves_target=saves[1], comm=comm, blocks=blocks)


def _pipeline_step(cfg, strategy, model, x, y, loss_fn, activations: BlockActivations):
    """One micro-batch through each stage the rank holds, forward (and the
    loss on the last stage) then backward; returns (activation bytes per
    stage, (saves the input, saves the target), point-to-point bytes per step)."""
    part, m = strategy.part, cfg.micro_batches
    xs, ys = (part.take(x), part.take(y)) if strategy.topology.dp > 1 else (x, y)
    micro = xs.shape[0] // m
    x_mb, y_mb = xs[:micro], ys[:micro]
    ranges = stage_ranges(cfg.split_points or (), len(model))
    owner = {s: r for r in range(cfg.pp_size) for s in cfg.rank_stages(r)}
    me = strategy.topology.pp_rank
    stage_bytes, sent, saves_input, saves_target, ddp_bytes = [], 0, False, False, []
    x_key, y_key = (instrument.storage_key(t.untyped_storage()) for t in (x, y))
    for stage in strategy.stages:
        s = stage.stage_index
        first, end = ranges[s]
        if stage.is_first:
            inp = x_mb
        else:  # as received: a fresh buffer that requires grad
            with torch.no_grad():
                shape_of = model[:first](x_mb)
            inp = torch.zeros_like(shape_of).requires_grad_(True)
        saved = activations.counter = SavedTensors()
        saved.ignore_storages_of(model.parameters())
        submodule = stage.submod
        if isinstance(submodule, DDP):
            # DDP's search for unused parameters reads flags off the device,
            # which fake tensors do not hold: the stage runs unwrapped, and its
            # once-per-step all-reduce is DDP's buckets (formulas.ddp_initial_buckets).
            submodule = submodule.module
            buckets = ddp_initial_buckets([local_bytes(p) for p in submodule.parameters() if p.requires_grad])
            ddp_bytes += buckets
        with saved.counting():
            out = submodule(inp)
            loss = loss_fn(out, y_mb) * part.weight if stage.is_last else None
            input_held = stage.is_first and saved.saw(x_key)
            target_held = stage.is_last and saved.saw(y_key)
        held_xy = (x.untyped_storage().nbytes() if input_held else 0) + (y.untyped_storage().nbytes() if target_held else 0)
        stage_bytes.append(saved.peak - held_xy)
        saves_input, saves_target = saves_input or input_held, saves_target or target_held
        if not stage.is_last and owner[s + 1] != me:
            sent += m * out.numel() * out.element_size()
        if not stage.is_first and owner[s - 1] != me:
            sent += m * inp.numel() * inp.element_size()
        (loss if loss is not None else out).backward(None if loss is not None else torch.zeros_like(out))
    strategy._reduce_tied_gradients()
    comm = {"send": {"calls_per_step": 0.0, "bytes_per_step": float(sent), "ring_bytes_per_step": float(sent)}} \
        if sent else {}
    if ddp_bytes:
        n = strategy.topology.dp
        comm["all_reduce (DDP, formula)"] = {"calls_per_step": float(len(ddp_bytes)),
                                             "bytes_per_step": float(sum(ddp_bytes)),
                                             "ring_bytes_per_step": float(sum(all_reduce_bytes(b, n) for b in ddp_bytes))}
    return stage_bytes, (saves_input, saves_target), comm


def _collectives(events: list[dict]) -> dict[str, dict[str, float]]:
    """Calls, payload bytes and ring bytes per collective kind, as
    ``result.accounting.traffic_per_step`` counts a run's: 2 (n - 1) / n B
    sent for an all-reduce, (n - 1) / n B for an all-gather or reduce-scatter."""
    out: dict[str, dict[str, float]] = {}
    for e in events:
        if e["kind"] not in COLLECTIVES:
            continue
        n, b = e["group_size"], e["bytes"]
        entry = out.setdefault(e["kind"], {"calls_per_step": 0.0, "bytes_per_step": 0.0, "ring_bytes_per_step": 0.0})
        entry["calls_per_step"] += 1
        entry["bytes_per_step"] += b
        entry["ring_bytes_per_step"] += all_reduce_bytes(b, n) if e["kind"] == "all_reduce" else (n - 1) * b // n
    return out


class BlockActivations:
    """Bytes saved for backward while each block's forward ran, by block
    index: ``counter.bytes`` (a ``SavedTensors``) after the block's forward
    less before it. Hooks on the blocks, removed on exit."""

    def __init__(self, model: nn.Sequential, counter: SavedTensors):
        self.model, self.counter = model, counter
        self.bytes: dict[int, int] = {}
        self._handles: list = []
        self._before: dict[int, int] = {}

    def __enter__(self) -> "BlockActivations":
        for i, block in enumerate(self.model):
            self._handles.append(block.register_forward_pre_hook(self._pre(i)))
            self._handles.append(block.register_forward_hook(self._post(i)))
        return self

    def _pre(self, i: int):
        def hook(module, args):
            self._before[i] = self.counter.bytes
        return hook

    def _post(self, i: int):
        def hook(module, args, output):
            self.bytes[i] = self.bytes.get(i, 0) + max(0, self.counter.bytes - self._before.pop(i, 0))
        return hook

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()


def _block_bytes(local: nn.Module, optimizer, activations: dict[int, int]) -> dict[int, int]:
    """Parameters, gradients and optimizer state per block (the first part
    of each parameter's name), plus its activations."""
    state = optimizer.state if optimizer is not None else {}
    out: dict[int, int] = dict(activations)
    for name, p in local.named_parameters():
        block = int(name.split(".", 1)[0]) if name.split(".", 1)[0].isdigit() else -1
        held = local_bytes(p) + (local_bytes(p.grad) if p.grad is not None else 0)
        held += sum(local_bytes(v) for v in state.get(p, {}).values() if isinstance(v, torch.Tensor))
        out[block] = out.get(block, 0) + held
    return out




# --------------------------------------------------------------------------
# The plan


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
    dp_keys, pp_keys, tp_keys = kind_keys(config, widths)
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
        row["total"] = sum(row[key] for key in MEMORY_KEYS)
        ranks.append(row)

    num_params = sum(p.numel() for p in sample.parameters())
    if subject.layers:
        num_params += (subject.layers - 1) * sum(p.numel() for p in sample[1].parameters())
    notes = [f"{config.model}: {PRESETS[config.model].source}; each stage measured with 1 and 2 of its "
             f"identical layers, extended to all" if fold else None]
    if config.scheduled and config.schedule in ("interleavedzerobubble", "zbvzerobubble", "dualpipev"):
        notes.append("split-backward schedule: activations held as if a weight pass frees what its input pass kept")
    bubble = None
    if config.pipelined:
        m_, schedule = (config.micro_batches, config.schedule) if config.scheduled else (1, "gpipe")
        bubble = bubble_fraction(schedule, pp, m_, config.stages // pp)
    return Plan(config=config, gpu_memory=int(gpu_memory_gb * GB), num_params=num_params, ranks=ranks,
                kinds=kinds, bubble=bubble, notes=[n for n in notes if n],
                seconds=time.perf_counter() - started)


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


def layer_activation_bytes(preset: str, batch: int, sequence: int, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes one layer of ``preset`` saves for backward in training mode,
    for ``batch`` samples of ``sequence`` tokens, parameters and inputs in
    ``dtype``, counted as a run counts them (``SavedTensors``, by storage;
    the layer's input included, its parameters not). Built on fake tensors.

    Against Korthikanti et al. 2022 (eq. 2), s b h (34 + 5 a s / h) bytes
    in 16-bit with dropout, PyTorch on CPU saves, for GPT-2,
    s b h (42 + 12 a s / h) + 8 s b bytes:
      + 6 s b h   scaled_dot_product_attention's math path (the one that
                  takes dropout on CPU) keeps Q, K and V in float32;
      + 2 s b h   the two residual dropouts keep their masks in the
                  activations' dtype (2 bytes), not 1 byte;
      + 7 a s^2 b the same path keeps the softmax output, the dropout mask
                  and the dropout output in float32 (4 + 4 + 4 bytes for
                  2 + 1 + 2);
      + 8 s b     LayerNorm's mean and 1/std, 2 per LayerNorm.
    A fused attention kernel (FlashAttention, Dao et al. 2022) saves no
    a s^2 term at all."""
    with instrument.fake_tensor_mode():
        layer = _in_dtype(dtype, build_preset, preset, 1)[1]
        x = torch.zeros(batch, sequence, PRESETS[preset].d_model, dtype=dtype).requires_grad_(True)
        saved = SavedTensors()
        saved.ignore_storages_of(layer.parameters())
        with saved.counting():
            out = layer(x)
        peak = saved.peak
        del out
    return peak
