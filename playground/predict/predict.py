"""What a run should cost, predicted from its config and its model alone.

``predict`` walks the run's ranks once, placing each on the (dp, pp, tp)
grid (``Topology``), and applies ``formulas`` to what ``profile`` reads off
the model. No process is started and no process group is joined.

Per rank, P the bytes of the parameters it holds and T their tensors:

  params       whole stages (single, data, model, pipeline, hybrid dp x pp);
               tensor parallel: the rank's column and row shards of the
               planned layers (``profile.tensor_local_model``); FSDP (fsdp,
               data at ZeRO stage 2 or 3, and hybrid dp x tp around each
               tensor-parallel rank): each of those tensors' dim-0 shard
               among the dp ranks
  grads        P (every gradient present after backward)
  optimizer    ``formulas.optimizer_bytes``: 0 for SGD, 2 P + 4 T for Adam;
               at ZeRO stage 1 over the rank's own parameters only
               (``formulas.zero1_partition``)
  traffic      each way, over the run, the sum of
               - pipeline cuts: per micro-batch of b samples, a stage sends
                 b A forward (A: bytes per sample of the output at its cut)
                 and the matching gradient backward, to stages on other ranks;
               - tensor parallel: per step, an all-reduce of every
                 row-parallel output and every column-parallel input
                 gradient (``profile.tensor_all_reduces``);
               - across the dp ranks: DDP's buckets
                 (``formulas.data_parallel_bytes``, or per stage
                 ``formulas.pipeline_ddp_bytes`` in hybrid dp x pp), at
                 ZeRO stage 1 with a broadcast of every parameter per step
                 (``formulas.broadcast_bytes``), or FSDP's gathers and
                 reduce-scatters (``formulas.fsdp_step_bytes``).
               Every transfer and collective is symmetric: received = sent.
  activations  k micro-batches in flight at the peak (``formulas.in_flight``),
               each saving what ``profile.stage_activations`` measured; with
               several stages per rank the peak over the schedule's action
               order (``formulas.held_peak``), and for the zero-bubble
               schedules the measured peak of one step
               (``profile.split_backward_peak``). Plus the first stage's
               inputs and the last stage's targets, B (global batch)
               samples once, since every rank's batch and micro-batches
               are views into the global batch.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
from torch import nn

from playground.spec.config import SINGLE_STAGE_SCHEDULES, SPLIT_BACKWARD_SCHEDULES, RunConfig
from playground.zoo.datasets import load_dataset, loss_fn as task_loss
from playground.zoo.models import MODELS, BlockInfo, block_infos, build_model, model_block_infos
from playground.spec.partition import stage_ranges
from playground.spec.schedules import schedule_table
from playground.spec.topology import Topology
from playground.predict.formulas import (
    UNIT_TIMES, ZERO_MEMORY_FORMULAS, ZERO_SOURCE, all_reduce_bytes, broadcast_bytes, data_parallel_bytes,
    ddp_buckets, fsdp_accumulated_step_bytes, fsdp_step_bytes, gather_bytes, held_peak, in_flight, optimizer_bytes,
    pipeline_bubble, pipeline_ddp_bytes, table_bubble, zero1_partition, zero_memory, zero_step_volume,
)
from playground.predict.profile import (
    bytes_per_sample, fsdp_gather_bytes, fsdp_shard_bytes, fsdp_units, output_bytes, param_bytes, split_backward_peak, stage_activations, tensor_all_reduces, tensor_local_model,
)

LOOPED = ("interleaved", "interleaved1f1b", "loopedbfs")
"""Schedules whose bubble has a closed form with v stages per rank
(``formulas.pipeline_bubble``); "interleaved" names the formula alone."""


@dataclass(frozen=True)
class RankPrediction:
    """What one rank should hold and move; bytes throughout, traffic over the
    whole run."""

    rank: int
    pp_rank: int
    dp_rank: int
    params: int
    grads: int
    optimizer: int
    activations_peak: int
    bytes_sent: int
    bytes_recv: int


def predict(config: RunConfig, infos: list[BlockInfo] | None = None, model: nn.Sequential | None = None,
            sample: torch.Tensor | None = None, target: torch.Tensor | None = None) -> list[RankPrediction]:
    """Every rank's memory, traffic and activation peak for ``config``, in
    rank order (see the module docstring for the formulas).

    ``model``, ``sample`` (one input, no batch dimension) and ``target`` (its
    label) stand in for a custom model's; for a named model they default to
    the built model and the first sample of its dataset. Without a target
    the loss's saved tensors are left out. Split points are resolved as
    ``run`` resolves them, from ``infos`` (the blocks' FLOPs).
    ``ValueError`` for a custom model without a model or a sample."""
    model, sample, target, loss_fn = _model_and_data(config, model, sample, target)
    with contextlib.ExitStack() as levered:
        return _predict(config, infos, model, sample, target, loss_fn, levered)


def _predict(config: RunConfig, infos, model, sample, target, loss_fn, levered: contextlib.ExitStack):
    """``predict``, the levers (``zoo.levers``: recompute, bf16 autocast) put
    on every block profiled, as the ranks put them on theirs, through ``levered``."""
    from playground.zoo.levers import on_blocks, with_autocast

    def lever(local: nn.Sequential) -> nn.Sequential:
        return levered.enter_context(on_blocks(local, config.recompute, config.precision, "cpu"))

    dp, pp, tp, steps = config.dp_size, config.pp_size, config.tp_size, config.steps
    ranges = stage_ranges(_split_points(config, model, infos, sample), len(model))
    # Each tp rank's own layers (the model itself without tensor parallelism),
    # copied before the levers go on: a copy would call the original's forward.
    tp_locals = [tensor_local_model(model, tp, r, config.unused_parameters) for r in range(tp)] if tp > 1 \
        else [(model, {})]
    profiled = tp_locals
    if config.precision == "bf16" and config.resolved_zero_stage in (2, 3):
        # FSDP2's MixedPrecisionPolicy gathers the weights in bf16: every op
        # (the embedding's lookup too, which autocast leaves in fp32) then
        # computes in bf16. Activations are profiled on bf16 copies, as the
        # ranks compute; the fp32 originals still give the state and traffic.
        profiled = [(copy.deepcopy(local).to(torch.bfloat16), plan) for local, plan in tp_locals]
    for local, _ in profiled:
        lever(local)
    if tp > 1:
        lever(model)
    loss_fn = with_autocast(loss_fn, "cpu", config.precision)
    m, schedule = (config.micro_batches, config.schedule) if config.scheduled else (1, "gpipe")
    table = schedule_table(schedule, pp, m, config.stages // pp) if config.stages > pp else None
    owner = {s: r for r in range(pp) for s in config.rank_stages(r)}
    cut_out = output_bytes(model, sample) if len(ranges) > 1 else []
    activations = [[stage_activations(local, first, end, sample, target, loss_fn) for first, end in ranges]
                   for local, _ in profiled]
    # Full recompute runs each block's forward again in backward, its
    # row-parallel all-reduces included.
    again = 2 if config.recompute == "full" else 1
    tp_all_reduces = [nbytes * (again if when == "forward" else 1)
                      for when, nbytes in tensor_all_reduces(model, tp_locals[0][1], sample)] if tp > 1 else []
    zero = config.resolved_zero_stage
    fsdp = zero in (2, 3)  # fsdp, data at stage 2 or 3, hybrid dp x tp: FSDP over the dp ranks
    x_bytes = config.global_batch * bytes_per_sample(sample.unsqueeze(0))
    y_bytes = config.global_batch * bytes_per_sample(target.unsqueeze(0)) if target is not None else 0

    predictions = []
    for rank in range(config.world_size):
        place = Topology.for_config(config, rank)
        local = tp_locals[place.tp_rank][0]
        stages = config.rank_stages(place.pp_rank)
        blocks = [local[ranges[s][0]:ranges[s][1]] for s in stages]
        batch = config.rank_batches()[place.dp_rank]
        micro_batch = batch // m // config.grad_accumulation

        if fsdp:
            units = [unit for block in blocks for unit in fsdp_units(block)]
            held = [b for unit in units for b in fsdp_shard_bytes(unit, dp, place.dp_rank)]
        else:
            held = [b for block in blocks for b in param_bytes(block)]

        cuts = sum((cut_out[ranges[s][0] - 1] if s > 0 and owner[s - 1] != place.pp_rank else 0)
                   + (cut_out[ranges[s][1] - 1] if s < len(ranges) - 1 and owner[s + 1] != place.pp_rank else 0)
                   for s in stages)
        sent = steps * m * micro_batch * cuts
        sent += steps * sum(all_reduce_bytes(batch * nbytes, tp) for nbytes in tp_all_reduces)
        owned = held
        if fsdp and (config.grad_accumulation > 1 or config.precision != "fp32"):
            size = 2 if config.precision == "bf16" else None  # MixedPrecisionPolicy(param_dtype=bf16)
            sent += steps * sum(fsdp_accumulated_step_bytes(
                gather_bytes([(p.shape, size or p.element_size()) for p in unit], dp), fsdp_gather_bytes(unit, dp),
                dp, config.grad_accumulation, zero == 3) for unit in units)
        elif fsdp:
            sent += steps * sum(fsdp_step_bytes(fsdp_gather_bytes(unit, dp), dp, zero == 3) for unit in units)
        elif pp > 1 and dp > 1:  # each stage its own DDP
            sent += sum(pipeline_ddp_bytes(param_bytes(block), dp, steps) for block in blocks)
        else:
            sent += data_parallel_bytes(held, dp, steps)
        if zero == 1:
            numels = [p.numel() for block in blocks for p in block.parameters()]
            owned = [held[i] for i in zero1_partition(numels, dp)[place.dp_rank]]
            sent += steps * sum(broadcast_bytes(b, dp) for b in held)

        acts = [activations[place.tp_rank][s] for s in stages]
        if table is None:
            peak = in_flight(schedule, pp, place.pp_rank, m) * acts[0].micro_batch(micro_batch)
        elif schedule in SPLIT_BACKWARD_SCHEDULES:
            peak = split_backward_peak(model, ranges, stages, table[place.pp_rank], sample, target, loss_fn,
                                       micro_batch)
        else:
            peak = held_peak(table[place.pp_rank], {s: a.micro_batch(micro_batch) for s, a in zip(stages, acts)})
        peak += x_bytes * any(a.saves_input for a in acts) + y_bytes * any(a.saves_target for a in acts)

        predictions.append(RankPrediction(
            rank=rank, pp_rank=place.pp_rank, dp_rank=place.dp_rank, params=sum(held), grads=sum(held),
            optimizer=optimizer_bytes(config.optimizer, owned), activations_peak=peak,
            bytes_sent=sent, bytes_recv=sent))
    return predictions


def zero_formulas(config: RunConfig, model: nn.Sequential, predictions: list[dict]) -> dict | None:
    """The ZeRO paper's per-rank memory and per-step communication for a
    run of strategy 'data' or 'fsdp' (``formulas.zero_memory``,
    ``formulas.zero_step_volume``; Ψ the model's trainable parameters, N_d
    the ranks, K = 8 bytes per parameter for Adam's exp_avg and exp_avg_sq,
    0 for SGD) beside the cost model's exact figures (``predictions``:
    ``predict``'s, as dicts, the form ``RunResult.predictions`` holds), with
    where and why they part. None for other strategies
    (hybrid shards a pipeline stage or a tensor-parallel rank's part, not Ψ).

    Returns {"stage", "source", "psi", "n_d", "k", "formula": {"params",
    "grads", "optimizer"} (as text), "memory": {same keys: the formula's
    bytes per rank}, "gap": [{"rank", "params", "grads", "optimizer"}: the
    prediction minus the formula, bytes], "partition": [Ψ_r per rank] (stage
    1: the elements whose state each rank keeps) or None, "communication":
    {"formula", "paper_bytes_per_step", "ring_bytes_per_step",
    "predicted_bytes_per_step", "collectives"}, "notes": [str]}. Bytes per
    step are each rank's, each way; the paper counts 2Ψ or 3Ψ, the ring
    (n - 1) / n of that, and the prediction what this run's collectives
    move once DDP has rebuilt its buckets (every step after the first)."""
    if config.strategy not in ("data", "fsdp"):
        return None
    stage, n = config.resolved_zero_stage, config.dp_size
    params = [p for p in model.parameters() if p.requires_grad]
    psi = sum(p.numel() for p in params)
    size = params[0].element_size() if params else 4
    k = 2 * size if config.optimizer == "adam" else 0
    memory = zero_memory(stage, psi, n, k, size)
    gap = [{"rank": p["rank"], **{name: p[name] - memory[name] for name in memory}} for p in predictions]
    volume = zero_step_volume(stage)
    held = param_bytes(model)
    if stage in (2, 3):
        per_step = sum(fsdp_step_bytes(fsdp_gather_bytes(unit, n), n, stage == 3) for unit in fsdp_units(model))
        collectives = "all_gather, reduce_scatter"
    else:
        per_step = sum(all_reduce_bytes(b, n) for b in ddp_buckets(held))
        collectives = "all_reduce"
    partition = None
    notes = ["fp32 training: 4 bytes per parameter and per gradient (the paper's mixed precision counts "
             "2Ψ + 2Ψ + KΨ with K = 12)",
             "K = 8: Adam's exp_avg and exp_avg_sq, 4 bytes each per parameter; its step counters, 4 bytes "
             "per tensor, are extra and in the prediction" if k else "K = 0: plain SGD keeps no optimizer state"]
    if stage == 1:
        per_step += sum(broadcast_bytes(b, n) for b in held)
        collectives = "all_reduce, broadcast"
        partition = [sum(params[i].numel() for i in part) for part in zero1_partition([p.numel() for p in params], n)]
        notes += [f"ZeroRedundancyOptimizer gives each rank whole parameters, largest first to the rank holding "
                  f"the fewest elements: Ψ_r = {partition} elements against Ψ/N_d = {psi / n:g}, hence the gap "
                  f"in optimizer state",
                  "torch's stage 1 all-reduces the whole gradients (DDP, 2Ψ) and then broadcasts each rank's "
                  "updated parameters (Ψ): 3Ψ per step, where the paper's stage 1 reduce-scatters the gradients "
                  "and all-gathers the parameters (2Ψ)"]
    if stage in (2, 3):
        notes.append("FSDP2 cuts each parameter's dim 0 into N_d chunks (torch.chunk), the last ones smaller or "
                     "empty where it does not divide, and pads its gathers to N_d equal shards: hence any gap "
                     "from Ψ/N_d")
    if stage == 2:
        notes.append("FSDP2 at stage 2 holds the gathered parameters (4Ψ, the paper's figure) from the forward to "
                     "the end of the backward, then frees them; measured after the last step, a rank holds its "
                     "shard, 4Ψ/N_d, and the next forward gathers the updated shards again (the paper's "
                     "all-gather of Ψ)")
    return {"stage": stage, "source": ZERO_SOURCE, "psi": psi, "n_d": n, "k": k,
            "formula": dict(ZERO_MEMORY_FORMULAS[stage]), "memory": memory, "gap": gap, "partition": partition,
            "communication": {"formula": f"{volume}Ψ", "paper_bytes_per_step": float(volume * size * psi),
                              "ring_bytes_per_step": volume * (n - 1) / n * size * psi,
                              "predicted_bytes_per_step": per_step, "collectives": collectives},
            "notes": notes}


def _split_points(config: RunConfig, model: nn.Sequential, infos: list[BlockInfo] | None,
                  sample: torch.Tensor) -> tuple[int, ...]:
    """The run's cuts: the config's, or the FLOP-balanced ones ``run``
    would choose; () for a model that is not cut."""
    if config.stages == 1 or config.split_points is not None:
        return tuple(config.split_points or ())
    if infos is None:
        infos = model_block_infos(config.model) if config.model in MODELS else block_infos(model, sample)
    return config.resolved_split_points([max(1, b.flops) for b in infos])


def _model_and_data(config: RunConfig, model, sample, target):
    """The model (a private copy: profiling runs forwards), one sample, its
    target and the loss, as ``run`` would choose them."""
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
    return model, sample, target, task_loss(task)


# --------------------------------------------------------------------------
# Pipeline bubble of a named schedule


def bubble_fraction(schedule: str, stages: int, micro_batches: int, virtual: int = 1) -> float:
    """Share of a step a pipeline rank sits idle for ``schedule`` with p
    ranks (``stages``), m micro-batches and v stages per rank: the closed
    form ``formulas.pipeline_bubble`` for gpipe and 1f1b (v = 1) and the
    looped schedules (``LOOPED``); for the zero-bubble schedules, which have
    none, ``simulated_bubble``. ``ValueError`` for p, m or v below 1, v > 1
    with a single-stage schedule, or an unknown schedule."""
    p, m, v = stages, micro_batches, virtual
    if p < 1 or m < 1 or v < 1:
        raise ValueError(f"stages={p}, micro_batches={m}, virtual={v}: each must be >= 1")
    if schedule in SINGLE_STAGE_SCHEDULES:
        if v != 1:
            raise ValueError(f"virtual={v}: schedule {schedule!r} runs one stage per rank (virtual=1)")
    elif schedule in SPLIT_BACKWARD_SCHEDULES:
        return simulated_bubble(schedule, p, m, v)
    elif schedule not in LOOPED:
        raise ValueError(f"schedule={schedule!r}: must be one of "
                         f"{', '.join(SINGLE_STAGE_SCHEDULES + LOOPED + SPLIT_BACKWARD_SCHEDULES)}")
    return pipeline_bubble(p, m, v)


def simulated_bubble(schedule: str, stages: int, micro_batches: int, virtual: int = 1,
                     times: dict[str, float] = UNIT_TIMES) -> float:
    """``formulas.table_bubble`` of the action table torch builds for
    ``schedule`` (``strategies.pipeline.schedule_table``): each action
    taking ``times[kind]``, free communication, no host work."""
    table = schedule_table(schedule, stages, micro_batches, virtual)
    try:
        return table_bubble(table, times)
    except ValueError as err:
        raise ValueError(f"schedule={schedule!r}: {err} (p={stages}, m={micro_batches})") from None
