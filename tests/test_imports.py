"""A rank imports what a rank needs: not the launcher, the runner, the
widgets or matplotlib (each rank's memory, and its start, pay for them)."""

from __future__ import annotations

import subprocess
import sys

CALLER_SIDE = ("playground.launcher", "playground.runner", "playground.app", "ipywidgets", "matplotlib", "IPython")


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    return set(out)


def test_a_rank_imports_no_caller_side_module():
    # What the pool's rank factory preloads before forking ranks, and what a rank itself imports.
    loaded = _loaded_after("import playground.worker, playground.training, playground.workload")
    assert "torch" in loaded and "playground.recorder" in loaded
    wrong = sorted(m for m in loaded if m in CALLER_SIDE or m.split(".")[0] in CALLER_SIDE)
    assert wrong == [], f"a rank imports {wrong}"


def test_the_public_names_load_when_used():
    loaded = _loaded_after("import playground\nplayground.RunConfig\nplayground.run\nplayground.runner.evaluate")
    assert {"playground.config", "playground.runner"} <= loaded and "playground.app" not in loaded
