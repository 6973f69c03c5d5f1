"""The Playground: an ipywidgets view over ``run``.

Thin by design (DESIGN.md, principle 4): the controls build a ``RunConfig``
(every check is the config's own), Run calls the same ``run()`` the CLI
calls, in a background thread so the kernel stays responsive, and every
picture is drawn from the ``RunResult`` alone by ``plots``. The state of the
form round-trips through JSON: ``Playground(config=app.to_json())``.

Stop and the progress bar use ``run(config, cancel=threading.Event(),
on_step=callback)``: setting the event ends the run's processes and raises
``RunCancelled``; ``on_step(step)`` is called as rank 0 finishes step
``step`` (from 0). Where ``run`` lacks them (``run_accepts``), Stop only
drops the result and the bar shows elapsed time.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import inspect
import io
import json
import threading
import time
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Callable

import ipywidgets as W
from traitlets import TraitError
from matplotlib.figure import Figure

from . import plots, runner
from .config import DEFAULT_MAX_WORLD_SIZE, OPTIMIZERS, SCHEDULES, STRATEGIES, ConfigError, RunConfig, cpu_count
from .cost import stage_shares
from .models import MODELS, model_block_infos, propose_split_points
from .result import RunResult, labelled_output

PAGE_WIDTH = "1260px"  # fits a 1280 px window
STAGE_COLORS = ["#9ECAE1", "#FDAE6B", "#A1D99B", "#BCBDDC", "#FC9272", "#C7E9C0", "#FDD0A2", "#DADAEB"]
START = RunConfig(model="mlp", strategy="pipeline", world_size=2, micro_batches=4)
CONTROLLED = ("model", "strategy", "world_size", "dp", "pp", "tp", "split_points", "global_batch", "batch_partition",
              "micro_batches", "schedule", "virtual_stages", "steps", "lr", "optimizer", "seed",
              "threads_per_rank", "sync_batchnorm")
"""RunConfig fields the controls set; the others (device, timeout_s, ...) are kept as loaded."""
SCHEDULE_FIELDS = ("schedule", "virtual_stages", "micro_batches")
"""Read by pipelining schedules only: set where the config is scheduled, else left at their defaults."""
GREEN, RED, GREY = "#1A7F37", "#B00020", "#555"
CSS = ("<style>.jupyter-widgets.jupyter-widget-tab.playground-results > .lm-TabBar .lm-TabBar-tab "
       "{ flex: 0 0 auto; }</style>")
"""Tabs as wide as their titles (ipywidgets gives each 144 px and cuts longer titles)."""
SCREEN_READER_ONLY = "position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap"


# --------------------------------------------------------------------------
# Pure helpers: numbers in, data out


def device_limit() -> tuple[int, int, int]:
    """(most ranks offered, CPU cores, visible GPUs): the GPUs when there are
    several, else 4 ranks per core, never above the config's limit."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cores = cpu_count()
    return max(1, min(DEFAULT_MAX_WORLD_SIZE, gpus if gpus >= 2 else 4 * cores)), cores, gpus


def run_accepts(keyword: str) -> bool:
    """Whether this version of ``run()`` takes ``keyword``."""
    return keyword in inspect.signature(runner.run).parameters


def mesh_options(n: int) -> list[tuple[str, tuple[int, int, int]]]:
    """Every (dp, pp, tp) with dp * pp * tp = n, labelled for a dropdown."""
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return [(f"dp {n // (pp * tp)} × pp {pp} × tp {tp}", (n // (pp * tp), pp, tp))
            for pp in divisors for tp in divisors if (n // pp) % tp == 0]


def parse_counts(text: str) -> tuple[int, ...] | str:
    """'3,1' or '3 1' -> (3, 1); '' -> (); anything else comes back as given,
    for the config to refuse with its own message."""
    parts = text.replace(",", " ").replace(":", " ").split()
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        return text


@lru_cache(maxsize=None)
def block_infos(model: str):
    return model_block_infos(model)


@lru_cache(maxsize=None)
def balanced_cuts(model: str, stages: int) -> tuple[int, ...]:
    """The cuts run() picks when none are given: the stages' FLOPs balanced."""
    try:
        return propose_split_points(model, stages)
    except ValueError:  # no stages, or more stages than blocks: the config says so
        return ()


def sweep_config(config: RunConfig, over: str, n: int) -> RunConfig:
    """``config`` with ``over`` (world_size or micro_batches) set to n. Across
    device counts the cuts and batch shares go back to balanced and even,
    since their number follows the count; a hybrid mesh keeps pp and tp."""
    if over == "micro_batches":
        return config.replace(micro_batches=n)
    changes: dict[str, Any] = {"world_size": n, "split_points": None, "batch_partition": None}
    if config.strategy == "hybrid":
        changes["dp"] = max(1, n // (config.pp_size * config.tp_size))
    return config.replace(**changes)


def run_notes(config: RunConfig, cores: int) -> list[str]:
    """What the user should know about the timings before running."""
    device, backend = runner.resolve_device(config)
    if device == "cuda":
        return [f"GPUs used: {config.world_size} rank(s), one CUDA GPU each ({backend})"]
    threads = config.world_size * config.threads_per_rank
    if threads > cores:
        return [f"{config.world_size} ranks × {config.threads_per_rank} thread"
                f"{'s' if config.threads_per_rank > 1 else ''} share {cores} CPU cores: timings include "
                "contention (the results stay exact)"]
    return []


def idle_share(result: RunResult) -> float:
    return sum(r.time["idle"] / max(1e-12, r.time["window"]) for r in result.ranks) / len(result.ranks)


def bubble_sentences(bubble: dict) -> str:
    """What the formula, the replay and the measurement of a pipeline's
    idle share each are, one sentence each, with their numbers
    (``RunResult.bubble``)."""
    def shares(xs):
        return ", ".join(f"{x:.0%}" for x in xs)

    text = (f"The formula {bubble['formula']} gives {bubble['predicted']:.0%}: the idle share of equal stages "
            f"when only compute takes time. ")
    if bubble.get("replayed"):
        text += (f"The replay of the schedule's own action order (the 'planned' lanes) with this run's measured "
                 f"compute, message and host times leaves {shares(bubble['replayed'])} idle per rank. ")
    return text + (f"The measurement: each rank's time outside compute and communication (waiting for peers, "
                   f"host work between actions) was {shares(bubble['measured'])} of the timed steps.")


def plot_sweep(over: str, points: list[tuple[int, RunResult]]) -> Figure:
    """Throughput T(n), speedup S(n) = T(n) / T(n0), efficiency S(n) / ideal
    and the idle share against the count swept. Ideal speedup: n / n0 for
    device counts; for micro-batches (1 - b(n)) / (1 - b(n0)), with b the
    predicted pipeline bubble, (p-1)/(m+p-1) for gpipe and 1f1b."""
    counts = [n for n, _ in points]
    throughput = [r.throughput_samples_per_s for _, r in points]
    speedup = [t / throughput[0] for t in throughput]
    bubble = [r.bubble["predicted"] if r.bubble else None for _, r in points]
    if over == "world_size":
        ideal = [n / counts[0] for n in counts]
    elif None not in bubble:
        ideal = [(1 - b) / (1 - bubble[0]) for b in bubble]
    else:
        ideal = [1.0] * len(counts)
    what = "device count" if over == "world_size" else "micro-batches"
    fig = Figure(figsize=(11, 6.4))
    fig.subplots_adjust(left=0.08, right=0.98, top=0.88, bottom=0.09, hspace=0.38, wspace=0.22)
    axes = fig.subplots(2, 2).ravel()
    panels = [("throughput (samples/s)", throughput, None),
              (f"speedup over {what} = {counts[0]}", speedup, ideal),
              ("efficiency = speedup / ideal", [s / i for s, i in zip(speedup, ideal)], [1.0] * len(counts)),
              ("idle share (mean over ranks)", [idle_share(r) for _, r in points], bubble)]
    for ax, (title, measured, theory) in zip(axes, panels):
        ax.plot(counts, measured, marker="o", color=plots.KIND_COLORS["forward"], label="measured")
        if theory is not None and None not in theory:
            label = "predicted bubble" if theory is bubble else "ideal"
            ax.plot(counts, theory, ls="--", color=GREY, label=label)
            ax.legend(fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(counts)
        ax.set_xlabel(what)
        ax.grid(color="#EEE")
    c = points[0][1].config
    fixed = f"{c.world_size} ranks" if over != "world_size" else f"batch {c.global_batch}"
    fig.suptitle(f"Sweep over {what} = {', '.join(map(str, counts))}: {c.model} · {c.strategy}"
                 f"{f' · {c.schedule}' if c.scheduled else ''} · {fixed} · {c.steps} steps", fontsize=11)
    return fig


def png(fig: Figure, dpi: int = 90) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def fit() -> W.Layout:
    """A figure's width, shrunk to the page's when wider."""
    return W.Layout(max_width="100%", height="auto")


def image(fig: Figure) -> W.Image:
    return W.Image(value=png(fig), format="png", layout=fit())


def count(n: float) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else (f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:g}")


def esc(x: Any) -> str:
    return html.escape(str(x))


def error_html(e: ConfigError) -> str:
    return (f"<div style='color:{RED}'>✗ <b>{esc(e.field)}</b> = <code>{esc(repr(e.value))}</code>: "
            f"{esc(e.allowed)}</div>")


def check_html(result: RunResult) -> str:
    """The status line: the baseline check, then the headline numbers."""
    b = result.baseline
    diff = f"max |Δparam| = {b['max_abs_param_diff']:.2e}"
    text = (f"baseline check passed ({diff} ≤ {b['tolerance']:.0e})" if b["passed"] else
            f"baseline check FAILED ({diff} > tolerance {b['tolerance']:.0e})")
    if b.get("compares") == "loss":  # equality with one device is not expected: the run says why
        loss = f"mean loss {b['mean_loss_rel_diff']:.1%} from one device's"
        text = (f"loss check passed ({loss} ≤ {b['loss_tolerance']:.0%}; {diff}, not expected to match)"
                if b["passed"] else f"loss check FAILED ({loss} > {b['loss_tolerance']:.0%})")
        why = "".join(f"<div style='color:#8A5A00;font-weight:normal'>≠ {esc(w)}</div>" for w in b["why"])
        more = f" · {result.throughput_samples_per_s:.0f} samples/s · wall {result.wall_s:.1f} s"
        return f"<b style='color:{GREEN if b['passed'] else RED}'>{text}</b>{esc(more)}{why}"
    more = f" · {result.throughput_samples_per_s:.0f} samples/s · wall {result.wall_s:.1f} s"
    if result.accuracy is not None:
        more += f" · accuracy {result.accuracy:.3f} (single device {b['accuracy']:.3f})"
    return f"<b style='color:{GREEN if b['passed'] else RED}'>{text}</b>{esc(more)}"


def notes_html(result: RunResult) -> str:
    """The run's notes (a diverged loss, layers left whole by the tensor
    plan, targets cast), then what the ranks printed, labelled by rank."""
    notes = "".join(f"<div style='color:#8A5A00'>⚠ {esc(n)}</div>" for n in result.notes)
    return notes + output_html({r.rank: r.output for r in result.ranks})


def output_html(outputs: dict[int, str]) -> str:
    """What each rank printed, folded away under one line: ``[rank r]``
    before every line, rank by rank, never interleaved."""
    text = labelled_output(outputs)
    if not text:
        return ""
    lines = text.count("\n") + 1
    return (f"<details class='playground-rank-output'><summary style='color:{GREY}'>what the ranks printed "
            f"({lines} line{'s' if lines > 1 else ''})</summary><pre style='max-height:16em;overflow:auto'>"
            f"{esc(text)}</pre></details>")


def balance_html(result: RunResult) -> str:
    """Each stage's estimated FLOP share beside the compute share measured for it."""
    stages = getattr(result, "stage_balance", None) or []
    if len(stages) < 2:
        return ""
    return "<br>stage balance: " + esc(" · ".join(
        f"stage {s['stage']}: {s['flops_share']:.0%} of FLOPs, {s['compute_share']:.0%} of measured compute"
        for s in stages))


def trace_link_html(result: RunResult) -> str:
    """A link that saves the run's Chrome trace (``RunResult.to_chrome_trace``).
    The JSON travels in a data URI, so it works alike in JupyterLab and Voila
    and writes no file on the server."""
    c = result.config
    name = f"trace-{c.model}-{c.strategy}-{result.world_size}ranks.json"
    data = json.dumps(result.to_chrome_trace()).encode()
    href = "data:application/json;base64," + base64.b64encode(data).decode("ascii")
    return (f"<a class='playground-trace' download='{esc(name)}' href='{href}' style='color:#0969DA'>"
            f"⬇ save {esc(name)}</a> <span style='color:{GREY}'>({plots.human_bytes(len(data))}; "
            f"open it in ui.perfetto.dev or chrome://tracing)</span>")


def key_numbers(n: int, result: RunResult) -> str:
    c = result.config
    t = {k: sum(r.time.get(k, 0.0) for r in result.ranks) / len(result.ranks) * 1e3
         for k in ("compute", "comm", "wait", "overhead", "overlapped")}
    rows = [("run", f"#{n} {plots.run_title(result)}"), ("split", list(result.split_points) or "-"),
            ("samples/s", f"{result.throughput_samples_per_s:.0f}"), ("wall", f"{result.wall_s:.1f} s"),
            ("per rank (mean)", f"compute {t['compute']:.1f} ms · comm {t['comm']:.1f} ms · waiting for peers "
                                f"{t['wait']:.1f} ms · runtime overhead {t['overhead']:.1f} ms "
                                f"(comm hidden under compute {t['overlapped']:.1f} ms)"),
            ("sent (all ranks)", plots.human_bytes(sum(r.bytes_sent for r in result.ranks))),
            ("max |Δparam|", f"{result.baseline['max_abs_param_diff']:.2e} "
                             f"({'passed' if result.passed else 'FAILED'})")]
    if result.bubble:
        measured, replayed = result.bubble["measured"], result.bubble.get("replayed")
        rows.append(("bubble", f"measured {sum(measured) / len(measured):.0%}"
                     + (f" · replayed {sum(replayed) / len(replayed):.0%}" if replayed else "")
                     + f" · formula {result.bubble['predicted']:.0%} (means over ranks)"))
    if result.accuracy is not None:
        rows.append(("accuracy", f"{result.accuracy:.3f}"))
    rows.append(("steps · lr", f"{c.steps} · {c.lr:g} {c.optimizer}"))
    cells = "".join(f"<tr><td style='color:{GREY};padding-right:8px'>{esc(k)}</td><td>{esc(v)}</td></tr>"
                    for k, v in rows)
    return f"<table style='font-size:12px'>{cells}</table>"


# --------------------------------------------------------------------------
# Views


class SplitStrip(W.VBox):
    """The model's blocks in a row with a toggle in every gap: the toggles
    that are on are the cuts (split points), which define the stages."""

    def __init__(self):
        super().__init__(layout=W.Layout(width="100%"))
        self.model: str | None = None
        self.toggles: list[W.ToggleButton] = []
        self.cells: list[W.HTML] = []
        self.balance = W.Button(description="balance", tooltip="cuts that balance the stages' FLOPs",
                                layout=W.Layout(width="90px"))
        self.shares = W.HTML()
        self.row = W.Box(layout=W.Layout(flex_flow="row wrap", align_items="center"))
        self.children = [W.HBox([W.HTML("<b>split points</b> (✂ = cut between two blocks)"), self.balance]),
                         self.row, self.shares]

    def set_model(self, model: str) -> None:
        self.model = model
        infos = block_infos(model)
        self.cells = [W.HTML(layout=W.Layout(width="86px")) for _ in infos]
        self.toggles = [W.ToggleButton(description="✂", tooltip=f"cut between block {i - 1} and block {i}",
                                       layout=W.Layout(width="30px", padding="0")) for i in range(1, len(infos))]
        parts: list[W.Widget] = [self.cells[0]]
        for toggle, cell in zip(self.toggles, self.cells[1:]):
            parts += [toggle, cell]
        self.row.children = parts

    @property
    def cuts(self) -> tuple[int, ...]:
        return tuple(i + 1 for i, t in enumerate(self.toggles) if t.value)

    def set_cuts(self, cuts: tuple[int, ...]) -> None:
        for i, t in enumerate(self.toggles):
            t.value = i + 1 in cuts

    def set_enabled(self, on: bool) -> None:
        for t in self.toggles:
            t.disabled = not on
        self.balance.disabled = not on

    def draw(self) -> None:
        """Colour each block by its stage; list each stage's share of the model."""
        infos = block_infos(self.model)
        on = not self.balance.disabled
        shares = stage_shares(infos, self.cuts if on else ())
        for s in shares:
            for i in range(*s["blocks"]):
                b = infos[i]
                color = STAGE_COLORS[s["stage"] % len(STAGE_COLORS)] if on else "#EEE"
                self.cells[i].value = (
                    f"<div style='background:{color};border:1px solid #999;border-radius:3px;padding:2px;"
                    f"font-size:11px;line-height:1.25;text-align:center'><b>{esc(b.label)}</b><br>"
                    f"{count(b.params)} params<br>{count(b.flops)} FLOPs</div>")
        if not on:
            self.shares.value = f"<span style='color:{GREY}'>this strategy does not cut the model</span>"
            return
        slowest = max(s["flop_share"] for s in shares)
        spans = []
        for s in shares:
            (first, end), color = s["blocks"], STAGE_COLORS[s["stage"] % len(STAGE_COLORS)]
            text = (f"stage {s['stage']}: blocks {first}–{end - 1} · {s['flop_share']:.0%} FLOPs · "
                    f"{s['param_share']:.0%} params")
            if s["flop_share"] == slowest:  # the slowest stage sets a pipeline's pace
                text = f"<b>{text}</b>"
            spans.append(f"<span style='background:{color};padding:0 4px'>{text}</span>")
        self.shares.value = " &nbsp;│&nbsp; ".join(spans)


class ResultsView(W.Tab):
    """One tab per picture of the latest run, each drawn from the RunResult."""

    TITLES = ("timeline", "compute / comm / idle", "memory", "loss and check", "data flow")

    def __init__(self):
        super().__init__(children=[W.HTML("no run yet")], layout=W.Layout(width="100%"))
        self.add_class("playground-results")
        self.titles = ("results",)

    def show(self, result: RunResult) -> dict[str, bytes]:
        """Draw every figure; return them as PNG bytes by tab title."""
        bubble = bubble_sentences(result.bubble) if result.bubble else \
            "no pipeline here: idle time is waiting for peers"
        memory = ("outlined bars: the cost model's prediction beside the measured bytes" if result.predictions
                  else f"no cost-model prediction for strategy '{result.config.strategy}' yet")
        timeline = "each rank's events over the last two steps; hatched: waiting for a peer"
        panes = [(result.plot_timeline(), esc(timeline)),
                 (result.plot_time_breakdown(), esc(bubble) + balance_html(result)),
                 (result.plot_memory(), esc(memory)),
                 (result.plot_losses(), check_html(result)),
                 (result.plot_dataflow(), esc("bytes per step across each cut and between replicas, as measured"))]
        # The timeline's rows as drawn, in words: its alt text, for screen readers (and the browser tests).
        rows = [t.get_text() for t in panes[0][0].axes[0].get_yticklabels()]
        alt = f"timeline picture: {len(rows)} rows, one per rank: " + "; ".join(rows)
        panes[0] = (panes[0][0], panes[0][1] + f"<span class='playground-timeline-rows' style='{SCREEN_READER_ONLY}'>"
                                               f"{esc(alt)}</span>")
        pngs = [png(fig) for fig, _ in panes]
        self.children = [W.VBox([W.HTML(caption), W.Image(value=p, format="png", layout=fit())])
                         for (_, caption), p in zip(panes, pngs)]
        self.children[0].children[1].add_class("playground-timeline")
        self.titles = self.TITLES
        return dict(zip(self.TITLES, pngs))


class History(W.VBox):
    """Every run of this Playground in a table; two of them side by side."""

    def __init__(self):
        self.runs: list[dict[str, Any]] = []
        self.table = W.HTML("<i>no runs yet</i>")
        self.a = W.Dropdown(description="run A", layout=W.Layout(width="300px"))
        self.b = W.Dropdown(description="run B", layout=W.Layout(width="300px"))
        self.side = W.HBox(layout=W.Layout(width="100%"))
        for d in (self.a, self.b):
            d.observe(lambda _: self.compare(), names="value")
        super().__init__([self.table, W.HBox([self.a, self.b]), self.side])

    def add(self, config: RunConfig, result: RunResult | None = None, error: str | None = None,
            timeline: bytes | None = None) -> None:
        self.runs.append({"n": len(self.runs) + 1, "config": config, "result": result, "error": error,
                          "timeline": timeline})
        self.table.value = self._table()
        done = [(f"#{r['n']} {r['config'].strategy} ×{r['config'].world_size}", r["n"])
                for r in self.runs if r["result"] is not None]
        if result is not None:
            previous = done[-2][1] if len(done) > 1 else done[-1][1]
            self.a.options = self.b.options = done
            self.a.value, self.b.value = previous, done[-1][1]

    def _table(self) -> str:
        head = ("#", "model", "strategy", "ranks", "split", "m", "schedule", "steps", "samples/s", "wall s",
                "max |Δparam|", "check", "accuracy")
        rows = []
        for r in reversed(self.runs):
            c, res = r["config"], r["result"]
            split = res.split_points if res else c.split_points  # the result's: resolved when balanced
            cells = [r["n"], c.model, c.strategy, c.world_size, ",".join(map(str, split or ())) or "-",
                     c.micro_batches, c.schedule if c.scheduled else "-", c.steps]
            if res is None:
                failed = f"<span style='color:{RED}'>{esc(r['error'])}</span>"
                cells = [esc(v) for v in cells] + ["", "", "", failed, ""]
            else:
                cells = [esc(v) for v in cells + [f"{res.throughput_samples_per_s:.0f}", f"{res.wall_s:.1f}",
                                                  f"{res.baseline['max_abs_param_diff']:.1e}"]]
                cells += [f"<span style='color:{GREEN if res.passed else RED}'>"
                          f"{'passed' if res.passed else 'FAILED'}</span>",
                          "-" if res.accuracy is None else f"{res.accuracy:.3f}"]
            rows.append("".join(f"<td>{v}</td>" for v in cells))
        th = "".join(f"<th style='text-align:left;padding-right:10px'>{esc(h)}</th>" for h in head)
        body = "".join(f"<tr>{row}</tr>" for row in rows)
        return (f"<div style='max-height:220px;overflow:auto'><table style='font-size:12px'>"
                f"<tr>{th}</tr>{body}</table></div>")

    def compare(self) -> None:
        chosen = [next((r for r in self.runs if r["n"] == v), None) for v in (self.a.value, self.b.value)]
        if None in chosen:
            return
        panes = []
        for r in chosen:
            if r["timeline"] is None:
                r["timeline"] = png(r["result"].plot_timeline())
            img = W.Image(value=r["timeline"], format="png", layout=W.Layout(width="100%", height="auto"))
            panes.append(W.VBox([W.HTML(key_numbers(r["n"], r["result"])), img], layout=W.Layout(width="50%")))
        self.side.children = panes


# --------------------------------------------------------------------------
# The Playground


def _state_fields(state: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config fields, sweep settings) from a RunConfig, a dict, or JSON:
    this app's ``to_json``, a config's, or a result's (its ``config`` key)."""
    if isinstance(state, RunConfig):
        return state.to_dict(), {}
    if isinstance(state, str):
        state = json.loads(state)
    if "config" in state:
        return dict(state["config"]), dict(state.get("sweep", {}))
    return dict(state), {}


class Playground(W.VBox):
    """Choose a model, a strategy and its split; run it for real; see every rank."""

    def __init__(self, config: RunConfig | str | dict | None = None):
        self.cap, self.cores, self.gpus = device_limit()
        self.config: RunConfig | None = None
        self.error: ConfigError | None = None
        self.result: RunResult | None = None
        self.figures: dict[str, bytes] = {}
        self._extra: dict[str, Any] = {}
        self._holding = False
        self._stages: int | None = None
        self._busy = False
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self.strip = SplitStrip()
        self.results = ResultsView()
        self.history = History()
        super().__init__(self._layout(), layout=W.Layout(width="100%", max_width=PAGE_WIDTH))
        for w in (*self.inputs.values(), self.mesh, self.shares):
            w.observe(self._refresh, names="value")
        self.strategy.observe(self._on_strategy, names="value")
        self.strip.balance.on_click(self._on_balance)
        self.run_button.on_click(lambda _: self.start_run())
        self.stop_button.on_click(lambda _: self.stop())
        self.sweep_button.on_click(lambda _: self.start_sweep())
        self.trace_button.on_click(lambda _: self.offer_trace())
        self.export_button.on_click(lambda _: setattr(self.share, "value", self.to_json()))
        self.load_button.on_click(self._on_load)
        self.load(config if config is not None else START)

    # -- layout --------------------------------------------------------

    def _layout(self) -> list[W.Widget]:
        style = {"description_width": "120px"}

        def make(cls, description, **kw):  # each its own Layout: hiding one must not hide the others
            return cls(description=description, style=style, layout=W.Layout(width="100%"), **kw)

        self.model = make(W.Dropdown, "model", options=list(MODELS))
        self.strategy = make(W.Dropdown, "strategy", options=list(STRATEGIES))
        self.world = make(W.IntSlider, "devices", min=1, max=self.cap, continuous_update=False)
        self.mesh = make(W.Dropdown, "mesh", options=[])  # the options say "dp 2 × pp 2 × tp 1"
        self.global_batch = make(W.IntText, "global batch")
        self.shares = make(W.Text, "batch shares", placeholder="even; e.g. 3,1")
        self.micro_batches = make(W.BoundedIntText, "micro-batches", min=1, max=1024)
        self.schedule = make(W.Dropdown, "schedule", options=list(SCHEDULES))
        self.virtual_stages = make(W.BoundedIntText, "virtual stages", min=1, max=64)
        self.steps = make(W.BoundedIntText, "steps", min=1, max=100_000)
        self.lr = make(W.FloatText, "learning rate")
        self.optimizer = make(W.ToggleButtons, "optimizer", options=list(OPTIMIZERS))
        self.optimizer.style.button_width = "60px"
        self.optimizer.add_class("widget-inline-hbox")  # label and buttons on one line, as in the other controls
        self.seed = make(W.IntText, "seed")
        self.threads_per_rank = make(W.BoundedIntText, "threads / device", min=1, max=256,
                                     tooltip="CPU threads of each rank and of the single-device reference: "
                                             "one device is a fixed compute budget")
        self.sync_batchnorm = make(W.Checkbox, "sync BatchNorm", indent=False,
                                   tooltip="normalise BatchNorm over the whole batch, not each data-parallel "
                                           "rank's shard (SyncBatchNorm)")
        self.message = W.HTML()
        self.run_button = W.Button(description="Run", button_style="primary", icon="play")
        self.stop_button = W.Button(description="Stop", icon="stop", disabled=True)
        self.progress = W.IntProgress(description="idle", min=0, max=1, style=style, layout=W.Layout(width="320px"))
        self.status = W.HTML()
        self.status.add_class("playground-status")
        self.trace_button = W.Button(description="Chrome trace", icon="download", disabled=True,
                                     tooltip="the last run's timeline as a Chrome trace (JSON), for "
                                             "ui.perfetto.dev or chrome://tracing",
                                     layout=W.Layout(width="130px", flex="0 0 auto"))
        self.trace_link = W.HTML()
        self.sweep_over = W.Dropdown(description="sweep over", options=[("device count", "world_size"),
                                                                         ("micro-batches", "micro_batches")])
        self.sweep_counts = W.Text(value="1,2,4", description="counts", layout=W.Layout(width="260px"))
        self.sweep_button = W.Button(description="Sweep", icon="line-chart")
        self.sweep_plot = W.Box(layout=W.Layout(width="100%"))
        self.share = W.Textarea(placeholder="state JSON: export, or paste and load",
                                layout=W.Layout(width="100%", height="110px"))
        self.export_button, self.load_button = W.Button(description="export"), W.Button(description="load")
        self.inputs = {"model": self.model, "strategy": self.strategy, "world_size": self.world,
                       "global_batch": self.global_batch, "micro_batches": self.micro_batches,
                       "schedule": self.schedule, "virtual_stages": self.virtual_stages, "steps": self.steps,
                       "lr": self.lr, "optimizer": self.optimizer, "seed": self.seed,
                       "threads_per_rank": self.threads_per_rank, "sync_batchnorm": self.sync_batchnorm}
        """The controls that hold one RunConfig field each, by field."""
        columns = ([self.model, self.strategy, self.world, self.mesh],
                   [self.global_batch, self.shares, self.micro_batches, self.schedule, self.virtual_stages],
                   [self.steps, self.lr, self.optimizer, self.seed, self.threads_per_rank, self.sync_batchnorm])
        controls = W.HBox([W.VBox(c, layout=W.Layout(width="33%", padding="0 8px 0 0")) for c in columns])
        extras = W.Accordion(children=[
            self.history,
            W.VBox([W.HBox([self.sweep_over, self.sweep_counts, self.sweep_button]), self.sweep_plot]),
            W.VBox([self.share, W.HBox([self.export_button, self.load_button])])],
            titles=("history and compare", "sweep", "share"), layout=W.Layout(width="100%"))
        return [W.HTML(CSS + "<h3 style='margin:4px 0'>Model and data parallelism playground</h3>"), controls,
                self.strip, self.message,
                W.HBox([self.run_button, self.stop_button, self.progress, self.trace_button],
                       layout=W.Layout(align_items="center")),
                self.status, self.trace_link, self.results, extras]

    @contextmanager
    def _hold(self):
        """Set several controls without revalidating after each."""
        self._holding, outer = True, self._holding
        try:
            yield
        finally:
            self._holding = outer

    # -- state: controls <-> RunConfig fields ----------------------------

    def load(self, state: RunConfig | str | dict) -> None:
        """Set every control from a RunConfig, its dict, or JSON (``to_json``'s, a config's or a result's)."""
        fields, sweep = _state_fields(state)
        f = {x.name: x.default for x in dataclasses.fields(RunConfig)} | fields
        with self._hold():
            self._extra = {k: v for k, v in fields.items() if k not in CONTROLLED}
            for name, w in self.inputs.items():
                w.value = f[name]
            bp = f["batch_partition"]
            self.shares.value = ",".join(map(str, bp)) if isinstance(bp, (list, tuple)) else str(bp or "")
            self._set_mesh((f["dp"], f["pp"], f["tp"]))
            self._set_model(f["model"])
            self.sweep_over.value = sweep.get("over", self.sweep_over.value)
            self.sweep_counts.value = sweep.get("counts", self.sweep_counts.value)
            probe = self._probe(self._base_fields())
            if f["split_points"] is not None:
                self.strip.set_cuts(tuple(f["split_points"]))
                self._stages = self._needed_stages(probe) if probe else None
            else:
                self._stages = None
        self._refresh()

    def _on_load(self, _) -> None:
        try:
            self.load(self.share.value)
        except (ValueError, TypeError, KeyError, AttributeError, TraitError) as e:  # a JSON the form cannot hold
            self.status.value = f"<span style='color:{RED}'>cannot load that state: {esc(e)}</span>"

    def to_json(self) -> str:
        """The whole state: the controls' RunConfig fields (valid or not) and the sweep's settings."""
        return json.dumps({"config": self.fields(),
                           "sweep": {"over": self.sweep_over.value, "counts": self.sweep_counts.value}})

    def _base_fields(self) -> dict[str, Any]:
        f = {**self._extra, **{k: w.value for k, w in self.inputs.items() if k not in SCHEDULE_FIELDS}}
        if f["strategy"] == "hybrid" and self.mesh.value:
            f["dp"], f["pp"], f["tp"] = self.mesh.value
        return f

    @staticmethod
    def _probe(base: dict[str, Any]) -> RunConfig | None:
        """The config without the fields that depend on it (cuts, shares,
        schedule): it tells which of those apply. It admits everything the
        full config admits, so when it fails the full one fails too."""
        try:
            return RunConfig.from_dict(base)
        except ConfigError:
            return None

    def _needed_stages(self, probe: RunConfig) -> int:
        return probe.pp_size * (self.virtual_stages.value if probe.scheduled else 1)

    def fields(self) -> dict[str, Any]:
        """The RunConfig fields the controls say, not yet validated."""
        f = self._base_fields()
        probe = self._probe(f)
        if probe is None or probe.scheduled:
            f.update({k: self.inputs[k].value for k in SCHEDULE_FIELDS})
        if (probe is None or probe.dp_size > 1) and parse_counts(self.shares.value) != ():
            f["batch_partition"] = parse_counts(self.shares.value)
        stages = self._needed_stages(probe) if probe else None
        if not self.strip.balance.disabled and self.strip.cuts != balanced_cuts(self.model.value, stages or 0):
            f["split_points"] = self.strip.cuts  # None: the balanced cuts, as run() chooses them
        return f

    def _set_model(self, model: str) -> None:
        if self.strip.model != model:
            self.strip.set_model(model)
            for t in self.strip.toggles:
                t.observe(self._refresh, names="value")
            self._stages = None

    def _set_mesh(self, want: tuple | None = None) -> None:
        """Offer the meshes of the device count; keep pp and tp when they still divide it."""
        n, old = self.world.value, want or self.mesh.value
        options = mesh_options(n)
        values = [v for _, v in options]
        keep = [v for v in values if old and v[1:] == tuple(old)[1:]]
        # A pipeline of the fewest stages, as hybrid needs a second axis: (n/2, 2, 1), or (1, 3, 1) for 3.
        piped = [v for v in values if v[1] > 1 and v[2] == 1]
        fallback = max(piped) if piped else values[0]
        if [v for _, v in self.mesh.options] != values:
            self.mesh.options = options
        self.mesh.value = tuple(old) if old and tuple(old) in values else (keep or [fallback])[0]

    # -- validation ------------------------------------------------------

    def _on_strategy(self, change) -> None:
        if self._holding:
            return
        if change["new"] == "single":
            self.world.value = 1
        elif change["old"] == "single" and self.world.value == 1:
            self.world.value = min(2, self.cap)

    def _refresh(self, _=None) -> None:
        """After any change: fit the dependent controls, then rebuild the RunConfig."""
        if self._holding:
            return
        with self._hold():
            self._set_model(self.model.value)
            self._set_mesh()
            self.mesh.layout.display = "" if self.strategy.value == "hybrid" else "none"
            probe = self._probe(self._base_fields())
            if probe is not None:
                for k in SCHEDULE_FIELDS:
                    self.inputs[k].disabled = not probe.scheduled
                self.shares.disabled = probe.dp_size == 1
                stages = self._needed_stages(probe)
                if stages != self._stages:  # the number of cuts changed: start from balanced ones
                    self.strip.set_cuts(balanced_cuts(self.model.value, stages))
                    self._stages = stages
                self.strip.set_enabled(stages > 1)
            self.strip.draw()
        try:
            self.config = RunConfig.from_dict(self.fields())
            self.error = None
            notes = run_notes(self.config, self.cores)
            c = self.config
            summary = (f"✓ {c.world_size} rank(s) · {c.stages} stage(s) · samples per data-parallel rank "
                       f"{list(c.rank_batches())}" + (f" in {c.micro_batches} micro-batches" if c.scheduled else ""))
            self.message.value = (f"<div style='color:{GREEN}'>{esc(summary)}</div>" +
                                  "".join(f"<div style='color:#8A5A00'>⚠ {esc(n)}</div>" for n in notes))
        except ConfigError as e:
            self.config, self.error = None, e
            self.message.value = error_html(e)
        self._sync_buttons()

    def _on_balance(self, _) -> None:
        probe = self._probe(self._base_fields())
        if probe is not None:
            with self._hold():
                self.strip.set_cuts(balanced_cuts(self.model.value, self._needed_stages(probe)))
            self._refresh()

    def _sync_buttons(self) -> None:
        self.run_button.disabled = self.config is None or self._busy
        self.sweep_button.disabled = self.config is None or self._busy
        self.stop_button.disabled = not self._busy or self._cancel.is_set()
        self.trace_button.disabled = self.result is None

    # -- running, in a background thread ---------------------------------

    @property
    def running(self) -> bool:
        return self._busy

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current run or sweep ends; False if it outlasts ``timeout``."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self._busy

    def start_run(self) -> None:
        """Run the current config (what the Run button does)."""
        if self.config is not None and not self._busy:
            self._start(self._run_job, self.config, total=self.config.steps)

    def start_sweep(self) -> None:
        """Run the current config at each count (what the Sweep button does)."""
        counts = parse_counts(self.sweep_counts.value)
        if isinstance(counts, str) or not counts or min(counts) < 1:
            self.status.value = f"<span style='color:{RED}'>counts: give positive integers, e.g. 1,2,4</span>"
            return
        if self.config is not None and not self._busy:
            self._start(self._sweep_job, self.config, self.sweep_over.value, counts, total=len(counts))

    def offer_trace(self) -> None:
        """Show a link that saves the last run's Chrome trace (what the Chrome trace button does)."""
        if self.result is not None:
            self.trace_link.value = trace_link_html(self.result)

    def stop(self) -> None:
        """End the current run: every rank with run()'s cancel hook; without it, drop the result."""
        self._cancel.set()
        self._sync_buttons()
        self.status.value = ("stopping: ending every rank…" if run_accepts("cancel") else
                             "stop requested, but this run() has no cancel hook: its ranks finish by themselves "
                             "(within timeout_s) and the result is dropped; a sweep stops before its next point")

    def _start(self, job: Callable, *args, total: int) -> None:
        self._cancel = threading.Event()
        self._busy = True
        self._sync_buttons()
        self.progress.max, self.progress.value, self.progress.bar_style = max(1, total), 0, "info"
        self._thread = threading.Thread(target=self._work, args=(job, *args), daemon=True, name="playground-run")
        self._thread.start()

    def _work(self, job: Callable, *args) -> None:
        started, done = time.monotonic(), threading.Event()

        def tick():  # run() reports nothing until it returns: show that time passes
            while not done.wait(0.5):
                self.progress.description = f"running {time.monotonic() - started:.0f} s"
        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            job(*args)
        except Exception as e:  # a fault of the view itself; show it rather than lose it in the thread
            self.status.value = f"<span style='color:{RED}'>playground error: {esc(type(e).__name__)}: {esc(e)}</span>"
        finally:
            done.set()
            ticker.join()  # else its last "running ... s" could land after the final time below
            self.progress.description = f"{time.monotonic() - started:.0f} s"
            self._busy = False
            self._sync_buttons()

    def _call_run(self, config: RunConfig, per_step: bool) -> RunResult:
        kwargs: dict[str, Any] = {}
        if run_accepts("cancel"):
            kwargs["cancel"] = self._cancel
        if per_step and run_accepts("on_step"):
            kwargs["on_step"] = lambda step: setattr(self.progress, "value", step + 1)
        return runner.run(config, **kwargs)

    def _failed(self, config: RunConfig, e: Exception) -> None:
        stopped = self._cancel.is_set()
        what = "stopped" if stopped else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        self.history.add(config, error=what)
        self.progress.bar_style = "warning" if stopped else "danger"
        self.status.value = ("stopped: every rank was ended" if stopped else
                             f"<span style='color:{RED}'>run failed: {esc(what)}</span>"
                             + output_html(getattr(e, "outputs", {})))
        if self.result is not None:  # the tabs below still hold it: say so, lest they pass for this run's
            self.status.value += (f" <span style='color:{GREY}'>· the pictures below are from the last run "
                                  f"that finished ({esc(plots.run_title(self.result))})</span>")

    def _run_job(self, config: RunConfig) -> None:
        self.status.value = f"running {esc(config.strategy)} on {config.world_size} rank(s)…"
        try:
            result = self._call_run(config, per_step=True)
        except Exception as e:
            return self._failed(config, e)
        if self._cancel.is_set():  # no cancel hook: the run finished anyway; drop it as asked
            return self._failed(config, RuntimeError("stopped"))
        self.status.value = "drawing…"
        self.figures = self.results.show(result)
        self.result = result
        self.trace_link.value = ""  # it held the previous run's trace
        self.history.add(config, result, timeline=self.figures["timeline"])
        self.progress.value, self.progress.bar_style = self.progress.max, "success" if result.passed else "danger"
        self.status.value = check_html(result) + notes_html(result)

    def _sweep_job(self, config: RunConfig, over: str, counts: tuple[int, ...]) -> None:
        points: list[tuple[int, RunResult]] = []
        skipped: list[str] = []
        for i, n in enumerate(counts):
            if self._cancel.is_set():
                break
            try:
                cfg = sweep_config(config, over, n)
            except ConfigError as e:
                skipped.append(f"{n}: {e}")
                continue
            self.status.value = f"sweep: {over} = {n} ({i + 1} of {len(counts)})…"
            try:
                result = self._call_run(cfg, per_step=False)
            except Exception as e:
                self._failed(cfg, e)
                skipped.append(f"{n}: {type(e).__name__}")
                continue
            if self._cancel.is_set():
                break
            self.history.add(cfg, result)
            points.append((n, result))
            self.progress.value = i + 1
            self.sweep_plot.children = [image(plot_sweep(over, points))]
        done = f"sweep: {len(points)} of {len(counts)} point(s) ran" + (" (stopped)" if self._cancel.is_set() else "")
        self.status.value = esc(done) + "".join(f"<div style='color:{GREY}'>skipped {esc(s)}</div>" for s in skipped)
        self.progress.bar_style = "success" if len(points) == len(counts) else "warning"


__all__ = ["Playground", "plot_sweep", "sweep_config", "mesh_options", "run_accepts"]
