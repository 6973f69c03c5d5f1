"""The cost model's formulas (``playground.predict.formulas``) as tables of
hand-computed cases, and the promise that they need no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import playground
from playground.predict.formulas import (
    UNIT_TIMES, ReplayCosts, all_reduce_bytes, bubble_overhead, data_parallel_bytes, ddp_buckets, ddp_initial_buckets, fsdp_step_bytes, gather_bytes, held_peak, in_flight, optimizer_bytes, output_stage, pipeline_bubble, pipeline_ddp_bytes, replay_schedule, replayed_idle, shard_bytes, stage_shares, table_bubble,
)

MiB = 1024 * 1024


def test_formulas_import_without_torch():
    """In a fresh interpreter, with the package's own ``__init__`` bypassed
    (it imports the runner), importing the formulas and using them loads no
    torch module."""
    code = (
        "import sys, types\n"
        "package = types.ModuleType('playground')\n"
        f"package.__path__ = [{str(Path(playground.__file__).parent)!r}]\n"
        "sys.modules['playground'] = package\n"
        "from playground.predict import formulas\n"
        "assert formulas.all_reduce_bytes(100, 2) == 100\n"
        "assert formulas.table_bubble({0: [('forward', 0, 0), ('backward', 0, 0)]}) == 0.0\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'torch'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------
# Pipeline bubble


@pytest.mark.parametrize("p, m, v, expected", [
    (1, 4, 1, 0.0),
    (2, 1, 1, 1 / 2),       # (p - 1) / (m + p - 1)
    (4, 1, 1, 3 / 4),
    (4, 4, 1, 3 / 7),
    (4, 12, 1, 3 / 15),
    (4, 4, 2, 3 / 11),      # (p - 1) / (v m + p - 1)
    (8, 16, 4, 7 / 71),
    (4, 2, 2, 5 / 9),       # m < p: 1 - v m / (v p + m - 1) = 1 - 4 / 9
    (3, 1, 3, 2 / 3),       # 1 - 3 / (9 + 0)
])
def test_pipeline_bubble(p, m, v, expected):
    assert pipeline_bubble(p, m, v) == pytest.approx(expected)


@pytest.mark.parametrize("p, m, v", [(0, 4, 1), (2, 0, 1), (2, 4, 0)])
def test_pipeline_bubble_rejects_sizes_below_one(p, m, v):
    with pytest.raises(ValueError, match="must be >= 1"):
        pipeline_bubble(p, m, v)


@pytest.mark.parametrize("p, m, v, expected", [(1, 4, 1, 0.0), (4, 4, 1, 3 / 4), (4, 8, 2, 3 / 16), (8, 16, 4, 7 / 64)])
def test_bubble_overhead_is_bubble_over_ideal_time(p, m, v, expected):
    overhead = bubble_overhead(p, m, v)
    assert overhead == pytest.approx(expected)
    assert pipeline_bubble(p, m, v) == pytest.approx(overhead / (1 + overhead))


F0, F1 = ("forward", 0, 0), ("forward", 1, 0)
B0, B1 = ("backward", 0, 0), ("backward", 1, 0)
I0, I1 = ("backward_input", 0, 0), ("backward_input", 1, 0)
W0, W1 = ("backward_weight", 0, 0), ("backward_weight", 1, 0)


@pytest.mark.parametrize("table, times, expected", [
    # F 0-1 | 1-2, B 2-4 | 4-6: each rank busy 3 of 6.
    ({0: [F0, B0], 1: [F1, B1]}, None, 1 / 2),
    # Backward as long as forward: busy 2 of 4.
    ({0: [F0, B0], 1: [F1, B1]}, {"forward": 1.0, "backward": 1.0}, 1 / 2),
    # Split: rank 1's weight pass (3-4) runs while rank 0 computes its input gradient (3-4); busy 3 of 5.
    ({0: [F0, I0, W0], 1: [F1, I1, W1]}, None, 2 / 5),
    # One rank alone never waits.
    ({0: [F0, F1, B1, B0]}, None, 0.0),
])
def test_table_bubble_of_hand_made_tables(table, times, expected):
    assert table_bubble(table, times or UNIT_TIMES) == pytest.approx(expected)


def test_table_bubble_refuses_a_table_that_waits_forever():
    with pytest.raises(ValueError, match="waits forever"):
        table_bubble({0: [B0, F0], 1: [F1, B1]})


def test_replay_over_two_steps_waits_for_the_sends_before_the_optimizer():
    """Forward 1, backward 2, optimizer 0.5, free transfers. Step 0: rank 0
    F 0-1; rank 1 F 1-2, B 2-4, optimizer 4-4.5 (its send went at 4);
    rank 0 B 4-6, optimizer 6-6.5. Step 1 the same, 6.5 later for rank 0
    and starting at rank 0's forward's end (7.5) for rank 1."""
    costs = ReplayCosts(duration={F0: 1.0, F1: 1.0, B0: 2.0, B1: 2.0}, optimizer={0: 0.5, 1: 0.5})
    replays = replay_schedule({0: [F0, B0], 1: [F1, B1]}, costs, steps=2)
    assert [a[4:] for a in replays[0].actions] == [(0, 1), (4, 6), (6, 6.5), (6.5, 7.5), (10.5, 12.5), (12.5, 13)]
    assert [a[4:] for a in replays[1].actions] == [(1, 2), (2, 4), (4, 4.5), (7.5, 8.5), (8.5, 10.5), (10.5, 11)]
    assert [a[3] for a in replays[1].actions] == [0, 0, 0, 1, 1, 1]
    assert replayed_idle(replays) == pytest.approx({0: 6 / 13, 1: 6 / 13})


@pytest.mark.parametrize("kind, stage, expected", [
    ("forward", 1, 2), ("backward", 1, 0), ("backward_input", 2, 1), ("backward_weight", 1, None),
])
def test_output_stage(kind, stage, expected):
    assert output_stage(kind, stage) == expected


# --------------------------------------------------------------------------
# Activations held


@pytest.mark.parametrize("schedule, p, stage, m, expected", [
    ("gpipe", 4, 0, 8, 8), ("gpipe", 4, 3, 8, 8),
    ("1f1b", 4, 0, 8, 4), ("1f1b", 4, 3, 8, 1), ("1f1b", 4, 1, 2, 2), ("1f1b", 2, 0, 4, 2),
])
def test_in_flight(schedule, p, stage, m, expected):
    assert in_flight(schedule, p, stage, m) == expected


@pytest.mark.parametrize("actions, stage_bytes, expected", [
    # V-shape rank holding stages 0 and 3: 10, 30, 10, 0.
    ([("forward", 0, 0), ("forward", 3, 0), ("backward", 3, 0), ("backward", 0, 0)], {0: 10, 3: 20}, 30),
    # The input-gradient pass frees nothing: 5, 5, 10, 5.
    ([("forward", 0, 0), ("backward_input", 0, 0), ("forward", 0, 1), ("backward_weight", 0, 0)], {0: 5}, 10),
    # 1F1B on one stage: 5, 0, 5, 0.
    ([("forward", 0, 0), ("backward", 0, 0), ("forward", 0, 1), ("backward", 0, 1)], {0: 5}, 5),
    ([], {}, 0),
])
def test_held_peak(actions, stage_bytes, expected):
    assert held_peak(actions, stage_bytes) == expected


# --------------------------------------------------------------------------
# Collectives


@pytest.mark.parametrize("nbytes, n, expected", [(100, 1, 0), (100, 2, 100), (10, 3, 13), (1000, 4, 1500), (7, 2, 7)])
def test_all_reduce_bytes(nbytes, n, expected):
    assert all_reduce_bytes(nbytes, n) == expected


@pytest.mark.parametrize("param_bytes, expected", [
    ([], []),
    ([400, 40], [440]),
    # reversed: 40 + 1 MiB reach the first cap; the rest fits one 25 MiB bucket
    ([MiB, 4, MiB, 40], [MiB + 40, MiB + 4]),
    ([30 * MiB, 10, 10], [30 * MiB + 20]),
    ([MiB] * 30, [MiB] + [25 * MiB, 4 * MiB]),
])
def test_ddp_buckets(param_bytes, expected):
    buckets = ddp_buckets(param_bytes)
    assert buckets == expected
    assert sum(buckets) == sum(param_bytes)


@pytest.mark.parametrize("param_bytes, expected", [
    ([400, 40], [440]),
    # module order: the first 1 MiB closes the first bucket; the rest share one
    ([MiB, 4, MiB, 40], [MiB, MiB + 44]),
    ([10, 10, 30 * MiB], [30 * MiB + 20]),
])
def test_ddp_initial_buckets(param_bytes, expected):
    assert sorted(ddp_initial_buckets(param_bytes)) == sorted(expected)


@pytest.mark.parametrize("param_bytes, dp, steps, expected", [
    ([400, 40], 1, 5, 0),
    # step 0: 440 whole; steps 1, 2: the one rebuilt bucket of 440
    ([400, 40], 2, 3, 3 * 440),
    # step 0: 3/2 of 2 MiB + 44; step 1: 3/2 of each bucket, MiB + 40 and MiB + 4
    ([MiB, 4, MiB, 40], 4, 2, 3 * (2 * MiB + 44) // 2 + 3 * (MiB + 40) // 2 + 3 * (MiB + 4) // 2),
])
def test_data_parallel_bytes(param_bytes, dp, steps, expected):
    assert data_parallel_bytes(param_bytes, dp, steps) == expected


@pytest.mark.parametrize("param_bytes, dp, steps, expected", [
    ([400, 40], 2, 3, 4 * 440),
    ([400, 40], 4, 1, 2 * (2 * 3 * 440 // 4)),
])
def test_pipeline_ddp_reduces_steps_plus_one_times(param_bytes, dp, steps, expected):
    assert pipeline_ddp_bytes(param_bytes, dp, steps) == expected


# --------------------------------------------------------------------------
# Shards


@pytest.mark.parametrize("shape, size, parts, index, expected", [
    ((10, 129), 4, 3, 0, 4 * 129 * 4),   # 10 rows over 3 ranks: 4, 4, 2
    ((10, 129), 4, 3, 2, 2 * 129 * 4),
    ((128,), 4, 3, 2, 42 * 4),           # 43, 43, 42
    ((5, 2, 3), 2, 4, 2, 1 * 6 * 2),     # 5 rows over 4: 2, 2, 1, 0
    ((5, 2, 3), 2, 4, 3, 0),
    ((64, 64), 4, 1, 0, 64 * 64 * 4),
])
def test_shard_bytes(shape, size, parts, index, expected):
    assert shard_bytes(shape, size, parts, index) == expected


@pytest.mark.parametrize("tensors, parts, expected", [
    ([((10, 129), 4), ((10,), 4)], 3, 3 * (4 * 129 * 4 + 4 * 4)),   # padded to rank 0's 4 rows
    ([((128, 64), 4)], 2, 128 * 64 * 4),                             # even: the whole tensor
    ([((5, 2, 3), 2)], 4, 4 * 2 * 6 * 2),
])
def test_gather_bytes_pads_to_rank_zero(tensors, parts, expected):
    assert gather_bytes(tensors, parts) == expected


@pytest.mark.parametrize("gathered, parts, expected", [(6240, 3, 3 * 4160), (10, 3, 3 * 6), (100, 2, 150), (100, 1, 0)])
def test_fsdp_step_bytes(gathered, parts, expected):
    assert fsdp_step_bytes(gathered, parts) == expected


# --------------------------------------------------------------------------
# Memory and stages


@pytest.mark.parametrize("optimizer, param_bytes, expected", [
    ("sgd", [400, 40], 0), ("adam", [400, 40], 2 * 440 + 4 * 2), ("adam", [], 0),
])
def test_optimizer_bytes(optimizer, param_bytes, expected):
    assert optimizer_bytes(optimizer, param_bytes) == expected


def test_optimizer_bytes_refuses_an_unknown_optimizer():
    with pytest.raises(ValueError, match="sgd or adam"):
        optimizer_bytes("lamb", [4])


@pytest.mark.parametrize("split_points, expected", [
    ((), [((0, 4), 100, 1.0, 10, 1.0)]),
    ((2,), [((0, 2), 30, 0.3, 2, 0.2), ((2, 4), 70, 0.7, 8, 0.8)]),
    ((1, 3), [((0, 1), 10, 0.1, 1, 0.1), ((1, 3), 50, 0.5, 2, 0.2), ((3, 4), 40, 0.4, 7, 0.7)]),
])
def test_stage_shares(split_points, expected):
    infos = [SimpleNamespace(params=p, flops=f) for p, f in [(10, 1), (20, 1), (30, 1), (40, 7)]]
    shares = stage_shares(infos, split_points)
    assert [s["stage"] for s in shares] == list(range(len(expected)))
    for s, (blocks, params, param_share, flops, flop_share) in zip(shares, expected):
        assert (s["blocks"], s["params"], s["flops"]) == (blocks, params, flops)
        assert (s["param_share"], s["flop_share"]) == pytest.approx((param_share, flop_share))
