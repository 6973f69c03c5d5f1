"""single: the whole model and the whole batch on one device: the baseline
every other strategy is checked against."""

from __future__ import annotations

import contextlib

from playground.rank.recorder import Recorder
from playground.zoo.datasets import BatchShare


class Single:
    def __init__(self, model, topology, config, recorder: Recorder, loss_fn, groups):
        self.module = self.local_model = model
        self.recorder = recorder
        self.loss_fn = loss_fn
        # The whole batch, or with gradient accumulation each micro-step's
        # loss weighted 1/k.
        self.part = BatchShare.of(config, 0)

    def context(self):
        return contextlib.nullcontext()

    def train_step(self, x, y) -> float:
        rec = self.recorder
        loss = rec.forward_and_loss(self.module, self.loss_fn, x, y)
        with rec.span("backward", stage=0, micro_batch=0):
            (loss * self.part.weight).backward()
        return loss.item() * self.part.share
