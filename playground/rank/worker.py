"""One rank's entry point: ``python -m playground.rank.worker``.

Under torchrun: ``torchrun ... -m playground.rank.worker --config exp.json --out
DIR`` (see ``run_under_torchrun``). Otherwise:

The launcher starts it with two pipes: it reads its job from one, joins the
process group through the caller's rendezvous store, trains, and writes its
report (or its traceback) to the other. Running as its own module, the rank
never re-imports the caller's script or notebook. This module never imports
ipywidgets or matplotlib.
"""

from __future__ import annotations

import copy
import os
import pickle
import sys
import threading
import time
import traceback
from datetime import timedelta

import torch

from playground.spec.config import RunConfig
from playground.rank.recorder import Recorder
from playground.rank.status import StatusSlot
from playground.rank.report import RankReport
from playground.spec.topology import Topology


def run_rank(config: RunConfig, rank: int, store, device_type: str, backend: str,
             custom: tuple | None = None, clock_origin: float | None = None,
             progress=None, status=None) -> tuple[RankReport, dict[str, torch.Tensor]]:
    """Join the process group, train, leave; return this rank's report and
    its trained parameters and buffers by name (empty on all but the first
    data-parallel and tensor-parallel replica, whose copies are the same)."""
    import torch.distributed as dist

    from playground.zoo.datasets import load_dataset
    from playground.zoo.models import build_model
    from playground.spec.partition import stage_ranges
    from playground.rank.training import make_groups, train_rank

    if device_type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count()))
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        # A CPU device is a fixed compute budget: the same number of threads
        # for every rank and for the single-device reference.
        torch.set_num_threads(config.threads_per_rank)
    timeout = timedelta(seconds=config.timeout_s)
    recorder = Recorder(status=status, device_type=device.type)
    recorder.say("joining the process group")
    if store is None:  # under torchrun: its rendezvous set MASTER_ADDR and MASTER_PORT
        dist.init_process_group(backend, rank=rank, world_size=config.world_size, timeout=timeout)
    else:
        dist.init_process_group(backend, store=store, rank=rank, world_size=config.world_size, timeout=timeout)
    topology = Topology.for_config(config, rank)
    groups = make_groups(topology, device.type)
    if custom is None:
        model, dataset = build_model(config.model, config.seed), load_dataset(config.model)
    else:
        model, dataset = copy.deepcopy(custom[0]), custom[1]
    model = model.to(device)
    recorder.say("waiting for the other ranks to start")
    dist.barrier()
    recorder.start_clock(clock_origin)
    out = train_rank(config, topology, model, dataset, recorder, groups, device, on_step=progress)
    # Leaving together avoids gloo's occasional abort when one rank tears
    # down its pairs while a peer still uses them.
    recorder.say("waiting for the other ranks to finish")
    dist.barrier()
    dist.destroy_process_group()
    ranges, held = stage_ranges(config.split_points or (), len(model)), config.rank_stages(topology.pp_rank)
    report = RankReport(rank=rank, dp_rank=topology.dp_rank, pp_rank=topology.pp_rank, tp_rank=topology.tp_rank,
                        blocks=ranges[held[0]], stages=[(s, *ranges[s]) for s in held],
                        timeline=recorder.events, step_times=recorder.step_times, blocked=recorder.blocked,
                        threads=torch.get_num_threads(), memory=out["memory"], loss_parts=out["loss_parts"],
                        diverged=out["diverged"], tensor_plan=out["tensor_plan"],
                        tensor_plan_note=out["tensor_plan_note"])
    return report, out["params"]


def serve(job_fd: int, report_fd: int, lifeline_fd: int, many: bool = False, rank: int = -1,
          status_fd: int | None = None, output_fd: int | None = None) -> None:
    """A rank started by the launcher: read a job from ``job_fd``, run it,
    write ("ok", rank, report) or ("error", rank, summary, traceback) to
    ``report_fd``, after ("progress", rank, {"step", "loss", "step_s"}) for
    each step (``train_rank``'s ``on_step`` update). With ``many`` (a warm pool's rank), wait for the next job; stop
    at the end of the job pipe or after a failed job, whose process state
    cannot be trusted. ``output_fd``: the file that takes this process's
    stdout and stderr from here on (the caller keeps what each rank printed
    apart, instead of it landing unlabelled in the caller's terminal)."""
    from multiprocessing.connection import Connection

    if os.path.isdir("/sys/class/net/lo"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # peers meet on loopback only
    threading.Thread(target=_exit_when_orphaned, args=(lifeline_fd,), daemon=True).start()
    if output_fd is not None:
        capture_output(output_fd)
    # Jobs are written by cloudpickle (launcher._send_jobs) and read by plain
    # pickle; cloudpickle must be importable here for classes sent by value.
    # Each comes in an envelope with the caller's sys.path and folder of the
    # moment, which the rank takes before it reads the job.
    jobs, reports = Connection(job_fd, writable=False), Connection(report_fd, readable=False)
    status = StatusSlot(status_fd) if status_fd is not None else None
    try:
        while True:
            try:
                raw = jobs.recv_bytes()
            except (EOFError, OSError):
                break  # the pool was shut down
            try:
                envelope = pickle.loads(raw)  # plain data: the caller's import path and folder, the job's bytes
                sys.path[:] = envelope["sys_path"]
                try:
                    os.chdir(envelope["cwd"])
                except OSError:  # the caller's folder is gone: stay where the rank is
                    pass
                job = pickle.loads(envelope["job"])
            except Exception as e:  # e.g. a custom model's class this process cannot import
                hint = (" (a custom model's classes must be importable by the ranks, from the caller's "
                        "sys.path, or defined in __main__ or a notebook cell)"
                        if isinstance(e, (AttributeError, ImportError)) else "")
                reports.send_bytes(pickle.dumps(("error", rank, f"could not read the job: {describe(e)}{hint}",
                                                 traceback.format_exc())))
                break
            if not _run_job(job, reports, status) or not many:
                break
            if not jobs.poll(GIVE_BACK_AFTER_S):  # a job that follows at once is not held up
                _give_back_memory()
    finally:
        try:
            reports.close()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            # Skip interpreter teardown: gloo's destructors may abort there,
            # and nothing is left to clean up that the OS does not.
            os._exit(0)


def zygote(control_fd: int) -> None:
    """The warm pool's rank factory: import what a rank needs once, say
    ``{"ready": true}`` on ``control_fd`` (a Unix socket), then fork a new
    rank for each request on it.

    A request is a JSON line ``{"rank"}`` with the
    rank's five descriptors attached (job, report, lifeline, status,
    output); the
    answer is ``{"pid"}``. ``{"exitcode": pid}`` asks how a rank ended:
    ``{"code"}``, null while it runs. A forked rank starts in a few
    milliseconds and shares the imported modules' pages with its siblings,
    so a new device count costs no interpreter start and no torch import.
    Nothing here runs a torch op before forking: no thread pool exists to
    be broken by ``fork``. End of file on the socket (the caller is gone)
    ends the factory; its ranks watch their own lifelines."""
    import gc
    import json
    import signal
    import socket

    from playground.rank import training  # noqa: F401 - imports torch, the strategies, the recorder
    from playground.zoo.datasets import load_dataset
    from playground.zoo.models import MODEL_NAMES

    for name in MODEL_NAMES:  # small, cached, and shared with every rank forked from here
        load_dataset(name)

    ended: dict[int, int] = {}

    def reap(_sig, _frame) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            ended[pid] = os.waitstatus_to_exitcode(status)

    signal.signal(signal.SIGCHLD, reap)
    # What was imported stays for good: moved out of the collector's sight,
    # a rank's collections never write to those objects, so their pages stay
    # shared with the factory and the other ranks instead of being copied.
    gc.collect()
    gc.freeze()
    sock = socket.socket(fileno=control_fd)
    sock.sendall(b'{"ready": true}\n')  # the imports are done: the caller may ask for ranks
    buffer, fds = b"", []
    while True:
        data, more, _flags, _addr = socket.recv_fds(sock, 1 << 16, 5)
        if not data:
            os._exit(0)
        buffer, fds = buffer + data, fds + more
        if not buffer.endswith(b"\n"):
            continue  # the rest of the line follows
        request, buffer = json.loads(buffer), b""
        if "exitcode" in request:
            sock.sendall(json.dumps({"code": ended.pop(request["exitcode"], None)}).encode() + b"\n")
            continue
        pid = os.fork()
        if pid == 0:
            sock.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.setsid()  # a terminal's Ctrl-C goes to the caller, which ends its ranks itself
            job_fd, report_fd, lifeline_fd, status_fd, output_fd = fds
            serve(job_fd, report_fd, lifeline_fd, True, request["rank"], status_fd, output_fd)
        for fd in fds:
            os.close(fd)
        fds = []
        sock.sendall(json.dumps({"pid": pid}).encode() + b"\n")


GIVE_BACK_AFTER_S = 1.0
"""Seconds a pooled rank waits for the next job before it collects the last
one's garbage and trims the allocator (about 0.1 s of work, which a job
sent at once, as a re-run or a sweep's next point is, would wait for)."""


def _give_back_memory() -> None:
    """Between jobs a pooled rank keeps only what it imported: the last
    job's model, data and timeline are collected and the allocator returns
    its free pages to the system."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the pages stay with the process
        pass


def _run_job(job: dict, reports, status=None) -> bool:
    import torch.distributed as dist

    rank = job.get("rank", -1)
    try:
        config = RunConfig.from_dict(job["config"])
        store = dist.TCPStore("127.0.0.1", job["store_port"], is_master=False,
                              timeout=timedelta(seconds=config.timeout_s))
        def progress(update: dict) -> None:
            reports.send_bytes(pickle.dumps(("progress", rank, update)))
        report, params = run_rank(config, rank, store, job["device_type"], job["backend"], job["custom"],
                                  job["clock_origin"], progress, status)
        _flush()  # the caller reads what this rank printed once the report arrives
        reports.send_bytes(pickle.dumps(("ok", rank, report, params)))
        return True
    except BaseException as e:  # noqa: BLE001 - everything goes back to the caller
        _flush()
        try:
            reports.send_bytes(pickle.dumps(("error", rank, describe(e), traceback.format_exc())))
        except Exception:
            traceback.print_exc()  # the caller will report this rank as dead
        return False


def capture_output(fd: int) -> None:
    """Point this process's fds 1 and 2 (Python's prints, C++ warnings
    alike) at ``fd``, and flush stdout at every line, so that stdout and
    stderr stay in the order written."""
    _flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout.reconfigure(line_buffering=True)


def _flush() -> None:
    sys.stdout.flush()
    sys.stderr.flush()


def describe(e: BaseException) -> str:
    """``Type: message`` of the exception that started it all: libraries
    (pipelining, DDP) wrap a block's error in their own."""
    root = e
    while root.__cause__ is not None:
        root = root.__cause__
    text = f"{type(root).__name__}: {root}"
    if root is not e:
        outer = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
        text += f" (inside {type(e).__name__}: {outer})"
    return text


def _exit_when_orphaned(lifeline_fd: int) -> None:
    """The caller holds the other end of the lifeline and never writes to
    it: end of file means the caller is gone (killed, kernel restarted), so
    this rank must go too."""
    try:
        while os.read(lifeline_fd, 1):
            pass
    except OSError:
        pass
    os._exit(3)


def run_under_torchrun(config_path: str, out_dir: str) -> None:
    """One rank started by torchrun (any number of nodes): train the config
    in ``config_path`` and write this rank's report to ``out_dir``
    (``rank-R.json``, and ``rank-R.pt`` with its trained parameters); rank 0
    also writes ``run.json``. ``playground.load_result(out_dir)`` merges them."""
    import json

    from playground.zoo.workload import resolve_workload

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    with open(config_path) as f:
        config = resolve_workload(RunConfig.from_dict(json.load(f))).config
    if world != config.world_size:
        raise SystemExit(f"playground.rank.worker: error: torchrun started {world} ranks; {config_path} says "
                         f"world_size={config.world_size}")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device_type = config.device if config.device != "auto" else ("cuda" if gpus else "cpu")
    backend = config.backend if config.backend != "auto" else ("nccl" if device_type == "cuda" else "gloo")
    started = time.time()
    report, params = run_rank(config, rank, None, device_type, backend)
    os.makedirs(out_dir, exist_ok=True)
    if params:
        torch.save(params, os.path.join(out_dir, f"rank-{rank}.pt"))
    with open(os.path.join(out_dir, f"rank-{rank}.json"), "w") as f:
        json.dump(report.to_dict(), f)
    if rank == 0:
        with open(os.path.join(out_dir, "run.json"), "w") as f:
            json.dump({"config": config.to_dict(), "device": device_type, "backend": backend,
                       "wall_s": time.time() - started}, f)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m playground.rank.worker", description=__doc__)
    parser.add_argument("--config", help="under torchrun: a RunConfig as JSON (python -m playground config ...)")
    parser.add_argument("--out", help="under torchrun: the folder each rank writes its report to")
    parser.add_argument("--job-fd", type=int, help="pipe to read the job from (set by the launcher)")
    parser.add_argument("--report-fd", type=int, help="pipe to write the report to")
    parser.add_argument("--lifeline-fd", type=int, help="pipe whose end means the caller is gone")
    parser.add_argument("--many", action="store_true", help="serve jobs until the job pipe closes (warm pool)")
    parser.add_argument("--rank", type=int, default=-1, help="the rank this process will be")
    parser.add_argument("--status-fd", type=int, help="shared memory to say what the rank is doing")
    parser.add_argument("--zygote-fd", type=int, help="be the warm pool's rank factory on this socket")
    parser.add_argument("--output-fd", type=int, help="file to take the rank's stdout and stderr")
    args = parser.parse_args(argv)
    if args.zygote_fd is not None:
        zygote(args.zygote_fd)
    elif args.config is not None:
        if args.out is None:
            parser.error("--config needs --out DIR")
        run_under_torchrun(args.config, args.out)
    elif None in (args.job_fd, args.report_fd, args.lifeline_fd):
        parser.error("give --config FILE --out DIR (under torchrun), or the launcher's --job-fd, --report-fd, "
                     "--lifeline-fd")
    else:
        serve(args.job_fd, args.report_fd, args.lifeline_fd, args.many, args.rank, args.status_fd, args.output_fd)


if __name__ == "__main__":
    main()
