"""The app view: ``voila app.ipynb`` shows the playground at the top of the
page, without code, and a training runs in it as in JupyterLab."""

from __future__ import annotations

import json
import re
import time

import pytest

from playwright.sync_api import expect  # noqa: E402 - installed by the set-up

RUN_TIMEOUT = 240  # seconds, as in test_lab
pytestmark = pytest.mark.timeout(600)  # it also starts Voila, which runs the whole notebook


def test_voila_shows_the_playground_without_code_and_runs_a_training(voila, voila_page):
    ui, page = voila_page, voila_page.page
    page.goto(voila.url + "/", timeout=RUN_TIMEOUT * 1000)  # Voila answers once the notebook has run
    ui.button("Run").wait_for(timeout=RUN_TIMEOUT * 1000)  # Voila runs every cell, then shows the page
    page.get_by_text("What to expect.").wait_for()  # the text below the app
    ui.shot("opened")  # the first screen, as a person sees it
    top = ui.root.bounding_box()["y"]
    run = ui.button("Run").bounding_box()
    assert top < 100 and run["y"] + run["height"] <= page.viewport_size["height"], \
        f"the app starts {top:.0f} px down, its Run button {run['y']:.0f} px: below the fold"
    assert page.locator(".jp-CodeCell .jp-InputArea, .jp-InputPrompt, .cm-editor, .CodeMirror").count() == 0, \
        "the app view shows code"
    assert page.get_by_text("import playground as pg").count() == 0
    outputs = page.locator(".jp-CodeCell .jp-OutputArea-output")
    assert outputs.count() == 1 and outputs.first.locator(".widget-vbox").count() > 0, \
        "the app view shows code cells' output other than the app"
    assert ui.errors() == [], "the app view shows error output"

    ui.choose("model", "mlp")
    ui.choose("strategy", "data")
    ui.type_number("steps", 5)
    page.get_by_text(re.compile(r"✓ 2 devices · 1 stage · samples per data-parallel rank \[16, 16\]")) \
        .wait_for()
    ui.show(ui.root)
    ui.shot("data-chosen")

    started = time.monotonic()
    ui.watch_status()
    ui.button("Run").click()
    status = ui.wait_status(r"baseline check (passed|FAILED)|failed|error|stopped", RUN_TIMEOUT)
    print(f"data-parallel run in Voila: {time.monotonic() - started:.1f} s")
    expect(ui.button("Run")).to_be_enabled()
    timeline = page.locator("img.playground-timeline")
    ui.show(ui.button("Run"))
    ui.shot("data-result")
    assert status.startswith("baseline check passed"), status
    assert timeline.evaluate("img => img.complete && img.naturalWidth > 0"), "the timeline picture did not load"
    rows = page.locator(".playground-timeline-rows").text_content()
    assert rows == "timeline picture: 2 rows, one per rank: rank 0 · dp 0; rank 1 · dp 1", rows

    ui.button("Chrome trace").click()
    link = page.locator("a.playground-trace")
    link.wait_for()
    with page.expect_download() as download:
        link.click()
    assert download.value.suggested_filename == "trace-mlp-data-2ranks.json"
    trace = json.loads(open(download.value.path(), encoding="utf-8").read())
    ranks = {e["pid"] for e in trace["traceEvents"] if e["name"] == "process_name"}
    assert ranks == {0, 1} and trace["otherData"]["config"]["strategy"] == "data"
    assert ui.errors() == []
