"""The "plan at scale" panel: a model or preset, a mesh of up to 4096
ranks and the memory knobs become a ``PlanConfig``; Plan calls the same
``playground.plan`` the notebooks call, in the app's background job, and
the ``Plan`` is drawn as it came back. Nothing is run: every figure shown
is labelled a prediction.

``plan_config_of`` (control values -> PlanConfig or ConfigError) and
``plan_html`` / ``error_html`` touch no widget; ``PlanPanel`` is the thin
widget around them.
"""

from __future__ import annotations

import html
import threading
from typing import Any

import ipywidgets as W

from playground.spec.config import (
    MODEL_BLOCKS, OPTIMIZERS, PRECISIONS, PRESET_BLOCKS, RECOMPUTE, SCHEDULES, STRATEGIES, ConfigError,
    PlanConfig,
)
from playground.planning.report import DEFAULT_GPU_MEMORY_GB, GB, Plan
from playground.views.app.jobs import Jobs

PLAN_LABEL = "prediction (nothing is run)"
MODELS = (*PRESET_BLOCKS, *MODEL_BLOCKS)
"""Presets first: the panel is for models larger than this machine."""
START: dict[str, Any] = {"model": "llama3-8b", "strategy": "hybrid", "world_size": 256, "dp": 32, "pp": 1, "tp": 8,
                         "recompute": "none", "precision": "fp32", "grad_accumulation": 1, "zero_stage": None,
                         "global_batch": 32, "sequence_length": 2048, "micro_batches": 1, "schedule": "1f1b",
                         "optimizer": "adam", "gpu_memory_gb": DEFAULT_GPU_MEMORY_GB}
"""What the panel shows first: Llama-3-8B on 256 GPUs, dp 32 x tp 8."""
ZERO_STAGES = (("strategy's own", None), ("0", 0), ("1", 1), ("2", 2), ("3", 3))


def plan_config_of(values: dict[str, Any]) -> PlanConfig | ConfigError:
    """The panel's values (``START``'s keys; ``gpu_memory_gb`` is not part
    of the config) as a PlanConfig, or the ConfigError (field, value, rule)
    the config raises. dp, pp and tp are read for strategy "hybrid" only,
    ``sequence_length`` for a preset only (0 or None: its context)."""
    fields = {k: v for k, v in values.items() if k != "gpu_memory_gb"}
    if fields.get("strategy") != "hybrid":
        for axis in ("dp", "pp", "tp"):
            fields.pop(axis, None)
    if fields.get("model") not in PRESET_BLOCKS or not fields.get("sequence_length"):
        fields["sequence_length"] = None
    try:
        return PlanConfig(**fields)
    except ConfigError as e:
        return e


def error_html(error: ConfigError) -> str:
    """The refusal, naming the field, the value and the rule."""
    return (f"<div style='color:#c0392b'><b>cannot plan</b>: <code>{html.escape(str(error.field))}</code> = "
            f"<code>{html.escape(repr(error.value))}</code>: {html.escape(str(error.allowed))}</div>")


def plan_html(plan: Plan) -> str:
    """The Plan as HTML, every figure from it: the verdict against the GPU
    memory, memory per kind of rank (``Plan.table``, GB = 10^9 bytes), the
    fullest rank's traffic per collective kind, the bubble, the largest
    modules and the notes, under the label ``PLAN_LABEL``."""
    c, peak = plan.config, plan.peak_rank
    gpu = plan.gpu_memory / GB
    u, size = plan.unit
    if plan.fits:
        verdict = (f"<b style='color:#1e8449'>fits</b>: the fullest rank ({peak['rank']}) needs "
                   f"{peak['total'] / size:.2f} {u} of {gpu:.0f} GB")
    else:
        verdict = (f"<b style='color:#c0392b'>does not fit</b>: rank {peak['rank']} needs {peak['total'] / GB:.2f} GB, "
                   f"<b>{plan.shortfall / GB:.2f} GB</b> more than {gpu:.0f} GB")
    mesh = f"dp {c.dp_size} × pp {c.pp_size} × tp {c.tp_size}"
    head = (f"<div><i>{PLAN_LABEL}</i> · {html.escape(c.model)}, {plan.parameters_text} parameters, "
            f"strategy {html.escape(c.strategy)}, {c.world_size} ranks ({mesh}), planned in {plan.seconds:.1f} s</div>"
            f"<div>{verdict}</div>")
    cells = "".join(f"<th>{h}</th>" for h in ("ranks", "params", "grads", "optimizer", "activations", "total"))
    rows = "".join(
        "<tr>" + f"<td>{html.escape(row['ranks'])}</td>" + "".join(
            f"<td style='text-align:right'>{row[k]:.2f}</td>"
            for k in ("params", "grads", "optimizer", "activations_peak", "total")) + "</tr>"
        for row in plan.table())
    table = (f"<table class='plan-ranks'><caption>memory per rank, {u} ({PLAN_LABEL})</caption>"
             f"<tr>{cells}</tr>{rows}</table>")
    comm = plan.kinds[peak["kind"]]["comm"]
    traffic = "".join(f"<tr><td>{html.escape(kind)}</td><td style='text-align:right'>{v['calls_per_step']:.0f}</td>"
                      f"<td style='text-align:right'>{v['bytes_per_step'] / size:.3f}</td>"
                      f"<td style='text-align:right'>{v['ring_bytes_per_step'] / size:.3f}</td></tr>"
                      for kind, v in comm.items())
    traffic = (f"<table class='plan-comm'><caption>traffic per step of rank {peak['rank']} ({PLAN_LABEL})</caption>"
               f"<tr><th>collective</th><th>calls</th><th>payload {u}</th><th>a ring sends, {u}</th></tr>"
               f"{traffic}</table>" if comm else "<div>no collectives on the fullest rank</div>")
    bubble = ("<div>pipeline bubble (formula): " f"{plan.bubble:.1%} of a step idle</div>"
              if plan.bubble is not None else "")
    modules = "".join(f"<li>{html.escape(m['module'])} ×{m['count']}: {m['bytes'] / size:.3f} {u} each</li>"
                      for m in plan.top_modules[:5])
    modules = (f"<div>largest modules on rank {peak['rank']} (parameters, gradients, optimizer, activations):"
               f"<ul style='margin:2px 0'>{modules}</ul></div>")
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in plan.notes)
    return (f"<div class='playground-plan'>{head}{table}{traffic}{bubble}{modules}"
            + (f"<div>notes:<ul style='margin:2px 0'>{notes}</ul></div>" if notes else "") + "</div>")


class PlanPanel(W.VBox):
    """The controls (``inputs``, by PlanConfig field, and ``gpu_memory_gb``),
    the Plan button and the output. ``jobs``: the app's ``Jobs``, so that a
    plan and a run never go at once (a panel of its own makes its own);
    ``plan`` holds the last Plan, ``error`` the last refusal."""

    def __init__(self, jobs: Jobs | None = None):
        self.jobs = jobs if jobs is not None else Jobs()
        self.plan: Plan | None = None
        self.error: ConfigError | None = None
        style, wide = {"description_width": "130px"}, W.Layout(width="300px")

        def make(cls, field, description, **kw):
            return cls(description=description, value=START[field], style=style, layout=wide, **kw)

        self.inputs = {
            "model": make(W.Dropdown, "model", "model or preset", options=list(MODELS)),
            "strategy": make(W.Dropdown, "strategy", "strategy", options=list(STRATEGIES)),
            "world_size": make(W.BoundedIntText, "world_size", "GPUs (ranks)", min=1, max=4096),
            "dp": make(W.BoundedIntText, "dp", "hybrid: dp", min=1, max=4096),
            "pp": make(W.BoundedIntText, "pp", "hybrid: pp", min=1, max=4096),
            "tp": make(W.BoundedIntText, "tp", "hybrid: tp", min=1, max=4096),
            "global_batch": make(W.BoundedIntText, "global_batch", "global batch", min=1, max=1 << 20),
            "sequence_length": make(W.BoundedIntText, "sequence_length", "sequence length", min=0, max=1 << 20),
            "micro_batches": make(W.BoundedIntText, "micro_batches", "micro-batches", min=1, max=4096),
            "schedule": make(W.Dropdown, "schedule", "schedule", options=list(SCHEDULES)),
            "optimizer": make(W.Dropdown, "optimizer", "optimizer", options=list(OPTIMIZERS)),
            "recompute": make(W.Dropdown, "recompute", "recompute", options=list(RECOMPUTE)),
            "precision": make(W.Dropdown, "precision", "precision", options=list(PRECISIONS)),
            "grad_accumulation": make(W.BoundedIntText, "grad_accumulation", "grad accumulation", min=1, max=1024),
            "zero_stage": make(W.Dropdown, "zero_stage", "ZeRO stage", options=list(ZERO_STAGES)),
            "gpu_memory_gb": make(W.BoundedFloatText, "gpu_memory_gb", "GPU memory (GB)", min=0.001, max=1e6),
        }
        self.button = W.Button(description="Plan", icon="calculator", button_style="primary")
        self.output = W.HTML(f"<i>{PLAN_LABEL}: choose a model and a mesh, then Plan</i>")
        self.button.on_click(lambda _: self.start())
        names = list(self.inputs)
        columns = [W.VBox([self.inputs[n] for n in names[i:i + 6]]) for i in range(0, len(names), 6)]
        super().__init__([W.HBox(columns), self.button, self.output])

    def values(self) -> dict[str, Any]:
        return {name: w.value for name, w in self.inputs.items()}

    def start(self) -> bool:
        """Check the values, then plan in the background job (what Plan
        does); False when refused (the error shown) or a job is running."""
        config = plan_config_of(self.values())
        if isinstance(config, ConfigError):
            self.error, self.output.value = config, error_html(config)
            return False
        if self.jobs.busy:
            self.output.value = "<i>busy: a run or a plan is going; Plan again when it ends</i>"
            return False
        gpu = self.inputs["gpu_memory_gb"].value
        # Shown before the job starts: a plan refused at once may end before start() returns.
        self.error, self.button.disabled = None, True
        self.output.value = f"<i>planning {html.escape(config.model)} on {config.world_size} ranks…</i>"
        return self.jobs.start(lambda cancel: self._plan_job(config, gpu, cancel))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the plan (or the run holding the job) ends; False past ``timeout`` seconds."""
        return self.jobs.wait(timeout)

    def _plan_job(self, config: PlanConfig, gpu: float, cancel: threading.Event) -> None:
        from playground.planning.planner import plan  # torch's fake-tensor machinery loads on first Plan

        try:
            planned = plan(config, gpu_memory_gb=gpu)
        except ConfigError as e:  # the checks plan() adds: a preset's heads against tp, its position table
            self.error, self.output.value = e, error_html(e)
        else:
            self.plan, self.output.value = planned, plan_html(planned)
        finally:
            self.button.disabled = False
