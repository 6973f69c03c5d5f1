"""The notebooks and the Binder files, checked without running a notebook
(``pytest --nbval-lax notebooks/`` runs them): each notebook is stored
without outputs and checks its runs against one device; Binder installs the
torch the project is tested with, CPU-only."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
BINDER = ROOT / "binder"
EXPECTED = ["00_playground", "01_data_parallel", "02_model_parallel", "03_pipeline_schedules",
            "04_tensor_parallel", "05_hybrid_and_scaling", "06_memory_levers", "07_plan_at_scale",
            "08_overlap", "09_collective_costs",
            "10_choosing_a_configuration"]


def load(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def code_of(nb: dict) -> str:
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


def test_the_notebooks_are_all_there():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    # Outputs (figures above all) would bloat the repository and go stale;
    # nbval-lax runs every cell and checks only those marked NBVAL_CHECK_OUTPUT.
    nb = load(path)
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name} cell {i} has stored outputs"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"
            assert "NBVAL_CHECK_OUTPUT" not in "".join(cell["source"]), \
                f"{path.name} cell {i} asks nbval to compare outputs it does not store"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_checks_its_runs_against_one_device(path):
    # Every notebook that trains asserts the baseline check, so nbval fails
    # when a run stops matching single-device training.
    code = code_of(load(path))
    assert re.search(r"assert\s+[\w.\[\]\"']*passed", code), f"{path.name} never asserts a run's baseline"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_opens_with_what_it_teaches_and_closes_with_what_to_try(path):
    # The path through the notebooks reads as lessons: each says first what
    # the reader will learn and last what to try next in the app.
    cells = load(path)["cells"]
    texts = ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
    assert "**What you will learn**" in texts[0], f"{path.name}: the first text cell does not say what it teaches"
    assert cells[-1]["cell_type"] == "markdown" and "## What to try next in the app" in texts[-1], \
        f"{path.name}: the last cell does not say what to try next in the app"


def test_the_app_view_notebook_holds_the_app_first_and_nothing_else_that_prints():
    # Voila hides code but shows every output: app.ipynb (the README's Voila
    # link) is one code cell whose only output is the Playground, at the top
    # of the page, and markdown below it.
    nb = load(ROOT / "app.ipynb")
    kinds = [c["cell_type"] for c in nb["cells"]]
    assert kinds[0] == "code" and kinds.count("code") == 1, kinds
    cell = nb["cells"][0]
    assert cell["outputs"] == [] and cell["execution_count"] is None
    lines = [ln for ln in "".join(cell["source"]).splitlines() if ln.strip()]
    assert lines[-1] == "pg.Playground()" and not any("print(" in ln or ln.startswith("%") for ln in lines), lines
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


def test_binder_installs_the_tested_torch_cpu_only_and_this_package():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    version = re.search(r"^TORCH_VERSION=(\S+)$", setup, re.M).group(1)
    lines = [ln.split("#")[0].strip() for ln in (BINDER / "requirements.txt").read_text().splitlines()]
    lines = [ln for ln in lines if ln]
    assert f"torch=={version}+cpu" in lines
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    assert "-e ." in lines


def test_binder_python_is_one_the_package_supports():
    runtime = (BINDER / "runtime.txt").read_text().strip()
    m = re.fullmatch(r"python-3\.(\d+)", runtime)
    assert m, f"runtime.txt: {runtime!r} is not python-3.N"
    pyproject = (ROOT / "pyproject.toml").read_text()
    low = int(re.search(r'requires-python\s*=\s*">=3\.(\d+)"', pyproject).group(1))
    assert int(m.group(1)) >= low


@pytest.mark.skipif(sys.platform != "linux", reason="binder/start reads Linux cgroups")
@pytest.mark.parametrize("cpu_max, expect_pinned", [("100000 100000", True), ("max 100000", False),
                                                    (None, False)])
def test_binder_start_pins_to_the_cpu_quota(tmp_path, cpu_max, expect_pinned):
    start = BINDER / "start"
    assert os.access(start, os.X_OK)
    if cpu_max is not None:
        (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    show = [sys.executable, "-c", "import os, sys; print(len(os.sched_getaffinity(0)), sys.argv[1:])", "a", "b c"]
    out = subprocess.run([str(start), *show], env={**os.environ, "CGROUP_ROOT": str(tmp_path)},
                         capture_output=True, text=True, timeout=60, check=True).stdout.split(" ", 1)
    cores = len(os.sched_getaffinity(0))
    assert out[1].strip() == "['a', 'b c']"  # the command and its arguments, unchanged
    assert int(out[0]) == (1 if expect_pinned and cores > 1 else cores)
