"""The warm pool: ranks kept between runs, resized, cancelled, and never
left behind, even when their caller is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import playground
from playground import Pool, RunCancelled, RunConfig
from support import alive, proc_stat, rank_pids, socket_fds

CONFIG = RunConfig(model="seed-mlp", strategy="data", world_size=2, steps=5)


def released(own: Pool, held: list[int], within_s: float = 20) -> bool:
    """Whether ``own`` gives up every process (ranks and factory) and each of ``held`` ends, within ``within_s``."""
    deadline = time.monotonic() + within_s
    while (own.process_pids() or any(alive(p) for p in held)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return own.process_pids() == [] and not any(alive(p) for p in held)


@pytest.fixture
def pool():
    playground.default_pool().shutdown()
    yield playground.default_pool()
    playground.default_pool().shutdown()


def test_warm_runs_reuse_the_same_ranks_and_outlive_a_device_count(pool):
    first = playground.run(CONFIG)
    pids = pool.pids()
    assert len(pids) == 2 and sorted(rank_pids()) == sorted(pool.process_pids())
    factory = pool.process_pids()[-1]
    second = playground.run(CONFIG.replace(strategy="model", split_points=(1,)))
    assert pool.pids() == pids  # no new interpreters
    assert first.passed and second.passed
    # A larger run keeps the ranks it has and forks the one it lacks from the factory.
    third = playground.run(CONFIG.replace(model="mlp", world_size=3, global_batch=30))
    assert third.passed and pool.pids()[:2] == pids and len(pool.pids()) == 3
    assert pool.process_pids()[-1] == factory
    # A smaller run uses the first ranks; the third waits, holding no socket.
    fourth = playground.run(CONFIG.replace(strategy="single", world_size=1))
    assert fourth.passed and len(pool.pids()) == 3 and all(alive(p) for p in pool.pids())
    idle = pool.pids()[2]
    assert socket_fds(idle) == [], f"an idle rank holds sockets {socket_fds(idle)}"
    deadline = time.monotonic() + 10  # it may still be giving its last job's memory back
    while proc_stat(idle)[0] != "S" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc_stat(idle)[0] == "S"  # asleep on its job pipe
    pool.shutdown()
    assert not any(alive(p) for p in pids + [factory])


def test_cold_run_leaves_the_pool_alone_and_nothing_behind(pool):
    playground.run(CONFIG)
    pids = sorted(pool.process_pids())
    result = playground.run(CONFIG, warm=False)
    assert result.passed
    assert sorted(rank_pids()) == pids


def test_progress_is_reported_step_by_step(pool):
    steps: list[int] = []
    playground.run(CONFIG, on_step=steps.append)
    assert steps == list(range(CONFIG.steps))


def test_cancel_ends_the_run_and_its_processes(pool):
    cancel = threading.Event()
    seen: list[int] = []

    def on_step(step: int) -> None:
        seen.append(step)
        if step == 2:
            cancel.set()

    playground.run(CONFIG)
    factory = pool.process_pids()[-1]
    with pytest.raises(RunCancelled):
        playground.run(CONFIG.replace(model="mlp", steps=500), cancel=cancel, on_step=on_step)
    assert seen[:3] == [0, 1, 2] and len(seen) < 500
    # Every rank ended; the factory, which held no part of the run, stays.
    assert rank_pids() == [factory] and pool.size == 0
    assert playground.run(CONFIG).passed  # the next run forks new ranks from it
    assert pool.process_pids()[-1] == factory and len(rank_pids()) == 3


def test_a_stop_while_the_pool_starts_ends_the_run_at_once(pool):
    """Stop pressed during the first run's process start (seconds; on one
    CPU, half a minute): the run ends within a moment; the factory goes on
    starting, so the next run does not start it again."""
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    t = time.monotonic()
    with pytest.raises(RunCancelled):
        playground.run(CONFIG, cancel=cancel)
    assert time.monotonic() - t < 1.0 and pool.size == 0
    factory = pool.process_pids()
    assert len(factory) == 1 and alive(factory[0])
    assert playground.run(CONFIG).passed and pool.process_pids()[-1] == factory[0]


def test_ranks_exit_when_their_caller_is_killed(tmp_path):
    script = tmp_path / "caller.py"
    script.write_text(textwrap.dedent("""
        import playground, sys
        pool = playground.default_pool()
        pool.start(2)
        print(" ".join(map(str, pool.process_pids())), flush=True)
        sys.stdin.read()
    """))
    caller = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    pids = [int(p) for p in caller.stdout.readline().split()]
    assert len(pids) == 3 and all(alive(p) for p in pids)  # two ranks and their factory
    os.kill(caller.pid, signal.SIGKILL)
    caller.wait()
    deadline = time.monotonic() + 20
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids)


def test_a_pool_of_its_own():
    own = Pool()
    try:
        own.start(2)
        assert own.size == 2
        from playground.host.launcher import launch

        reports = launch(CONFIG, "cpu", "gloo", pool=own)
        assert [report.rank for report, _ in reports] == [0, 1]
        assert all(len(report.step_times) == CONFIG.steps for report, _ in reports)
    finally:
        own.shutdown()
    assert own.size == 0


def test_keyboard_interrupt_ends_the_ranks_and_the_next_run_works(pool):
    """What a notebook's interrupt does: KeyboardInterrupt in the thread
    waiting for the ranks."""
    import _thread

    def interrupt(step: int) -> None:
        if step == 2:
            _thread.interrupt_main()

    with pytest.raises(KeyboardInterrupt):
        playground.run(CONFIG.replace(model="mlp", steps=500), on_step=interrupt)
    assert rank_pids() == pool.process_pids() and pool.size == 0  # the ranks ended; the factory stays
    assert playground.run(CONFIG).passed


def test_runs_started_together_do_not_mix(pool):
    """Two threads start runs at once: they take turns on the pool, each
    gets its own result."""
    configs = [CONFIG, CONFIG.replace(model="mlp", strategy="pipeline", micro_batches=2, seed=3)]
    results: dict[int, object] = {}

    def go(i: int) -> None:
        results[i] = playground.run(configs[i])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert [results[i].config.model for i in range(2)] == ["seed-mlp", "mlp"]
    assert all(results[i].passed for i in range(2))
    assert results[1].config.seed == 3 and results[1].config.strategy == "pipeline"


def test_every_rank_reports_each_step_with_its_loss_part_and_time(pool):
    updates: list[dict] = []
    steps: list[int] = []
    result = playground.run(CONFIG, on_progress=updates.append, on_step=steps.append)
    assert steps == list(range(CONFIG.steps))  # on_step still sees rank 0's step indices
    for rank in range(CONFIG.world_size):
        mine = [u for u in updates if u["rank"] == rank]
        assert [u["step"] for u in mine] == list(range(CONFIG.steps))
        assert all(u["step_s"] > 0 for u in mine)
    for step, loss in enumerate(result.losses):  # the parts sum to the step's loss, as the result has it
        parts = [u["loss"] for u in updates if u["step"] == step and u["loss"] is not None]
        assert abs(sum(parts) - loss) <= 1e-6 * max(1.0, abs(loss))


def test_an_idle_pool_gives_its_processes_back():
    own = Pool(idle_release_s=1.0)
    try:
        from playground.host.launcher import launch

        launch(CONFIG, "cpu", "gloo", pool=own)
        held = own.process_pids()
        assert len(held) == 3 and all(alive(p) for p in held)
        assert released(own, held)
        launch(CONFIG, "cpu", "gloo", pool=own)  # and the next run starts them again
        assert own.size == 2
    finally:
        own.shutdown()


def test_ranks_beyond_the_last_runs_size_end_after_a_while():
    """After a run at 3 and one at 2, the third rank (which holds its last
    job's memory) ends once the pool has had no run for ``trim_after_s``;
    the two in use and the factory stay."""
    from playground.host.launcher import launch

    own = Pool(trim_after_s=1.0)
    try:
        launch(CONFIG.replace(model="mlp", world_size=3, global_batch=30), "cpu", "gloo", pool=own)
        launch(CONFIG, "cpu", "gloo", pool=own)
        ranks, factory = own.pids(), own.process_pids()[-1]
        assert len(ranks) == 3
        deadline = time.monotonic() + 20
        while own.size > 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        while alive(ranks[2]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert own.pids() == ranks[:2] and not alive(ranks[2])
        assert all(alive(p) for p in ranks[:2] + [factory])
        launch(CONFIG.replace(model="mlp", world_size=3, global_batch=30), "cpu", "gloo", pool=own)
        assert own.pids()[:2] == ranks[:2] and own.process_pids()[-1] == factory  # forked again, no new factory
    finally:
        own.shutdown()


def test_an_idle_pool_ends_its_processes_when_memory_runs_short(monkeypatch):
    """Another kernel needs the room: an idle pool gives everything back."""
    from playground.host import launcher

    own = Pool()
    try:
        launcher.launch(CONFIG, "cpu", "gloo", pool=own)
        held = own.process_pids()
        assert len(held) == 3
        monkeypatch.setattr(launcher, "MEMORY_GRACE_S", 0.0)
        monkeypatch.setattr(launcher, "memory_short", lambda: True)
        assert released(own, held)
    finally:
        own.shutdown()


def test_the_memory_headroom_is_read_from_the_system():
    from playground.host.launcher import memory_headroom

    available, allowed = memory_headroom()
    assert 0 < available <= allowed


def test_a_bad_pool_setting_names_the_variable_and_what_is_allowed(monkeypatch):
    monkeypatch.setenv("PLAYGROUND_POOL_IDLE_S", "10m")
    with pytest.raises(ValueError, match=r"PLAYGROUND_POOL_IDLE_S='10m': must be a number of seconds >= 0"):
        Pool()
    monkeypatch.setenv("PLAYGROUND_POOL_IDLE_S", "120")
    assert Pool().idle_release_s == 120.0


def test_a_folder_added_to_sys_path_after_the_pool_started_reaches_its_ranks(pool, tmp_path, monkeypatch):
    """A notebook adds its own folder to sys.path after a first run: the
    warm ranks, forked before, import a custom model's blocks from it."""
    import importlib

    import torch

    from faulty import regression_data

    playground.run(CONFIG)
    ranks = pool.pids()
    (tmp_path / "late_blocks.py").write_text(textwrap.dedent("""
        import torch

        class Tanh8(torch.nn.Module):
            def forward(self, x):
                return torch.tanh(x)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    late = importlib.import_module("late_blocks")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), late.Tanh8(), torch.nn.Linear(8, 4))
    result = playground.run(RunConfig(model="custom", strategy="data", world_size=2, steps=2, global_batch=16),
                            model=model, dataset=regression_data())
    assert result.passed and pool.pids() == ranks  # the same warm ranks


def test_a_pool_started_ahead_is_released_when_idle():
    own = Pool(idle_release_s=1.0)
    try:
        own.start(2)
        held = own.process_pids()
        assert len(held) == 3
        assert released(own, held)
    finally:
        own.shutdown()
