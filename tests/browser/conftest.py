"""Fixtures for the browser tests: headless Chromium (Debian's), and a
JupyterLab or Voila server on 127.0.0.1 with a free port and no token, each
serving a copy of its notebook (Voila: app.ipynb), so nothing a test does is
written back.

Servers, their kernels and the kernels' ranks, and the browser always end,
also when a test fails. Screenshots and server logs go to artifacts/browser/
(emptied at the start of a session); a failing test adds a screenshot of
the page as it was."""

from __future__ import annotations

import shutil

import pytest

from harness import APP, ARTIFACTS, CHROMIUM_ARGS, NOTEBOOK, VIEWPORT, PlaygroundPage, start_lab, start_voila


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test, for ``screenshot_on_failure``."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(scope="session")
def artifacts():
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def browser(artifacts):
    # Both come with the set-up (scripts/setup.sh); their absence is a failure, not a skip.
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium is not None, "no chromium on PATH (Debian: apt-get install chromium; scripts/setup.sh does it)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _copied(tmp_path_factory, path, folder: str):
    """A copy of ``path`` in a fresh folder (the servers' root)."""
    assert path.exists(), f"{path} is missing"
    root = tmp_path_factory.mktemp(folder)
    shutil.copy(path, root / path.name)
    return root / path.name


@pytest.fixture(scope="module")
def notebook_copy(tmp_path_factory):
    """A copy of notebooks/00_playground.ipynb in a fresh folder."""
    return _copied(tmp_path_factory, NOTEBOOK, "notebooks")


@pytest.fixture(scope="module")
def app_copy(tmp_path_factory):
    """A copy of app.ipynb (the app view's notebook) in a fresh folder."""
    return _copied(tmp_path_factory, APP, "app")


@pytest.fixture(scope="module")
def lab(artifacts, notebook_copy, tmp_path_factory):
    server = start_lab(notebook_copy.parent, tmp_path_factory.mktemp("lab-home"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def voila(artifacts, app_copy, tmp_path_factory):
    server = start_voila(app_copy, tmp_path_factory.mktemp("voila-home"))
    try:
        yield server
    finally:
        server.stop()


def _page(browser, server, prefix):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(90_000)  # a loaded 2-core machine is slow to render
    try:
        yield PlaygroundPage(page, server, prefix)
    finally:
        context.close()


@pytest.fixture(scope="module")
def lab_page(browser, lab):
    yield from _page(browser, lab, "lab")


@pytest.fixture(scope="module")
def voila_page(browser, voila):
    yield from _page(browser, voila, "voila")


@pytest.fixture(autouse=True)
def screenshot_on_failure(request):
    yield
    reports = [getattr(request.node, f"report_{when}", None) for when in ("setup", "call")]
    if any(r is not None and r.failed for r in reports):
        pages = {id(v): v for v in request.node.funcargs.values() if isinstance(v, PlaygroundPage)}
        for ui in pages.values():
            if not ui.page.is_closed():
                ui.shot(f"FAILED-{request.node.name}")
