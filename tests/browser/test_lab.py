"""notebooks/00_playground.ipynb in JupyterLab, in headless Chromium, used
as a person would: run the notebook, change the form, press Run, read the
status and the timeline; then Stop a long run and check that its ranks end."""

from __future__ import annotations

import re
import time

import pytest

from harness import NOTEBOOK, alive

from playwright.sync_api import expect  # noqa: E402 - installed by the set-up

RUN_TIMEOUT = 240  # seconds: a cold start of the ranks on a busy 2-core machine, then the baseline
pytestmark = pytest.mark.timeout(600)  # the first test also starts JupyterLab and runs the notebook


ALL_RAN = """() => window.jupyterapp.shell.currentWidget.content.widgets
    .filter(cell => cell.model.type === 'code').every(cell => cell.model.executionCount !== null)"""


def still_running(ranks: dict[int, int], lab) -> list[int]:
    """The ranks seen during the run that live on (wherever they are now), and any rank under the kernel."""
    return sorted({p for p, started in ranks.items() if alive(p, started)} | set(lab.workers()))


@pytest.fixture(scope="module")
def notebook(lab, lab_page):
    """The notebook open in JupyterLab with every cell run."""
    ui, page = lab_page, lab_page.page
    page.goto(f"{lab.url}/lab/tree/{NOTEBOOK.name}", timeout=120_000)
    page.wait_for_function("() => window.jupyterapp !== undefined", timeout=90_000)
    page.evaluate("() => window.jupyterapp.started.then(() => true)")
    idle = page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\|\s*Idle\s*$"))
    idle.first.wait_for(timeout=120_000)
    ui.shot("opened")
    # The command's promise settles when the last cell has run (or one failed: the checks below tell).
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    assert page.evaluate(ALL_RAN), "not every code cell of the notebook ran"
    idle.first.wait_for(timeout=60_000)
    ui.show(ui.root)
    ui.shot("notebook-ran")
    return ui


def test_a_pipeline_run_draws_one_timeline_row_per_rank_and_passes_its_check(notebook):
    ui, page = notebook, notebook.page
    assert ui.errors() == [], "the notebook shows error output"

    ui.choose("strategy", "pipeline")
    ui.type_number("micro-batches", 4)
    page.get_by_text(re.compile(r"✓ 2 devices · 2 stages .* in 4 micro-batches")).wait_for()
    ui.show(ui.root)
    ui.shot("pipeline-chosen")

    started = time.monotonic()
    ui.watch_status()
    ui.button("Run").click()
    status = ui.wait_status(r"baseline check (passed|FAILED)|failed|error|stopped", RUN_TIMEOUT)
    print(f"pipeline run in the browser: {time.monotonic() - started:.1f} s")
    expect(ui.button("Run")).to_be_enabled()
    timeline = page.locator("img.playground-timeline")
    ui.show(ui.button("Run"))
    ui.shot("pipeline-result")
    assert status.startswith("baseline check passed"), status

    assert timeline.evaluate("img => img.complete && img.naturalWidth > 0"), "the timeline picture did not load"
    rows = page.locator(".playground-timeline-rows").text_content()  # the picture's alt text: its rows as drawn
    assert rows == "timeline picture: 2 rows, one per rank: rank 0 · stage 0; rank 1 · stage 1", rows
    assert page.get_by_role("tab", name="timeline").get_attribute("aria-selected") == "true"
    assert ui.errors() == []


def test_stop_during_a_long_run_ends_every_rank(notebook):
    ui, lab = notebook, notebook.server
    ui.type_number("steps", 100_000)
    ui.watch_status()
    ui.button("Run").click()
    ui.wait_status("^running", 30)
    deadline = time.monotonic() + 120
    while len(ranks := lab.workers()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(ranks) >= 2, "the run's ranks never appeared under the kernel"
    time.sleep(3)  # well into training
    ui.shot("long-run")
    assert ui.button("Stop").is_enabled() and not ui.button("Run").is_enabled()

    ui.watch_status()
    ui.button("Stop").click()
    status = ui.wait_status("^stopped", 60)
    ui.shot("stopped")
    assert status.startswith("stopped: every rank was ended"), status
    deadline = time.monotonic() + 15
    while (left := still_running(ranks, lab)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"ranks still running after Stop: {left}"
    assert len(lab.factories()) <= 1  # the pool's rank factory may stay: it held no part of the run
    assert ui.button("Run").is_enabled() and not ui.button("Stop").is_enabled()
    assert ui.errors() == []
