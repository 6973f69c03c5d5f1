"""The worker runs under torchrun unchanged: two "nodes" on this machine
(two torchrun processes, two ranks each, c10d rendezvous on 127.0.0.1),
each rank writing its report, merged by load_result and checked against
the single-device run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import playground
from playground import RunConfig
from support import free_port


def test_two_torchrun_nodes_give_the_same_result_as_run(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun, "torchrun ships with torch"
    config = RunConfig(model="mlp", strategy="hybrid", world_size=4, dp=2, pp=2, split_points=(4,),
                       micro_batches=4, steps=3)
    exp = tmp_path / "exp.json"
    exp.write_text(config.to_json())
    out = tmp_path / "out"
    port = free_port()
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo")
    nodes = [subprocess.Popen([torchrun, "--nnodes", "2", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
                               "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "test",
                               "-m", "playground.rank.worker", "--config", str(exp), "--out", str(out)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    try:
        logs = [n.communicate(timeout=240)[0] for n in nodes]
    finally:
        for n in nodes:
            n.kill()
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(logs)
    assert sorted(os.listdir(out)) == ["rank-0.json", "rank-0.pt", "rank-1.json", "rank-1.pt", "rank-2.json",
                                       "rank-3.json", "run.json"]
    result = playground.load_result(str(out))
    assert result.passed and result.baseline["max_abs_param_diff"] <= 1e-5
    assert [r.rank for r in result.ranks] == [0, 1, 2, 3]
    assert [(r.dp_rank, r.pp_rank) for r in result.ranks] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(r.time["compute"] > 0 for r in result.ranks)
    assert result.config == config
    # The CLI reads the same folder.
    cli = subprocess.run([sys.executable, "-m", "playground", "load", str(out)], capture_output=True, text=True,
                         timeout=120)
    assert cli.returncode == 0 and "baseline check: PASS" in cli.stdout


def test_load_result_names_a_missing_rank(tmp_path):
    (tmp_path / "run.json").write_text('{"config": %s, "device": "cpu", "backend": "gloo", "wall_s": 1}'
                                       % RunConfig(strategy="data", world_size=2).to_json())
    with pytest.raises(FileNotFoundError, match="rank 0 of 2 wrote no report"):
        playground.load_result(str(tmp_path))
