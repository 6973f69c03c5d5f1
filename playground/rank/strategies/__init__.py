"""One module per strategy. Each builds, for one rank, an object with:

  module       what the optimizer steps (may be wrapped, e.g. by DDP)
  local_model  the same blocks unwrapped, named as in the full model
  train_step  forward and backward of one global batch; returns this rank's
              part of the global loss (the parts of all ranks sum to it), or
              None when the rank never sees the loss
  context()   a context manager wrapped around the whole training loop
"""

from __future__ import annotations

from playground.rank.strategies.data import DataParallel
from playground.rank.strategies.fsdp import FullyShardedDataParallel
from playground.rank.strategies.hybrid import Hybrid
from playground.rank.strategies.model import ModelParallel
from playground.rank.strategies.pipeline import Pipeline
from playground.rank.strategies.single import Single
from playground.rank.strategies.tensor import TensorParallel

STRATEGY_CLASSES = {
    "single": Single,
    "data": DataParallel,
    "model": ModelParallel,
    "pipeline": Pipeline,
    "tensor": TensorParallel,
    "fsdp": FullyShardedDataParallel,
    "hybrid": Hybrid,
}


def strategy_class(config):
    """The class that runs ``config`` on a rank: the strategy's own, except
    strategy 'data' at ZeRO stage 2 or 3, which FSDP2 runs as 'fsdp' does."""
    if config.strategy == "data" and config.resolved_zero_stage >= 2:
        return FullyShardedDataParallel
    return STRATEGY_CLASSES[config.strategy]
