"""Cutting a sequence of blocks into contiguous stages: pure arithmetic on
block counts and costs."""

from __future__ import annotations


def balance_split_points(costs: list[float], stages: int) -> tuple[int, ...]:
    """Split points cutting ``costs`` into ``stages`` contiguous non-empty
    runs that minimise the largest run's total (the pipeline's slowest stage).

    Exact dynamic programme over (blocks, stages): O(n^2 * stages).
    """
    n = len(costs)
    if not 1 <= stages <= n:
        raise ValueError(f"stages={stages}: must be between 1 and the number of blocks ({n})")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    # best[s][i]: smallest max-stage cost for the first i blocks in s stages.
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for s in range(1, stages + 1):
        for i in range(s, n + 1):
            for j in range(s - 1, i):
                v = max(best[s - 1][j], prefix[i] - prefix[j])
                if v < best[s][i] - 1e-12:
                    best[s][i], cut[s][i] = v, j
    points, i = [], n
    for s in range(stages, 1, -1):
        i = cut[s][i]
        points.append(i)
    return tuple(sorted(points))


def stage_ranges(split_points: tuple[int, ...], num_blocks: int) -> list[tuple[int, int]]:
    """[(first block, end block exclusive)] per stage."""
    edges = (0, *split_points, num_blocks)
    return list(zip(edges, edges[1:]))
