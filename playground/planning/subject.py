"""What is planned: the model and one batch's shapes (``Subject``), the
config checked for planning (``plan_config``), where the blocks go
(``Layout``) and which ranks run the same step (``kind_keys``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from playground.spec.config import PRESET_BLOCKS, ConfigError, PlanConfig, RunConfig
from playground.spec.partition import stage_ranges
from playground.zoo.datasets import load_dataset
from playground.zoo.models import MODELS, build_model, model_block_infos
from playground.predict.formulas import chunk_rows
from playground.planning.presets import PRESETS, block_labels, build_preset


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
        return Subject(build=lambda n: build_preset(config.model, n), labels=block_labels(config.model),
                       x=((s,), torch.long), y=((s,), torch.long), task="classification", layers=p.layers,
                       block_costs=costs)
    spec, data = MODELS[config.model], load_dataset(config.model)
    return Subject(build=lambda n: build_model(config.model, config.seed), labels=spec.block_labels,
                   x=(spec.sample_shape, spec.sample_dtype), y=(tuple(data.train_y.shape[1:]), data.train_y.dtype),
                   task=data.task, layers=None, block_costs=[max(1, b.flops) for b in model_block_infos(config.model)])


def _layer_shapes(p) -> list[torch.Tensor]:
    with torch.device("meta"):
        return list(build_preset(p.name, 1)[1].parameters())


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


def kind_keys(config: PlanConfig, widths: list[int], owned: list[list[int]] | None = None
              ) -> tuple[list, list, list]:
    """Per axis, a key for each place on it such that ranks with equal keys
    on every axis run the same step on tensors of the same shapes: the
    pp rank (its stages), the tp rank (the shard of every width), the dp
    rank (its batch, its FSDP shard of every width, and with ``owned``, the
    bytes of each parameter whose optimizer state it keeps at ZeRO stage 1)."""
    dp, pp, tp = config.dp_size, config.pp_size, config.tp_size
    sharded = config.resolved_zero_stage in (2, 3)  # fsdp, data at stage 2 or 3, hybrid dp x tp
    tp_keys = [tuple(chunk_rows(w, tp, r) for w in widths) for r in range(tp)]
    local = sorted({c for key in tp_keys for c in key} | set(widths))
    batches = config.rank_batches()
    dp_keys = [(batches[r], tuple(chunk_rows(w, dp, r) for w in local) if sharded else (),
                tuple(sorted(owned[r])) if owned is not None else ()) for r in range(dp)]
    pp_keys = [config.rank_stages(r) for r in range(pp)]
    return dp_keys, pp_keys, tp_keys


