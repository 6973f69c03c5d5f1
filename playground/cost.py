"""The cost model's public names, gathered from ``playground.predict``
(``formulas``: pure arithmetic; ``profile``: what runs the model to
measure; ``predict``: one loop over the ranks)."""

from .predict.formulas import (
    DDP_BUCKET_BYTES, DDP_FIRST_BUCKET_BYTES, UNIT_TIMES, Action, RankReplay, ReplayCosts, all_reduce_bytes,
    bubble_overhead, chunk_rows, data_parallel_bytes, ddp_buckets, ddp_initial_buckets, fsdp_step_bytes,
    gather_bytes, held_peak, in_flight, optimizer_bytes, output_stage, pipeline_bubble, pipeline_ddp_bytes,
    replay_schedule, replayed_idle, shard_bytes, stage_shares, table_bubble, broadcast_bytes, zero1_partition,
    zero_memory, zero_step_volume,
)
from .predict.predict import LOOPED, RankPrediction, bubble_fraction, predict, simulated_bubble, zero_formulas
from .predict.profile import (
    StageActivations, fsdp_gather_bytes, fsdp_shard_bytes, fsdp_units, output_bytes, param_bytes,
    split_backward_peak, split_backward_step, stage_activations, tensor_all_reduces, tensor_local_model,
)

__all__ = [
    "RankPrediction", "predict", "bubble_fraction", "simulated_bubble", "pipeline_bubble", "table_bubble",
    "bubble_overhead", "in_flight", "held_peak", "replay_schedule", "replayed_idle", "ReplayCosts", "RankReplay",
    "Action", "output_stage", "UNIT_TIMES", "LOOPED", "all_reduce_bytes", "ddp_buckets", "ddp_initial_buckets",
    "data_parallel_bytes", "pipeline_ddp_bytes", "DDP_FIRST_BUCKET_BYTES", "DDP_BUCKET_BYTES", "chunk_rows",
    "shard_bytes", "gather_bytes", "fsdp_step_bytes", "optimizer_bytes", "stage_shares", "stage_activations",
    "StageActivations", "output_bytes", "param_bytes", "tensor_local_model", "tensor_all_reduces", "fsdp_units",
    "fsdp_shard_bytes", "fsdp_gather_bytes", "split_backward_step", "split_backward_peak",
    "broadcast_bytes", "zero1_partition", "zero_memory", "zero_step_volume", "zero_formulas",
]
