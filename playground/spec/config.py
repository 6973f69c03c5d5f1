"""RunConfig: every knob of a run, checked once, at construction.

A config that exists is a config that can run: each check raises
``ConfigError`` (a ``ValueError``) naming the field, the value it got and
what is allowed, before any process is started.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

STRATEGIES = ("single", "data", "model", "pipeline", "tensor", "fsdp", "hybrid")
SINGLE_STAGE_SCHEDULES = ("gpipe", "1f1b")
"""One stage per rank (virtual_stages=1)."""
LOOPED_SCHEDULES = ("interleaved1f1b", "loopedbfs", "interleavedzerobubble")
"""virtual_stages >= 2 stages per rank, looped: rank r holds r, r+p, r+2p, ..."""
V_SCHEDULES = ("zbvzerobubble", "dualpipev")
"""Exactly 2 stages per rank, V-shaped: rank r holds r and 2p-1-r."""
SCHEDULES = SINGLE_STAGE_SCHEDULES + LOOPED_SCHEDULES + V_SCHEDULES
SPLIT_BACKWARD_SCHEDULES = ("interleavedzerobubble", "zbvzerobubble", "dualpipev")
"""Compute input and weight gradients in separate passes."""
ROUNDED_SCHEDULES = ("interleaved1f1b", "interleavedzerobubble")
"""Run micro-batches in rounds: m must be a multiple of max(1, m // p)."""
OPTIMIZERS = ("sgd", "adam")
RECOMPUTE = ("none", "full")
"""Activation recomputation: none, or every block under
torch.utils.checkpoint (non-reentrant). A "selective" mode (recompute the
attention core only, Korthikanti et al. 2022) is left out: the zoo's
attention calls F.scaled_dot_product_attention, whose fused CPU kernel saves
no t x t score matrix, so there is nothing selective to drop."""
PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "gloo", "nccl")
DEFAULT_MAX_WORLD_SIZE = 8
MODEL_BLOCKS = {"seed-mlp": 2, "mlp": 10, "cnn": 5, "transformer": 6}
"""The zoo's models by name and their number of blocks: what a config is
checked against without building or importing any model (the zoo's own
MODELS must agree: tests/test_config.py)."""
PRESET_BLOCKS = {"gpt2": 14, "gpt2-xl": 50, "llama3-8b": 34, "llama3-70b": 82}
"""Architecture presets that ``playground.plan`` builds without weights, by
name, and their blocks (embedding, layers, head; ``planning.presets.PRESETS``
must agree): planned, never trained."""
PLAN_MAX_WORLD_SIZE = 4096
"""Upper limit on world_size for planning: one rank of each kind is run, in one process."""


class ConfigError(ValueError):
    """A RunConfig field holds a value that is not allowed."""

    def __init__(self, field_name: str, value: Any, allowed: str):
        self.field = field_name
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field_name}={value!r}: {allowed}")


@dataclass(frozen=True)
class RunConfig:
    """One run of the playground.

    Every field is checked in ``__post_init__``; see ``ConfigError``.
    """

    model: str = "seed-mlp"
    """Model name (``seed-mlp``, ``mlp``, ``cnn``, ``transformer``), or
    ``custom`` when a module and dataset are passed to ``run``."""

    strategy: str = "single"
    """How the work is split: single, data, model, pipeline, tensor, fsdp, or
    hybrid (a 2-D mesh given by dp, pp, tp)."""

    world_size: int = 1
    """Number of ranks (processes, one device each). 1 means no split."""

    split_points: tuple[int, ...] | None = None
    """Block indices where a stage ends, ascending: (4,) puts blocks 0..3 on
    stage 0 and the rest on stage 1. None: cuts that balance the stages'
    estimated FLOPs."""

    global_batch: int = 32
    """Samples per optimizer step, over all data-parallel ranks."""

    batch_partition: tuple[int, ...] | None = None
    """Relative shares of the global batch per data-parallel rank, e.g. (3, 1)
    gives rank 0 three quarters. None: even shares."""

    micro_batches: int = 1
    """Micro-batches each data-parallel rank's batch is cut into (pipeline)."""

    schedule: str = "gpipe"
    """Pipeline schedule (pipeline strategy), a torch.distributed.pipelining
    schedule: gpipe, 1f1b (one stage per rank); interleaved1f1b, loopedbfs,
    interleavedzerobubble (virtual_stages per rank, looped); zbvzerobubble,
    dualpipev (two per rank, V-shaped)."""

    virtual_stages: int = 1
    """Stages each pipeline rank holds (pipeline strategy). 1: one stage per
    rank. The model is cut into world_size * virtual_stages stages, so
    split_points then holds world_size * virtual_stages - 1 cuts. Other
    strategies ignore it, as they ignore schedule."""

    dp: int | None = None
    """Strategy 'hybrid': data-parallel size of the mesh (replicas of the
    pipeline, or FSDP shards around each tensor-parallel group)."""

    pp: int | None = None
    """Strategy 'hybrid': pipeline ranks per replica."""

    tp: int | None = None
    """Strategy 'hybrid': tensor-parallel ranks per layer. dp * pp * tp must
    equal world_size; pp and tp cannot both exceed 1."""

    steps: int = 10
    """Optimizer steps. The first is a warm-up, left out of throughput."""

    lr: float = 0.05
    """Learning rate, > 0."""

    optimizer: str = "sgd"
    """sgd (plain, no momentum) or adam."""

    seed: int = 0
    """Seeds the weights and the order of the batches."""

    device: str = "auto"
    """cpu, cuda, or auto (cuda when enough GPUs are visible, else cpu)."""

    backend: str = "auto"
    """gloo, nccl, or auto (nccl on GPUs, gloo on CPU)."""

    timeout_s: float = 120.0
    """Seconds a run may take before its ranks are stopped."""

    threads_per_rank: int = 1
    """CPU threads each rank computes with (``torch.set_num_threads``): a
    CPU device is a fixed compute budget. The single-device reference, the
    ``single`` strategy and a sweep's one-rank point get the same budget, so
    speed-up and efficiency compare equal devices. Ignored on CUDA. When
    world_size * threads_per_rank exceeds the cores, ranks share cores and
    the result says timings include contention."""

    max_world_size: int = DEFAULT_MAX_WORLD_SIZE
    """Upper limit on world_size for CPU runs (each rank is a process)."""

    sync_batchnorm: bool = False
    """Normalise BatchNorm over the whole batch rather than each
    data-parallel rank's shard: the ranks all-reduce the batch statistics
    (torch's ``nn.SyncBatchNorm`` on GPUs; on CPU, where it does not run, the
    same sums through ``torch.distributed.nn.functional.all_reduce``). No
    effect where one rank sees the whole batch (dp size 1)."""

    recompute: str = "none"
    """Activation recomputation (``RECOMPUTE``): "none" keeps what every
    block saves for backward; "full" runs each block under
    ``torch.utils.checkpoint`` (non-reentrant), keeping only the block's
    inputs and running its forward again during backward (recorded as
    "recompute" spans). Applies to every strategy; refused with the
    split-backward schedules, whose separate weight-gradient pass
    (backward_weight) checkpoint cannot recompute for."""

    precision: str = "fp32"
    """Compute precision (``PRECISIONS``): "fp32", or "bf16": forward and
    loss under ``torch.autocast(dtype=torch.bfloat16)`` on every strategy,
    parameters, gradients and optimizer state kept in fp32; under fsdp,
    FSDP2's MixedPrecisionPolicy also all-gathers bf16 parameters (gradients
    reduce-scattered in fp32). DDP's all-reduces stay fp32. The baseline is
    one device in bf16 too, checked within a looser tolerance."""

    grad_accumulation: int = 1
    """Micro-steps per optimizer step: each data-parallel rank's batch is
    cut into k equal slices run forward and backward in turn, gradients
    summed (each slice's loss scaled by 1/k), reduced among the ranks only
    in the last (DDP's ``no_sync``, FSDP2's
    ``set_requires_gradient_sync(False)`` before it). 1: none. Not for
    pipelined strategies, whose micro_batches already accumulate."""

    zero_stage: int | None = None
    """How much of the training state the data-parallel ranks shard, as the
    ZeRO stages (Rajbhandari et al. 2019) name it:

      0  nothing: DDP, every rank holds parameters, gradients, optimizer state
      1  optimizer state (torch's ``ZeroRedundancyOptimizer`` over DDP)
      2  gradients and optimizer state (FSDP2 keeping the gathered
         parameters from forward to the end of backward)
      3  parameters too (FSDP2 regathering them for backward): strategy 'fsdp'

    None: the strategy's own (data 0, fsdp 3, hybrid dp x tp 3, dp x pp 0).
    Strategy 'data' runs every stage (2 and 3 through FSDP2); 'fsdp' and
    hybrid dp x tp run 2 or 3; hybrid dp x pp runs 0; single, model,
    pipeline and tensor have no data-parallel ranks (None or 0).
    ``resolved_zero_stage`` gives the stage a run uses."""

    num_blocks: int | None = field(default=None, compare=False, repr=False)
    """Blocks of a custom model; filled in by ``run`` for ``model='custom'``."""

    unused_parameters: tuple[str, ...] = field(default=(), compare=False, repr=False)
    """Parameters that receive no gradient (found by ``run`` on a copy of the
    model): data parallelism then has DDP look for unused parameters."""

    MODELS: ClassVar[dict[str, int]] = MODEL_BLOCKS
    """Model names this kind of config accepts, with their blocks."""

    def __post_init__(self) -> None:
        _validate(self)

    # -- derived facts -------------------------------------------------

    @property
    def resolved_zero_stage(self) -> int | None:
        """The ZeRO stage the run uses (``zero_stage``, else the strategy's
        own); None where no ranks share the batch with a copy of the same
        parameters (single, model, pipeline, tensor, hybrid with dp 1)."""
        if self.strategy == "data":
            return self.zero_stage or 0
        if self.strategy == "fsdp" or (self.strategy == "hybrid" and self.tp_size > 1 and self.dp_size > 1):
            return 3 if self.zero_stage is None else self.zero_stage
        if self.strategy == "hybrid" and self.dp_size > 1:
            return 0
        return None

    @property
    def pipelined(self) -> bool:
        """Run by a pipelining schedule: model, pipeline, hybrid with pp > 1."""
        return self.pp_size > 1 or self.strategy in ("model", "pipeline")

    @property
    def scheduled(self) -> bool:
        """The schedule, micro-batches and virtual stages are the user's to choose."""
        return self.strategy == "pipeline" or (self.strategy == "hybrid" and self.pp_size > 1)

    @property
    def stages(self) -> int:
        """Stages the model is cut into: pp_size * virtual_stages when the
        schedule is chosen, pp_size otherwise (1 where it is not cut)."""
        return self.pp_size * (self.virtual_stages if self.scheduled else 1)

    def rank_stages(self, pp_rank: int) -> tuple[int, ...]:
        """Stages held by the rank at place ``pp_rank`` along the pipeline,
        ascending. Looped: r, r + p, r + 2p, ...; V: r and 2p - 1 - r."""
        p, v = self.pp_size, self.stages // self.pp_size
        if self.scheduled and self.schedule in V_SCHEDULES:
            return (pp_rank, 2 * p - 1 - pp_rank)
        return tuple(pp_rank + k * p for k in range(v))

    @property
    def dp_size(self) -> int:
        """Data-parallel ranks the global batch is shared among (fsdp's
        ranks shard the model but each trains on its own part of the batch)."""
        if self.strategy == "hybrid":
            return self.dp or 1
        return self.world_size if self.strategy in ("data", "fsdp") else 1

    @property
    def pp_size(self) -> int:
        """Ranks along the pipeline (each holds one or more stages)."""
        if self.strategy == "hybrid":
            return self.pp or 1
        return self.world_size if self.strategy in ("model", "pipeline") else 1

    @property
    def tp_size(self) -> int:
        """Ranks each layer's weights are cut among (tensor parallel)."""
        if self.strategy == "hybrid":
            return self.tp or 1
        return self.world_size if self.strategy == "tensor" else 1

    @property
    def shares(self) -> tuple[int, ...]:
        return self.batch_partition or (1,) * self.dp_size

    def rank_batches(self) -> tuple[int, ...]:
        """Samples per data-parallel rank: B * share_r / sum(shares)."""
        total = sum(self.shares)
        return tuple(self.global_batch * s // total for s in self.shares)

    def resolved_split_points(self, block_costs: list[float]) -> tuple[int, ...]:
        """The split points, or balanced ones when none were given."""
        if self.split_points is not None:
            return self.split_points
        from playground.spec.partition import balance_split_points

        return balance_split_points(block_costs, self.stages)

    # -- (de)serialisation ---------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("split_points", "batch_partition", "unused_parameters"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(unknown[0], d[unknown[0]], f"unknown field; allowed: {', '.join(sorted(names))}")
        d = dict(d)
        for k in ("split_points", "batch_partition", "unused_parameters"):
            if isinstance(d.get(k), list):
                d[k] = tuple(d[k])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_int(name: str, v: Any, lo: int, hi: int | None = None) -> None:
    if not _is_int(v):
        raise ConfigError(name, v, "must be an integer")
    if v < lo or (hi is not None and v > hi):
        rng = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise ConfigError(name, v, f"must be {rng}")


def _check_choice(name: str, v: Any, allowed: tuple[str, ...]) -> None:
    if v not in allowed:
        raise ConfigError(name, v, f"must be one of {', '.join(allowed)}")


def _check_int_tuple(name: str, v: Any) -> None:
    if not isinstance(v, tuple) or not all(_is_int(x) for x in v):
        raise ConfigError(name, v, "must be a tuple of integers")


def _check_schedule(c: RunConfig) -> None:
    """Stages per rank and micro-batches as the torch.distributed.pipelining
    schedules require them (their constructors would raise later, in every
    rank)."""
    _check_int("virtual_stages", c.virtual_stages, 1, 64)
    s, v, p, m = c.schedule, c.virtual_stages, c.pp_size, c.micro_batches
    if not c.scheduled:
        return  # like schedule, read by the pipeline strategy only
    if s in SINGLE_STAGE_SCHEDULES and v != 1:
        raise ConfigError("virtual_stages", v,
                          f"schedule '{s}' runs one stage per rank (virtual_stages=1); for more use "
                          f"{', '.join(LOOPED_SCHEDULES)} (2 or more) or {', '.join(V_SCHEDULES)} (exactly 2)")
    if s in LOOPED_SCHEDULES and v < 2:
        raise ConfigError("virtual_stages", v,
                          f"schedule '{s}' loops over several stages per rank: needs virtual_stages >= 2")
    if s in V_SCHEDULES and v != 2:
        raise ConfigError("virtual_stages", v, f"schedule '{s}' places exactly 2 stages per rank, in a V: "
                                               "needs virtual_stages=2")
    if s == "1f1b" and m < p:
        raise ConfigError("micro_batches", m, f"PyTorch's Schedule1F1B (schedule '1f1b') needs at least as "
                                              f"many micro-batches as stages ({p}); 1F1B itself would run "
                                              "fewer, with a shorter warm-up")
    if s == "dualpipev" and m < c.stages:
        raise ConfigError("micro_batches", m, f"schedule 'dualpipev' needs at least as many micro-batches as "
                                              f"stages (world_size*2={c.stages})")
    rounds = max(1, m // p)
    if s in ROUNDED_SCHEDULES and m % rounds:
        ok = [k for k in range(1, 4 * max(m, p)) if k % max(1, k // p) == 0]
        near = sorted(ok, key=lambda k: (abs(k - m), k))[:2]
        raise ConfigError("micro_batches", m,
                          f"schedule '{s}' runs micro-batches in rounds of world_size={p} or more: "
                          f"micro_batches must divide evenly into max(1, micro_batches // {p})={rounds} rounds; "
                          f"try {' or '.join(str(k) for k in sorted(near))}")


def _check_mesh(c: RunConfig) -> None:
    """dp, pp, tp: only for 'hybrid', where their product is the world size."""
    sizes = {"dp": c.dp, "pp": c.pp, "tp": c.tp}
    if c.strategy != "hybrid":
        for name, v in sizes.items():
            if v is not None:
                raise ConfigError(name, v, f"mesh sizes are for strategy 'hybrid'; strategy '{c.strategy}' "
                                           "sets its own (leave dp, pp, tp unset)")
        return
    for name, v in sizes.items():
        if v is not None:
            _check_int(name, v, 1, c.max_world_size)
    dp, pp, tp = c.dp_size, c.pp_size, c.tp_size
    if dp * pp * tp != c.world_size:
        raise ConfigError("world_size", c.world_size,
                          f"must equal the mesh size dp x pp x tp = {dp} x {pp} x {tp} = {dp * pp * tp}"
                          + (" (strategy 'hybrid': give the mesh with dp, pp and tp; on the command line "
                             "--dp, --pp, --tp)" if c.strategy == "hybrid" else ""))
    if pp > 1 and tp > 1:
        raise ConfigError("tp", tp, f"a mesh with both pp={pp} and tp={tp} is not supported: "
                                    "use dp x pp or dp x tp")
    if pp > 1 and dp > 1 and c.schedule in SPLIT_BACKWARD_SCHEDULES:
        raise ConfigError("schedule", c.schedule,
                          f"with dp={dp} replicas of the pipeline, use a schedule that computes weight "
                          f"gradients in one backward ({', '.join(s for s in SCHEDULES if s not in SPLIT_BACKWARD_SCHEDULES)}):"
                          " DDP does not see the zero-bubble schedules' separate weight-gradient pass")
    if pp == 1 and tp == 1:
        raise ConfigError("pp", pp, "strategy 'hybrid' needs pp > 1 (dp x pp) or tp > 1 (dp x tp); "
                                    "for dp alone use strategy 'data' or 'fsdp'")


def _check_levers(c: RunConfig) -> None:
    """recompute, precision and grad_accumulation, and the combinations of
    them that cannot run."""
    _check_choice("recompute", c.recompute, RECOMPUTE)
    _check_choice("precision", c.precision, PRECISIONS)
    _check_int("grad_accumulation", c.grad_accumulation, 1, 1024)
    if c.recompute == "full" and c.scheduled and c.schedule in SPLIT_BACKWARD_SCHEDULES:
        raise ConfigError("recompute", c.recompute,
                          f"schedule '{c.schedule}' computes weight gradients in a pass of their own "
                          "(backward_weight), which torch.utils.checkpoint cannot recompute a block's forward "
                          f"for: use recompute 'none' with it, or a schedule without the split "
                          f"({', '.join(s for s in SCHEDULES if s not in SPLIT_BACKWARD_SCHEDULES)})")
    k = c.grad_accumulation
    if k > 1 and c.pipelined:
        raise ConfigError("grad_accumulation", k,
                          f"strategy '{c.strategy}' runs a pipeline schedule, which already accumulates "
                          "gradients over its micro-batches: leave grad_accumulation at 1 and raise "
                          "micro_batches instead")
    for r, b in enumerate(c.rank_batches()):
        if b % k:
            raise ConfigError("grad_accumulation", k,
                              f"data-parallel rank {r}'s batch of {b} samples cannot be cut into {k} equal "
                              f"micro-steps: use a grad_accumulation that divides {b}")


def _check_zero_stage(c: RunConfig) -> None:
    """zero_stage: 0 to 3, and only where the strategy can shard that much
    (see the field's docstring)."""
    z = c.zero_stage
    if z is None:
        return
    _check_int("zero_stage", z, 0, 3)
    if c.strategy in ("single", "model", "pipeline", "tensor") and z != 0:
        raise ConfigError("zero_stage", z,
                          f"shards training state among data-parallel ranks; strategy '{c.strategy}' has none "
                          "(leave zero_stage unset or 0, or use strategy 'data', 'fsdp' or 'hybrid')")
    if c.strategy == "fsdp" and z < 2:
        raise ConfigError("zero_stage", z,
                          "strategy 'fsdp' shards gradients and optimizer state (2) or parameters too (3); "
                          "for stage 0 (DDP) or 1 (optimizer state alone) use strategy 'data'")
    if c.strategy == "hybrid" and _is_int(c.pp) and c.pp > 1 and z != 0:
        raise ConfigError("zero_stage", z,
                          "a dp x pp mesh reduces each stage's gradients with DDP (stage 0): "
                          "leave zero_stage unset or 0")
    if c.strategy == "hybrid" and _is_int(c.tp) and c.tp > 1 and z < 2:
        raise ConfigError("zero_stage", z,
                          "a dp x tp mesh shards each tensor-parallel rank's parameters over the dp ranks "
                          "with FSDP2: zero_stage 2 or 3")


def _validate(c: RunConfig) -> None:
    _check_choice("model", c.model, tuple(c.MODELS) + ("custom",))
    _check_choice("strategy", c.strategy, STRATEGIES)
    _check_choice("schedule", c.schedule, SCHEDULES)
    _check_choice("optimizer", c.optimizer, OPTIMIZERS)
    _check_choice("device", c.device, DEVICES)
    _check_choice("backend", c.backend, BACKENDS)
    _check_int("max_world_size", c.max_world_size, 1)
    _check_zero_stage(c)
    if not isinstance(c.sync_batchnorm, bool):
        raise ConfigError("sync_batchnorm", c.sync_batchnorm, "must be True or False")
    if not _is_int(c.world_size) or c.world_size < 1 or c.world_size > c.max_world_size:
        raise ConfigError(
            "world_size", c.world_size,
            f"must be an integer from 1 to {c.max_world_size} "
            f"(the limit, max_world_size={c.max_world_size}: "
            + ("planned ranks, one of each kind run on fake tensors)" if isinstance(c, PlanConfig) else
               "each rank is a local process)"),
        )
    if c.strategy == "single" and c.world_size != 1:
        raise ConfigError("world_size", c.world_size, "strategy 'single' runs on exactly 1 rank")
    _check_int("global_batch", c.global_batch, 1, 1 << 20)
    _check_int("micro_batches", c.micro_batches, 1, 1024)
    _check_int("steps", c.steps, 1, 100_000)
    _check_int("seed", c.seed, 0, 2**31 - 1)
    _check_int("threads_per_rank", c.threads_per_rank, 1, 256)
    if isinstance(c.lr, bool) or not isinstance(c.lr, (int, float)) or not math.isfinite(c.lr) or c.lr <= 0:
        raise ConfigError("lr", c.lr, "must be a finite number > 0")
    if isinstance(c.timeout_s, bool) or not isinstance(c.timeout_s, (int, float)) or not (0 < c.timeout_s <= 86400):
        raise ConfigError("timeout_s", c.timeout_s, "must be a number of seconds in (0, 86400]")

    # A custom model's blocks are known once run() is given the module;
    # it checks the config again then, before any process starts.
    blocks = c.num_blocks if c.model == "custom" else c.MODELS[c.model]

    _check_mesh(c)
    if c.pipelined and not c.scheduled and c.micro_batches != 1:
        raise ConfigError("micro_batches", c.micro_batches,
                          "strategy 'model' runs one micro-batch; use strategy 'pipeline' for more")
    _check_schedule(c)

    # Split points: only where the model is cut into stages.
    if c.split_points is not None:
        _check_int_tuple("split_points", c.split_points)
        if c.stages == 1 and c.split_points:
            raise ConfigError("split_points", c.split_points,
                              f"strategy '{c.strategy}' does not cut the model; leave split_points empty")
        if c.stages > 1 and blocks is not None:
            for p in c.split_points:
                if not 1 <= p <= blocks - 1:
                    raise ConfigError("split_points", c.split_points,
                                      f"each split point must be a block index from 1 to {blocks - 1} "
                                      f"(model '{c.model}' has {blocks} blocks)")
            for a, b in zip(c.split_points, c.split_points[1:]):
                if b <= a:
                    raise ConfigError("split_points", c.split_points,
                                      "must be strictly increasing (two equal split points leave an empty stage)")
            if len(c.split_points) + 1 != c.stages and c.stages > c.pp_size:
                raise ConfigError("split_points", c.split_points,
                                  f"{len(c.split_points)} split points make {len(c.split_points) + 1} stages; "
                                  f"virtual_stages={c.virtual_stages} on {c.world_size} ranks needs exactly "
                                  f"world_size*virtual_stages-1={c.stages - 1}")
            if len(c.split_points) + 1 != c.stages:
                n = len(c.split_points) + 1
                what = "more stages than ranks" if n > c.pp_size else "fewer stages than ranks"
                ranks = "world_size" if c.pp_size == c.world_size else "pp"
                raise ConfigError("split_points", c.split_points,
                                  f"{len(c.split_points)} split points make {n} stages, {what} along the "
                                  f"pipeline ({c.pp_size}): strategy '{c.strategy}' needs exactly "
                                  f"{ranks}-1={c.pp_size - 1}")
    if blocks is not None and c.stages > blocks:
        if c.stages > c.pp_size:
            raise ConfigError("virtual_stages", c.virtual_stages,
                              f"{c.world_size} ranks x {c.virtual_stages} stages each = {c.stages} stages need at "
                              f"least {c.stages} blocks; model '{c.model}' has {blocks}")
        raise ConfigError("world_size", c.world_size,
                          f"{c.stages} stages need at least {c.stages} blocks; model '{c.model}' has {blocks}")

    # Batch partition: per data-parallel rank.
    if c.batch_partition is not None:
        _check_int_tuple("batch_partition", c.batch_partition)
        if len(c.batch_partition) != c.dp_size:
            raise ConfigError("batch_partition", c.batch_partition,
                              f"needs one share per data-parallel rank ({c.dp_size})")
        if any(s <= 0 for s in c.batch_partition):
            raise ConfigError("batch_partition", c.batch_partition, "shares must be positive integers")
    total = sum(c.shares)
    for r, s in enumerate(c.shares):
        if (c.global_batch * s) % total:
            raise ConfigError("global_batch", c.global_batch,
                              f"cannot be shared as {list(c.shares)} among {c.dp_size} data-parallel ranks "
                              f"(rank {r} would get {c.global_batch * s / total:g} samples); "
                              f"use a multiple of {total // math.gcd(total, s)}")
    for r, b in enumerate(c.rank_batches()):
        if b % c.micro_batches:
            raise ConfigError("micro_batches", c.micro_batches,
                              f"rank {r}'s batch of {b} samples cannot be cut into {c.micro_batches} "
                              f"equal micro-batches")
    _check_levers(c)

    if c.device == "cuda" and c.backend == "gloo":
        pass  # allowed: gloo also runs on CUDA tensors
    if c.device == "cpu" and c.backend == "nccl":
        raise ConfigError("backend", c.backend, "nccl needs device 'cuda' (use gloo or auto on cpu)")


@dataclass(frozen=True)
class PlanConfig(RunConfig):
    """A config to plan (``playground.plan``), not to run: it also accepts
    the architecture presets (``PRESET_BLOCKS``) and world sizes up to
    ``PLAN_MAX_WORLD_SIZE``. ``run`` refuses it (``runnable``)."""

    MODELS: ClassVar[dict[str, int]] = {**MODEL_BLOCKS, **PRESET_BLOCKS}

    max_world_size: int = PLAN_MAX_WORLD_SIZE
    """Upper limit on world_size (at most PLAN_MAX_WORLD_SIZE)."""

    sequence_length: int | None = None
    """Tokens per sample of a language-model preset; None: its published
    context (1024 for GPT-2, 8192 for Llama 3). Ignored by the zoo's models."""

    def __post_init__(self) -> None:
        _check_int("max_world_size", self.max_world_size, 1, PLAN_MAX_WORLD_SIZE)
        if self.sequence_length is not None:
            _check_int("sequence_length", self.sequence_length, 1, 1 << 20)
        super().__post_init__()


def runnable(config: RunConfig | dict) -> RunConfig:
    """``config`` as ``run`` takes it: a RunConfig as it is; a dict of its
    fields (``RunConfig.from_dict``); a PlanConfig of a zoo model as the
    RunConfig of the same fields, checked again against RunConfig's own
    limits. ConfigError for a preset: it is planned, never trained."""
    if isinstance(config, dict):
        config = RunConfig.from_dict(config)
    if config.model in PRESET_BLOCKS:
        raise ConfigError("model", config.model,
                          f"an architecture preset is planned, not trained: playground.plan(config); run() trains "
                          f"{', '.join(MODEL_BLOCKS)} or a custom model")
    if not isinstance(config, PlanConfig):
        return config
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(RunConfig) if f.name != "max_world_size"}
    return RunConfig(**fields)


def cpu_count() -> int:
    """Cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
