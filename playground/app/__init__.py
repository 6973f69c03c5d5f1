"""The app: an ipywidgets view over ``run``.

``form`` (control values -> RunConfig or ConfigError; no widgets), ``jobs``
(the background thread, cancel, per-step progress; no widgets), ``panels``
(the widgets that draw) and ``playground`` (``Playground``, composing them).
"""

from ..plots import plot_sweep
from .form import mesh_options, sweep_config
from .panels import notes_html
from .playground import Playground

__all__ = ["Playground", "plot_sweep", "sweep_config", "mesh_options", "notes_html"]
