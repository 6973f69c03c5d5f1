"""hybrid: a 2-D mesh of ranks, one axis per kind of split.

  dp x pp   dp replicas of a pp-stage pipeline: each replica trains on its
            share of the batch; DDP all-reduces each stage's gradients
            among the dp ranks holding that stage.
  dp x tp   each layer cut among tp ranks (as in 'tensor'); FSDP shards
            those ranks' parameters over the dp replicas, each replica
            training on its share of the batch.

Both are the pipeline and tensor strategies on a mesh with dp > 1.
"""

from __future__ import annotations

from playground.rank.strategies.pipeline import Pipeline
from playground.rank.strategies.tensor import TensorParallel


def Hybrid(model, topology, config, recorder, loss_fn, groups):
    """The strategy for this mesh: a pipeline when pp > 1, else tensor parallel."""
    cls = Pipeline if topology.pp > 1 else TensorParallel
    return cls(model, topology, config, recorder, loss_fn, groups)
