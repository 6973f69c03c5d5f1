"""Bare PyTorch, no playground: the yardsticks the benchmarks compare with.

Run as a script it trains a model with a plain DDP loop on ``world`` spawned
processes and prints JSON: wall time from start to finish, and throughput
over the steps after the first. Or it times gloo all-reduces.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time

import torch


class Blob(torch.nn.Module):
    """One parameter of ``nbytes`` whose gradient DDP all-reduces."""

    def __init__(self, nbytes: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(nbytes // 4))

    def forward(self, x):
        return x * self.w[:1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned(fn, args: tuple, world: int) -> dict:
    """Run ``fn(rank, *args, out)`` in ``world`` spawned processes and return
    what rank 0 put on ``out``. Rank 0 puts it before the group is torn
    down, and processes still alive 30 s after it (a teardown that hangs:
    seen once in gloo's ``destroy_process_group`` here) are ended, so a
    benchmark never waits on them."""
    import torch.multiprocessing as mp

    out = mp.get_context("spawn").Queue()
    context = mp.start_processes(fn, args=(*args, out), nprocs=world, start_method="spawn", join=False)
    try:
        result = out.get(timeout=600)
        deadline = time.monotonic() + 30
        while not context.join(timeout=1) and time.monotonic() < deadline:
            pass
    finally:
        for p in context.processes:
            if p.is_alive():
                p.kill()
                p.join(5)
    return result


def _train(rank: int, world: int, port: int, model_name: str, batch: int, steps: int, lr: float, out) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from playground.zoo.datasets import load_dataset, loss_fn
    from playground.zoo.models import build_model

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // world))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    model = DDP(build_model(model_name, 0))
    data = load_dataset(model_name)
    loss_of = loss_fn(data.task)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    per_rank = batch // world
    ends = []
    for step in range(steps):
        x, y = data.batch(step, batch, 0)
        x, y = x[rank * per_rank:(rank + 1) * per_rank], y[rank * per_rank:(rank + 1) * per_rank]
        opt.zero_grad(set_to_none=True)
        loss_of(model(x), y).backward()
        opt.step()
        ends.append(time.perf_counter())
    if rank == 0:
        out.put({"throughput": batch * (steps - 1) / (ends[-1] - ends[0])})
    dist.barrier()
    dist.destroy_process_group()


def ddp_training(model: str, world: int, batch: int, steps: int, lr: float = 0.05) -> dict:
    """Spawn ``world`` processes that import torch and train: the bare
    equivalent of a cold playground run (without baseline or recording)."""
    start = time.perf_counter()
    result = _spawned(_train, (world, _free_port(), model, batch, steps, lr), world)
    result["wall_s"] = time.perf_counter() - start
    return result


def _all_reduce(rank: int, world: int, port: int, nbytes: int, repeats: int, out) -> None:
    import torch
    import torch.distributed as dist

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    t = torch.ones(nbytes // 4)
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(t)
        times.append(time.perf_counter() - start)
    if rank == 0:
        out.put({"median_s": statistics.median(times[1:])})
    dist.barrier()
    dist.destroy_process_group()


def all_reduce_time(nbytes: int, world: int = 2, repeats: int = 21) -> float:
    """Median seconds of a bare gloo all-reduce of ``nbytes`` (after a barrier)."""
    return _spawned(_all_reduce, (world, _free_port(), nbytes, repeats), world)["median_s"]


def _p2p(rank: int, world: int, port: int, nbytes: int, repeats: int, out) -> None:
    import torch
    import torch.distributed as dist

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    t = torch.ones(nbytes // 4)
    peer = 1 - rank
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        # A ping-pong with the same calls the pipeline schedules post.
        for op in ((dist.isend, dist.irecv) if rank == 0 else (dist.irecv, dist.isend)):
            for w in dist.batch_isend_irecv([dist.P2POp(op, t, peer)]):
                w.wait()
        times.append((time.perf_counter() - start) / 2)
    if rank == 0:
        out.put({"median_s": statistics.median(times[1:]), "mean_s": statistics.mean(times[1:])})
    dist.barrier()
    dist.destroy_process_group()


def p2p_time(nbytes: int, repeats: int = 201) -> dict:
    """One-way time of a bare gloo isend/irecv of ``nbytes`` between two
    spawned processes with one thread each: half a ping-pong's round trip
    (median and mean, seconds)."""
    return _spawned(_p2p, (2, _free_port(), nbytes, repeats), 2)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="seed-mlp")
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    a = parser.parse_args()
    print(json.dumps(ddp_training(a.model, a.world, a.batch, a.steps)))
