"""The app: an ipywidgets view over ``run``.

``form`` (control values -> RunConfig or ConfigError; no widgets), ``jobs``
(the background thread, cancel, per-step progress; no widgets), ``panels``
(the widgets that draw) and ``playground`` (``Playground``, composing them).
The widget modules load on first use, so ``form`` and ``jobs`` can be
imported without ipywidgets or matplotlib.
"""

from playground.views.app.form import mesh_options, sweep_config

__all__ = ["Playground", "plot_sweep", "sweep_config", "mesh_options", "notes_html"]


def __getattr__(name: str):
    if name == "Playground":
        from playground.views.app.playground import Playground
        return Playground
    if name == "notes_html":
        from playground.views.app.texts import notes_html
        return notes_html
    if name == "plot_sweep":
        from playground.views.plots import plot_sweep
        return plot_sweep
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
