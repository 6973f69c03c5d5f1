"""Load: many consecutive small runs, warm and cold mixed, device counts
1, 2, 3 and 4 mixed (the pool grows, runs smaller, forks again), in one process.
Prints what the process holds before and after (children, listening
sockets, open files, memory).

    .venv/bin/python bench/load.py [RUNS]      # default 200
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import playground as pg  # noqa: E402
from playground.host.health import snapshot  # noqa: E402

CONFIGS = [
    pg.RunConfig(model="seed-mlp", strategy="data", world_size=2, steps=2),
    pg.RunConfig(model="mlp", strategy="data", world_size=4, global_batch=32, steps=2),
    pg.RunConfig(model="seed-mlp", strategy="model", world_size=2, steps=2),
    pg.RunConfig(model="seed-mlp", strategy="single", world_size=1, steps=2),
    pg.RunConfig(model="seed-mlp", strategy="pipeline", schedule="1f1b", world_size=2, micro_batches=2, steps=2),
    pg.RunConfig(model="mlp", strategy="pipeline", schedule="gpipe", world_size=3, micro_batches=3, global_batch=48,
                 steps=2),
]


def main(runs: int = 200, cold_every: int = 10) -> dict:
    # Warm up: the first run of each config imports modules, loads its data
    # and fills the caller's caches (baselines, predictions); the first cold
    # run starts the pool's peers' imports. Growth is measured after these.
    for config in CONFIGS:
        pg.run(config)
    pg.run(CONFIGS[0], warm=False)
    pg.default_pool().shutdown()
    before = snapshot()
    started = time.perf_counter()
    for i in range(runs):
        cold = i % cold_every == cold_every - 1
        result = pg.run(CONFIGS[i % len(CONFIGS)], warm=not cold)
        assert result.passed
    pg.default_pool().shutdown()
    after = snapshot()
    wall = time.perf_counter() - started
    print(f"{runs} runs ({runs // cold_every} cold) in {wall:.0f} s")
    print(f"{'':10s} {'before':>8s} {'after':>8s}")
    for key in before:
        print(f"{key:10s} {before[key]:8d} {after[key]:8d}")
    return {"before": before, "after": after, "wall_s": wall}


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
