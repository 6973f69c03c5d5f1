"""A rank imports what a rank needs: not the launcher, the runner, the
widgets or matplotlib (each rank's memory, and its start, pay for them)."""

from __future__ import annotations

import subprocess
import sys

CALLER_SIDE = ("playground.host.launcher", "playground.host.runner", "playground.views.app", "ipywidgets", "matplotlib", "IPython")


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    return set(out)


def test_a_rank_imports_no_caller_side_module():
    # What the pool's rank factory preloads before forking ranks, and what a rank itself imports.
    loaded = _loaded_after("import playground.rank.worker, playground.rank.training, playground.zoo.workload")
    assert "torch" in loaded and "playground.rank.recorder" in loaded
    wrong = sorted(m for m in loaded if m in CALLER_SIDE or m.split(".")[0] in CALLER_SIDE)
    assert wrong == [], f"a rank imports {wrong}"


def test_the_public_names_load_when_used():
    loaded = _loaded_after("import playground\nplayground.RunConfig\nplayground.run\nplayground.host.runner.evaluate")
    assert {"playground.spec.config", "playground.host.runner"} <= loaded and "playground.views.app" not in loaded
