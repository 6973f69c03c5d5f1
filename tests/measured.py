"""What the cost-model tests share: real runs made once per module, and the
exact comparison of what the ranks counted with what was predicted."""

from __future__ import annotations

from playground import run


def runs_once(configs: dict):
    """name -> the RunResult of ``configs[name]``, run on first use."""
    cache: dict[str, object] = {}

    def get(name):
        if name not in cache:
            cache[name] = run(configs[name])
        return cache[name]

    return get


def compare_bytes(result, predictions) -> None:
    """Parameters, gradients, optimizer state and traffic, rank by rank: equal."""
    assert [(p.rank, p.pp_rank, p.dp_rank) for p in predictions] == [(r.rank, r.pp_rank, r.dp_rank) for r in result.ranks]
    for r, p in zip(result.ranks, predictions):
        assert (r.memory["params"], r.memory["grads"], r.memory["optimizer"]) == (p.params, p.grads, p.optimizer)
        assert (r.bytes_sent, r.bytes_recv) == (p.bytes_sent, p.bytes_recv)
