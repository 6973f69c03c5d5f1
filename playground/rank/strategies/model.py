"""model: the model cut at the split points, one stage per rank. Stage s
computes its blocks on the activations received from stage s-1 and sends
its output to stage s+1; in backward the gradients travel the other way.

This is a pipeline with a single micro-batch, so it runs on the same
torch.distributed.pipelining machinery (a GPipe schedule with m = 1): while
one stage works, every other stage waits.
"""

from __future__ import annotations

from playground.rank.strategies.pipeline import Pipeline


class ModelParallel(Pipeline):
    schedule_name = "gpipe"
