"""One rank's training step on fake tensors under a fake process group:
what it holds (``Measured``) and what it moves, counted as a run counts them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from playground import instrument
from playground.spec.config import PlanConfig
from playground.spec.partition import stage_ranges
from playground.spec.topology import Topology
from playground.zoo import levers
from playground.zoo.datasets import loss_fn as task_loss
from playground.predict.formulas import all_reduce_bytes, ddp_initial_buckets
from playground.predict.saved import SavedTensors
from playground.rank.recorder import Recorder, local_bytes, memory_bytes
from playground.rank.strategies import strategy_class
from playground.rank.training import make_groups, make_optimizer
from playground.planning.presets import PRESETS, build_preset
from playground.planning.subject import Layout, Subject

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "broadcast")


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
    fake process group (left destroyed on return), as ``rank.training``
    runs it: the levers on every block (``levers.on_blocks``: recompute,
    bf16 autocast, the loss under autocast too), the strategy class the run
    would use (``strategy_class``: data at ZeRO stage 2 or 3 is FSDP2, with
    bf16 gathers under ``levers.fsdp_mixed_precision``), the optimizer over
    the dp group (ZeRO stage 1: ``ZeroRedundancyOptimizer``), and the
    step as k micro-steps of B / k samples (``_accumulated_step``)."""
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
            with levers.on_blocks(model, cfg.recompute, cfg.precision, "cpu"):
                loss_fn = levers.with_autocast(task_loss(subject.task), "cpu", cfg.precision)
                strategy = strategy_class(cfg)(model, topology, cfg, recorder, loss_fn, groups)
                optimizer = make_optimizer(cfg, strategy.module.parameters(), groups.dp, recorder)
                x = torch.zeros((cfg.global_batch, *subject.x[0]), dtype=subject.x[1])
                y = torch.zeros((cfg.global_batch, *subject.y[0]), dtype=subject.y[1])
                with strategy.context(), BlockActivations(model, recorder.saved) as activations:
                    if cfg.pipelined:
                        stage_bytes, saves, comm = _pipeline_step(cfg, strategy, model, x, y, loss_fn, activations)
                        _collectives(recorder.events, comm)
                    else:
                        recorder.ignore_only_storages_of(strategy.module.parameters())
                        stage_bytes, saves = [], (False, False)
                        comm = _accumulated_step(cfg, strategy, recorder, loss_fn, x, y)
                    begun = len(recorder.events)
                    if optimizer is not None:
                        optimizer.step()
                    _collectives(recorder.events[begun:], comm)
            memory = memory_bytes(strategy.local_model, optimizer)
            blocks = _block_bytes(strategy.local_model, optimizer, activations.bytes)
    return Measured(memory=memory, activations=recorder.activations_peak, stage_bytes=stage_bytes,
                    saves_input=saves[0], saves_target=saves[1], comm=comm, blocks=blocks)


def _accumulated_step(cfg: PlanConfig, strategy, recorder: Recorder, loss_fn, x: torch.Tensor,
                      y: torch.Tensor) -> dict[str, dict[str, float]]:
    """Forward and backward of the global batch as ``training.accumulated_step``
    runs it: k micro-steps of B / k samples (``levers.micro_steps``), each
    rank taking its share of each, gradients reduced in the last micro-step
    only (``levers.gradient_sync``). The micro-steps are alike, so the
    first, the second and the last are run and the collectives of the
    second stand for micro-steps 2 to k - 1. Returns the collectives per step."""
    k = cfg.grad_accumulation
    part = getattr(strategy, "part", None)  # 'single' trains on the whole batch
    weight = part.weight if part is not None else 1.0 / k
    stands_for = {0: 1, 1: k - 2, k - 1: 1} if k > 2 else {i: 1 for i in range(k)}
    comm: dict[str, dict[str, float]] = {}
    xs, ys = levers.micro_steps(x, y, k)[0]
    if part is not None:
        xs, ys = part.take(xs), part.take(ys)
    for i, times in stands_for.items():
        begun = len(recorder.events)
        with levers.gradient_sync(strategy.module, enabled=i == k - 1):
            loss = recorder.forward_and_loss(strategy.module, loss_fn, xs, ys)
            (loss * weight).backward()
        _collectives(recorder.events[begun:], comm, times)
    return comm


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
    stage_bytes, sent, sends, saves_input, saves_target, ddp_bytes = [], 0, 0, False, False, []
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
        if not stage.is_last and owner[s + 1] != me:  # each micro-batch's activations forward
            sent += m * out.numel() * out.element_size()
            sends += m
        if not stage.is_first and owner[s - 1] != me:  # each micro-batch's input gradient back
            sent += m * inp.numel() * inp.element_size()
            sends += m
        (loss if loss is not None else out).backward(None if loss is not None else torch.zeros_like(out))
    strategy._reduce_tied_gradients()
    comm = {"send": {"calls_per_step": float(sends), "bytes_per_step": float(sent),
                     "ring_bytes_per_step": float(sent)}} if sent else {}
    if ddp_bytes:
        n = strategy.topology.dp
        comm["all_reduce (DDP, formula)"] = {"calls_per_step": float(len(ddp_bytes)),
                                             "bytes_per_step": float(sum(ddp_bytes)),
                                             "ring_bytes_per_step": float(sum(all_reduce_bytes(b, n) for b in ddp_bytes))}
    return stage_bytes, (saves_input, saves_target), comm


def _collectives(events: list[dict], into: dict[str, dict[str, float]], times: int = 1) -> None:
    """Add ``times`` x the calls, payload bytes and ring bytes per collective
    kind of ``events`` to ``into``, as ``result.accounting.traffic_per_step``
    counts a run's: 2 (n - 1) / n B sent for an all-reduce, (n - 1) / n B
    for an all-gather, a reduce-scatter or (a rank's mean share) a broadcast."""
    for e in events:
        if e["kind"] not in COLLECTIVES:
            continue
        n, b = e["group_size"], e["bytes"]
        entry = into.setdefault(e["kind"], {"calls_per_step": 0.0, "bytes_per_step": 0.0, "ring_bytes_per_step": 0.0})
        entry["calls_per_step"] += times
        entry["bytes_per_step"] += times * b
        entry["ring_bytes_per_step"] += times * (all_reduce_bytes(b, n) if e["kind"] == "all_reduce"
                                                 else (n - 1) * b // n)


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
    state = getattr(optimizer, "state_held", optimizer.state) if optimizer is not None else {}
    out: dict[int, int] = dict(activations)
    for name, p in local.named_parameters():
        block = int(name.split(".", 1)[0]) if name.split(".", 1)[0].isdigit() else -1
        held = local_bytes(p) + (local_bytes(p.grad) if p.grad is not None else 0)
        held += sum(local_bytes(v) for v in state.get(p, {}).values() if isinstance(v, torch.Tensor))
        out[block] = out.get(block, 0) + held
    return out


def _in_dtype(dtype: torch.dtype, build, *args):
    """``build(*args)`` with ``dtype`` as torch's default: parameters made in it."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return build(*args)
    finally:
        torch.set_default_dtype(before)


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

