"""What a process holds: children, listening sockets, open files, memory.
Used by the load benchmark and tests to show that runs leave nothing behind."""

from __future__ import annotations

import os


def child_pids(pid: int | None = None) -> list[int]:
    """Live (not zombie) children of ``pid`` (default: this process)."""
    me, out = pid or os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            out.append(int(entry))
    return sorted(out)


def descendant_pids(pid: int | None = None) -> list[int]:
    """Live children of ``pid``, their children, and so on."""
    out, todo = [], [pid or os.getpid()]
    while todo:
        kids = child_pids(todo.pop())
        out += kids
        todo += kids
    return sorted(out)


def worker_pids(pid: int | None = None) -> list[int]:
    """Descendants of ``pid`` (default: this process) that are ranks or the
    pool's rank factory (``python -m playground.rank.worker``): what a run must
    not leave behind."""
    out = []
    for child in descendant_pids(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"playground.rank.worker" in f.read():
                    out.append(child)
        except OSError:
            continue
    return out


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def listening_sockets() -> int:
    """Listening TCP sockets this process holds."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(path) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:
                    count += 1
    return count


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def snapshot() -> dict[str, int]:
    return {"children": len(child_pids()), "ranks": len(worker_pids()), "listening": listening_sockets(), "fds": open_fds(),
            "rss_mb": rss_bytes() // 2**20}
