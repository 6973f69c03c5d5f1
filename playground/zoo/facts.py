"""What a model holds and does beyond its parameters' values, found before
any rank starts: BatchNorm layers (batch statistics and running buffers),
random blocks (Dropout and the like), parameters shared by several blocks
(weight tying) and parameters that receive no gradient.

Every probe works on a deep copy, under a forked random state, so the
module and the generators the caller holds are left as they were.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from playground.zoo.models import GLOBAL_RNG

PROBE_SAMPLES = 4
"""Rows of the training set the probes run (at least 2, so that BatchNorm in
training mode has more than one value per channel)."""


@dataclass(frozen=True)
class ModelFacts:
    batchnorm: tuple[str, ...] = ()
    """Names of the BatchNorm modules, e.g. ``("0.1",)``."""
    random_blocks: tuple[int, ...] = ()
    """Blocks whose training-mode output depends on the random generators."""
    random_labels: tuple[str, ...] = ()
    """One label per random block, e.g. ``"block 2 (Dropout)"``."""
    tied: tuple[tuple[str, ...], ...] = ()
    """Groups of parameter names that are one Parameter, e.g. ``(("0.weight", "4.weight"),)``."""
    unused: tuple[str, ...] = ()
    """Parameters left without a gradient by a forward and backward in training mode."""

    def batchnorm_labels(self, model: nn.Module) -> list[str]:
        """``"block 0 (0.1 BatchNorm2d)"`` for each BatchNorm module."""
        modules = dict(model.named_modules())
        return [f"block {block_of(n)} ({n} {type(modules[n]).__name__})" for n in self.batchnorm if n in modules]


def block_of(name: str) -> int:
    """The block a parameter or module name belongs to: ``"4.0.weight"`` -> 4."""
    return int(name.split(".", 1)[0])


def inspect_model(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, loss_fn) -> ModelFacts:
    """The facts of ``model``, probed with the first rows of ``x``, ``y``
    (``PROBE_SAMPLES``, at least 2 where the data has them)."""
    batchnorm = tuple(n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    x, y = x[:PROBE_SAMPLES], y[:PROBE_SAMPLES]
    random = _random_blocks(model, x)
    labels = tuple(f"block {i} ({_random_kinds(model[i])})" for i in random)
    return ModelFacts(batchnorm=batchnorm, random_blocks=random, random_labels=labels,
                      tied=tied_parameters(model), unused=_unused_parameters(model, x, y, loss_fn))


def tied_parameters(model: nn.Module) -> tuple[tuple[str, ...], ...]:
    """Groups of names under which one Parameter appears more than once."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return tuple(tuple(group) for group in names.values() if len(group) > 1)


def _random_blocks(model: nn.Sequential, x: torch.Tensor) -> tuple[int, ...]:
    """Blocks whose output, in training mode, changes with the seed: each
    block runs twice on the same input, under seeds 1 and 2."""
    probe = copy.deepcopy(model).train()
    found = []
    try:
        with GLOBAL_RNG, torch.random.fork_rng(devices=[]), torch.no_grad():
            for i, block in enumerate(probe):
                outputs = []
                for seed in (1, 2):
                    torch.manual_seed(seed)
                    outputs.append(block(x))
                if isinstance(outputs[0], torch.Tensor) and not torch.equal(outputs[0], outputs[1]):
                    found.append(i)
                x = outputs[0]
    except Exception:  # noqa: BLE001 - a block that fails here fails in the run, which says why
        pass
    return tuple(found)


def _random_kinds(block: nn.Module) -> str:
    """Names of the layers in ``block`` known to draw random numbers, or the block's class."""
    kinds = sorted({type(m).__name__ for m in block.modules()
                    if isinstance(m, (nn.modules.dropout._DropoutNd, nn.RReLU))})
    return ", ".join(kinds) or type(block).__name__


def _unused_parameters(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, loss_fn) -> tuple[str, ...]:
    """Parameters with no gradient after one forward and backward (training
    mode, or eval mode where training mode cannot run on the probe's rows)."""
    for mode in ("train", "eval"):
        probe = copy.deepcopy(model).train(mode == "train")
        try:
            with GLOBAL_RNG, torch.random.fork_rng(devices=[]):
                loss_fn(probe(x), y).backward()
        except Exception:  # noqa: BLE001 - the run reports a model that cannot train
            continue
        return tuple(n for n, p in probe.named_parameters() if p.requires_grad and p.grad is None)
    return ()


def differences(facts: ModelFacts, model: nn.Module, world_size: int, dp_size: int, micro_batches: int,
                pipelined: bool, sync_batchnorm: bool) -> list[str]:
    """Why this run cannot equal single-device training, one sentence per
    reason, naming the blocks: empty where it should match.

    BatchNorm normalises with the statistics of the batch it sees: each
    data-parallel rank sees b_r of the B samples (unless ``sync_batchnorm``
    all-reduces the statistics), each micro-batch B / m. Random blocks draw
    from each rank's own generator, seeded from (seed, rank), so the masks
    differ from those one device draws."""
    why = []
    bn = facts.batchnorm_labels(model)
    if bn and dp_size > 1 and not sync_batchnorm:
        why.append(f"BatchNorm in {', '.join(bn)} normalises each of the {dp_size} data-parallel ranks' shards "
                   f"with that shard's own mean and variance (one device uses the whole batch's), so the "
                   f"gradients and running statistics differ; sync_batchnorm=True (SyncBatchNorm) "
                   f"normalises over the whole batch")
    if bn and pipelined and micro_batches > 1:
        why.append(f"BatchNorm in {', '.join(bn)} normalises each of the {micro_batches} micro-batches with its "
                   f"own mean and variance (one device uses the whole batch's); SyncBatchNorm does not change "
                   f"that: use micro_batches=1 for an exact match")
    if facts.random_blocks and world_size > 1:
        why.append(f"random layers in {', '.join(facts.random_labels)} draw from each rank's own generator, "
                   f"seeded from (seed, rank): their masks differ from one device's, so only the losses are "
                   f"compared")
    return why


def tied_stages(model: nn.Sequential, ranges: list[tuple[int, int]], config) -> list[tuple[tuple[str, ...], list[int]]]:
    """Each tied parameter (names of one Parameter) with the pipeline ranks
    whose stages hold a copy, where more than one does."""
    stage_of_block = {b: s for s, (first, end) in enumerate(ranges) for b in range(first, end)}
    rank_of_stage = {s: r for r in range(config.pp_size) for s in config.rank_stages(r)}
    found = []
    for names in tied_parameters(model):
        pp_ranks = sorted({rank_of_stage[stage_of_block[block_of(n)]] for n in names})
        if len(pp_ranks) > 1:
            found.append((names, pp_ranks))
    return found
