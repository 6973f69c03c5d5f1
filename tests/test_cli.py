"""The command line prints the per-rank table and writes the JSON."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

from support import rank_pids

RESULTS = pathlib.Path(__file__).parent / "data" / "results"


def test_cli_run_prints_table_and_writes_json(tmp_path):
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-m", "playground", "run", "--model", "mlp", "--strategy", "model", "--world-size", "2",
         "--split-points", "4", "--steps", "5", "--json", str(out), "--plots", str(tmp_path / "plots")],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "pp"])
    assert [line.split()[0] for line in lines[header + 1:header + 3]] == ["0", "1"]
    assert "baseline check: PASS" in proc.stdout
    d = json.loads(out.read_text())
    assert d["world_size"] == 2 and d["config"]["split_points"] == [4]
    assert d["baseline"]["max_abs_param_diff"] <= 1e-5
    assert [r["rank"] for r in d["ranks"]] == [0, 1]
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pngs == ["dataflow.png", "losses.png", "memory.png", "time_breakdown.png", "timeline.png"]
    assert all((tmp_path / "plots" / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in pngs)


def test_cli_bad_argument_in_a_real_process():
    proc = subprocess.run([sys.executable, "-m", "playground", "run", "--strategy", "model", "--world-size", "2",
                           "--model", "mlp", "--split-points", "12"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "split_points=(12,)" in proc.stderr and "from 1 to 9" in proc.stderr
    assert proc.stdout == ""
    # Nothing but this process's own warm pool (if earlier tests started it).
    import playground

    assert sorted(rank_pids()) == sorted(playground.default_pool().process_pids())


def test_cli_plots_a_v_schedule(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "playground", "run", "--model", "cnn", "--strategy", "pipeline", "--schedule",
         "zbvzerobubble", "--virtual-stages", "2", "--micro-batches", "4", "--global-batch", "16", "--steps", "2",
         "--json", str(tmp_path / "r.json"), "--plots", str(tmp_path / "plots")],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == \
        ["dataflow.png", "losses.png", "memory.png", "time_breakdown.png", "timeline.png"]
    saved = json.loads((tmp_path / "r.json").read_text())
    assert set(saved) == set(json.loads((RESULTS / "cnn-pipeline-zbvzerobubble.json").read_text()))


def test_cli_show_draws_a_saved_result_again(tmp_path):
    saved = RESULTS / "mlp-pipeline-1f1b.json"
    proc = subprocess.run([sys.executable, "-m", "playground", "show", str(saved), "--plots", str(tmp_path / "p"),
                           "--trace", str(tmp_path / "t.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "baseline check: PASS" in proc.stdout and "pipeline bubble" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == \
        ["dataflow.png", "losses.png", "memory.png", "time_breakdown.png", "timeline.png"]
    trace = json.loads((tmp_path / "t.json").read_text())
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(spans) == sum(len(r["timeline"]) for r in json.loads(saved.read_text())["ranks"])
    bad = subprocess.run([sys.executable, "-m", "playground", "show", str(tmp_path / "t.json")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not a saved result" in bad.stderr


def test_a_result_reads_back_as_it_was_written():
    from playground import RunResult

    text = (RESULTS / "transformer-hybrid-dp2pp2.json").read_text()
    again = RunResult.from_json(text)
    assert json.loads(again.to_json()) == json.loads(text)


def test_the_demo_runs_pass_their_check():
    import playground
    from playground.__main__ import DEMO

    for title, config in DEMO:
        result = playground.run(config)
        assert result.passed, (title, result.baseline["max_abs_param_diff"])


def test_looped_and_v_schedules_get_two_virtual_stages_unless_told(capsys):
    from playground.__main__ import main

    for schedule, virtual in (("zbvzerobubble", 2), ("interleaved1f1b", 2), ("1f1b", 1)):
        assert main(["config", "--strategy", "pipeline", "--model", "mlp", "--schedule", schedule,
                     "--micro-batches", "4", "--global-batch", "32"]) == 0
        assert json.loads(capsys.readouterr().out)["virtual_stages"] == virtual
    assert main(["config", "--strategy", "pipeline", "--model", "mlp", "--schedule", "loopedbfs",
                 "--virtual-stages", "3", "--micro-batches", "4", "--global-batch", "32"]) == 0
    assert json.loads(capsys.readouterr().out)["virtual_stages"] == 3
