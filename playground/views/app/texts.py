"""The app's text: HTML for the check, the notes, the key numbers, a live
run, the ZeRO formulas and the timeline's legend, and its pictures as SVG.
Functions of what they are given; no widgets."""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

from matplotlib.figure import Figure

from playground.spec.config import ConfigError
from playground.result.run_result import RunResult, labelled_output
from playground.views import plots

GREEN, RED, GREY, AMBER = "#1A7F37", "#B00020", "#555", "#8A5A00"


SCREEN_READER_ONLY = "position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap"


PICTURE_FORMAT = "svg+xml"
"""The app's pictures are SVG with text kept as text: the browser sets the
type, and matplotlib only writes it out, two to four times faster than
rendering a PNG of the same figure at 90 dpi. The timeline, the tab shown
first, is written without matplotlib (``timeline.svg``)."""


def picture(fig: Figure) -> bytes:
    """``fig`` as SVG, its text as text (``svg.fonttype`` "none"): the
    figure's inches at 72 points each, scaled to the page by ``fit``."""
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg")
    return buf.getvalue()


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


def count(n: float) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else (f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:g}")


def esc(x: Any) -> str:
    return html.escape(str(x))


def value_text(value: Any) -> str:
    """A field's value as a person writes it: ``1`` for the tuple (1,),
    ``(1, 3)`` for (1, 3); other values as Python writes them ('full')."""
    if isinstance(value, (tuple, list)):
        return str(value[0]) if len(value) == 1 else "(" + ", ".join(map(str, value)) + ")"
    return repr(value)


def error_html(e: ConfigError) -> str:
    return (f"<div style='color:{RED}'>✗ <b>{esc(e.field)}</b> = <code>{esc(value_text(e.value))}</code>: "
            f"{esc(e.allowed)}</div>")


def check_html(result: RunResult) -> str:
    """The status line: the baseline check, then the headline numbers."""
    b = result.baseline
    diff = f"max |Δparam| = {b['max_abs_param_diff']:.2e}"
    text = (f"baseline check passed ({diff} ≤ {b['tolerance']:.0e})" if b["passed"] else
            f"baseline check FAILED ({diff} > tolerance {b['tolerance']:.0e})")
    more = f" · {result.throughput_samples_per_s:.0f} samples/s · wall {result.wall_s:.1f} s"
    if b.get("compares") == "loss":  # equality with one device is not expected: the run says why
        loss = f"mean loss {b['mean_loss_rel_diff']:.1%} from one device's"
        text = (f"loss check passed ({loss} ≤ {b['loss_tolerance']:.0%}; {diff}, not expected to match)"
                if b["passed"] else f"loss check FAILED ({loss} > {b['loss_tolerance']:.0%})")
        why = "".join(f"<div style='color:{AMBER};font-weight:normal'>≠ {esc(w)}</div>" for w in b["why"])
        return f"<b style='color:{GREEN if b['passed'] else RED}'>{text}</b>{esc(more)}{why}"
    if result.accuracy is not None:
        more += f" · accuracy {result.accuracy:.3f} (single device {b['accuracy']:.3f})"
    return f"<b style='color:{GREEN if b['passed'] else RED}'>{text}</b>{esc(more)}"


def notes_html(result: RunResult) -> str:
    """The run's notes (a diverged loss, layers left whole by the tensor
    plan, targets cast), then what the ranks printed, labelled by rank."""
    notes = "".join(f"<div style='color:{AMBER}'>⚠ {esc(n)}</div>" for n in result.notes)
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


def signed_bytes(n: float) -> str:
    """'+48 B', '−1.2 KiB'."""
    return ("+" if n > 0 else "−") + plots.human_bytes(abs(n))


def zero_html(zero: dict[str, Any]) -> str:
    """The ZeRO paper's bars in words (``RunResult.zero``): the stage, its
    formulas with Ψ, N_d and K, the source, and where the cost model's exact
    bytes part from the formula (``gap``, per rank), with the record's notes
    on why."""
    f = zero["formula"]
    text = (f"hatched bars: the ZeRO paper's bytes per rank at stage {zero['stage']}: parameters {f['params']}, "
            f"gradients {f['grads']}, optimizer state {f['optimizer']}, with Ψ = {zero['psi']:,} parameters, "
            f"N_d = {zero['n_d']} ranks, K = {zero['k']} bytes of optimizer state per parameter "
            f"(source: {zero['source']}). ")
    gaps = [(g["rank"], [(name, g[name]) for name in ("params", "grads", "optimizer") if g[name]])
            for g in zero["gap"]]
    if any(parts for _, parts in gaps):
        text += "The cost model's prediction minus the formula: " + "; ".join(
            f"rank {rank} " + (", ".join(f"{name} {signed_bytes(v)}" for name, v in parts) or "none")
            for rank, parts in gaps) + "."
    else:
        text += "The prediction equals the formula on every rank."
    if zero.get("partition"):
        text += f" Elements whose optimizer state each rank keeps (Ψ_r): {zero['partition']}."
    notes = "".join(f"<li>{esc(n)}</li>" for n in zero.get("notes", []))
    return (f"<div class='playground-zero'>{esc(text)}</div>"
            + (f"<details><summary style='color:{GREY}'>notes on the formula</summary><ul style='margin:2px 0'>{notes}"
               f"</ul></details>" if notes else ""))


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


LIVE_POINTS = 200
"""The most points the live loss curve draws."""


def live_html(losses: list[float], step_s: dict[int, float], steps: int) -> str:
    """A run in progress, drawn as inline SVG (no figure to render): the
    loss of each finished step (summed over ranks) against the step, and
    each rank's latest step time as a bar (ms). The steps axis spans the
    whole run while it is short, else the steps finished so far (at least
    50), so that a long run's curve is not a line at the left edge; at most
    ``LIVE_POINTS`` points are drawn, every k-th step."""
    w, h = 220, 56
    parts = [f"<span style='color:{GREY}'>loss</span> "]
    if losses:
        lo, hi = min(losses), max(losses)
        span = (hi - lo) or 1.0
        width = max(len(losses), min(steps, 50)) - 1 or 1
        every = -(-len(losses) // LIVE_POINTS)
        shown = list(range(0, len(losses), every)) + ([len(losses) - 1] if (len(losses) - 1) % every else [])
        pts = " ".join(f"{2 + (w - 4) * i / width:.1f},{h - 4 - (h - 8) * (losses[i] - lo) / span:.1f}"
                       for i in shown)
        parts.append(f"<svg class='playground-live-loss' width='{w}' height='{h}' style='vertical-align:middle;"
                     f"border:1px solid #DDD'><polyline points='{pts}' fill='none' stroke='{plots.KIND_COLORS['forward']}'"
                     f" stroke-width='1.5'/></svg> <code>{losses[-1]:.4f}</code> at step {len(losses) - 1}")
    else:
        parts.append("<i>no step finished yet</i>")
    if step_s:
        top = max(step_s.values()) or 1.0
        bars = "".join(
            f"<div class='playground-live-rank' style='font-size:11px;line-height:13px'>rank {r} "
            f"<span style='display:inline-block;width:{int(120 * s / top)}px;height:9px;"
            f"background:{plots.KIND_COLORS['forward']}'></span> {s * 1e3:.1f} ms</div>"
            for r, s in sorted(step_s.items()))
        parts.append(f"<div style='display:inline-block;vertical-align:middle;margin-left:16px'>"
                     f"<span style='color:{GREY}'>step time per rank</span>{bars}</div>")
    return "".join(parts)


def legend_html(entries: list[plots.LegendEntry], title: str, run: str) -> str:
    """The timeline's title and legend as HTML swatches (``timeline_figure``'s
    entries), for the picture drawn without them."""
    def swatch(e: plots.LegendEntry) -> str:
        if e.line:
            return (f"<span style='display:inline-block;width:18px;border-top:2px dashed {e.color};"
                    "margin-bottom:3px'></span>")
        pattern = ("background-image:repeating-linear-gradient(45deg,{0} 0 1px,transparent 1px 4px);"
                   .format(e.edge or e.color) if e.hatch else "")
        return (f"<span style='display:inline-block;width:14px;height:10px;background-color:{e.color};"
                f"opacity:{e.alpha};{pattern}border:1px solid {e.edge or e.color}'></span>")

    items = "".join(f"<span style='margin-right:12px;white-space:nowrap'>{swatch(e)} {esc(e.label)}</span>"
                    for e in entries)
    return (f"<div class='playground-timeline-legend' style='font-size:12px;line-height:1.8'>"
            f"<b>What each rank did, step by step — {esc(run)}</b><br>{items}"
            f"<span style='color:{GREY}'>{esc(title)}</span></div>")
