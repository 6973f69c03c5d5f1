"""ZeRO stage 1 beside DDP: the optimizer state sharded among the
data-parallel ranks (Rajbhandari et al. 2019, P_os), by torch's
``ZeroRedundancyOptimizer``. Imported only by runs that use it: importing
torch.distributed.optim costs time and warnings every other run is spared."""

from __future__ import annotations

from torch.distributed.optim import ZeroRedundancyOptimizer

from playground.rank.recorder import Recorder


class ShardedOptimizer(ZeroRedundancyOptimizer):
    """ZeRO stage 1: torch's ``ZeroRedundancyOptimizer`` over the dp group.

    Each rank is given whole parameters (largest first, each to the rank
    holding the fewest elements so far: ``predict.formulas.zero1_partition``),
    keeps the optimizer state of those alone, and steps them alone; then
    every rank broadcasts its updated parameters to the others. The
    gradients stay DDP's, all-reduced whole. The broadcasts are recorded as
    collectives of kind ``broadcast``.

    ``state_held``: the state this rank holds (its local optimizer's; the
    wrapper's own ``state`` stays empty)."""

    def __init__(self, params, optimizer_class, group, recorder: Recorder, lr: float):
        super().__init__(params, optimizer_class=optimizer_class, process_group=group, lr=lr)
        self.recorder = recorder

    def step(self, closure=None, **kwargs):
        with self.recorder.recording_collectives():
            return super().step(closure, **kwargs)

    @property
    def state_held(self):
        return self.optim.state
