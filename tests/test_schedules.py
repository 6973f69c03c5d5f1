"""Every torch.distributed.pipelining schedule, chosen by name: the stages
each rank holds, the configs each schedule refuses (refused at construction,
before any process starts, as torch would refuse them), the bubble of each
schedule's own action table, and real runs that train the same model as one
device while recording every forward, backward and weight gradient."""

from __future__ import annotations

import logging

import pytest
from torch.distributed.pipelining import schedules as torch_schedules

import playground
from playground import ConfigError, RunConfig
from playground.spec.config import LOOPED_SCHEDULES, SCHEDULES, SINGLE_STAGE_SCHEDULES, V_SCHEDULES
from playground.predict.formulas import ReplayCosts, replay_schedule, replayed_idle
from playground.predict.predict import bubble_fraction, predict, simulated_bubble
from playground.views import plots
from playground.zoo.models import model_block_infos
from playground.spec.partition import stage_ranges
from playground.spec.schedules import SCHEDULE_CLASSES, _PlannedStage, schedule_table

STEPS, M, SPLIT, BLOCKS = 3, 4, (3, 5, 8), 10  # mlp: 10 blocks, cut into 4 stages
MULTI = LOOPED_SCHEDULES + V_SCHEDULES
SPLIT_BACKWARD = ("interleavedzerobubble", "zbvzerobubble")  # every weight gradient on its own
PASSES = ("forward", "backward", "backward_input", "backward_weight")  # the kinds of a schedule table

logging.getLogger("torch.distributed.pipelining").setLevel(logging.ERROR)  # "bubbles added" chatter


def _config(schedule: str, **fields) -> RunConfig:
    return RunConfig(**{"model": "mlp", "strategy": "pipeline", "world_size": 2, "schedule": schedule,
                        "virtual_stages": 2, "micro_batches": M, "split_points": SPLIT, "steps": STEPS, **fields})


# --------------------------------------------------------------------------
# Names, placement, validation: no process


def test_schedule_names_are_torchs_own():
    assert set(SCHEDULE_CLASSES) == set(SCHEDULES)
    for name in SCHEDULES:
        assert SCHEDULE_CLASSES[name] is torch_schedules.get_schedule_class(name)


@pytest.mark.parametrize("schedule, p, v, placement", [
    ("gpipe", 2, 1, [(0,), (1,)]),
    ("1f1b", 3, 1, [(0,), (1,), (2,)]),
    ("loopedbfs", 2, 2, [(0, 2), (1, 3)]),
    ("interleaved1f1b", 2, 3, [(0, 2, 4), (1, 3, 5)]),
    ("interleavedzerobubble", 3, 2, [(0, 3), (1, 4), (2, 5)]),
    ("zbvzerobubble", 2, 2, [(0, 3), (1, 2)]),
    ("dualpipev", 3, 2, [(0, 5), (1, 4), (2, 3)]),
])
def test_each_rank_holds_the_stages_its_schedule_places_there(schedule, p, v, placement):
    config = RunConfig(model="custom", num_blocks=12, strategy="pipeline", world_size=p, schedule=schedule,
                       virtual_stages=v, micro_batches=2 * p, global_batch=8 * p)
    assert config.stages == p * v and config.pp_size == p
    assert [config.rank_stages(r) for r in range(p)] == placement
    if schedule in MULTI:  # torch's own table places every action on the same rank
        table = schedule_table(schedule, p, 2 * p, v)
        assert [tuple(sorted({s for _, s, _ in table[r]})) for r in range(p)] == placement


def _torch_accepts(schedule: str, p: int, m: int, v: int) -> bool:
    try:
        if schedule in SINGLE_STAGE_SCHEDULES:
            SCHEDULE_CLASSES[schedule](_PlannedStage(0, p, p, 0), n_microbatches=m)
        else:
            schedule_table(schedule, p, m, v)
    except ValueError:
        return False
    return True


def _config_accepts(schedule: str, p: int, m: int, v: int) -> bool:
    try:
        RunConfig(model="custom", num_blocks=64, strategy="pipeline", world_size=p, schedule=schedule,
                  virtual_stages=v, micro_batches=m, global_batch=4 * m)
    except ConfigError as err:
        assert err.field == "micro_batches"
        return False
    return True


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_config_refuses_exactly_the_micro_batch_counts_torch_refuses(schedule):
    v_choices = (1,) if schedule in SINGLE_STAGE_SCHEDULES else (2,) if schedule in V_SCHEDULES else (2, 3)
    for p in (2, 3, 4):
        for v in v_choices:
            for m in range(1, 13):
                assert _config_accepts(schedule, p, m, v) == _torch_accepts(schedule, p, m, v), (p, m, v)


@pytest.mark.parametrize("fields, field, words", [
    (dict(schedule="gpipe"), "virtual_stages", "one stage per rank"),
    (dict(schedule="1f1b"), "virtual_stages", "interleaved1f1b, loopedbfs"),
    (dict(schedule="loopedbfs", virtual_stages=1, split_points=(5,)), "virtual_stages", ">= 2"),
    (dict(schedule="interleaved1f1b", virtual_stages=1, split_points=(5,)), "virtual_stages", ">= 2"),
    (dict(schedule="zbvzerobubble", virtual_stages=3, split_points=(1, 2, 3, 4, 5)), "virtual_stages",
     "exactly 2"),
    (dict(schedule="dualpipev", virtual_stages=1, split_points=(5,)), "virtual_stages", "exactly 2"),
    (dict(schedule="dualpipev", micro_batches=2), "micro_batches", "as many micro-batches as stages"),
    (dict(schedule="1f1b", virtual_stages=1, micro_batches=1, split_points=(5,)), "micro_batches",
     "as many micro-batches as stages"),
    (dict(schedule="interleaved1f1b", micro_batches=5, global_batch=40), "micro_batches", "try 4 or 6"),
    (dict(schedule="interleavedzerobubble", micro_batches=7, global_batch=56), "micro_batches", "rounds"),
    (dict(schedule="loopedbfs", split_points=(5,)), "split_points", "world_size*virtual_stages-1=3"),
    (dict(schedule="loopedbfs", virtual_stages=6, split_points=None), "virtual_stages",
     "12 stages need at least 12 blocks"),
    (dict(schedule="loopedbfs", virtual_stages=0, split_points=None), "virtual_stages", "between 1 and 64"),
])
def test_bad_combinations_are_refused_before_any_process_starts(fields, field, words):
    # RunConfig itself refuses them: there is no config to run.
    with pytest.raises(ConfigError) as info:
        _config(**fields)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}=")
    assert words in str(info.value)


def test_other_strategies_ignore_virtual_stages_as_they_ignore_schedule():
    assert RunConfig(strategy="data", world_size=2, virtual_stages=3).stages == 1
    assert RunConfig(model="mlp", strategy="model", world_size=2, virtual_stages=3).stages == 2


# --------------------------------------------------------------------------
# The bubble of each schedule's own action table


@pytest.mark.parametrize("schedule", ["interleaved1f1b", "loopedbfs"])
def test_looped_tables_leave_the_looped_formulas_bubble(schedule):
    for p in (2, 3, 4):
        for v in (2, 3):
            for m in range(1, 13):
                if _torch_accepts(schedule, p, m, v):
                    assert simulated_bubble(schedule, p, m, v) == pytest.approx(
                        bubble_fraction(schedule, p, m, v)), (p, m, v)


@pytest.mark.parametrize("schedule, p, m, v", [
    ("interleavedzerobubble", 2, 4, 2), ("interleavedzerobubble", 4, 8, 3), ("zbvzerobubble", 2, 3, 2),
    ("zbvzerobubble", 4, 12, 2), ("dualpipev", 2, 4, 2), ("dualpipev", 3, 10, 2),
])
def test_zero_bubble_tables_leave_a_third_of_the_looped_bubble(schedule, p, m, v):
    assert bubble_fraction(schedule, p, m, v) == pytest.approx((p - 1) / (3 * v * m + p - 1))
    assert bubble_fraction(schedule, p, m, v) < bubble_fraction("interleaved1f1b", p, m, v)


# --------------------------------------------------------------------------
# Real runs: world size 2, four stages


@pytest.fixture(scope="module")
def runs():
    cache: dict[str, object] = {}

    def get(schedule):
        if schedule not in cache:
            cache[schedule] = playground.run(_config(schedule))
        return cache[schedule]

    return get


def _in_step(events, step_times):
    """Each step's events, in the order they began."""
    return [sorted((e for e in events if a <= e["start"] <= b), key=lambda e: e["start"]) for a, b in step_times]


@pytest.mark.parametrize("schedule", MULTI)
def test_schedule_trains_as_one_device_and_records_every_action(runs, schedule):
    result = runs(schedule)
    assert result.baseline["max_abs_param_diff"] <= 1e-5
    assert result.passed and len(result.losses) == STEPS
    config, ranges, infos = result.config, stage_ranges(SPLIT, BLOCKS), model_block_infos("mlp")
    table = schedule_table(schedule, 2, M, 2)
    every = sorted((step, mb) for step in range(STEPS) for mb in range(M))
    all_blocks = []
    for r in result.ranks:
        held = config.rank_stages(r.rank)
        blocks = [b for s in held for b in range(*ranges[s])]
        all_blocks += blocks
        compute = [e for e in r.timeline if e["kind"] in PASSES]
        steps = _in_step(compute, r.step_times)
        assert sum(map(len, steps)) == len(compute)
        for s in held:
            # F, then B or I (input gradients) once per micro-batch; W where the schedule splits B.
            for kinds in (("forward",), ("backward", "backward_input"), ("backward_weight",)):
                done = sorted((k, e["micro_batch"]) for k, events in enumerate(steps) for e in events
                              if e["kind"] in kinds and e["stage"] == s)
                if kinds != ("backward_weight",) or schedule in SPLIT_BACKWARD:
                    assert done == every, (r.rank, s, kinds)
                elif schedule == "dualpipev":  # splits only some backwards
                    assert 0 < len(done) < len(every) and set(done) <= set(every)
                else:
                    assert done == []
        # The order each rank ran them in is the schedule's own table, kinds included:
        # an input-gradient pass is recorded as backward_input, a full one as backward.
        for events in steps:
            assert [(e["kind"], e["stage"], e["micro_batch"]) for e in events] == table[r.rank]
        if schedule in SPLIT_BACKWARD:
            assert "backward_input" in {k for k, _, _ in table[r.rank]}
        assert {e["stage"] for e in r.timeline if e["kind"] == "setup"} == set(held)
        # The rank's module holds every block of its stages, named as in the full model.
        assert r.memory["params"] == r.memory["grads"] == 4 * sum(infos[b].params for b in blocks)
        sends = [e for e in r.timeline if e["kind"] == "send"]
        assert {e["bytes"] for e in sends} == {config.global_batch // M * 128 * 4}
    assert sorted(all_blocks) == list(range(BLOCKS))
    # The table the result carries is the one the ranks ran, and it replays.
    assert result.schedule_table == {str(r): [list(a) for a in table[r]] for r in range(2)}
    assert len(result.bubble["replayed"]) == 2 and all(0.0 <= x <= 1.0 for x in result.bubble["replayed"])
    # The cost model: bytes exactly; activations where the schedule frees them at backward.
    for r, p in zip(result.ranks, predict(config)):
        assert (p.params, p.bytes_sent, p.bytes_recv) == (r.memory["params"], r.bytes_sent, r.bytes_recv)
        if schedule in ("loopedbfs", "interleaved1f1b"):
            assert p.activations_peak == pytest.approx(r.memory["activations_peak"], rel=0.10)


# --------------------------------------------------------------------------
# gpipe and 1f1b as tables; the replay of a table


@pytest.mark.parametrize("p", [2, 3, 4])
@pytest.mark.parametrize("m", [1, 2, 4, 5, 8])
def test_gpipe_table_runs_every_forward_then_every_backward(p, m):
    table = schedule_table("gpipe", p, m)
    assert table == {r: [("forward", r, mb) for mb in range(m)] + [("backward", r, mb) for mb in range(m)]
                     for r in range(p)}
    assert simulated_bubble("gpipe", p, m) == pytest.approx(bubble_fraction("gpipe", p, m))


@pytest.mark.parametrize("p", [2, 3, 4])
@pytest.mark.parametrize("m", [4, 5, 8])
def test_1f1b_table_is_torchs_order_with_the_last_ranks_forwards_numbered_from_zero(p, m):
    table = schedule_table("1f1b", p, m)
    raw = SCHEDULE_CLASSES["1f1b"](_PlannedStage(0, p, p, 0), n_microbatches=m).pipeline_order
    for r in range(p):
        passes = (torch_schedules.FORWARD, torch_schedules.FULL_BACKWARD)
        torch_order = [(str(a.computation_type), a.microbatch_index) for a in raw[r]
                       if a is not None and a.computation_type in passes]
        # The same kinds in the same order; torch numbers the last rank's forwards 1..m.
        assert [k for k, _ in torch_order] == [str(torch_schedules.FORWARD if k == "forward"
                                                   else torch_schedules.FULL_BACKWARD) for k, _, _ in table[r]]
        shift = 1 if r == p - 1 else 0
        assert [mb + shift if k == "forward" else mb for k, _, mb in table[r]] == [mb for _, mb in torch_order]
        # Schedule1F1B's executor: min(m, p - r) forwards before the first backward, then one of each.
        kinds = [k for k, _, _ in table[r]]
        warm_up = min(m, p - r)
        assert kinds[:warm_up + 1] == ["forward"] * warm_up + ["backward"]
        assert [mb for k, _, mb in table[r] if k == "forward"] == list(range(m))
        assert [mb for k, _, mb in table[r] if k == "backward"] == list(range(m))
    assert simulated_bubble("1f1b", p, m) == pytest.approx(bubble_fraction("1f1b", p, m))


def test_single_stage_schedules_refuse_virtual_stages():
    with pytest.raises(ValueError, match="one stage per rank"):
        schedule_table("gpipe", 2, 4, 2)


def test_replay_of_a_hand_made_table_gives_the_hand_computed_idle():
    f0, b0, f1, b1 = ("forward", 0, 0), ("backward", 0, 0), ("forward", 1, 0), ("backward", 1, 0)
    table = {0: [f0, b0], 1: [f1, b1]}
    costs = ReplayCosts(duration={f0: 1.0, b0: 2.0, f1: 1.0, b1: 2.0}, transfer={f0: 0.5, b1: 0.5},
                        sent={b1: 1.0}, post={f0: 0.25}, after={0: [0.25, 0.0], 1: [0.0, 0.0]},
                        lead={1: 0.1}, optimizer={0: 0.5, 1: 0.5})
    replays = replay_schedule(table, costs)
    # rank 0: F 0-1, posts at 1.25; rank 1 receives by 1.75, F 1.75-2.75, B 2.75-4.75;
    # its gradient arrives at 5.25 (the send completes at 5.75): rank 0's B 5.25-7.25, optimizer 7.25-7.75.
    assert [a[4:] for a in replays[0].actions] == [(0.0, 1.0), (5.25, 7.25), (7.25, 7.75)]
    assert [a[4:] for a in replays[1].actions] == [(1.75, 2.75), (2.75, 4.75), (5.75, 6.25)]
    # comm: rank 0 [1.25, 1.75] sending and [4.75, 5.25] receiving; rank 1 [1.25, 1.75] and [4.75, 5.75].
    assert replayed_idle(replays) == pytest.approx({0: 1 - 4.5 / 7.75, 1: 1 - 5.0 / 7.75})


def test_a_table_that_waits_forever_is_refused():
    table = {0: [("backward", 0, 0), ("forward", 0, 0)], 1: [("forward", 1, 0), ("backward", 1, 0)]}
    with pytest.raises(ValueError, match="waits forever"):
        replay_schedule(table, ReplayCosts(duration={}))


@pytest.fixture(scope="module")
def one_stage_runs():
    cache: dict[str, object] = {}

    def get(schedule):
        if schedule not in cache:
            strategy = "model" if schedule == "model" else "pipeline"
            config = RunConfig(model="mlp", strategy=strategy, world_size=2, split_points=(5,), steps=2,
                               **({} if strategy == "model" else {"schedule": schedule, "micro_batches": M}))
            cache[schedule] = playground.run(config)
        return cache[schedule]

    return get


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b", "model"])
def test_one_stage_per_rank_runs_its_table_and_replays_it(one_stage_runs, schedule):
    result = one_stage_runs(schedule)
    m = 1 if schedule == "model" else M
    table = schedule_table("gpipe" if schedule == "model" else schedule, 2, m)
    assert result.schedule_table == {str(r): [list(a) for a in table[r]] for r in range(2)}
    for r in result.ranks:
        compute = [e for e in r.timeline if e["kind"] in PASSES]
        for events in _in_step(compute, r.step_times):
            assert [(e["kind"], e["stage"], e["micro_batch"]) for e in events] == table[r.rank]
    b = result.bubble
    assert len(b["replayed"]) == len(b["measured"]) == 2
    assert all(0.0 <= x <= 1.0 for x in b["replayed"])
    # The replay's timeline: the timed step (step 1), the table's actions then the optimizer step, in order.
    for r in result.ranks:
        planned = b["replayed_timeline"][str(r.rank)]
        assert [tuple(a[:3]) for a in planned] == table[r.rank] + [("optimizer", None, None)]
        assert {a[3] for a in planned} == {1}
        assert all(a[4] <= a[5] for a in planned)
        assert all(x[5] <= y[4] + 1e-12 for x, y in zip(planned, planned[1:]))
    # Each action's replayed length is its measured one (the forward on the last stage with its loss).
    last = result.ranks[1]
    a, b_ = last.step_times[1]
    forward = next(e for e in last.timeline if e["kind"] == "forward" and a <= e["start"] and e["micro_batch"] == 0)
    loss = next(e for e in last.timeline if e["kind"] == "loss" and a <= e["start"] and e["micro_batch"] == 0)
    planned = result.bubble["replayed_timeline"]["1"][0]
    assert planned[5] - planned[4] == pytest.approx(forward["end"] - forward["start"] + loss["end"] - loss["start"])


def test_the_timeline_draws_the_planned_lane_above_each_rank(one_stage_runs):
    fig = plots.plot_timeline(one_stage_runs("1f1b"))
    ax = fig.axes[0]
    planned = [p for p in ax.patches if (p.get_gid() or "").startswith("planned:")]
    kinds = {p.get_gid() for p in planned}
    assert {"planned:forward", "planned:backward", "planned:optimizer"} <= kinds
    assert len(planned) == 2 * (2 * M + 1)  # the last two steps, step 0 has no replay: one step per rank
    assert sum(t.get_text() == "planned" for t in ax.texts) == 2
    # Above the compute lane of its row (rank r's row is centred on y = r).
    compute_top: dict[int, float] = {}
    for p in ax.patches:
        if (p.get_gid() or "").startswith("compute:"):
            row = round(p.get_y() + 0.3)
            compute_top[row] = min(compute_top.get(row, p.get_y()), p.get_y())
    for p in planned:
        assert p.get_y() + p.get_height() <= compute_top[round(p.get_y() + 0.3)]
