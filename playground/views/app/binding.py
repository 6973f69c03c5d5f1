"""The form side of the Playground: control values to and from the form's
values, JSON and RunConfig, and the checks shown beside the controls
(``form`` holds the logic; this mixin moves values between it and the
widgets)."""

from __future__ import annotations

import json
from typing import Any

import ipywidgets as W
from traitlets import TraitError

from playground.spec.config import ConfigError, RunConfig
from playground.views.app import form
from playground.views.app.texts import AMBER, GREEN, GREY, RED, error_html, esc



class FormBinding:
    """Keeps the controls, the form's values and the config in step."""

    # -- state: controls <-> form values ----------------------------------

    def values(self) -> dict[str, Any]:
        """What the controls hold, as ``form`` reads it."""
        return {**self._extra, **{k: form.field_value(k, w.value) for k, w in self.inputs.items()},
                "mesh": self.mesh.value, "batch_shares": self.batch_shares.value,
                "cuts": self.strip.cuts if self.strip.enabled else None}

    def fields(self) -> dict[str, Any]:
        """The RunConfig fields the controls say, not yet validated."""
        return form.config_fields(self.values())

    def load(self, state: RunConfig | str | dict) -> None:
        """Set every control from a RunConfig, its dict, or JSON (``to_json``'s, a config's or a result's)."""
        values, sweep = form.state_values(state)
        self._set(values)
        with self._hold():
            self.sweep_over.value = sweep.get("over", self.sweep_over.value)
            self.sweep_counts.value = sweep.get("counts", self.sweep_counts.value)
        self._refresh()

    def _set(self, values: dict[str, Any]) -> None:
        with self._hold():
            self._extra.update({k: v for k, v in values.items() if k not in (*form.INPUTS, "mesh", "batch_shares",
                                                                               "cuts")})
            for name, v in values.items():
                if name in self.inputs:
                    self.inputs[name].value = form.control_value(name, v)
            self.batch_shares.value = values.get("batch_shares", self.batch_shares.value)
            self._set_mesh(values.get("mesh"))
            self._set_model(self.model.value)
            self._stages = None
            if values.get("cuts") is not None:
                self.strip.set_cuts(values["cuts"])
                self._stages = form.applies(self.values()).stages

    def _on_load(self, _) -> None:
        try:
            self.load(self.state_json.value)
        except (ValueError, TypeError, KeyError, AttributeError, TraitError) as e:  # a JSON the form cannot hold
            self.status.value = f"<span style='color:{RED}'>cannot load that state: {esc(e)}</span>"

    def to_json(self) -> str:
        """The whole state: the controls' RunConfig fields (valid or not) and the sweep's settings."""
        return json.dumps({"config": self.fields(),
                           "sweep": {"over": self.sweep_over.value, "counts": self.sweep_counts.value}})

    def _set_model(self, model: str) -> None:
        if self.strip.model != model:
            self.strip.set_model(model)
            for t in self.strip.toggles:
                t.observe(self._refresh, names="value")
            self._stages = None

    def _set_mesh(self, want: tuple | None = None) -> None:
        """Offer the meshes of the number of devices; keep pp and tp when they still divide it."""
        options = form.mesh_options(self.world.value)
        if self.mesh.options != tuple(options):
            self.mesh.options = options
        self.mesh.value = form.mesh_choice(self.world.value, want or self.mesh.value)

    # -- validation ---------------------------------------------------------

    def _on_strategy(self, change) -> None:
        if self._holding:
            return
        if change["new"] == "single":
            self.world.value = 1
        elif change["old"] == "single" and self.world.value == 1:
            self.world.value = min(2, self.cap)

    def _refresh(self, _=None) -> None:
        """After any change: fit the dependent controls, then build the RunConfig."""
        if self._holding:
            return
        with self._hold():
            self._set_model(self.model.value)
            self._set_mesh()
            a = form.applies(self.values())
            self.mesh.layout.display = "" if a.mesh else "none"
            if a.stages is not None:
                for k in form.SCHEDULE_FIELDS:
                    self.inputs[k].disabled = not a.schedule
                for k in form.LEVER_FIELDS:
                    self.inputs[k].disabled = not getattr(a, k)
                self.batch_shares.disabled = not a.batch_shares
                if a.stages != self._stages:  # the number of cuts changed: start from balanced ones
                    self.strip.set_cuts(form.balanced_cuts(self.model.value, a.stages))
                    self._stages = a.stages
                self.strip.set_enabled(a.stages > 1)
            self.strip.draw()
        values = self.values()
        built = form.build(values)
        self.way_out.children = []
        if isinstance(built, ConfigError):
            self.config, self.error = None, built
            self.message.value = error_html(built)
            label = W.HTML(f"<span style='color:{GREY}; white-space:nowrap'>ways out:&nbsp;</span>")
            self.way_out.children = [label] + [
                self._way_out_button(text, changes) for text, changes in form.way_out(values)]
            if len(self.way_out.children) == 1:
                self.way_out.children = []
        else:
            self.config, self.error = built, None
            self.message.value = (f"<div style='color:{GREEN}'>{esc(form.summary(built))}</div>" + "".join(
                f"<div style='color:{AMBER}'>⚠ {esc(n)}</div>" for n in form.run_notes(built, self.cores)))
        self._sync_buttons()

    def _way_out_button(self, label: str, changes: dict[str, Any]) -> W.Button:
        button = W.Button(description=label, tooltip=label, layout=W.Layout(width="auto", flex="0 0 auto"))
        button.on_click(lambda _: (self._set(changes), self._refresh()))
        return button

    def _rebalance(self) -> None:
        stages = form.applies(self.values()).stages
        if stages is not None:
            with self._hold():
                self.strip.set_cuts(form.balanced_cuts(self.model.value, stages))
            self._refresh()

    def _sync_buttons(self) -> None:
        busy = self.jobs.busy
        self.run_button.disabled = self.sweep_button.disabled = self.config is None or busy
        self.stop_button.disabled = not busy or self.jobs.cancel.is_set()
        self.trace_button.disabled = self.result is None
        if not busy and self.jobs.started:
            self.progress.description = f"{self.jobs.elapsed:.0f} s"
