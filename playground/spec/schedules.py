"""Pipeline schedules as data: torch.distributed.pipelining's schedule
classes by name, and each rank's planned actions, read from the schedule
torch builds (``schedule_table``). Pure: no process group, no model."""

from __future__ import annotations

from torch.distributed.pipelining import (
    Schedule1F1B, ScheduleDualPipeV, ScheduleGPipe, ScheduleInterleaved1F1B, ScheduleInterleavedZeroBubble,
    ScheduleLoopedBFS, ScheduleZBVZeroBubble,
)

from playground.spec.config import V_SCHEDULES
from playground.instrument import is_single_stage_schedule, planned_actions

SCHEDULE_CLASSES = {
    "gpipe": ScheduleGPipe,
    "1f1b": Schedule1F1B,
    "interleaved1f1b": ScheduleInterleaved1F1B,
    "loopedbfs": ScheduleLoopedBFS,
    "interleavedzerobubble": ScheduleInterleavedZeroBubble,
    "zbvzerobubble": ScheduleZBVZeroBubble,
    "dualpipev": ScheduleDualPipeV,
}



# --------------------------------------------------------------------------
# The schedule as data


class _PlannedStage:
    """What a schedule's constructor reads of a stage: enough to build its
    action table in one process, without a process group."""

    submod = None

    def __init__(self, index: int, num_stages: int, pp: int, rank: int):
        self.stage_index, self.num_stages, self.group_size, self.group_rank = index, num_stages, pp, rank
        self.is_first, self.is_last = index == 0, index == num_stages - 1


def schedule_table(schedule: str, pp: int, micro_batches: int, virtual: int = 1) -> dict[int, list[tuple[str, int, int]]]:
    """Each rank's compute actions, in the order its schedule runs them:
    rank -> [(kind, stage, micro_batch)], kind one of forward, backward
    (input and weight gradients together), backward_input and
    backward_weight (the zero-bubble split). Built by the torch schedule
    class itself, from stand-in stages; its ValueError when it refuses
    (pp, micro_batches, virtual).

    The multi-stage schedules run their own table (``pipeline_order``).
    gpipe and 1f1b run a loop of their own; their ``pipeline_order`` (the
    table torch 2.13 builds beside that loop, one stage per rank, stage =
    rank) lists the same actions in the same order, with one fault that
    is corrected here: Schedule1F1B numbers the last rank's forwards 1..m
    instead of 0..m-1 (with no warm-up forward there, its steady phase
    increments the micro-batch before the first forward). Every executor
    runs a rank's forwards in micro-batch order, so the forwards are
    numbered by their place among the rank's forwards.
    """
    cls = SCHEDULE_CLASSES[schedule]
    if is_single_stage_schedule(cls):
        if virtual != 1:
            raise ValueError(f"schedule={schedule!r}: one stage per rank (virtual=1), not virtual={virtual}")
        built = cls(_PlannedStage(0, pp, pp, 0), n_microbatches=micro_batches, loss_fn=_no_loss)
        return {rank: _forwards_in_order(actions) for rank, actions in planned_actions(built).items()}
    n = pp * virtual
    # Every rank's schedule holds the whole table; rank 0's stages build it.
    held = (0, 2 * pp - 1) if schedule in V_SCHEDULES else range(0, n, pp)
    built = cls([_PlannedStage(i, n, pp, 0) for i in held], n_microbatches=micro_batches, loss_fn=_no_loss)
    return planned_actions(built)


def _forwards_in_order(actions: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """The k-th forward of a one-stage rank is micro-batch k."""
    out, k = [], 0
    for kind, stage, mb in actions:
        if kind == "forward":
            mb, k = k, k + 1
        out.append((kind, stage, mb))
    return out


def _no_loss(output, target):  # pragma: no cover - never called: no step runs
    raise NotImplementedError
