"""A Binder session, simulated on this machine, and driven as a person would.

What mybinder.org does with this repository, done here: a Python 3.11
environment with what repo2docker's base brings (JupyterLab 4, Notebook 7,
ipywidgets 8, jupyter-resource-usage) and ``pip install -r
binder/requirements.txt``; JupyterLab started in a fresh clone, on one CPU
(``taskset -c 0``; Binder's quota is 1 CPU, and ``binder/start`` pins the
session to it). Headless Chromium then drives it:

1. JupyterLab: open ``notebooks/00_playground.ipynb``, Run All (its first
   run starts the ranks: the first run on 1 CPU), set devices to 4 (the form
   is on the 2-block ``seed-mlp``, which cannot be cut 4 ways), take the
   first way out offered, run on 4 devices; then the memory of the kernel
   and its ranks (PSS, as ``bench/run.py binder`` counts it) and of the
   whole session.
2. Voila, as the README's second Binder link opens it
   (``/voila/render/app.ipynb`` on the same kind of server, a fresh one): the
   time until the app shows, whether it shows above the fold and without
   code, and a first 2-device run there.

    python3.11 -m venv /tmp/binder-venv          # once, or pass --install
    .venv/bin/python bench/binder_session.py --venv /tmp/binder-venv

The environment's own Python runs the servers, kernels and ranks; this
script needs Playwright and Chromium (the project's set-up has both). It
clones the repository's committed HEAD (uncommitted changes are not in it)
and installs that clone, editable, into the environment. Screenshots go to
``--out`` (default ``artifacts/binder``), the figures to ``figures.json``
there and to stdout.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "browser"), str(ROOT / "tests")]

from harness import CHROMIUM_ARGS, VIEWPORT, PlaygroundPage, Server, start_lab  # noqa: E402
from support import cmdline, descendants  # noqa: E402

BASE = ["jupyterlab>=4,<5", "notebook>=7,<8", "ipywidgets>=8,<9", "jupyter-resource-usage"]
"""What repo2docker's Python 3.11 base environment holds of what the app needs."""
CPUS = "0"
RUN_TIMEOUT = 300  # seconds: the first run on 1 CPU starts every rank's Python and torch
ALL_RAN = """() => window.jupyterapp.shell.currentWidget.content.widgets
    .filter(cell => cell.model.type === 'code').every(cell => cell.model.executionCount !== null)"""


def install(venv: Path, python: str) -> None:
    """A fresh environment at ``venv``: repo2docker's base, then binder/requirements.txt."""
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    # --retries 0: where the requirements' extra index cannot be reached, say so once and go on.
    subprocess.run([str(venv / "bin" / "pip"), "install", "--retries", "0", *BASE, "-r",
                    str(ROOT / "binder" / "requirements.txt")], cwd=ROOT, check=True)


def fresh_clone(venv: Path, into: Path) -> Path:
    """``git clone`` of this repository's HEAD, installed editable into ``venv`` (as Binder's ``-e .``)."""
    clone = into / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-build-isolation", "-e", "."],
                   cwd=clone, check=True)
    return clone


def pss(pid: int) -> int:
    """Proportional set size of ``pid``, bytes (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
    except OSError:
        return 0


def memory(server: Server) -> dict:
    """PSS in MiB: each kernel with the processes below it (its ranks and
    rank factory), and the whole session (server, kernels, ranks)."""
    below = descendants(server.proc.pid)
    kernels = [p for p in below if "ipykernel_launcher" in cmdline(p)]
    mib = lambda b: round(b / 2**20)  # noqa: E731
    out = {"kernels": []}
    for k in kernels:
        ranks = descendants(k)
        out["kernels"].append({"kernel_mib": mib(pss(k)), "below_mib": [mib(pss(p)) for p in ranks],
                               "total_mib": mib(pss(k) + sum(pss(p) for p in ranks))})
    out["session_mib"] = mib(pss(server.proc.pid) + sum(pss(p) for p in below))
    return out


def progress_seconds(ui: PlaygroundPage) -> str:
    """What the app's progress bar says: the last run's seconds, as the app counted them."""
    return ui.page.locator(".widget-hprogress .widget-label").first.inner_text()


def wait_starting(ui: PlaygroundPage) -> None:
    """Until the status line reads 'starting N devices…' (it may already)."""
    ui.page.wait_for_function(
        "() => /^starting/.test(document.querySelector('.playground-status')?.textContent || '')", timeout=120_000)


def run_and_wait(ui: PlaygroundPage, shot: str) -> dict:
    """Press Run; take a picture while the ranks start; wait for the verdict
    and the timeline picture."""
    started = time.monotonic()
    ui.watch_status()
    ui.button("Run").click()
    ui.wait_status("^starting|^running", 60)
    ui.show(ui.root)
    ui.shot(f"{shot}-starting")
    status = ui.wait_status(r"baseline check (passed|FAILED)|failed|error|stopped", RUN_TIMEOUT)
    wall = time.monotonic() - started
    ui.page.locator("img.playground-timeline").last.wait_for(timeout=60_000)
    ui.page.wait_for_timeout(500)
    ui.show(ui.button("Run"))
    ui.shot(f"{shot}-result")
    picture = ui.page.locator("img.playground-timeline").last.evaluate(
        "img => [img.naturalWidth, img.naturalHeight, Math.round(img.getBoundingClientRect().width),"
        " Math.round(img.getBoundingClientRect().height)]")
    return {"status": status.splitlines()[0], "wall_s": round(wall, 1), "app_says": progress_seconds(ui),
            "timeline_picture_px": {"natural": picture[:2], "shown": picture[2:]}}


def lab_session(browser, server: Server, out: dict) -> None:
    page = browser.new_context(viewport=VIEWPORT).new_page()
    page.set_default_timeout(120_000)
    ui = PlaygroundPage(page, server, "lab")
    page.goto(f"{server.url}/lab/tree/notebooks/00_playground.ipynb")
    page.wait_for_function("() => window.jupyterapp !== undefined")
    page.evaluate("() => window.jupyterapp.started.then(() => true)")
    idle = page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\|\s*Idle\s*$"))
    idle.first.wait_for()
    ui.shot("opened")

    started = time.monotonic()
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    ui.root.wait_for()
    wait_starting(ui)
    ui.show(ui.root)
    ui.shot("run-all-starting")
    page.wait_for_function(ALL_RAN, timeout=RUN_TIMEOUT * 1000)
    idle.first.wait_for(timeout=RUN_TIMEOUT * 1000)
    out["run_all_s"] = round(time.monotonic() - started, 1)
    out["first_run_app_says"] = progress_seconds(ui)
    ui.show(ui.root)
    ui.shot("run-all-done")
    out["lab_errors_after_run_all"] = ui.errors()

    ui.slide("devices", 4)
    way_out = page.locator(".widget-hbox", has=page.get_by_text("ways out:")).last
    way_out.wait_for()
    out["devices_4_message"] = page.get_by_text(re.compile("^✗")).first.inner_text()
    out["ways_out"] = [b.inner_text() for b in way_out.locator("button").all()]
    ui.show(ui.root)
    ui.shot("devices-4-dead-end")
    way_out.locator("button").first.click()
    ok = page.get_by_text(re.compile(r"✓ 4 devices"))
    ok.wait_for(timeout=30_000)
    out["after_way_out"] = ok.first.inner_text()
    ui.shot("devices-4-way-out-taken")
    out["four_devices_run"] = run_and_wait(ui, "devices-4")
    out["lab_memory_after_4_devices"] = memory(server)
    out["lab_errors"] = ui.errors()
    page.context.close()


def voila_session(browser, server: Server, out: dict) -> None:
    page = browser.new_context(viewport=VIEWPORT).new_page()
    page.set_default_timeout(RUN_TIMEOUT * 1000)
    ui = PlaygroundPage(page, server, "voila")
    started = time.monotonic()
    page.goto(f"{server.url}/voila/render/app.ipynb")
    ui.button("Run").wait_for()
    out["voila_load_s"] = round(time.monotonic() - started, 1)
    page.wait_for_timeout(1000)
    ui.shot("opened")  # the first screen, as a person sees it
    box = ui.button("Run").bounding_box()
    out["voila_run_button_top_px"] = round(box["y"])
    out["voila_viewport_px"] = VIEWPORT["height"]
    code = page.locator(".jp-CodeCell .jp-InputArea, .jp-InputPrompt, .cm-editor, .CodeMirror")
    out["voila_shows_code"] = code.count()
    ui.shot("opened-full", full_page=True)
    out["voila_run"] = run_and_wait(ui, "voila")
    out["voila_memory_after_run"] = memory(server)
    out["voila_errors"] = ui.errors()
    page.context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=Path("/tmp/binder-venv"))
    parser.add_argument("--install", metavar="PYTHON3.11", help="create --venv anew with this Python first")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "binder")
    parser.add_argument("sessions", nargs="*", help="lab, voila or both (the default)")
    args = parser.parse_args()
    if set(args.sessions) - {"lab", "voila"}:
        parser.error(f"sessions: lab, voila or both, not {args.sessions}")
    if args.install:
        install(args.venv, args.install)
    python = str(args.venv / "bin" / "python")
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    import harness
    harness.ARTIFACTS = args.out  # screenshots and server logs

    from playwright.sync_api import sync_playwright

    figures: dict = {"cpus": CPUS}
    with tempfile.TemporaryDirectory(prefix="binder-session-") as tmp:
        clone = fresh_clone(args.venv, Path(tmp))
        figures["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, text=True,
                                           capture_output=True, check=True).stdout.strip()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
            try:
                for name in args.sessions or ["lab", "voila"]:
                    session = {"lab": lab_session, "voila": voila_session}[name]
                    home = Path(tmp) / f"{name}-home"
                    home.mkdir()
                    server = start_lab(clone, home, python=python, cpus=CPUS)
                    try:
                        session(browser, server, figures)
                    except Exception as e:  # keep what was measured, and the page as it was
                        figures[f"{name}_failed"] = f"{type(e).__name__}: {e}"
                        traceback.print_exc()
                        for page in (pg for c in browser.contexts for pg in c.pages):
                            page.screenshot(path=str(args.out / f"{name}-FAILED.png"))
                    finally:
                        server.stop()
                        server.log_path.rename(args.out / f"{name}-session-server.log")
            finally:
                browser.close()
    (args.out / "figures.json").write_text(json.dumps(figures, indent=1, ensure_ascii=False))
    print(json.dumps(figures, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
