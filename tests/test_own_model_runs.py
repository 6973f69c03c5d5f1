"""Custom models on real ranks (world size 2): a block class defined in a
notebook cell travels by value (BR-17), what the ranks print comes back
per rank (BR-21), a residual block stays replicated under tensor
parallelism (BR-11), int32 labels are cast (BR-12), and a diverging loss
ends every rank's training at the same step with a note (BR-14)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import playground
from playground import RankError, RunConfig
from playground.rank.training import AGREE_EVERY
from own_blocks import Residual

# A notebook cell: everything it defines lives in __main__, which the ranks
# cannot import, so it must travel by value.
NOTEBOOK_CELL = '''
import sys

from torch import nn


class SayShapeOnce(nn.Module):
    """Prints the batch it sees the first time it runs, on stdout then stderr."""

    def __init__(self, fail_on_rank=None):
        super().__init__()
        self.said = False
        self.fail_on_rank = fail_on_rank

    def forward(self, x):
        if not self.said:
            print(f"probe-line: batch of {x.shape[0]}")
            print(f"probe-err: after the line above", file=sys.stderr)
            self.said = True
        import torch.distributed as dist
        if dist.is_initialized() and dist.get_rank() == self.fail_on_rank:
            raise ValueError("deliberate failure after printing")
        return 0.5 * x
'''


def notebook_class():
    cell = {"__name__": "__main__"}
    exec(NOTEBOOK_CELL, cell)
    return cell["SayShapeOnce"]


def regression(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return x, torch.tanh(x[:, :4]) + 0.05 * torch.randn(n, 4, generator=g)


def strict_json(text: str):
    def reject(token):
        raise ValueError(f"not JSON: {token}")
    return json.loads(text, parse_constant=reject)


@pytest.fixture(scope="module")
def printed():
    """The notebook class trained with data parallelism and in a 2-stage
    pipeline; what reached the caller's own stdout and stderr meanwhile."""
    say = notebook_class()
    assert say.__module__ == "__main__"
    results = {}
    for strategy, fields in (("data", {}), ("pipeline", dict(split_points=(2,), micro_batches=2))):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(8, 16), say(), nn.ReLU(), nn.Linear(16, 4))
        config = RunConfig(model="custom", strategy=strategy, world_size=2, global_batch=16, steps=2, lr=0.05,
                           **fields)
        results[strategy] = playground.run(config, model=net, dataset=regression())
    return results


def test_a_class_from_a_notebook_cell_runs_on_the_ranks(printed):
    for result in printed.values():
        assert result.passed, result.baseline


def test_each_rank_output_is_kept_in_order_and_labelled(printed, capfd):
    data = printed["data"]
    for r in data.ranks:  # each data-parallel rank runs the block on its 8 of the 16 samples
        assert r.output.splitlines() == ["probe-line: batch of 8", "probe-err: after the line above"]
    assert data.rank_output().splitlines() == [
        "[rank 0] probe-line: batch of 8", "[rank 0] probe-err: after the line above",
        "[rank 1] probe-line: batch of 8", "[rank 1] probe-err: after the line above"]
    ranks = strict_json(data.to_json())["ranks"]
    assert [r["output"] for r in ranks] == [r.output for r in data.ranks]
    pipeline = printed["pipeline"]
    # Only stage 0 (rank 0) holds the block; it runs on micro-batches of 8.
    assert "probe-line: batch of 8" in pipeline.ranks[0].output
    assert "probe-line" not in pipeline.ranks[1].output
    caller = capfd.readouterr()
    assert "probe-line" not in caller.out + caller.err


def test_cli_prints_each_rank_output_prefixed(printed, capsys, monkeypatch):
    from playground.__main__ import _run_and_print

    monkeypatch.setattr("playground.host.runner.run", lambda config, warm=True: printed["data"])
    assert _run_and_print(printed["data"].config) == 0
    out = capsys.readouterr().out
    assert out.startswith("[rank 0] probe-line: batch of 8\n[rank 0] probe-err")
    assert "[rank 1] probe-line: batch of 8" in out and "baseline check: PASS" in out


def test_app_shows_notes_and_rank_output(printed):
    from playground.views.app import notes_html

    html = notes_html(printed["data"])
    assert "what the ranks printed (4 lines)" in html and "[rank 1] probe-err: after the line above" in html


def test_residual_block_under_tensor_parallel_is_replicated_and_matches_one_device():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), Residual(nn.Linear(16, 16)),
                        nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 16)), nn.Linear(16, 4))
    config = RunConfig(model="custom", strategy="tensor", world_size=2, global_batch=16, steps=3, lr=0.05)
    result = playground.run(config, model=net, dataset=regression())
    assert result.passed, result.baseline
    assert result.tensor_plan == {"3.0": "colwise", "3.2": "rowwise"}
    note = next(n for n in result.notes if n.startswith("tensor plan:"))
    assert "2 (Residual: a block the plan cannot see into)" in note and "4 (Linear: no row-parallel" in note
    assert strict_json(result.to_json())["tensor_plan"] == result.tensor_plan
    # The pair really was split: per step, an all-reduce of the row layer's
    # (16 x 16) output in forward and of the column layer's input gradient in backward.
    reduces = [e for e in result.ranks[0].timeline if e["kind"] == "all_reduce"]
    assert len(reduces) == 2 * config.steps and {e["bytes"] for e in reduces} == {16 * 16 * 4}


def test_int32_class_labels_are_cast_and_train_like_one_device():
    g = torch.Generator().manual_seed(12)
    x = torch.randn(96, 8, generator=g)
    y = (x[:, 0] > 0).to(torch.int32) + (x[:, 1] > 0.5).to(torch.int32)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    config = RunConfig(model="custom", strategy="data", world_size=2, global_batch=16, steps=3, lr=0.1)
    result = playground.run(config, model=net, dataset=(x[:64], y[:64], x[64:], y[64:]))
    assert result.passed and result.accuracy is not None
    assert result.notes[0].startswith("dataset: targets of dtype torch.int32 were cast to torch.int64")


@pytest.mark.parametrize("strategy, fields, seeing_loss", [
    ("data", {}, {0, 1}),
    ("pipeline", dict(micro_batches=2), {1}),  # only the last stage sees the loss
    ("tensor", {}, {0}),  # tensor-parallel peers compute one loss; rank 0 reports it
])
def test_a_diverging_loss_stops_every_rank_at_the_same_step(strategy, fields, seeing_loss):
    x, _ = regression()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    config = RunConfig(model="custom", strategy=strategy, world_size=2, global_batch=16, steps=20, lr=1e6, **fields)
    result = playground.run(config, model=net, dataset=(x, x[:, :4]))
    finite = torch.tensor(result.losses).isfinite().tolist()
    step = finite.index(False)
    # The ranks compare every AGREE_EVERY steps and read the answer a step
    # later (the agreement never holds a step up); all stop there together.
    agreed = (step // AGREE_EVERY + 1) * AGREE_EVERY - 1
    steps_run = len(result.losses)
    assert steps_run == agreed + 2 < config.steps
    assert all(len(r.step_times) == steps_run for r in result.ranks)
    note = next(n for n in result.notes if n.startswith("training diverged"))
    assert f"at step {step} (counting from 0)" in note
    assert f"stopped after step {agreed + 1}, once all had heard ({steps_run} of 20 steps ran)" in note
    named = note.split(" on rank")[1].split(";")[0].lstrip("s ")
    assert {int(r) for r in named.split(", ")} <= seeing_loss
    assert "on one device the loss first became non-finite at step" in note
    d = strict_json(result.to_json())
    assert d["losses"][-1] is None and d["notes"] == result.notes
    assert "training diverged" in result.summary()


def test_a_failing_rank_still_gives_back_what_it_printed():
    say = notebook_class()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), say(fail_on_rank=1), nn.Linear(16, 4))
    config = RunConfig(model="custom", strategy="data", world_size=2, global_batch=16, steps=2)
    with pytest.raises(RankError) as info:
        playground.run(config, model=net, dataset=regression())
    assert info.value.rank == 1 and "deliberate failure after printing" in str(info.value)
    assert info.value.outputs[1].startswith("probe-line: batch of 8\nprobe-err: after the line above")
