"""Start the ranks as local processes, collect their reports, leave nothing
behind.

The caller hosts the rendezvous store on 127.0.0.1 (an OS-chosen port, so
two runs never clash); each rank is a ``python -m playground.rank.worker``
process that reads its job from one pipe and answers over another. Whatever happens (a rank
raises, dies or hangs, the caller is interrupted), every process is ended
before ``launch`` returns or raises.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import pickle
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from multiprocessing.connection import Connection, wait
from typing import Any

from playground.spec.config import RunConfig
from playground.rank.status import StatusSlot
from playground.rank.report import RankReport

# Errors a rank reports only because a peer went away first.
_SECONDARY = re.compile(r"Connection (closed|reset) by peer|Broken pipe|Socket Timeout|"
                        r"Connection refused|timed out|Timeout", re.IGNORECASE)
_GRACE_S = 1.0


MAX_OUTPUT_BYTES = 1 << 20
"""Of what a rank prints during one run, at most this much (the end) is kept."""


class RunError(RuntimeError):
    """A run did not finish; ``rank`` says which rank, where one is to blame.
    ``outputs``: what each rank printed (stdout and stderr, in order), by rank."""

    rank: int | None = None
    outputs: dict[int, str] = {}


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

    def __init__(self, pending: list[int], timeout_s: float, doing: dict[int, str] | None = None):
        self.pending = pending
        self.doing = doing or {}
        names = ", ".join(map(str, pending))
        where = "".join(f"\n  rank {r}: {self.doing[r] or 'not started'}" for r in sorted(self.doing))
        super().__init__(f"rank{'s' if len(pending) > 1 else ''} {names} did not finish within "
                         f"timeout_s={timeout_s:g} s; all ranks were stopped. Each rank was in:{where}")


class RunCancelled(RunError):
    """The caller asked the run to stop (the widget's Stop button)."""

    def __init__(self):
        super().__init__("the run was stopped; all ranks were ended")


class _Rank:
    """One rank's process and its pipes: jobs in, reports out, and a
    lifeline the child watches to know the caller still lives."""

    def __init__(self, rank: int, env: dict[str, str], many: bool = False, zygote: "_Zygote | None" = None):
        # What the rank prints, stdout and stderr alike, goes to one file of
        # its own (the rank points its fds 1 and 2 at it: worker.serve), in
        # the order written; the caller reads it after each job.
        self.output = tempfile.TemporaryFile()
        self.output_read = 0
        out_fd = self.output.fileno()
        job_r, job_w = os.pipe()
        rep_r, rep_w = os.pipe()
        life_r, life_w = os.pipe()
        self.status_fd = StatusSlot.create()
        argv = [sys.executable, "-m", "playground.rank.worker", "--job-fd", str(job_r), "--report-fd", str(rep_w),
                "--lifeline-fd", str(life_r), "--rank", str(rank), "--status-fd", str(self.status_fd),
                "--output-fd", str(out_fd)]
        try:
            if zygote is not None:  # forked from the warm pool's factory: no interpreter start
                self.proc = zygote.fork(rank, (job_r, rep_w, life_r, self.status_fd, out_fd))
            else:
                self.proc = subprocess.Popen(argv + (["--many"] if many else []),
                                             pass_fds=(job_r, rep_w, life_r, self.status_fd, out_fd), env=env,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            for fd in (job_w, rep_r, life_w, self.status_fd):
                os.close(fd)
            self.output.close()
            raise
        finally:
            # The child holds its own copies; closing ours makes EOF mean "the rank is gone".
            for fd in (job_r, rep_w, life_r):
                os.close(fd)
        self.rank = rank
        self.jobs = Connection(job_w, readable=False)
        self.reports = Connection(rep_r, writable=False)
        self.lifeline = life_w

    def exitcode(self) -> int | None:
        try:
            return self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return None

    def take_output(self) -> str:
        """What the rank printed since the last call (its last
        ``MAX_OUTPUT_BYTES``), as text. ``pread`` leaves the file offset,
        which the rank's writes share, where it is."""
        fd = self.output.fileno()
        end = os.fstat(fd).st_size
        first = self.output_read
        start, self.output_read = max(first, end - MAX_OUTPUT_BYTES), end
        text = os.pread(fd, end - start, start).decode("utf-8", errors="replace") if end > start else ""
        return (f"[{start - first} earlier bytes not kept]\n" if start > first else "") + text

    def close(self) -> None:
        self.output.close()
        for c in (self.jobs, self.reports):
            c.close()
        if isinstance(self.proc, _ForkedProc):
            self.proc.close()
        for name in ("lifeline", "status_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)

    def doing(self) -> str:
        """What the rank last said it was doing."""
        return StatusSlot.read(self.status_fd) if self.status_fd is not None else ""


class _Zygote:
    """The warm pool's rank factory (``worker.zygote``): one process that
    imported torch once and forks ranks on request, over a Unix socket."""

    def __init__(self, env: dict[str, str]):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # What the factory itself prints (an import warning) stays out of
            # the caller's output; the ranks it forks get their own files.
            self.log = tempfile.TemporaryFile()
            self.proc = subprocess.Popen([sys.executable, "-m", "playground.rank.worker", "--zygote-fd",
                                          str(theirs.fileno())], pass_fds=(theirs.fileno(),), env=env,
                                         stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                         start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self._answers = ours.makefile("rb")
        self._lock = threading.Lock()
        self.ready = False
        """True once the factory said its imports are done"""

    def wait_ready(self, cancel=None) -> None:
        """Block until the factory has imported what a rank needs (seconds,
        once). ``cancel`` set meanwhile raises RunCancelled at once; the
        factory goes on starting, for the next run."""
        while not self.ready:
            if cancel is not None and cancel.is_set():
                raise RunCancelled()
            if select.select([self.sock], [], [], 0.1)[0]:
                with self._lock:
                    self._answer()  # {"ready": true}
                self.ready = True

    def _answer(self) -> dict:
        line = self._answers.readline()
        if not line:
            self.log.seek(0)
            said = self.log.read()[-2000:].decode(errors="replace").strip()
            raise RuntimeError(f"the pool's rank factory (pid {self.proc.pid}) ended: exit code {self.proc.poll()}"
                               + (f"; it printed:\n{said}" if said else ""))
        return json.loads(line)

    def _ask(self, request: dict, fds: tuple[int, ...] = ()) -> dict:
        self.wait_ready()
        with self._lock:
            socket.send_fds(self.sock, [json.dumps(request).encode() + b"\n"], list(fds))
            return self._answer()

    def fork(self, rank: int, fds: tuple[int, ...]) -> "_ForkedProc":
        # The rank takes the caller's sys.path and folder with each job (``_send_jobs``).
        pid = self._ask({"rank": rank}, fds)["pid"]
        return _ForkedProc(pid, self)

    def exitcode(self, pid: int) -> int | None:
        try:
            return self._ask({"exitcode": pid})["code"]
        except (OSError, RuntimeError):
            return None

    def close(self) -> None:
        self._answers.close()
        self.sock.close()  # end of file: the factory exits
        stop([self.proc])
        self.log.close()


class _ForkedProc:
    """A rank forked by the factory, with the part of ``subprocess.Popen``'s
    interface that ``stop`` and the pool use. It is not this process's
    child: a pidfd tells when it ended (and keeps signals from reaching a
    recycled pid); the factory, its parent, says with which code."""

    def __init__(self, pid: int, zygote: _Zygote):
        self.pid, self._zygote = pid, zygote
        self._pidfd: int | None = os.pidfd_open(pid)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and self._pidfd is not None:
            if select.select([self._pidfd], [], [], 0)[0]:
                self.returncode = self._ended_code()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        if self.returncode is None and self._pidfd is not None:
            if not select.select([self._pidfd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(f"rank pid {self.pid}", timeout)
            self.returncode = self._ended_code()
        return self.returncode

    def _ended_code(self) -> int | None:
        deadline = time.monotonic() + 1.0
        while True:  # the factory reaps it on SIGCHLD, a moment after it ended
            code = self._zygote.exitcode(self.pid)
            if code is not None or time.monotonic() > deadline:
                return code
            time.sleep(0.005)

    def _signal(self, sig: int) -> None:
        if self._pidfd is not None and self.returncode is None:
            try:
                signal.pidfd_send_signal(self._pidfd, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


def _import_path() -> list[str]:
    return [p or os.getcwd() for p in sys.path]


def _child_env() -> dict[str, str]:
    """The caller's environment, with its import path, so the ranks can
    unpickle a custom model whose classes live in the caller's modules
    (those in __main__ or a notebook cell travel by value: ``_send_jobs``)."""
    env = dict(os.environ)
    paths = _import_path()
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if os.path.isdir(p)))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _send_jobs(ranks: list[_Rank], config: RunConfig, store_port: int, device_type: str, backend: str,
               custom: tuple | None) -> None:
    import cloudpickle

    paths = _import_path()
    clock_origin = time.perf_counter()
    for r in ranks:
        # cloudpickle, not Connection.send: torch's reducers would pass
        # tensors as shared-memory handles that die with this process. It
        # writes plain pickle, by reference for classes the ranks can import
        # and by value for those they cannot (defined in a notebook cell or
        # in __main__), so a custom model's own blocks travel with it.
        job = cloudpickle.dumps({"rank": r.rank, "config": config.to_dict(), "store_port": store_port,
                                 "device_type": device_type, "backend": backend, "custom": custom,
                                 # One machine, one monotonic clock: every rank
                                 # measures from this same instant.
                                 "clock_origin": clock_origin})
        # The caller's import path and folder as they are now, read by the
        # rank before the job: a warm rank forked before a notebook added a
        # folder to sys.path still finds the custom model's modules there.
        r.jobs.send_bytes(pickle.dumps({"sys_path": paths, "cwd": os.getcwd(), "job": job}))


def _end(ranks: list[_Rank]) -> None:
    stop([r.proc for r in ranks])
    for r in ranks:
        r.close()


def launch(config: RunConfig, device_type: str, backend: str, custom: tuple | None = None, *,
           pool: "Pool | None" = None, cancel=None, on_progress=None) -> list[tuple[RankReport, dict[str, Any]]]:
    """Run ``config.world_size`` ranks; return (report, trained parameters) of each, in rank order.

    ``pool``: run on its warm ranks (resized if needed) instead of starting
    fresh ones. ``cancel``: an object with ``is_set()`` (threading.Event);
    when set, the ranks are ended and ``RunCancelled`` raised. ``on_progress``:
    called in this thread as each rank finishes each step, with
    {"rank", "step", "loss" (the rank's part, or None), "step_s"}.
    """
    import torch.distributed as dist

    # A fresh store per run, on a port the OS picks: runs never share one.
    # TCPStore would listen on every interface; hand it a socket bound to
    # loopback instead, so nothing off this machine can reach it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        store = dist.TCPStore("127.0.0.1", listener.getsockname()[1], is_master=True, wait_for_workers=False,
                              timeout=timedelta(seconds=config.timeout_s), master_listen_fd=listener.fileno(),
                              use_libuv=True)
        listener.detach()  # the store owns the socket now, and closes it
    try:
        if pool is not None:
            return pool.run(config, store.port, device_type, backend, custom, cancel, on_progress)
        ranks: list[_Rank] = []
        try:
            env = _child_env()
            for rank in range(config.world_size):
                ranks.append(_Rank(rank, env))
            _send_jobs(ranks, config, store.port, device_type, backend, custom)
            return _collect(ranks, config.timeout_s, cancel, on_progress)
        finally:
            _end(ranks)
    finally:
        del store


def seconds_from_env(name: str, default: float) -> float:
    """The number of seconds environment variable ``name`` gives, or
    ``default`` where it is unset. ValueError naming the variable, its value
    and what is allowed when it is not a number >= 0."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"{name}={text!r}: must be a number of seconds >= 0 (0: never)")
    return value


MEMORY_SHORT = 0.15
"""An idle pool ends its processes when less than this share of the memory
allowed (the cgroup's limit, else the machine's) is available."""
WATCH_S = 0.5
"""How often an idle pool looks at the clock and at the memory, seconds."""
MEMORY_GRACE_S = 5.0
"""An idle pool looks at the memory only after this many seconds without a
run: a sweep's next point, or a re-run, comes sooner."""


def memory_headroom() -> tuple[int, int] | None:
    """(bytes available, bytes allowed) for this process: under a cgroup v2
    memory limit (``memory.max``, as on Binder and in containers), the limit
    less what the cgroup uses beyond its reclaimable file cache
    (``memory.current`` - ``inactive_file`` of ``memory.stat``), and never
    more than the machine's MemAvailable (/proc/meminfo); None where none of
    these can be read."""
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        available, allowed = info["MemAvailable"], info["MemTotal"]
    except (OSError, KeyError, ValueError, IndexError):
        return None
    try:
        with open("/proc/self/cgroup") as f:
            path = next(line.split(":", 2)[2].strip() for line in f if line.startswith("0::"))
        folder = f"/sys/fs/cgroup{path}"
        with open(f"{folder}/memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            with open(f"{folder}/memory.current") as f:
                used = int(f.read())
            with open(f"{folder}/memory.stat") as f:
                cache = next((int(line.split()[1]) for line in f if line.startswith("inactive_file ")), 0)
            allowed = int(limit)
            available = min(available, allowed - max(0, used - cache))
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    return available, allowed


def memory_short() -> bool:
    """Less than ``MEMORY_SHORT`` of the memory allowed is available (``memory_headroom``)."""
    room = memory_headroom()
    return room is not None and room[0] < MEMORY_SHORT * room[1]


class Pool:
    """Ranks kept alive between runs.

    A run of n ranks uses the pool's first n; the pool grows to the largest
    world size used and keeps its ranks when a smaller run comes, so a
    change of device count costs no interpreter start or torch import. New
    ranks are forked by a factory process that imported torch once
    (``worker.zygote``), in milliseconds. Ranks beyond a run's size sit
    blocked on their job pipe: no CPU, no process group, no socket; after
    ``trim_after_s`` without a run they end, and with them the memory their
    last job left them (a rank that ran a job holds about 90 MiB more than a
    fresh one).

    The pool belongs to the process that made it. Its ranks end when it is
    shut down (at interpreter exit for the default pool), when a run fails
    or is stopped (the next run forks new ones from the factory, which stays),
    after ``idle_release_s`` without a run, or at once when an idle pool
    finds memory short (``memory_short``: another kernel needs the room);
    and by themselves when this process dies (their lifeline pipe closes;
    the factory sees its socket close). A run stopped while the factory
    still starts ends at once; the factory goes on starting for the next."""

    def __init__(self, idle_release_s: float | None = None, trim_after_s: float | None = None):
        self._ranks: list[_Rank] = []
        self._zygote: _Zygote | None = None
        self._lock = threading.Lock()  # one run at a time on these ranks
        self.idle_release_s = seconds_from_env("PLAYGROUND_POOL_IDLE_S", 600) if idle_release_s is None \
            else idle_release_s
        """Seconds without a run after which the pool ends its processes (a
        shared machine, such as a Binder session, gets their memory back);
        the next run starts them again. ``PLAYGROUND_POOL_IDLE_S`` sets it; 0: never."""
        self.trim_after_s = seconds_from_env("PLAYGROUND_POOL_TRIM_S", 30) if trim_after_s is None \
            else trim_after_s
        """Seconds without a run after which the ranks beyond the last run's
        size end. ``PLAYGROUND_POOL_TRIM_S`` sets it; 0: never."""
        self._watch_stop: threading.Event | None = None

    @property
    def size(self) -> int:
        return len(self._ranks)

    def pids(self) -> list[int]:
        """The ranks' processes, rank 0 first."""
        return [r.proc.pid for r in self._ranks]

    def process_pids(self) -> list[int]:
        """Every process the pool holds: its ranks and its rank factory."""
        return self.pids() + ([self._zygote.proc.pid] if self._zygote is not None else [])

    def start(self, world_size: int) -> None:
        """Grow to at least ``world_size`` ranks ahead of the first run; they
        are released, trimmed and watched as after a run of that size."""
        with self._lock:
            self._stop_watch()
            self._ensure(world_size)
            self._watch_idle(self.size)

    def run(self, config: RunConfig, store_port: int, device_type: str, backend: str, custom, cancel=None,
            on_progress=None) -> list[tuple[RankReport, dict[str, Any]]]:
        with self._lock:
            self._stop_watch()
            try:
                self._ensure(config.world_size, cancel)
            except RunCancelled:
                self._watch_idle(0)
                raise
            ranks = self._ranks[:config.world_size]
            try:
                _send_jobs(ranks, config, store_port, device_type, backend, custom)
                reports = _collect(ranks, config.timeout_s, cancel, on_progress)
            except BaseException:
                # The ranks may be inside a collective: end them all. The
                # factory holds no job's state and stays: the next run forks
                # new ranks rather than importing torch again.
                ranks, self._ranks = self._ranks, []
                _end(ranks)
                self._watch_idle(0)
                raise
            self._watch_idle(config.world_size)
            return reports

    def _watch_idle(self, size: int) -> None:
        """From now until the next run: end the ranks beyond ``size`` after
        ``trim_after_s``, and everything after ``idle_release_s`` or when
        memory runs short."""
        stop = self._watch_stop = threading.Event()
        threading.Thread(target=self._watch, args=(stop, size, time.monotonic()), daemon=True,
                         name="playground-pool-idle").start()

    def _stop_watch(self) -> None:
        if self._watch_stop is not None:
            self._watch_stop.set()
            self._watch_stop = None

    def _watch(self, stop: threading.Event, size: int, since: float) -> None:
        trimmed = False
        while not stop.wait(WATCH_S):
            idle = time.monotonic() - since
            if (0 < self.idle_release_s <= idle) or (idle >= MEMORY_GRACE_S and memory_short()):
                self._while_idle(stop, self._shutdown)
                return
            if not trimmed and 0 < self.trim_after_s <= idle:
                self._while_idle(stop, lambda: self._trim(size))
                trimmed = True

    def _while_idle(self, stop: threading.Event, act) -> None:
        """``act()`` unless a run holds the pool or came since ``stop``'s watch began."""
        if self._lock.acquire(blocking=False):
            try:
                if not stop.is_set():
                    act()
            finally:
                self._lock.release()

    def _trim(self, size: int) -> None:
        extra, self._ranks = self._ranks[size:], self._ranks[:size]
        _end(extra)

    def shutdown(self) -> None:
        with self._lock:
            self._shutdown()

    def _ensure(self, world_size: int, cancel=None) -> None:
        if any(r.proc.poll() is not None for r in self._ranks) or (
                self._zygote is not None and self._zygote.proc.poll() is not None):
            self._shutdown()
        if self.size >= world_size:
            return
        env = _child_env()
        try:
            if self._zygote is None:
                self._zygote = _Zygote(env)
            self._zygote.wait_ready(cancel)
            for rank in range(self.size, world_size):
                self._ranks.append(_Rank(rank, env, many=True, zygote=self._zygote))
        except RunCancelled:
            raise
        except BaseException:
            self._shutdown()
            raise

    def _shutdown(self) -> None:
        self._stop_watch()
        ranks, self._ranks = self._ranks, []
        zygote, self._zygote = self._zygote, None
        try:
            _end(ranks)
        finally:
            if zygote is not None:
                zygote.close()


_default_pool: Pool | None = None


def default_pool() -> Pool:
    """This process's warm pool, made on first use, shut down at exit."""
    global _default_pool
    if _default_pool is None:
        _default_pool = Pool()
        atexit.register(_default_pool.shutdown)
    return _default_pool


def _collect(ranks: list[_Rank], timeout_s: float, cancel=None,
             on_progress=None) -> list[tuple[RankReport, dict[str, Any]]]:
    """Each rank's (report, trained parameters), the report with ``output``:
    what the rank printed meanwhile. A ``RunError`` carries the same in
    ``outputs``."""
    try:
        reports = _reports(ranks, timeout_s, cancel, on_progress)
    except RunError as e:
        e.outputs = {r.rank: r.take_output() for r in ranks}
        raise
    return [(dataclasses.replace(report, output=r.take_output()), params)
            for (report, params), r in zip(reports, ranks)]


def _reports(ranks: list[_Rank], timeout_s: float, cancel=None,
             on_progress=None) -> list[tuple[RankReport, dict[str, Any]]]:
    deadline = time.monotonic() + timeout_s
    reports: dict[int, tuple] = {}
    errors: list[tuple[int, str, str]] = []
    open_conns = {r.reports: r.rank for r in ranks}
    while open_conns:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RunTimeout(sorted(open_conns.values()), timeout_s, {r.rank: r.doing() for r in ranks})
        if cancel is not None and cancel.is_set():
            raise RunCancelled()
        poll = remaining if cancel is None else min(remaining, 0.1)
        for conn in wait(list(open_conns), timeout=poll):
            rank = open_conns[conn]
            try:
                msg = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):
                raise RankDied(rank, ranks[rank].exitcode()) from None
            if msg[0] == "progress":
                if on_progress is not None:
                    on_progress({"rank": rank, **msg[2]})
                continue
            del open_conns[conn]
            if msg[0] == "ok":
                reports[rank] = (msg[2], msg[3])
            else:
                errors.append((rank, msg[2], msg[3]))
        if errors:
            raise _root_cause(errors, open_conns, ranks)
    return [reports[r.rank] for r in ranks]


def _root_cause(errors, open_conns, ranks: list[_Rank]) -> RunError:
    """The first error that is not a consequence of another rank's failure;
    peers get a moment to report theirs so the cause can be told apart. A
    rank that died without a word, while the others only report that a
    peer went away, is the cause."""
    died: list[int] = []
    deadline = time.monotonic() + _GRACE_S
    while open_conns and time.monotonic() < deadline:
        for conn in wait(list(open_conns), timeout=max(0.0, deadline - time.monotonic())):
            try:
                msg = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):
                died.append(open_conns.pop(conn))
                continue
            if msg[0] == "progress":
                continue
            rank = open_conns.pop(conn)
            if msg[0] == "error":
                errors.append((rank, msg[2], msg[3]))
    primary = next((e for e in errors if not _SECONDARY.search(e[1])), None)
    if primary is None and died:
        return RankDied(died[0], ranks[died[0]].exitcode())
    primary = primary or errors[0]
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
