"""What the tests share: a free port, the process table read from /proc,
the ranks a run may leave behind, the machine's listening sockets, and the
blocks that fail on purpose.

The failing blocks live in ``faulty`` (ranks unpickle them by that module
name); they are imported here so a test needs one import.
"""

from __future__ import annotations

import os
import socket

from faulty import Fault, faulty_model, regression_data
from playground.host.health import worker_pids

__all__ = ["free_port", "proc_stat", "cmdline", "alive", "descendants", "socket_fds", "listening_addresses",
           "rank_pids", "Fault", "faulty_model", "regression_data"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (another process
    may still take it before the caller binds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# Processes, read from /proc


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state letter, parent pid, start time in clock ticks since boot) from
    /proc/PID/stat, or None once the process is gone. The command name may
    hold spaces and parentheses, so the fields are read after its last ")"."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1]), int(fields[19])


def cmdline(pid: int) -> str:
    """The process's command line, arguments joined by spaces ("" once gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int, started: int | None = None) -> bool:
    """True while ``pid`` runs and is not a zombie; with ``started`` (its
    start time from ``proc_stat`` or ``descendants``), only while it is that
    same process, not a later one given the pid again."""
    st = proc_stat(pid)
    return st is not None and st[0] != "Z" and (started is None or st[2] == started)


def descendants(root: int) -> dict[int, int]:
    """Every live process below ``root``: pid -> start time."""
    parent, start = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := proc_stat(int(entry))) and st[0] != "Z":
            parent[int(entry)], start[int(entry)] = st[1], st[2]
    found, frontier = {}, [root]
    while frontier:
        p = frontier.pop()
        for child, pp in parent.items():
            if pp == p and child not in found:
                found[child] = start[child]
                frontier.append(child)
    return found


def socket_fds(pid: int) -> list[str]:
    """The file descriptors of ``pid`` that are sockets."""
    return [fd for fd in os.listdir(f"/proc/{pid}/fd") if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")]


def listening_addresses() -> set[tuple[str, str]]:
    """(address, port), both as /proc/net/tcp writes them in hex, of every
    listening TCP socket on the machine, IPv4 and IPv6."""
    out = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(path) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    out.add(tuple(fields[1].split(":")))
    return out


def rank_pids() -> list[int]:
    """This process's descendants that are ranks or the pool's rank factory
    (``python -m playground.rank.worker``): what a finished or failed run
    must not leave behind. A browser the tests start is not one."""
    return worker_pids()


def no_rank_left() -> bool:
    """A failed or stopped run left no rank: what is left of the default
    pool is its rank factory at most (it holds no part of any run, and the
    next run forks new ranks from it), and no other worker process."""
    import playground

    pool = playground.default_pool()
    return pool.size == 0 and sorted(rank_pids()) == sorted(pool.process_pids())
