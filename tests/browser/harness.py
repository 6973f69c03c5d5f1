"""What the browser tests drive: a Jupyter server (JupyterLab or Voila) on
127.0.0.1 that ends with everything it started, and the Playground as a
person sees it in the page (ipywidgets 8's DOM, found by the labels a person
reads)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from support import alive, cmdline, descendants, free_port, proc_stat  # noqa: F401  (alive: for the tests)

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "00_playground.ipynb"
APP = REPO / "app.ipynb"
"""The app view's notebook (what the README's Voila links open): the Playground alone, with a few lines of text."""
ARTIFACTS = REPO / "artifacts" / "browser"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
VIEWPORT = {"width": 1280, "height": 800}
WORKER = "playground.rank.worker"
FACTORY = "--zygote-fd"
"""What the pool's rank factory's command line holds beside ``WORKER`` (and its forked ranks')."""
"""What a rank's command line holds (``python -m playground.rank.worker``)."""


# --------------------------------------------------------------------------
# Servers


class Server:
    """A Jupyter server started by a test, and what it starts in turn (the
    kernel, and the kernel's ranks). ``stop`` ends them all. ``python``: the
    interpreter whose environment it runs in (its folder leads PATH)."""

    def __init__(self, name: str, argv: list[str], home: Path, port: int, python: str = sys.executable):
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = ARTIFACTS / f"{name}-server.log"
        env = {**os.environ,
               "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
               "JUPYTER_DATA_DIR": str(home / "data"), "IPYTHONDIR": str(home / "ipython"), "MPLBACKEND": "agg",
               "PATH": f"{Path(python).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.seen: dict[int, int] = {}
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(argv, cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def ready(self, path: str, timeout: float = 90) -> "Server":
        """Wait until the server answers on ``path``; stop it if it never does."""
        try:
            self._wait(path, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                urllib.request.urlopen(self.url + path, timeout=5).close()
                return
            except urllib.error.HTTPError:  # it answers, if not with this page
                return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{self.name} did not answer on {self.url}{path} in {timeout:.0f} s:\n{self.log_tail()}")

    def processes(self) -> dict[int, int]:
        """Everything below the server now, remembered for ``stop``."""
        found = descendants(self.proc.pid)
        self.seen.update(found)
        return found

    def workers(self) -> dict[int, int]:
        """The ranks (``playground.rank.worker`` processes, not a pool's
        rank factory) the server's kernels have running now: pid -> start time."""
        every = {p: s for p, s in self.processes().items() if WORKER in cmdline(p)}
        factories = self.factories()
        return {p: s for p, s in every.items() if p not in factories}

    def factories(self) -> dict[int, int]:
        """The pools' rank factories the server's kernels have running now:
        pid -> start time. A factory's command line holds ``FACTORY``, and so
        do the ranks it forks (a fork keeps its parent's); a factory's parent
        is a kernel, a forked rank's is the factory."""
        every = {p: s for p, s in self.processes().items() if WORKER in cmdline(p)}
        return {p: s for p, s in every.items()
                if FACTORY in cmdline(p) and (st := proc_stat(p)) is not None and st[1] not in every}

    def stop(self, grace: float = 15) -> None:
        """Ask the server to shut down (it shuts its kernels down, and a
        kernel that exits ends its warm ranks); then kill what is left of
        everything it started."""
        if self.proc.poll() is None:
            self.processes()
            self.proc.terminate()  # Jupyter and Voila stop on SIGTERM, shutting their kernels down
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        deadline = time.monotonic() + 5
        while any(alive(p, s) for p, s in self.seen.items()) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid, started in self.seen.items():
            if alive(pid, started):
                os.kill(pid, signal.SIGKILL)


def pinned(python: str, cpus: str | None) -> list[str]:
    """The command start of ``python``, under ``taskset -c CPUS`` when ``cpus`` is given."""
    return (["taskset", "-c", cpus] if cpus else []) + [python]


def start_lab(root: Path, home: Path, python: str = sys.executable, cpus: str | None = None) -> Server:
    """JupyterLab on 127.0.0.1, a free port, no token; ``window.jupyterapp``
    exposed. ``python``: the environment it runs from; ``cpus``: the cores
    it (with its kernels and their ranks) may use, as ``taskset -c`` takes them."""
    settings = home / "lab-settings"
    quiet = {"@jupyterlab/apputils-extension/notification.jupyterlab-settings":
             '{"fetchNews": "false", "checkForUpdates": false}',
             "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": '{"autosave": false}'}
    for name, text in quiet.items():  # no news pop-up; never write the executed notebook back
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(text)
    port = free_port()
    argv = [*pinned(python, cpus), "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
            "--ServerApp.port_retries=0", "--IdentityProvider.token=", f"--ServerApp.root_dir={root}",
            "--LabApp.expose_app_in_browser=True", "--LabApp.extension_manager=readonly",
            f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={home / 'workspaces'}"]
    if os.geteuid() == 0:  # containers often run as root; Jupyter refuses it unless told
        argv.append("--allow-root")
    return Server("lab", argv, home, port, python).ready("/api/status")


def start_voila(notebook: Path, home: Path, python: str = sys.executable, cpus: str | None = None) -> Server:
    """``voila NOTEBOOK`` (the app view, no code cells) on 127.0.0.1 and a free port."""
    port = free_port()
    argv = [*pinned(python, cpus), "-m", "voila", str(notebook), "--no-browser", "--Voila.ip=127.0.0.1",
            f"--port={port}", "--Voila.port_retries=0", "--show_tracebacks=True"]
    return Server("voila", argv, home, port, python).ready("/api/status")  # not "/": that would run the notebook


# --------------------------------------------------------------------------
# The Playground in the page


class PlaygroundPage:
    """The Playground widget as rendered by ipywidgets 8 in a page."""

    def __init__(self, page, server: Server, prefix: str):
        self.page, self.server, self.prefix = page, server, prefix
        self.shots = 0

    def shot(self, what: str, full_page: bool = False) -> Path:
        self.shots += 1
        path = ARTIFACTS / f"{self.prefix}-{self.shots:02d}-{what}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def show(self, locator) -> None:
        """Scroll ``locator`` to the top of its scrolling area (for the screenshots)."""
        locator.evaluate("el => el.scrollIntoView({block: 'start'})")

    @property
    def root(self):
        return self.page.locator(".widget-vbox", has=self.page.locator("h3", has_text="parallelism playground")).last

    def control(self, label: str):
        """The input of the control whose description reads ``label``."""
        box = self.page.locator(".widget-inline-hbox", has=self.page.locator(f"label.widget-label:text-is('{label}')"))
        return box.locator("select, input").first

    def choose(self, label: str, value: str) -> None:
        self.control(label).select_option(value)

    def slide(self, label: str, value: int) -> None:
        """Set the slider whose description reads ``label`` by typing into its readout."""
        box = self.page.locator(".widget-inline-hbox", has=self.page.locator(f"label.widget-label:text-is('{label}')"))
        readout = box.locator(".widget-readout").first
        readout.click()
        self.page.keyboard.press("Control+A")
        self.page.keyboard.type(str(value))
        self.page.keyboard.press("Enter")

    def type_number(self, label: str, value: int) -> None:
        field = self.control(label)
        field.fill(str(value))
        field.press("Enter")  # text controls send their value on Enter or when they lose focus

    def button(self, name: str):
        return self.page.locator("button.jupyter-button", has_text=re.compile(rf"^\s*{re.escape(name)}\s*$"))

    @property
    def status(self):
        return self.page.locator(".playground-status")

    def watch_status(self) -> None:
        """Record every text the status line shows from now on (a quick run
        passes 'running' in a blink, and the previous run's verdict may
        still be there)."""
        self.status.evaluate("""el => {
            window.playgroundStatus = [];
            if (window.playgroundStatusObserver) window.playgroundStatusObserver.disconnect();
            window.playgroundStatusObserver = new MutationObserver(
                () => window.playgroundStatus.push(el.innerText));
            window.playgroundStatusObserver.observe(el, {subtree: true, childList: true, characterData: true});
        }""")

    def wait_status(self, pattern: str, timeout: float) -> str:
        """The first status text since ``watch_status`` that matches ``pattern``."""
        found = self.page.wait_for_function(
            "re => (window.playgroundStatus || []).find(t => new RegExp(re).test(t))",
            arg=pattern, timeout=timeout * 1000)
        return found.json_value()

    def errors(self) -> list[str]:
        """Error output anywhere in the page: tracebacks, stderr, widgets that failed to render."""
        found = self.page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'],"
                                  " .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")
        texts = [found.nth(i).inner_text() for i in range(found.count())]
        broken = self.page.get_by_text(re.compile("Error displaying widget|Failed to render|model not found"))
        texts += [broken.nth(i).inner_text() for i in range(broken.count())]
        return texts
