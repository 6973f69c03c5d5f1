"""What a run should cost, predicted from its config and its model alone.

Pure functions: no process is started and no process group is joined. The
one thing measured rather than derived is what autograd saves for backward,
found by running a stage's blocks on one and on two samples in this process.

Per rank (rank = dp_rank * pp + stage, as in ``topology``), with P the
bytes of the parameters the rank holds and T their number of tensors:

  params     P
  grads      P                       (fp32, every gradient present after backward)
  optimizer  0 for SGD (no momentum); 2 P + 4 T for Adam (exp_avg, exp_avg_sq,
             and a float32 ``step`` scalar per parameter tensor)
  traffic    pipeline: per micro-batch of b samples, stage s sends b * A_s
             forward (A_s: bytes per sample of its last block's output) and
             b * A_{s-1} backward, and receives as many; over m micro-batches
             and every step. A rank holding several stages sums its stages'
             cuts, leaving out those to a stage on the same rank.
             data: each DDP bucket of B bytes is all-reduced every step,
             2 (n - 1) B // n bytes each way among n ranks.
  activations  k (c + a b) + B x + B y: k micro-batches in flight at the peak
             (``in_flight``), each saving c + a b bytes (``stage_activations``);
             the first stage's saved inputs and the last stage's saved targets
             count B (global batch) samples once, x and y bytes each, since a
             rank's shard and its micro-batches are views into the global batch.
             Several stages per rank: the peak over the schedule's action
             order of the stages' saved bytes held (``held_peak``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .config import RunConfig
from .models import MODELS, BlockInfo, block_infos, build_model, model_block_infos, stage_ranges

DDP_FIRST_BUCKET_BYTES = 1024 * 1024
"""torch.distributed._DEFAULT_FIRST_BUCKET_BYTES: the cap of the bucket
holding the gradients that are ready first (the last layers)."""
DDP_BUCKET_BYTES = 25 * 1024 * 1024
"""DDP's default bucket_cap_mb (25 MiB) for every later bucket."""


@dataclass(frozen=True)
class RankPrediction:
    """What one rank should hold and move; bytes throughout, over the run."""

    rank: int
    stage: int
    dp_rank: int
    params: int
    grads: int
    optimizer: int
    activations_peak: int
    bytes_sent: int
    bytes_recv: int


# --------------------------------------------------------------------------
# Formulas


LOOPED = ("interleaved", "interleaved1f1b", "loopedbfs")
ZERO_BUBBLE = ("interleavedzerobubble", "zbvzerobubble", "dualpipev")


def bubble_fraction(schedule: str, stages: int, micro_batches: int, virtual: int = 1) -> float:
    """Share of a step a pipeline rank sits idle, filling and draining the
    pipeline: p ranks (``stages``), m micro-batches, v stages per rank,
    equal stages, free communication.

    gpipe, 1f1b: (p - 1) / (m + p - 1). Looped, v model chunks per rank
    (interleaved1f1b, loopedbfs, or "interleaved"): the bubble shrinks
    v-fold, (p - 1) / (v m + p - 1), when m >= p; with m < p each loop also
    waits for micro-batch 0 to come round: 1 - v m / (v p + m - 1). See
    ``bubble_overhead`` for the same bubble measured against ideal time.
    Zero-bubble schedules (interleavedzerobubble, zbvzerobubble, dualpipev):
    ``simulated_bubble`` of the schedule's own action table; with forward,
    input-gradient and weight-gradient times equal it comes to
    (p - 1) / (3 v m + p - 1) once m >= p (zbvzerobubble: m >= 2p - 1), a
    third of the looped bubble: weight gradients fill the drain.
    """
    p, m, v = stages, micro_batches, virtual
    if p < 1 or m < 1 or v < 1:
        raise ValueError(f"stages={p}, micro_batches={m}, virtual={v}: each must be >= 1")
    if schedule in ("gpipe", "1f1b"):
        if v != 1:
            raise ValueError(f"virtual={v}: schedule {schedule!r} runs one stage per rank (virtual=1)")
    elif schedule in ZERO_BUBBLE:
        return simulated_bubble(schedule, p, m, v)
    elif schedule not in LOOPED:
        raise ValueError(f"schedule={schedule!r}: must be one of gpipe, 1f1b, {', '.join(LOOPED + ZERO_BUBBLE)}")
    return 1 - v * m / (v * max(m, p) + min(m, p) - 1)


UNIT_TIMES = {"forward": 1.0, "backward": 2.0, "backward_input": 1.0, "backward_weight": 1.0}
"""Time of each action of a schedule table, in forwards: a full backward
costs two (input and weight gradients), the zero-bubble halves one each."""


def simulated_bubble(schedule: str, stages: int, micro_batches: int, virtual: int = 1,
                     times: dict[str, float] = UNIT_TIMES) -> float:
    """1 - busy / span, averaged over the ranks, when each rank runs its
    actions (``pipeline.schedule_table``) in order, each as soon as the rank
    is free and its input is there: a forward of stage s after stage s-1's,
    a backward after stage s+1's (the last stage: after its own forward),
    a weight gradient after its own input gradient. Communication is free."""
    from .strategies.pipeline import schedule_table

    table = schedule_table(schedule, stages, micro_batches, virtual)
    last = stages * virtual - 1
    done: dict[tuple[str, int, int], float] = {}
    free = {r: 0.0 for r in table}
    busy = {r: 0.0 for r in table}
    pos = {r: 0 for r in table}
    while any(pos[r] < len(table[r]) for r in table):
        progressed = False
        for r, actions in table.items():
            while pos[r] < len(actions):
                kind, s, mb = actions[pos[r]]
                if kind == "forward":
                    key, need = ("f", s, mb), ("f", s - 1, mb) if s > 0 else None
                elif kind == "backward_weight":
                    key, need = ("w", s, mb), ("b", s, mb)
                else:
                    key, need = ("b", s, mb), ("b", s + 1, mb) if s < last else ("f", s, mb)
                if need is not None and need not in done:
                    break
                start = max(free[r], done[need] if need is not None else 0.0)
                free[r] = done[key] = start + times[kind]
                busy[r] += times[kind]
                pos[r] += 1
                progressed = True
        if not progressed:
            raise ValueError(f"schedule={schedule!r}: its action table waits forever (p={stages}, m={micro_batches})")
    span = max(free.values())
    return 1 - sum(busy.values()) / len(busy) / span


def bubble_overhead(stages: int, micro_batches: int, virtual: int = 1) -> float:
    """Bubble time over ideal (bubble-free) time: (p - 1) / (v m), the form of
    the interleaved-1F1B paper. bubble_fraction = overhead / (1 + overhead)."""
    return (stages - 1) / (virtual * micro_batches)


def in_flight(schedule: str, stages: int, stage: int, micro_batches: int) -> int:
    """Micro-batches whose activations stage ``stage`` holds at its peak:
    GPipe runs all m forwards before any backward; 1F1B starts backward
    once p - stage forwards are in flight: min(m, p - stage)."""
    if schedule == "1f1b":
        return min(micro_batches, stages - stage)
    return micro_batches


def held_peak(actions: list[tuple[str, int, int]], stage_bytes: dict[int, int]) -> int:
    """Peak of the activation bytes a rank holds over its actions, in order
    (``pipeline.schedule_table``): a forward of stage s adds stage_bytes[s];
    a full backward frees them, or, split, the weight gradient does (the
    input-gradient pass keeps the graph for it)."""
    held = peak = 0
    for kind, stage, _ in actions:
        if kind == "forward":
            held += stage_bytes[stage]
        elif kind in ("backward", "backward_weight"):
            held -= stage_bytes[stage]
        peak = max(peak, held)
    return peak


def all_reduce_bytes(nbytes: int, group_size: int) -> int:
    """Bytes each rank sends (and receives) in a ring all-reduce of ``nbytes``
    among n ranks: 2 (n - 1) B // n, as ``result.account`` counts them."""
    return 2 * (group_size - 1) * nbytes // group_size


def ddp_buckets(param_bytes: list[int], first_cap: int = DDP_FIRST_BUCKET_BYTES,
                cap: int = DDP_BUCKET_BYTES) -> list[int]:
    """Bucket sizes DDP rebuilds after the first step (``param_bytes`` in the
    module's parameter order). Gradients arrive in reverse order; a bucket
    closes on the parameter that takes it to its cap or past it, the first
    capped at ``first_cap``, the others at ``cap``. (Step 0 runs before the
    rebuild: one bucket holding everything.)"""
    buckets, size, limit = [], 0, first_cap
    for b in reversed(param_bytes):
        size += b
        if size >= limit:
            buckets.append(size)
            size, limit = 0, cap
    if size:
        buckets.append(size)
    return buckets


def stage_shares(infos: list[BlockInfo], split_points: tuple[int, ...]) -> list[dict]:
    """Each stage's blocks, parameters and forward FLOPs per sample, and its
    share of the model's: params_s / sum(params), flops_s / sum(flops). The
    slowest stage (largest FLOP share) sets a pipeline's pace."""
    total_params = sum(b.params for b in infos) or 1
    total_flops = sum(b.flops for b in infos) or 1
    shares = []
    for s, (first, end) in enumerate(stage_ranges(tuple(split_points), len(infos))):
        params = sum(b.params for b in infos[first:end])
        flops = sum(b.flops for b in infos[first:end])
        shares.append({"stage": s, "blocks": (first, end), "params": params, "flops": flops,
                       "param_share": params / total_params, "flop_share": flops / total_flops})
    return shares


# --------------------------------------------------------------------------
# Activations saved for backward, measured on one and two samples


@dataclass(frozen=True)
class StageActivations:
    """Bytes autograd saves for one micro-batch of b samples through a stage:
    fixed + per_sample * b, counted per storage as ``Recorder._pack`` does.
    The batch's inputs and targets are counted apart: a rank's micro-batches
    are views into the global batch, so their storage counts once, whole."""

    fixed: int
    per_sample: int
    saves_input: bool
    saves_target: bool

    def micro_batch(self, samples: int) -> int:
        return self.fixed + self.per_sample * samples


def _saved_storages(fn, exclude: set[int]) -> dict[int, int]:
    """{storage address: bytes} of every tensor autograd saves while ``fn``
    runs, parameters (``exclude``) and empty storages left out. ``fn``
    returns its output, whose graph keeps every saved storage alive (so no
    address is reused) until all are counted."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() and storage.data_ptr() not in exclude:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        output = fn()
    del output
    return seen


def stage_activations(model: nn.Sequential, first: int, end: int, sample: torch.Tensor,
                      target: torch.Tensor | None, loss_fn) -> StageActivations:
    """Run blocks [first, end) (and the loss, on the last stage) on 1 and 2
    samples; the difference is the per-sample cost, the rest is fixed. A
    stage after the first gets a fresh input that requires grad, like the
    buffer a pipeline stage receives into."""
    exclude = {p.untyped_storage().data_ptr() for p in model.parameters()}
    last = end == len(model)
    counts = []
    for n in (1, 2):
        x = _batch(sample, n)
        y = _batch(target, n) if target is not None else None
        if first > 0:
            with torch.no_grad():
                x = model[:first](x)
            x = x.detach().clone().requires_grad_(True)

        def forward():
            out = model[first:end](x)
            return loss_fn(out, y) if last and y is not None else out

        saved = _saved_storages(forward, exclude)
        input_key = _key(x) if first == 0 else None
        target_key = _key(y) if last and y is not None else None
        other = sum(b for k, b in saved.items() if k not in (input_key, target_key))
        counts.append((other, input_key in saved, target_key in saved))
    (one, saves_input, saves_target), (two, _, _) = counts
    return StageActivations(fixed=one - (two - one), per_sample=two - one,
                            saves_input=saves_input, saves_target=saves_target)


def _batch(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.unsqueeze(0).repeat_interleave(n, 0)


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _bytes_per_sample(t: torch.Tensor) -> int:
    return t[0].numel() * t.element_size()


@torch.no_grad()
def output_bytes(model: nn.Sequential, sample: torch.Tensor) -> list[int]:
    """Bytes per sample of each block's output: what crosses a cut after it."""
    x, sizes = sample.unsqueeze(0), []
    for block in model:
        x = block(x)
        sizes.append(_bytes_per_sample(x))
    return sizes


# --------------------------------------------------------------------------
# Per rank


def predict(config: RunConfig, infos: list[BlockInfo] | None = None, model: nn.Sequential | None = None,
            sample: torch.Tensor | None = None, target: torch.Tensor | None = None) -> list[RankPrediction]:
    """Predict every rank's memory, traffic and activation peak for ``config``.

    ``model``, ``sample`` (one input, no batch dimension) and ``target`` (its
    label) stand in for a custom model's; for a named model they default to
    the built model and the first sample of its dataset. Without a target
    the loss's saved tensors are left out. Split points are resolved as
    ``run`` resolves them, from ``infos`` (the blocks' FLOPs).
    """
    model, sample, target, loss_fn = _model_and_data(config, model, sample, target)
    if infos is None:
        infos = model_block_infos(config.model) if config.model in MODELS else block_infos(model, sample)
    split_points = config.split_points or ()
    if config.stages > 1 and config.split_points is None:
        split_points = config.resolved_split_points([max(1, b.flops) for b in infos])
    ranges = stage_ranges(tuple(split_points), len(model))
    out_bytes = output_bytes(model, sample)
    pp, dp, steps = config.pp_size, config.dp_size, config.steps
    pipelined = config.strategy == "pipeline"  # the others run a rank's batch whole
    m = config.micro_batches if pipelined else 1
    schedule = config.schedule if pipelined else "gpipe"
    # Several stages per rank: which rank holds each, and the order it runs them in.
    owner = {s: r for r in range(pp) for s in config.rank_stages(r)}
    table = None
    if config.stages > pp:
        from .strategies.pipeline import schedule_table

        table = schedule_table(schedule, pp, m, config.stages // pp)
    x_bytes = config.global_batch * _bytes_per_sample(sample.unsqueeze(0))
    y_bytes = config.global_batch * _bytes_per_sample(target.unsqueeze(0)) if target is not None else 0

    activations = [stage_activations(model, first, end, sample, target, loss_fn) for first, end in ranges]
    predictions = []
    for rank in range(config.world_size):
        dp_rank, stage = divmod(rank, pp)
        held_stages = config.rank_stages(stage)
        params = [p for s in held_stages for p in model[ranges[s][0]:ranges[s][1]].parameters()]
        param_bytes = [p.numel() * p.element_size() for p in params]
        held = sum(param_bytes)
        optimizer = 2 * held + 4 * len(params) if config.optimizer == "adam" else 0

        micro_batch = config.rank_batches()[dp_rank] // m
        # Only cuts to a stage on another rank cross the wire.
        cut_bytes = sum((out_bytes[ranges[s][0] - 1] if s > 0 and owner[s - 1] != stage else 0)
                        + (out_bytes[ranges[s][1] - 1] if s < len(ranges) - 1 and owner[s + 1] != stage else 0)
                        for s in held_stages)
        sent = steps * m * micro_batch * cut_bytes
        if dp > 1:
            # Step 0 all-reduces one bucket of everything; then DDP rebuilds its buckets.
            sent += all_reduce_bytes(held, dp)
            sent += (steps - 1) * sum(all_reduce_bytes(b, dp) for b in ddp_buckets(param_bytes))

        acts = [activations[s] for s in held_stages]
        if table is None:
            peak = in_flight(schedule, pp, stage, m) * acts[0].micro_batch(micro_batch)
        else:
            peak = held_peak(table[stage], {s: activations[s].micro_batch(micro_batch) for s in held_stages})
        peak += x_bytes * any(a.saves_input for a in acts) + y_bytes * any(a.saves_target for a in acts)

        predictions.append(RankPrediction(rank=rank, stage=stage, dp_rank=dp_rank, params=held, grads=held,
                                          optimizer=optimizer, activations_peak=peak,
                                          bytes_sent=sent, bytes_recv=sent))
    return predictions


def _model_and_data(config: RunConfig, model, sample, target):
    """The model (a private copy: profiling runs forwards), one sample, its
    target and the loss, as ``run`` would choose them."""
    from .data import load_dataset, loss_fn

    if model is None:
        if config.model not in MODELS:
            raise ValueError(f"model={config.model!r}: a custom model needs predict(config, model=..., sample=...)")
        model = build_model(config.model, config.seed)
    else:
        model = copy.deepcopy(model)
    if config.model in MODELS:
        data = load_dataset(config.model)
        sample = data.train_x[0] if sample is None else sample
        target = data.train_y[0] if target is None else target
        task = data.task
    else:
        if sample is None:
            raise ValueError("a custom model needs one input sample: predict(config, model=..., sample=...)")
        task = "regression" if target is not None and target.is_floating_point() else "classification"
    return model, sample, target, loss_fn(task)


__all__ = ["RankPrediction", "predict", "bubble_fraction", "simulated_bubble", "bubble_overhead", "in_flight",
           "held_peak", "all_reduce_bytes",
           "ddp_buckets", "stage_shares", "stage_activations", "StageActivations", "output_bytes"]
