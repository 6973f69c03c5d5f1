"""playground: choose how a network is split across devices, train it for
real on local processes, and see what every rank did.

The names below are loaded when first used, so that a rank process
(``python -m playground.worker``) imports what a rank needs and nothing of
the caller's side: no launcher, no runner, no ipywidgets or matplotlib.
"""

from importlib import import_module

_EXPORTS = {
    "RunConfig": "config", "ConfigError": "config",
    "Dataset": "data", "load_dataset": "data",
    "Pool": "launcher", "RankDied": "launcher", "RankError": "launcher", "RunCancelled": "launcher",
    "RunError": "launcher", "RunTimeout": "launcher", "default_pool": "launcher",
    "BlockInfo": "models", "balance_split_points": "models", "build_model": "models",
    "model_block_infos": "models", "propose_split_points": "models",
    "RankReport": "result", "RunResult": "result",
    "load_result": "runner", "run": "runner",
    "Playground": "app",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        try:  # a submodule: playground.runner, playground.plots, ...
            return import_module(f".{name}", __name__)
        except ModuleNotFoundError:
            raise AttributeError(f"module 'playground' has no attribute {name!r}") from None
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
