"""playground: choose how a network is split across devices, train it for
real on local processes, and see what every rank did."""

from .config import ConfigError, RunConfig
from .data import Dataset, load_dataset
from .launcher import Pool, RankDied, RankError, RunCancelled, RunError, RunTimeout, default_pool
from .models import BlockInfo, balance_split_points, build_model, model_block_infos, propose_split_points
from .result import RankReport, RunResult
from .runner import load_result, run

__all__ = [
    "RunConfig", "ConfigError", "run", "load_result", "Playground", "RunResult", "RankReport", "build_model", "model_block_infos",
    "balance_split_points", "propose_split_points", "BlockInfo", "Dataset", "load_dataset",
    "RunError", "RankError", "RankDied", "RunTimeout", "RunCancelled", "Pool", "default_pool",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    # The widget app imports ipywidgets: only when asked for, so that ranks
    # and scripts never pay for it.
    if name == "Playground":
        from .app import Playground

        return Playground
    raise AttributeError(f"module 'playground' has no attribute {name!r}")
