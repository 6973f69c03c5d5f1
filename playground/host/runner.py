"""``run(config)``: validate, launch the ranks, merge what they report, and
check the trained model against single-device training."""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from typing import Any

import torch
from torch import nn

from playground.spec.config import ConfigError, RunConfig, cpu_count, runnable
from playground.zoo.datasets import Dataset
from playground.host.launcher import default_pool, launch
from playground.zoo.facts import ModelFacts, differences
from playground.zoo.models import MODELS
from playground.spec.partition import stage_ranges
from playground.rank.recorder import Recorder
from playground.result.run_result import LOSS_TOLERANCE, RunResult, baseline_tolerance
from playground.rank.report import RankReport
from playground.result.accounting import account, block_table, stage_balance, throughput, traffic_per_step
from playground.spec.topology import Topology
from playground.rank.training import Groups, train_rank
from playground.zoo.workload import Workload, resolve_workload


def run(config: RunConfig | dict, *, model: nn.Sequential | None = None, dataset: Any = None, warm: bool = True,
        cancel=None, on_step=None, on_progress=None) -> RunResult:
    """Train ``config`` on ``config.world_size`` real processes and return
    what every rank did, the trained model and the baseline check.

    ``model`` (an nn.Sequential of blocks, each taking and returning one
    tensor) and ``dataset`` (a ``Dataset`` or a tuple ``(x, y[, x_test,
    y_test])``) replace the named model; they are checked here, on a copy,
    before any process starts (``custom.prepare_custom``: ConfigError).
    ``warm``: run on this process's pool of ranks, kept alive between runs
    (``False``: fresh processes, ended after the run). ``cancel``: a
    ``threading.Event``; setting it ends the run's processes and raises
    ``RunCancelled``. ``on_step(step)``: called with the step's index
    (from 0) as rank 0 finishes it.
    ``on_progress(update)``: called as each rank finishes each step, with
    {"rank": r, "step": s, "loss": rank r's part of step s's loss (None on
    ranks that compute none; a step's loss is the sum of its parts),
    "step_s": seconds rank r spent in step s}. Both are called in the
    caller's thread that runs ``run``, between reads of the ranks' pipes:
    keep them quick.
    A dict of RunConfig fields is read as ``RunConfig.from_dict``; a
    ``PlanConfig`` runs as the RunConfig of its fields, within RunConfig's
    limits; a preset is refused (``spec.config.runnable``).
    """
    workload = resolve_workload(runnable(config), model, dataset)
    device_type, backend = resolve_device(workload.config)
    started = time.perf_counter()
    reports = launch(workload.config, device_type, backend, workload.rank_payload(),
                     pool=default_pool() if warm else None, cancel=cancel,
                     on_progress=progress_callback(on_step, on_progress))
    return assemble(workload, reports, device_type, backend, time.perf_counter() - started)


def progress_callback(on_step=None, on_progress=None):
    """The launcher's per-rank progress callback that serves both of
    ``run``'s: ``on_step`` sees rank 0's step index, ``on_progress`` every update."""
    if on_step is None and on_progress is None:
        return None

    def progress(update: dict) -> None:
        if on_step is not None and update["rank"] == 0:
            on_step(update["step"])
        if on_progress is not None:
            on_progress(update)
    return progress


def load_result(directory: str) -> RunResult:
    """Merge the reports that ranks started by torchrun wrote to
    ``directory`` into the same RunResult ``run`` returns (baseline check
    included, run here). Parameters are read with ``weights_only``."""
    import json
    import os

    with open(os.path.join(directory, "run.json")) as f:
        meta = json.load(f)
    workload = resolve_workload(RunConfig.from_dict(meta["config"]))
    config = workload.config
    reports = []
    for rank in range(config.world_size):
        path = os.path.join(directory, f"rank-{rank}.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: rank {rank} of {config.world_size} wrote no report")
        with open(path) as f:
            report = RankReport.from_dict(json.load(f))
        pt = os.path.join(directory, f"rank-{rank}.pt")
        reports.append((report, torch.load(pt, weights_only=True) if os.path.exists(pt) else {}))
    return assemble(workload, reports, meta["device"], meta["backend"], meta["wall_s"], local=False)


def assemble(workload: Workload, reports: list[tuple[RankReport, dict]], device_type: str, backend: str,
             wall: float, local: bool = True) -> RunResult:
    """Merge the ranks' reports into a RunResult and check the trained
    model against the same training on one device, run here. ``local``:
    the ranks ran on this machine (so its core count says whether they
    shared cores).

    The check compares parameters (max |a - b| <= the precision's
    tolerance, ``run_result.baseline_tolerance``: in bf16 a share of what
    training moved the weights) where
    the run should equal one device. Where it cannot (``differences``: batch
    statistics per rank or per micro-batch, random layers), it compares the
    mean loss over the steps instead, relative to one device's, within
    LOSS_TOLERANCE, and ``baseline["why"]`` says why."""
    config, data, facts = workload.config, workload.dataset, workload.facts
    full_model = workload.fresh_model()
    split_points = config.split_points or ()
    ranks = account([report for report, _ in reports])
    infos = workload.infos
    balance = stage_balance(ranks, infos, split_points)
    losses = [sum(p for p in parts if p is not None)
              for parts in zip(*(r.loss_parts for r in ranks))]
    trained = _gather(full_model, [params for _, params in reports])

    why = differences(facts, full_model, config.world_size, config.dp_size, config.micro_batches,
                      config.pipelined, config.sync_batchnorm)
    if config.precision == "bf16" and config.optimizer == "adam" and config.world_size > 1:
        why = why + [ADAM_BF16_WHY]
    baseline_model, baseline_losses, baseline_accuracy = single_device_run(workload)
    diverged = divergence_note(config, ranks, losses, baseline_losses)
    diff = max_abs_param_diff(trained, baseline_model)
    loss_diff = mean_loss_rel_diff(losses, baseline_losses)
    accuracy = evaluate(trained, data)
    bubble, table = _bubble(config, ranks)
    moved = max_abs_param_diff(baseline_model, workload.fresh_model()) if config.precision == "bf16" else None
    tolerance, tolerance_why = baseline_tolerance(config.precision, moved)
    baseline = {
        "max_abs_param_diff": diff,
        "final_loss_diff": abs(losses[-1] - baseline_losses[-1]),
        "tolerance": tolerance,
        "tolerance_why": tolerance_why,
        "compares_with": baseline_description(config),
        "compares": "loss" if why else "parameters",
        "why": why,
        "mean_loss_rel_diff": loss_diff,
        "loss_tolerance": LOSS_TOLERANCE,
        "passed": loss_diff <= LOSS_TOLERANCE if why else diff <= tolerance,
        "losses": baseline_losses,
        "accuracy": baseline_accuracy,
    }
    predictions = _predictions(workload)
    notes = (workload.notes + (_notes(config, device_type) if local else []) + ([diverged] if diverged else []) + why
             + ([ADAM_NOTE.format(lr=config.lr)] if config.optimizer == "adam" and not baseline["passed"]
                and not why else [])
             + _model_notes(config, facts, full_model)
             + [n for n in [ranks[0].tensor_plan_note] if n])
    return RunResult(config=config, device=device_type, backend=backend, world_size=config.world_size,
                     losses=losses, throughput_samples_per_s=throughput(ranks, config.global_batch),
                     baseline=baseline, ranks=ranks, split_points=tuple(split_points), accuracy=accuracy,
                     wall_s=wall, notes=notes, model=trained,
                     predictions=predictions, bubble=bubble, zero=_zero(workload, predictions),
                     stage_balance=balance, schedule_table=table, blocks=block_table(infos),
                     traffic=traffic_per_step(ranks), tensor_plan=dict(ranks[0].tensor_plan))


ADAM_BF16_WHY = ("Adam in bf16: Adam moves every weight by about lr per step whatever its gradient's size, "
                 "and bf16 rounds a near-zero gradient's sign differently in the two orders of summation, so "
                 "weights part by up to 2 lr per step in a correct run as in a wrong one; the check compares "
                 "the losses")
"""Measured: mlp, data, ZeRO 3, Adam lr 1e-3, 2 steps: max |Δparam| 2.5e-3
against 2e-3 that training moved any weight (SGD: 5.1e-4 of 1.1e-2)."""

ADAM_NOTE = ("check: Adam divides each gradient by the root of its running square plus eps (1e-8, torch's "
             "default), so for a weight whose gradient is near or below eps, a rounding difference d between "
             "two orders of summation moves it by about lr * d / eps (here lr = {lr}): the split and the one "
             "device can part by more than the tolerance while both are right; SGD keeps them within it, "
             "and a smaller lr narrows the gap (Adam at lr 1e-3 passes on the mlp and the cnn, not on the "
             "transformer: 1.5e-5 to 3.5e-5 after 5 steps)")
"""Said with a failed check of an Adam run: measured on the mlp (data, 2
ranks, Adam, lr 0.05) the worst weight had gradients of -2.72e-9 and
-3.00e-9 in the two runs and parted by 5.2e-4 in one step."""


def _predictions(workload: Workload) -> list[dict]:
    """The cost model's figures for each rank, from the workload's model and
    profile (for a zoo model they depend on the config alone, and are kept
    for the configs run last)."""
    config = workload.config
    key = None if workload.custom else config
    if key in _PREDICTIONS:
        return copy.deepcopy(_PREDICTIONS[key])
    from playground.predict.predict import predict

    data = workload.dataset
    preds = [dataclasses.asdict(p) for p in predict(config, infos=list(workload.infos), model=workload.probe_copy(),
                                                      sample=data.train_x[0], target=data.train_y[0])]
    if key is not None:
        if len(_PREDICTIONS) >= _KEPT:
            _PREDICTIONS.pop(next(iter(_PREDICTIONS)))
        _PREDICTIONS[key] = copy.deepcopy(preds)
    return preds


def _zero(workload: Workload, predictions: list[dict]) -> dict | None:
    """The ZeRO paper's figures beside the predictions (``predict.zero_formulas``)."""
    from playground.predict.predict import zero_formulas

    return zero_formulas(workload.config, workload.model, predictions)


_PREDICTIONS: dict[RunConfig, list[dict]] = {}
_KEPT = 16
"""Predictions and baselines kept for the configs run last."""


def divergence_note(config: RunConfig, reports: list[RankReport], losses: list[float],
                    baseline_losses: list[float]) -> str | None:
    """Says where training diverged (a loss of inf or NaN): on the ranks,
    which stopped together after that step, and on one device."""
    import math

    hit = next((r.diverged for r in reports if r.diverged), None)
    single = next((s for s, v in enumerate(baseline_losses) if not math.isfinite(v)), None)
    if hit is None and single is None:
        return None
    alone = (f"on one device the loss first became non-finite at step {single}" if single is not None else
             f"on one device it stayed finite over all {len(baseline_losses)} steps")
    if hit is None:
        return f"training diverged on one device only: the ranks' loss stayed finite; {alone}"
    step, ranks = hit["step"], hit["ranks"]
    return (f"training diverged: the loss was {losses[step]} (not finite) at step {step} (counting from 0) on "
            f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}; every rank stopped after step "
            f"{len(losses) - 1}, once all had heard ({len(losses)} of {config.steps} steps ran); {alone}")


def _bubble(config: RunConfig, ranks: list[RankReport]) -> tuple[dict | None, dict | None]:
    """Pipelines: the schedule's action table as JSON (``replay.schedule_json``),
    and each rank's measured idle share beside the schedule's formula and
    beside the table replayed with this run's own measured times
    (``replay.replay_run``). (None, None) for runs that are not pipelines."""
    from playground.predict.predict import bubble_fraction
    from playground.result.replay import replay_run, schedule_json
    from playground.spec.schedules import schedule_table

    if not config.pipelined:
        return None, None
    p, m = config.pp_size, config.micro_batches
    schedule = config.schedule if config.scheduled else "gpipe"
    v = config.virtual_stages if config.scheduled else 1
    formula = f"(p-1)/(m+p-1) with p={p}, m={m}" if v == 1 else \
        f"{schedule} with p={p}, v={v}, m={m}"
    table = schedule_table(schedule, p, m, v)
    replay = replay_run(ranks, table)
    bubble = {"predicted": bubble_fraction(schedule, p, m, v), "formula": formula,
              "measured": [r.time["idle"] / r.time["window"] for r in ranks],
              "replayed": [replay[r.rank][0] for r in ranks] if replay else None,
              "replayed_timeline": {str(r.rank): [list(a) for a in replay[r.rank][1].actions] for r in ranks}
              if replay else None}
    return bubble, schedule_json(table)


def baseline_description(config: RunConfig) -> str:
    """What the one-device run the check compares with did: the run's
    precision and gradient accumulation, never recomputation (which must
    change no number, only memory and time)."""
    text = f"one device, whole batch, {config.precision}"
    if config.grad_accumulation > 1:
        text += f", {config.grad_accumulation} micro-steps of gradient accumulation per step"
    if config.recompute != "none":
        text += f", no recomputation (the run's recompute='{config.recompute}' must change no number)"
    return text


_BASELINES: dict[tuple, tuple[dict, list[float], float | None]] = {}


def single_device_run(workload: Workload) -> tuple[nn.Sequential, list[float], float | None]:
    """The single-device run of ``config``: the trained model, its losses
    and its held-out accuracy.

    For a named model it depends only on (model, global batch, steps, lr,
    optimizer, seed, precision, grad_accumulation), not on how the run was split, so the last few are
    kept: re-running a config with another split or schedule skips it."""
    config, data = workload.config, workload.dataset
    model = workload.fresh_model()
    key = None if workload.custom else (config.model, config.global_batch, config.steps, config.lr, config.optimizer,
                               config.seed, config.precision, config.grad_accumulation)
    if key in _BASELINES:
        state, losses, accuracy = _BASELINES[key]
        model.load_state_dict(state)
        return model, list(losses), accuracy
    losses = train_single(config, model, data)
    accuracy = evaluate(model, data)
    if key is not None:
        if len(_BASELINES) >= _KEPT:
            _BASELINES.pop(next(iter(_BASELINES)))
        _BASELINES[key] = ({k: v.clone() for k, v in model.state_dict().items()}, list(losses), accuracy)
    return model, losses, accuracy


def train_single(config: RunConfig, model: nn.Sequential, dataset: Dataset) -> list[float]:
    """The baseline: the same loop, one device, whole batch, no recording;
    the run's precision and gradient accumulation, no recomputation (which
    must change nothing: ``baseline_description``)."""
    single = config.replace(strategy="single", world_size=1, split_points=None, batch_partition=None,
                            micro_batches=1, dp=None, pp=None, tp=None, recompute="none", zero_stage=None)
    with _SINGLE_DEVICE_LOCK:  # threads and generators are the process's: one baseline at a time
        return _train_single(single, model, dataset)


_SINGLE_DEVICE_LOCK = threading.Lock()


def _train_single(single: RunConfig, model: nn.Sequential, dataset: Dataset) -> list[float]:
    threads = torch.get_num_threads()
    torch.set_num_threads(single.threads_per_rank)  # the same compute budget as one rank
    try:
        out = train_rank(single, Topology(0, 1, 1), model, dataset, Recorder(enabled=False), Groups(),
                         torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    return out["loss_parts"]


@torch.no_grad()
def max_abs_param_diff(a: nn.Module, b: nn.Module) -> float:
    """max over every parameter and floating-point buffer entry of |a - b|
    (buffers such as BatchNorm's running statistics are state the model
    carries into inference)."""
    pairs = list(zip(a.parameters(), b.parameters()))
    pairs += [(p, q) for p, q in zip(a.buffers(), b.buffers()) if p.is_floating_point()]
    return max(float((p - q).abs().max()) for p, q in pairs)


def mean_loss_rel_diff(losses: list[float], baseline_losses: list[float]) -> float:
    """|mean(losses) - mean(baseline)| / |mean(baseline)|, the means over all steps."""
    run, one = sum(losses) / len(losses), sum(baseline_losses) / len(baseline_losses)
    return abs(run - one) / max(abs(one), 1e-12)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset) -> float | None:
    """Held-out accuracy (argmax of the last dim), for classification tasks,
    in eval mode (BatchNorm with its running statistics, no Dropout); each
    module's mode is put back after."""
    if dataset.task != "classification" or dataset.test_x is None:
        return None
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        pred = model(dataset.test_x).argmax(-1)
    finally:
        for m, training in modes:
            m.training = training
    return float((pred == dataset.test_y).float().mean())


def resolve_device(config: RunConfig) -> tuple[str, str]:
    """(device type, backend): one CUDA GPU per rank when enough are visible.
    ConfigError for too few GPUs, or bf16 on a GPU without it (before Ampere);
    autocast computes bf16 on every CPU."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if config.device == "cuda" and gpus < config.world_size:
        raise ConfigError("device", config.device,
                          f"needs {config.world_size} visible CUDA GPUs (one per rank); {gpus} visible")
    device = config.device if config.device != "auto" else ("cuda" if gpus >= config.world_size else "cpu")
    backend = config.backend if config.backend != "auto" else ("nccl" if device == "cuda" else "gloo")
    if config.precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("precision", config.precision,
                          f"this GPU ({torch.cuda.get_device_name(0)}) does not compute in bf16: use fp32")
    return device, backend


def _notes(config: RunConfig, device: str) -> list[str]:
    notes = []
    cores = cpu_count()
    threads = config.world_size * config.threads_per_rank
    if device == "cpu" and threads > cores:
        notes.append(f"{config.world_size} ranks × {config.threads_per_rank} thread"
                     f"{'s' if config.threads_per_rank > 1 else ''} share {cores} CPU core{'s' if cores != 1 else ''}: "
                     "timings include contention")
    if device == "cuda":
        notes.append(f"ran on {config.world_size} CUDA GPUs")
    return notes


def _model_notes(config: RunConfig, facts: ModelFacts, model: nn.Module) -> list[str]:
    """What the run did about the model's shared, unused and normalising state."""
    from playground.zoo.facts import tied_stages

    notes = []
    if config.pipelined:
        ranges = stage_ranges(config.split_points or (), len(model))
        for names, pp_ranks in tied_stages(model, ranges, config):
            notes.append(f"tied parameter {' = '.join(names)} has a copy on pipeline ranks "
                         f"{', '.join(map(str, pp_ranks))}: each step an all-reduce over them sums its "
                         f"gradient, so the copies stay equal")
    if facts.unused and config.dp_size > 1:
        notes.append(f"parameters {', '.join(facts.unused)} receive no gradient: gradient reduction skips them "
                     f"(DDP with find_unused_parameters=True)")
    if facts.batchnorm and config.sync_batchnorm and config.dp_size > 1:
        notes.append(f"BatchNorm in {', '.join(facts.batchnorm_labels(model))} normalised over the whole batch: "
                     f"SyncBatchNorm all-reduces the statistics of the {config.dp_size} data-parallel ranks")
    return notes


def _gather(model: nn.Sequential, parts: list[dict[str, torch.Tensor]]) -> nn.Sequential:
    """Load every parameter and buffer reported by the ranks into ``model``.
    A tied parameter counts as reported under any of its names."""
    state = {}
    for p in parts:
        state.update(p)
    names: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(n)
    missing = [group[0] for group in names.values() if not any(n in state for n in group)]
    if missing:
        raise RuntimeError(f"no rank reported parameters {sorted(missing)[:5]}")
    model.load_state_dict(state, strict=False)
    return model


__all__ = ["run", "train_single", "evaluate", "resolve_device", "MODELS"]
