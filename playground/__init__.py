"""playground: choose how a network is split across devices, train it for
real on local processes, and see what every rank did.

The names below are loaded when first used, so that a rank process
(``python -m playground.rank.worker``) imports what a rank needs and nothing of
the caller's side: no launcher, no runner, no ipywidgets or matplotlib.
"""

from importlib import import_module

_EXPORTS = {
    "RunConfig": "spec.config", "ConfigError": "spec.config", "PlanConfig": "spec.config",
    "Dataset": "zoo.datasets", "load_dataset": "zoo.datasets",
    "BlockInfo": "zoo.models", "balance_split_points": "zoo.models", "build_model": "zoo.models",
    "model_block_infos": "zoo.models", "propose_split_points": "zoo.models",
    "RankReport": "rank.report", "RunResult": "result.run_result",
    "Pool": "host.launcher", "RankDied": "host.launcher", "RankError": "host.launcher",
    "RunCancelled": "host.launcher", "RunError": "host.launcher", "RunTimeout": "host.launcher",
    "default_pool": "host.launcher",
    "load_result": "host.runner", "run": "host.runner",
    "Plan": "planning.planner", "plan": "planning.planner",
    "Playground": "views.app",
}
_MODULES = {"plots": "views.plots", "cost": "cost"}
"""Modules reachable as attributes: ``playground.plots.plot_timeline(result)``."""

__all__ = sorted(_EXPORTS) + sorted(_MODULES)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _MODULES:
        return import_module(f".{_MODULES[name]}", __name__)
    module = _EXPORTS.get(name)
    if module is None:
        try:  # a layer or a top-level module: playground.host, playground.instrument, ...
            return import_module(f".{name}", __name__)
        except ModuleNotFoundError:
            raise AttributeError(f"module 'playground' has no attribute {name!r}") from None
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_MODULES))
