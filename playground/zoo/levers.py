"""The memory and precision levers a rank pulls around its blocks, whatever
the strategy: activation recomputation, bf16 autocast, and gradient
accumulation over micro-steps.

Recomputation and autocast act on each block of the model (an entry of the
``nn.Sequential``) by giving the block instance a forward of its own that
calls the block's forward inside them; the block's hooks (FSDP's gathers,
DTensor's redistributions) stay outside, where every strategy put them, and
its parameter names do not change. ``on_blocks`` puts the forwards back.
The cost model applies the same levers to its copy of the model, so what
it measures is what the rank runs.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop


def autocast(device_type: str, precision: str) -> ContextManager:
    """``torch.autocast`` to bf16 for precision "bf16"; nothing for "fp32"."""
    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def on_blocks(model: nn.Sequential, recompute: str, precision: str, device_type: str,
              recomputing: Callable[[int], ContextManager] | None = None) -> Iterator[nn.Sequential]:
    """Run every block of ``model`` under the levers until the block exits.

    recompute "full": the block's forward runs under
    ``torch.utils.checkpoint.checkpoint(use_reentrant=False)``: autograd
    keeps the block's inputs only, and during backward the forward runs
    again, whole (early stop off), with the RNG state and autocast of the
    first run (Dropout draws the same mask), to rebuild what the block's
    backward needs. The checkpoint
    enters ``recomputing(block_index)`` around that second run.
    precision "bf16": the block's forward runs under ``autocast``.
    """
    def wrapped(index: int, forward):
        def run(*args, **kwargs):
            with autocast(device_type, precision):
                return forward(*args, **kwargs)

        if recompute != "full":
            return run

        def contexts():
            again = recomputing(index) if recomputing is not None else contextlib.nullcontext()
            return contextlib.nullcontext(), again

        def recomputed(*args, **kwargs):
            # The whole forward again, not cut short once the tensors backward
            # needs are back: what the timeline shows and the cost model counts
            # (tensor parallel repeats every forward all-reduce).
            with set_checkpoint_early_stop(False):
                return checkpoint(run, *args, use_reentrant=False, context_fn=contexts, **kwargs)

        return recomputed

    if recompute == "none" and precision == "fp32":
        yield model
        return
    own = [(block, block.__dict__.get("forward")) for block in model]
    try:
        for index, block in enumerate(model):
            block.forward = wrapped(index, block.forward)
        yield model
    finally:
        for block, before in own:
            if before is None:
                del block.forward
            else:
                block.forward = before


def fsdp_mixed_precision(precision: str) -> dict:
    """``fully_shard``'s keyword for ``precision``: for "bf16", FSDP2's
    MixedPrecisionPolicy with bf16 parameters (each all-gather carries 2
    bytes per parameter, half of fp32's) and fp32 gradient reduction (the
    reduce-scatter sums in fp32, as the single device's fp32 gradients
    are summed); {} for "fp32"."""
    if precision != "bf16":
        return {}
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return {"mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)}


def with_autocast(loss_fn, device_type: str, precision: str):
    """``loss_fn`` computed under ``autocast`` (autocast runs cross-entropy
    and MSE in fp32 on bf16 logits)."""
    if precision == "fp32":
        return loss_fn

    def loss(output, target):
        with autocast(device_type, precision):
            return loss_fn(output, target)

    return loss


def micro_steps(x: torch.Tensor, y: torch.Tensor, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The global batch cut into k equal, contiguous micro-steps of B / k
    samples (views); each data-parallel rank then takes its share of each
    (``BatchShare.take``)."""
    return list(zip(x.chunk(k), y.chunk(k)))


@contextlib.contextmanager
def gradient_sync(module: nn.Module, enabled: bool) -> Iterator[None]:
    """Let ``module`` reduce gradients among the data-parallel ranks in the
    backward run inside, or keep them local (accumulating) when not
    ``enabled``: DDP's ``no_sync()``; FSDP2's
    ``set_requires_gradient_sync(False)``, whose gradients then stay
    unsharded until the synchronising backward reduce-scatters their sum.
    Modules of neither kind reduce nothing: nothing to do."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    if enabled:
        yield
    elif isinstance(module, DDP):
        with module.no_sync():
            yield
    elif hasattr(module, "set_requires_gradient_sync"):
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    else:
        yield
