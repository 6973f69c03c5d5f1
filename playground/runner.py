"""``run(config)``: validate, launch the ranks, merge what they report, and
check the trained model against single-device training."""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import nn

from .config import ConfigError, RunConfig, cpu_count
from .custom import prepare_custom
from .data import Dataset, load_dataset
from .launcher import default_pool, launch
from .models import MODELS, block_infos, build_model, model_block_infos, stage_ranges
from .recorder import Recorder
from .result import BASELINE_TOLERANCE, RankReport, RunResult, account, stage_balance, throughput
from .topology import Topology
from .training import Groups, train_rank


def run(config: RunConfig, *, model: nn.Sequential | None = None, dataset: Any = None, warm: bool = True,
        cancel=None, on_step=None) -> RunResult:
    """Train ``config`` on ``config.world_size`` real processes and return
    what every rank did, the trained model and the baseline check.

    ``model`` (an nn.Sequential of blocks, each taking and returning one
    tensor) and ``dataset`` (a ``Dataset`` or a tuple ``(x, y[, x_test,
    y_test])``) replace the named model; they are checked here, on a copy,
    before any process starts (``custom.prepare_custom``: ConfigError).
    ``warm``: run on this process's pool of ranks, kept alive between runs
    (``False``: fresh processes, ended after the run). ``cancel``: a
    ``threading.Event``; setting it ends the run's processes and raises
    ``RunCancelled``. ``on_step(step)``: called as each step finishes.
    """
    config, custom, notes = prepare_custom(config, model, dataset)
    device_type, backend = resolve_device(config)
    config = resolve_split_points(config, custom)
    started = time.perf_counter()
    reports = launch(config, device_type, backend, custom, pool=default_pool() if warm else None,
                     cancel=cancel, on_step=on_step)
    result = assemble(config, reports, custom, device_type, backend, time.perf_counter() - started)
    result.notes[:0] = notes
    return result


def load_result(directory: str) -> RunResult:
    """Merge the reports that ranks started by torchrun wrote to
    ``directory`` into the same RunResult ``run`` returns (baseline check
    included, run here). Parameters are read with ``weights_only``."""
    import json
    import os

    with open(os.path.join(directory, "run.json")) as f:
        meta = json.load(f)
    config = RunConfig.from_dict(meta["config"])
    reports = []
    for rank in range(config.world_size):
        path = os.path.join(directory, f"rank-{rank}.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: rank {rank} of {config.world_size} wrote no report")
        with open(path) as f:
            report = json.load(f)
        pt = os.path.join(directory, f"rank-{rank}.pt")
        report["params"] = torch.load(pt, weights_only=True) if os.path.exists(pt) else {}
        reports.append(report)
    return assemble(config, reports, None, meta["device"], meta["backend"], meta["wall_s"], local=False)


def resolve_split_points(config: RunConfig, custom: tuple | None = None) -> RunConfig:
    """The config with its split points chosen (balancing the blocks'
    FLOPs) when it cuts the model and none were given."""
    if config.stages == 1 or config.split_points is not None:
        return config
    model = custom[0] if custom else build_model(config.model, config.seed)
    data = custom[1] if custom else load_dataset(config.model)
    costs = [max(1, b.flops) for b in _infos(config, model, data)]
    return config.replace(split_points=config.resolved_split_points(costs))


def assemble(config: RunConfig, reports: list[dict], custom: tuple | None, device_type: str, backend: str,
             wall: float, local: bool = True) -> RunResult:
    """Merge the ranks' reports into a RunResult and check the trained
    model against the same training on one device, run here. ``local``:
    the ranks ran on this machine (so its core count says whether they
    shared cores)."""
    full_model = copy.deepcopy(custom[0]) if custom else build_model(config.model, config.seed)
    data = custom[1] if custom else load_dataset(config.model)
    split_points = config.split_points or ()
    ranges = stage_ranges(split_points, len(full_model))
    ranks = [RankReport(rank=r["rank"], dp_rank=r["dp_rank"], stage=r["stage"], blocks=ranges[r["stage"]],
                        timeline=r["timeline"], step_times=[tuple(t) for t in r["step_times"]],
                        memory=r["memory"], threads=r["threads"], tp_rank=r["tp_rank"],
                        stages=[(s, *ranges[s]) for s in config.rank_stages(r["stage"])],
                        output=r.get("output", ""))
             for r in reports]
    _rebase_clock(ranks)
    account(ranks)
    balance = stage_balance(ranks, _infos(config, full_model, data), split_points)
    losses = [sum(p for p in parts if p is not None)
              for parts in zip(*(r["loss_parts"] for r in reports))]
    trained = _gather(full_model, [r["params"] for r in reports])

    notes = _notes(config, device_type) if local else []
    baseline_model, baseline_losses = single_device_run(config, custom, data)
    note = divergence_note(config, reports, losses, baseline_losses)
    if note:
        notes.append(note)
    diff = max_abs_param_diff(trained, baseline_model)
    accuracy = evaluate(trained, data)
    baseline = {
        "max_abs_param_diff": diff,
        "final_loss_diff": abs(losses[-1] - baseline_losses[-1]),
        "tolerance": BASELINE_TOLERANCE,
        "passed": diff <= BASELINE_TOLERANCE,
        "losses": baseline_losses,
        "accuracy": evaluate(baseline_model, data),
    }
    return RunResult(config=config, device=device_type, backend=backend, world_size=config.world_size,
                     losses=losses, throughput_samples_per_s=throughput(ranks, config.global_batch),
                     baseline=baseline, ranks=ranks, split_points=tuple(split_points), accuracy=accuracy,
                     wall_s=wall, notes=notes, model=trained,
                     predictions=_predictions(config, custom, data), bubble=_bubble(config, ranks),
                     stage_balance=balance, tensor_plan=_tensor_plan(config, full_model, notes))


def _predictions(config: RunConfig, custom: tuple | None, data: Dataset) -> list[dict]:
    """The cost model's figures for each rank."""
    from dataclasses import asdict

    from .cost import predict

    if custom:
        preds = predict(config, model=custom[0], sample=data.train_x[0], target=data.train_y[0])
    else:
        preds = predict(config)
    return [asdict(p) for p in preds]


def divergence_note(config: RunConfig, reports: list[dict], losses: list[float],
                    baseline_losses: list[float]) -> str | None:
    """Says where training diverged (a loss of inf or NaN): on the ranks,
    which stopped together after that step, and on one device."""
    import math

    hit = next((r["diverged"] for r in reports if r.get("diverged")), None)
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


def _tensor_plan(config: RunConfig, model: nn.Sequential, notes: list[str]) -> dict[str, str] | None:
    """{layer name: "colwise" | "rowwise"} of a tensor-parallel run; the
    layers it leaves replicated, and why, go to ``notes``."""
    from .strategies.tensor import plan_tensor_parallel

    if config.tp_size == 1:
        return None
    plan = plan_tensor_parallel(model, config.tp_size)
    if plan.note():
        notes.append(plan.note())
    return dict(plan.styles)


def _bubble(config: RunConfig, ranks: list[RankReport]) -> dict | None:
    """Measured idle share of each pipeline rank beside (p-1)/(m+p-1)."""
    from .cost import bubble_fraction

    if not config.pipelined:
        return None
    p, m = config.pp_size, config.micro_batches
    schedule = config.schedule if config.scheduled else "gpipe"
    v = config.virtual_stages if config.scheduled else 1
    formula = f"(p-1)/(m+p-1) with p={p}, m={m}" if v == 1 else \
        f"{schedule} with p={p}, v={v}, m={m}"
    return {"predicted": bubble_fraction(schedule, p, m, v), "formula": formula,
            "measured": [r.time["idle"] / r.time["window"] for r in ranks]}


_BASELINES: dict[tuple, tuple[dict, list[float]]] = {}
_BASELINES_KEPT = 16


def single_device_run(config: RunConfig, custom: tuple | None, data: Dataset) -> tuple[nn.Sequential, list[float]]:
    """The single-device run of ``config``: the trained model and its losses.

    For a named model it depends only on (model, global batch, steps, lr,
    optimizer, seed), not on how the run was split, so the last few are
    kept: re-running a config with another split or schedule skips it."""
    model = copy.deepcopy(custom[0]) if custom else build_model(config.model, config.seed)
    key = None if custom else (config.model, config.global_batch, config.steps, config.lr, config.optimizer,
                               config.seed)
    if key in _BASELINES:
        state, losses = _BASELINES[key]
        model.load_state_dict(state)
        return model, list(losses)
    losses = train_single(config, model, data)
    if key is not None:
        if len(_BASELINES) >= _BASELINES_KEPT:
            _BASELINES.pop(next(iter(_BASELINES)))
        _BASELINES[key] = ({k: v.clone() for k, v in model.state_dict().items()}, list(losses))
    return model, losses


def train_single(config: RunConfig, model: nn.Sequential, dataset: Dataset) -> list[float]:
    """The baseline: the same loop, one device, whole batch, no recording."""
    single = config.replace(strategy="single", world_size=1, split_points=None, batch_partition=None,
                            micro_batches=1, dp=None, pp=None, tp=None)
    out = train_rank(single, Topology(0, 1, 1), model, dataset, Recorder(enabled=False), Groups(),
                     torch.device("cpu"))
    return out["loss_parts"]


@torch.no_grad()
def max_abs_param_diff(a: nn.Module, b: nn.Module) -> float:
    """max over every parameter entry of |a - b|."""
    return max(float((p - q).abs().max()) for p, q in zip(a.parameters(), b.parameters()))


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset) -> float | None:
    """Held-out accuracy (argmax of the last dim), for classification tasks."""
    if dataset.task != "classification" or dataset.test_x is None:
        return None
    pred = model(dataset.test_x).argmax(-1)
    return float((pred == dataset.test_y).float().mean())


def resolve_device(config: RunConfig) -> tuple[str, str]:
    """(device type, backend): one CUDA GPU per rank when enough are visible."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if config.device == "cuda" and gpus < config.world_size:
        raise ConfigError("device", config.device,
                          f"needs {config.world_size} visible CUDA GPUs (one per rank); {gpus} visible")
    device = config.device if config.device != "auto" else ("cuda" if gpus >= config.world_size else "cpu")
    backend = config.backend if config.backend != "auto" else ("nccl" if device == "cuda" else "gloo")
    return device, backend


def _notes(config: RunConfig, device: str) -> list[str]:
    notes = []
    cores = cpu_count()
    if device == "cpu" and config.world_size > cores:
        notes.append(f"{config.world_size} ranks share {cores} CPU cores: timings include contention")
    if device == "cuda":
        notes.append(f"ran on {config.world_size} CUDA GPUs")
    return notes


def _infos(config: RunConfig, model: nn.Sequential, data: Dataset):
    if config.model != "custom":
        return model_block_infos(config.model)
    return block_infos(model, data.train_x[0])


def _rebase_clock(ranks: list[RankReport]) -> None:
    """Time 0 is when the first rank began step 0."""
    t0 = min(r.step_times[0][0] for r in ranks)
    for r in ranks:
        r.step_times = [(a - t0, b - t0) for a, b in r.step_times]
        for e in r.timeline:
            e["start"] -= t0
            e["end"] -= t0


def _gather(model: nn.Sequential, parts: list[dict[str, torch.Tensor]]) -> nn.Sequential:
    """Load every parameter reported by the ranks into ``model``."""
    state = {}
    for p in parts:
        state.update(p)
    names = {n for n, _ in model.named_parameters()}
    missing = names - set(state)
    if missing:
        raise RuntimeError(f"no rank reported parameters {sorted(missing)[:5]}")
    model.load_state_dict(state, strict=False)
    return model


__all__ = ["run", "train_single", "evaluate", "resolve_device", "MODELS"]
