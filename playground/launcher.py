"""Start the ranks as local processes, collect their reports, leave nothing
behind.

The caller hosts the rendezvous store on 127.0.0.1 (an OS-chosen port, so
two runs never clash); each rank is a ``python -m playground.worker``
process that reads its job from one pipe and answers over another. Whatever happens (a rank
raises, dies or hangs, the caller is interrupted), every process is ended
before ``launch`` returns or raises.
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import time
from datetime import timedelta
from multiprocessing.connection import Connection, wait
from typing import Any

from .config import RunConfig

# Errors a rank reports only because a peer went away first.
_SECONDARY = re.compile(r"Connection (closed|reset) by peer|Broken pipe|Socket Timeout|"
                        r"Connection refused|timed out|Timeout", re.IGNORECASE)
_GRACE_S = 1.0


class RunError(RuntimeError):
    """A run did not finish; ``rank`` says which rank, where one is to blame."""

    rank: int | None = None


class RankError(RunError):
    """A rank raised an exception."""

    def __init__(self, rank: int, summary: str, traceback: str, others: list[str]):
        self.rank, self.summary, self.traceback = rank, summary, traceback
        also = "".join(f"\n  then {o}" for o in others)
        super().__init__(f"rank {rank} raised {summary}{also}\n--- traceback of rank {rank} ---\n{traceback}")


class RankDied(RunError):
    """A rank's process ended without a report (killed, crashed)."""

    def __init__(self, rank: int, exitcode: int | None):
        self.rank, self.exitcode = rank, exitcode
        how = f"was killed by signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exited with code {exitcode}"
        super().__init__(f"rank {rank} {how} before reporting; the other ranks were stopped")


class RunTimeout(RunError):
    """Ranks did not finish within the config's timeout."""

    def __init__(self, pending: list[int], timeout_s: float):
        self.pending = pending
        names = ", ".join(map(str, pending))
        super().__init__(f"rank{'s' if len(pending) > 1 else ''} {names} did not finish within "
                         f"timeout_s={timeout_s:g} s; all ranks were stopped")


class _Rank:
    """One rank's process and its two pipes."""

    def __init__(self, rank: int, env: dict[str, str]):
        job_r, job_w = os.pipe()
        rep_r, rep_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "playground.worker", "--job-fd", str(job_r), "--report-fd", str(rep_w)],
                pass_fds=(job_r, rep_w), env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            # The child holds its own copies; closing ours makes EOF mean "the rank is gone".
            os.close(job_r)
            os.close(rep_w)
        self.rank = rank
        self.jobs = Connection(job_w, readable=False)
        self.reports = Connection(rep_r, writable=False)

    def exitcode(self) -> int | None:
        try:
            return self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        for c in (self.jobs, self.reports):
            c.close()


def _child_env() -> dict[str, str]:
    """The caller's environment, with its import path, so the ranks can
    unpickle a custom model whose classes live in the caller's modules."""
    env = dict(os.environ)
    paths = [p or os.getcwd() for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if os.path.isdir(p)))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def launch(config: RunConfig, device_type: str, backend: str, custom: tuple | None = None) -> list[dict[str, Any]]:
    """Run ``config.world_size`` ranks; return their reports in rank order."""
    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                          timeout=timedelta(seconds=config.timeout_s))
    ranks: list[_Rank] = []
    env = _child_env()
    clock_origin = time.perf_counter()
    try:
        for rank in range(config.world_size):
            ranks.append(_Rank(rank, env))
        for r in ranks:
            # Plain pickle: see worker.serve.
            r.jobs.send_bytes(pickle.dumps({"rank": r.rank, "config": config.to_dict(), "store_port": store.port,
                                            "device_type": device_type, "backend": backend, "custom": custom,
                                            # One machine, one monotonic clock: every rank
                                            # measures from this same instant.
                                            "clock_origin": clock_origin}))
        return _collect(ranks, config.timeout_s)
    finally:
        stop([r.proc for r in ranks])
        for r in ranks:
            r.close()
        del store


def _collect(ranks: list[_Rank], timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    reports: dict[int, dict] = {}
    errors: list[tuple[int, str, str]] = []
    open_conns = {r.reports: r.rank for r in ranks}
    while open_conns:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RunTimeout(sorted(open_conns.values()), timeout_s)
        for conn in wait(list(open_conns), timeout=remaining):
            rank = open_conns.pop(conn)
            try:
                msg = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):
                raise RankDied(rank, ranks[rank].exitcode()) from None
            if msg[0] == "ok":
                reports[rank] = msg[2]
            else:
                errors.append((rank, msg[2], msg[3]))
        if errors:
            raise _root_cause(errors, open_conns)
    return [reports[r.rank] for r in ranks]


def _root_cause(errors, open_conns) -> RankError:
    """The first error that is not a consequence of another rank's failure;
    peers get a moment to report theirs so the cause can be told apart."""
    deadline = time.monotonic() + _GRACE_S
    while open_conns and time.monotonic() < deadline:
        for conn in wait(list(open_conns), timeout=max(0.0, deadline - time.monotonic())):
            rank = open_conns.pop(conn)
            try:
                msg = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):
                continue
            if msg[0] == "error":
                errors.append((rank, msg[2], msg[3]))
    primary = next((e for e in errors if not _SECONDARY.search(e[1])), errors[0])
    others = [f"rank {r}: {s.splitlines()[0][:200]}" for r, s, _ in errors if (r, s, _) != primary]
    return RankError(primary[0], primary[1], primary[2], others)


def stop(procs: list[subprocess.Popen], grace_s: float = 2.0) -> None:
    """End every process: SIGTERM, then SIGKILL after ``grace_s``."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5.0)
