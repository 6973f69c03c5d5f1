"""The torch internals the package relies on (``playground.instrument``):
each private name still resolves in the installed torch, each hook is gone
once its context manager exits, and a run leaves the caller's warning
filters as they were. A failure here names the name and torch's version:
pyproject.toml pins torch to the range these tests passed on."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import warnings

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage, ScheduleGPipe
from torch.distributed.pipelining import schedules

import playground
from playground import RunConfig, instrument
from playground.predict import formulas


@pytest.mark.parametrize("name", instrument.PRIVATE_NAMES, ids=str)
def test_private_name_resolves(name):
    try:
        name.resolve()
    except (ImportError, AttributeError, TypeError, ValueError) as e:
        pytest.fail(f"torch {torch.__version__} lacks {name} (used for: {name.use}): {type(e).__name__}: {e}")


def test_check_torch_internals_finds_nothing_missing_and_reports_what_is():
    assert instrument.check_torch_internals() == [], f"torch {torch.__version__}"
    gone = instrument.PrivateName("torch.distributed.pipelining.schedules", "_no_such_name", "a test")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(instrument, "PRIVATE_NAMES", (gone,))
        (missing,) = instrument.check_torch_internals()
    assert missing.startswith("torch.distributed.pipelining.schedules:_no_such_name: AttributeError")


def test_formulas_ddp_bucket_caps_equal_torchs():
    first, later = instrument.ddp_default_bucket_bytes()
    assert (formulas.DDP_FIRST_BUCKET_BYTES, formulas.DDP_BUCKET_BYTES) == (first, later), \
        f"torch {torch.__version__} changed DDP's default bucket caps"


# --------------------------------------------------------------------------
# Each hook removed on exit


@pytest.fixture
def world_of_one():
    """A gloo process group of this process alone, destroyed after the
    test (run() treats an initialized default group as its own)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def _noting(seen: list, kind: str):
    @contextlib.contextmanager
    def around(*args):
        seen.append((kind, *args))
        yield
    return around


def test_stage_hooks_see_each_micro_batch_then_leave_the_class_methods(world_of_one):
    stage = PipelineStage(nn.Sequential(nn.Linear(3, 2)), 0, 1, torch.device("cpu"))
    schedule = ScheduleGPipe(stage, n_microbatches=2, loss_fn=lambda out, y: ((out - y) ** 2).mean())
    seen: list = []
    hooks = {k: _noting(seen, k) for k in ("forward", "backward", "backward_input", "setup_forward", "setup_backward")}
    with instrument.stage_hooks(stage, **hooks):
        assert set(stage.__dict__) >= {"forward_one_chunk", "_prepare_forward_infra"}
        schedule.step(torch.randn(4, 3), target=torch.randn(4, 2), losses=[])
    # Shape inference (forward set-up, then the last stage's backward set-up) runs once, in the first step;
    # GPipe's backwards are full ones, not input-gradient passes.
    assert seen == [("setup_forward",), ("setup_backward",), ("forward", 0), ("forward", 1),
                    ("backward", 0), ("backward", 1)]
    assert not set(stage.__dict__) & set(instrument.STAGE_METHODS)
    for method in instrument.STAGE_METHODS:
        assert getattr(stage, method).__func__ is getattr(PipelineStage, method)


def test_instance_methods_put_back_what_the_instance_held_even_on_error():
    class Thing:
        def run(self):
            return "class"

    thing = Thing()
    own = thing.__dict__["run"] = lambda: "instance"
    with pytest.raises(KeyError), instrument.instance_methods(thing, {"run": lambda f: lambda: "hooked"}):
        assert thing.run() == "hooked"
        raise KeyError
    assert thing.__dict__["run"] is own


def test_batch_p2p_hook_routes_posts_and_restores_the_function(world_of_one):
    original = schedules._batch_p2p
    posted = []

    def around(ops, post):
        posted.append(len(ops))
        return post()

    with pytest.raises(RuntimeError), instrument.batch_p2p_hook(around):
        assert schedules._batch_p2p is not original
        assert schedules._batch_p2p([]) == []
        raise RuntimeError
    assert posted == [0]
    assert schedules._batch_p2p is original


def test_work_wait_hook_and_collective_dispatch_see_a_real_all_reduce_then_nothing(world_of_one):
    original = dist.distributed_c10d.Work.__dict__["wait"]
    waits, collectives = [], []

    def around_wait(wait):
        waits.append(1)
        return wait()

    def on_c10d(kind, op, args, kwargs):
        collectives.append(kind)
        return op(*args, **kwargs)

    def all_reduce_and_wait():
        t = torch.ones(3)
        dist.all_reduce(t, async_op=True).wait()
        return t

    with instrument.work_wait_hook(around_wait), instrument.collective_dispatch(on_c10d, on_c10d):
        assert all_reduce_and_wait().tolist() == [1.0, 1.0, 1.0]
    assert (waits, collectives) == ([1], ["all_reduce"])
    assert dist.distributed_c10d.Work.__dict__["wait"] is original
    all_reduce_and_wait()
    assert (waits, collectives) == ([1], ["all_reduce"])


def test_recorder_hooks_are_gone_after_their_blocks(world_of_one):
    from playground.rank.recorder import Recorder

    rec = Recorder()
    original = dist.distributed_c10d.Work.__dict__["wait"]
    with rec.timing_waits(), rec.recording_collectives():
        dist.all_reduce(torch.ones(2), async_op=True).wait()
    kinds = [e["kind"] for e in rec.events]
    assert kinds == ["all_reduce"] and len(rec.blocked) == 1
    assert dist.distributed_c10d.Work.__dict__["wait"] is original
    dist.all_reduce(torch.ones(2), async_op=True).wait()
    assert [e["kind"] for e in rec.events] == kinds and len(rec.blocked) == 1


# --------------------------------------------------------------------------
# Warning filters


def test_a_run_leaves_the_callers_warning_filters_as_they_were():
    before = list(warnings.filters)
    # The single-device baseline trains in this process.
    result = playground.run(RunConfig(model="seed-mlp", strategy="pipeline", world_size=2, micro_batches=2,
                                      global_batch=16, steps=1))
    assert result.ranks
    assert warnings.filters == before


def test_importing_the_package_sets_none_of_its_warning_filters():
    # torch, numpy and sympy add filters of their own on import; the package's are the known ones.
    code = ("import importlib, pkgutil, warnings\n"
            "import playground\n"
            "for m in pkgutil.walk_packages(playground.__path__, 'playground.'):\n"
            "    importlib.import_module(m.name)\n"
            "from playground.instrument import KNOWN_WARNINGS\n"
            "ours = [f for f in warnings.filters if f[1] is not None and f[1].pattern in KNOWN_WARNINGS]\n"
            "assert not ours, ours\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
