"""What one run trains, resolved once: the model, its data, its blocks'
profile, what the model is made of, and where it is cut.

``resolve_workload`` is called at the top of ``run()`` (and of
``load_result`` and a torchrun rank) for named and custom models alike.
It builds the model once; everything after it (the ranks' job, the
single-device baseline, the cost model, the views' block table) works on
copies of that one model and on the profile taken here. A zoo model's
profile and facts depend on its name only, so they are kept per name.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from playground.spec.config import ConfigError, RunConfig
from playground.zoo.custom import prepare_custom
from playground.zoo.datasets import Dataset, load_dataset, loss_fn
from playground.zoo.facts import ModelFacts, block_of, inspect_model
from playground.zoo.models import MODELS, BlockInfo, block_infos, build_model, remember_zoo_block_infos
from playground.spec.partition import stage_ranges


@dataclass
class Workload:
    """One run's model and data, profiled and cut."""

    config: RunConfig
    """The config with split points resolved (and the unused parameters named)."""
    model: nn.Sequential
    """The initial model. Never trained or probed in place: ``fresh_model()``
    gives a copy to train, ``probe_copy()`` one to measure."""
    dataset: Dataset
    infos: tuple[BlockInfo, ...]
    """Each block's parameters, forward FLOPs per sample and output shape."""
    facts: ModelFacts
    """BatchNorm, random blocks, tied and unused parameters."""
    custom: bool
    """The caller passed the module and data (else a zoo model)."""
    notes: list[str] = field(default_factory=list)
    """What the up-front checks changed (targets cast, ...)."""

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """[first, end) blocks of each stage."""
        return stage_ranges(self.config.split_points or (), len(self.model))

    def fresh_model(self) -> nn.Sequential:
        return copy.deepcopy(self.model)

    def probe_copy(self) -> nn.Sequential:
        return probe_copy(self.model)

    def rank_payload(self) -> tuple[nn.Sequential, Dataset] | None:
        """What a rank needs besides the config: a custom model and its data
        (a zoo model is built by the rank itself, from its name and seed)."""
        return (self.model, self.dataset) if self.custom else None


def resolve_workload(config: RunConfig, model: nn.Sequential | None = None, dataset: Any = None) -> Workload:
    """The run's workload; raises ``ConfigError`` before any process starts
    for a custom model or dataset the ranks would fail on, and for a tie
    the split cannot keep."""
    config, custom, notes = prepare_custom(config, model, dataset)
    if custom is not None:
        built, data = copy.deepcopy(custom[0]), custom[1]
        infos = tuple(block_infos(probe_copy(built), data.train_x[0],
                                  tuple(type(block).__name__ for block in built)))
        facts = inspect_model(built, data.train_x, data.train_y, loss_fn(data.task))
    else:
        built, data = build_model(config.model, config.seed), load_dataset(config.model)
        infos = _zoo_infos(config.model, built)
        facts = _zoo_facts(config.model, built, data)
    config = with_split_points(config, infos)
    check_tied_parameters(config, facts)
    if facts.unused:
        config = config.replace(unused_parameters=facts.unused)
    return Workload(config=config, model=built, dataset=data, infos=infos, facts=facts, custom=custom is not None,
                    notes=notes)


def with_split_points(config: RunConfig, infos) -> RunConfig:
    """The config with its split points chosen (balancing the blocks'
    estimated FLOPs) when it cuts the model and none were given."""
    if config.stages == 1 or config.split_points is not None:
        return config
    return config.replace(split_points=config.resolved_split_points([max(1, b.flops) for b in infos]))


def probe_copy(model: nn.Module) -> nn.Module:
    """A copy to probe in eval mode, which cannot fail on one sample
    (BatchNorm uses its running statistics) and updates no buffer."""
    return copy.deepcopy(model).eval()


_ZOO_FACTS: dict[str, ModelFacts] = {}


def _zoo_infos(name: str, model: nn.Sequential) -> tuple[BlockInfo, ...]:
    spec = MODELS[name]
    sample = torch.zeros(spec.sample_shape, dtype=spec.sample_dtype)
    return remember_zoo_block_infos(name, lambda: block_infos(probe_copy(model), sample, spec.block_labels))


def _zoo_facts(name: str, model: nn.Sequential, data: Dataset) -> ModelFacts:
    if name not in _ZOO_FACTS:
        _ZOO_FACTS[name] = inspect_model(model, data.train_x, data.train_y, loss_fn(data.task))
    return _ZOO_FACTS[name]


def check_tied_parameters(config: RunConfig, facts: ModelFacts) -> None:
    """Refuse a tie that data parallelism over pipeline stages cannot keep:
    with dp > 1 each stage is its own DDP module, so a parameter shared by
    two stages on one rank would be all-reduced by both."""
    if not facts.tied or not config.pipelined or config.dp_size == 1:
        return
    from playground.zoo.models import model_num_blocks

    ranges = stage_ranges(config.split_points or (), config.num_blocks or model_num_blocks(config.model))
    stage_of_block = {b: s for s, (first, end) in enumerate(ranges) for b in range(first, end)}
    for names in facts.tied:
        stages = sorted({stage_of_block[block_of(n)] for n in names})
        for r in range(config.pp_size):
            both = [s for s in stages if s in config.rank_stages(r)]
            if len(both) > 1:
                raise ConfigError("split_points", config.split_points,
                                  f"parameter {names[0]} is shared (tied) as {', '.join(names)}, held by stages "
                                  f"{', '.join(map(str, both))}, all on pipeline rank {r}: with dp={config.dp_size} "
                                  f"each stage is its own DDP module and both would reduce it; cut so that its "
                                  f"blocks share one stage or sit on different ranks")
