"""What one rank did, when, with how many bytes.

The recorder keeps a list of events ``{kind, start, end, ...}`` on a clock
that all ranks share (seconds since a barrier every rank left together),
and counts the bytes of activations saved for backward.

Event kinds:
  compute:        forward, loss, backward, backward_weight, optimizer, setup,
                  recompute (a block's forward run again inside backward,
                  with ``block``: its index)
  communication:  send, recv (point to point), all_reduce, all_gather,
                  reduce_scatter, broadcast (collectives)

Besides the events, ``blocked`` lists the intervals in which the rank's
own thread stood still inside a ``wait()`` on a transfer (a pipeline
receive, an FSDP all-gather, a reduce-scatter): time that is neither
compute nor the rank's own host work.

A transfer ends when it completed, not when the rank next looked: a
collective's future runs a callback at completion; a point-to-point work of
gloo has no future, so a watcher thread per channel (kind, peer) waits on it
and stamps the moment it returns (messages of one channel complete in the
order they were posted).

On CUDA, compute spans are timed by CUDA events recorded around them on the
current stream and resolved at the end of each step, so a span measures the
device's work, not the host's launch of it.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from playground import instrument
from playground.predict.saved import SavedTensors

COMPUTE_KINDS = ("setup", "forward", "loss", "backward", "backward_input", "backward_weight", "recompute",
                 "optimizer")
NESTED_KINDS = ("recompute",)
"""Compute kinds recorded inside another compute span (a block's forward
run again during its backward): drawn over it, counted once in time."""
COMM_KINDS = ("send", "recv", "all_reduce", "all_gather", "reduce_scatter", "broadcast")
COLLECTIVE_KINDS = COMM_KINDS[2:]


class Recorder:
    def __init__(self, enabled: bool = True, status=None, device_type: str = "cpu"):
        self.enabled = enabled
        self.device_type = device_type
        self.status = status
        """Where to say what this rank is doing now (a ``StatusSlot``), so
        that the caller can tell, if the rank hangs, in which operation."""
        self._step = -1
        self.events: list[dict[str, Any]] = []
        self.step_times: list[tuple[float, float]] = []
        self._t0 = time.perf_counter()
        self._seq: dict[tuple[str, int | str], int] = {}
        self.blocked: list[tuple[float, float]] = []
        """(start, end): the rank's thread waited on a transfer."""
        self._main_thread = threading.get_ident()
        self._watcher = _CompletionWatcher(self)
        self._cuda = _CudaSpans(self) if enabled and device_type == "cuda" else None
        self.last_bucket_ready: float | None = None
        # Saved-for-backward activation bytes, live and peak, per storage.
        self.saved = SavedTensors()
        """Bytes of the activations autograd holds for backward."""
        self.unrecorded_collectives = False
        """True while the run's own bookkeeping (not the strategy) communicates."""

    # -- the shared clock ----------------------------------------------

    def start_clock(self, origin: float | None = None) -> None:
        """Set time 0. Ranks on one machine share ``origin``, a reading of the
        system-wide monotonic clock (``time.perf_counter``) taken by the
        caller; ranks on several machines call this right after a barrier."""
        self._t0 = time.perf_counter() if origin is None else origin

    def now(self) -> float:
        return time.perf_counter() - self._t0

    # -- events ---------------------------------------------------------

    def add(self, kind: str, start: float, end: float, **fields: Any) -> None:
        if self.enabled:
            self.events.append({"kind": kind, "start": start, "end": end, **fields})

    @contextmanager
    def span(self, kind: str, **fields: Any) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        self.say(kind, **fields)
        if self._cuda is not None and kind in COMPUTE_KINDS:
            with self._cuda.span(kind, fields):
                yield
            return
        start = self.now()
        try:
            yield
        finally:
            self.add(kind, start, self.now(), **fields)

    @contextmanager
    def backward_span(self, kind: str = "backward", **fields: Any) -> Iterator[None]:
        """A backward pass (``kind`` "backward", or "backward_input" for the
        input gradients alone). When DDP reduces gradients in it, backward()
        returns only once its all-reduces are done, though every gradient
        was computed when the last bucket became ready: the span ends there
        and the rest is the rank blocked on the all-reduces."""
        if not self.enabled:
            yield
            return
        self.say(kind, **fields)
        start = self.now()
        try:
            yield
        finally:
            end, ready = self.now(), self.last_bucket_ready
            if ready is not None and start <= ready <= end:
                self.add(kind, start, ready, **fields)
                self.add_blocked(ready, end)
            else:
                self.add(kind, start, end, **fields)

    def say(self, what: str, **fields: Any) -> None:
        """Tell the status slot (if any) what this rank is doing now."""
        if self.status is not None:
            where = "".join(f" {k.replace('_', '-')} {v}" for k, v in fields.items()
                            if k in ("stage", "micro_batch") and v is not None)
            self.status.write(f"{what}{where}" + (f" (step {self._step})" if self._step >= 0 else ""))

    def next_seq(self, kind: str, key: int | str) -> int:
        """Order of this event among events of ``kind`` with the same peer or
        group: the n-th send to a peer matches the peer's n-th recv."""
        k = (kind, key)
        self._seq[k] = self._seq.get(k, -1) + 1
        return self._seq[k]

    def forward_and_loss(self, module, loss_fn, x, y):
        """Forward of the whole batch through ``module`` and its loss, as one
        stage and one micro-batch, counting the activations they save."""
        with self.saving_activations():
            with self.span("forward", stage=0, micro_batch=0):
                out = module(x)
            with self.span("loss", stage=0, micro_batch=0):
                return loss_fn(out, y)

    @contextmanager
    def step(self, index: int) -> Iterator[None]:
        self._step = index
        if self._cuda is not None:
            self._cuda.begin_step()
        start = self.now()
        try:
            yield
        finally:
            if self._cuda is not None:
                self._cuda.end_step()
            self.step_times.append((start, self.now()))

    def add_blocked(self, start: float, end: float) -> None:
        if self.enabled and end > start:
            self.blocked.append((start, end))

    @contextmanager
    def timing_waits(self) -> Iterator[None]:
        """Record as ``blocked`` every ``Work.wait()`` this rank's thread
        makes (FSDP waits on its all-gathers and reduce-scatters there), and
        stop the completion watcher's threads afterwards."""
        if not self.enabled:
            yield
            return
        try:
            with instrument.work_wait_hook(self._timed_wait):
                yield
        finally:
            self._watcher.close()

    def _timed_wait(self, wait):
        """A wait made by the rank's own thread is recorded as blocked; other
        threads (the completion watcher's) pass through."""
        if threading.get_ident() != self._main_thread or self.unrecorded_collectives:
            return wait()
        start = self.now()
        try:
            return wait()
        finally:
            self.add_blocked(start, self.now())

    # -- activations saved for backward ---------------------------------

    def ignore_only_storages_of(self, tensors) -> None:
        self.saved.ignore_only_storages_of(tensors)

    def ignore_storages_of(self, tensors) -> set[int]:
        return self.saved.ignore_storages_of(tensors)

    def unignore(self, keys: set[int]) -> None:
        self.saved.unignore(keys)

    def saving_activations(self):
        """Count every tensor autograd saves (``SavedTensors``), in step 0
        only: every step saves the same tensors, and counting costs a
        Python call per saved tensor, which would slow every timed step
        (the warm-up step 0 is left out of the timings)."""
        counted = self.enabled and self._step <= 0
        return self.saved.counting() if counted else contextlib.nullcontext()

    @property
    def activations_peak(self) -> int:
        return self.saved.peak

    # -- communication ---------------------------------------------------

    def wrap_p2p(self, ops, works, start: float) -> list:
        """Time each point-to-point op from ``start`` (just before it was
        posted: posting a small send may already complete it) to the moment
        it completed."""
        if not self.enabled:
            return works
        if len(works) != len(ops):  # a coalesced batch: one work for all ops
            return [_TimedWork(self, w, ops, start) for w in works]
        return [_TimedWork(self, w, [op], start) for op, w in zip(ops, works)]

    def ddp_comm_hook(self, group, group_size: int):
        """A DDP communication hook doing what DDP's default does (average
        the bucket with an all-reduce) and recording it."""
        import torch.distributed as dist

        def hook(_state, bucket):
            buf = bucket.buffer()
            self.last_bucket_ready = self.now()
            seq = self.next_seq("all_reduce", "dp")
            buf.div_(group_size)
            self.say("all_reduce of gradients")
            start = self.now()
            fut = dist.all_reduce(buf, group=group, async_op=True).get_future()

            def done(f):
                self.add("all_reduce", start, self.now(), bytes=buf.numel() * buf.element_size(),
                         group="dp", group_size=group_size, seq=seq)
                value = f.value()  # a fake process group's (plan) completes with none: the bucket is the result
                return value[0] if value else buf

            return fut.then(done)

        return hook


    @contextmanager
    def recording_collectives(self) -> Iterator[None]:
        """Time every collective that DTensor (tensor parallel), FSDP and
    ZeroRedundancyOptimizer issue."""
        if not self.enabled:
            yield
            return
        with instrument.collective_dispatch(self._functional_collective, self._c10d_collective):
            yield

    def _functional_collective(self, kind: str, op, args: tuple, kwargs: dict):
        """A functional collective (DTensor's), waited on at once: its result
        is the next op's input anyway, so this rank's compute stood still
        until it was done (``inline``)."""
        if self.unrecorded_collectives:
            return op(*args, **kwargs)
        self.say(kind)
        group_name = args[-1] if isinstance(args[-1], str) else kwargs.get("group_name")
        group = None if group_name is None else _group_size_of_pg(instrument.process_group_named(group_name))
        start = self.now()
        out = instrument.wait_tensor(op(*args, **kwargs))
        self.add(kind, start, self.now(), inline=True, **_collective_fields(self, kind, args[0], out, group))
        return out

    def _c10d_collective(self, kind: str, op, args: tuple, kwargs: dict):
        """A c10d collective (FSDP's, ZeroRedundancyOptimizer's), left
        asynchronous: it ends when its future completes."""
        if self.unrecorded_collectives:
            return op(*args, **kwargs)
        self.say(kind)
        start = self.now()
        out = op(*args, **kwargs)
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        flat = [t for a in args if isinstance(a, (list, tuple)) for t in a if isinstance(t, torch.Tensor)]
        inp = (flat or tensors)[-1] if kind == "all_gather" else (tensors or flat)[-1]
        outp = (tensors or flat)[0]
        group = next((_group_size_of_pg(g) for g in map(instrument.unbox_process_group, args) if g is not None), None)
        fields = _collective_fields(self, kind, inp, outp, group)

        def done(_fut):
            self.add(kind, start, self.now(), **fields)

        try:
            instrument.work_future(out[-1]).then(done)
        except (RuntimeError, AttributeError):  # no future on this backend: count it, untimed
            self.add(kind, start, start, **fields)
        return out


def _group_size_of_pg(pg) -> tuple[str, int]:
    import torch.distributed as dist

    ranks = dist.get_process_group_ranks(pg)
    return "ranks:" + ",".join(map(str, ranks)), len(ranks)


def _collective_fields(rec: "Recorder", kind: str, inp: torch.Tensor, out: torch.Tensor, group) -> dict:
    """bytes: the all-reduced tensor, the gathered output, the scattered
    input, or the broadcast tensor."""
    name, size = group if group is not None else ("?", 1)
    payload = out if kind == "all_gather" else inp
    return {"bytes": payload.numel() * payload.element_size(), "group": name, "group_size": size,
            "seq": rec.next_seq(kind, name)}


class _TimedWork:
    """A point-to-point ``Work`` whose completion is stamped as it happens
    (by ``_CompletionWatcher``) and recorded when the rank waits on it; the
    rank's wait itself is recorded as ``blocked``."""

    def __init__(self, recorder: Recorder, work, ops, start: float):
        import torch.distributed as dist

        self.recorder, self.work, self.start = recorder, work, start
        self.kind = "send" if ops[0].op in (dist.isend, dist.send) else "recv"
        self.peer = ops[0].peer
        self.bytes = sum(op.tensor.numel() * op.tensor.element_size() for op in ops)
        self.seq = recorder.next_seq(self.kind, self.peer)
        self._done = recorder._watcher.watch(work, (self.kind, self.peer))
        self._recorded = False

    def wait(self, *args, **kwargs):
        rec = self.recorder
        rec.say(f"waiting for a {self.kind} {'to' if self.kind == 'send' else 'from'} rank {self.peer}")
        waited_from = rec.now()
        self._done.wait()
        rec.add_blocked(waited_from, rec.now())
        if not self._recorded:
            self._recorded = True
            # ``waited``: when the rank first looked; the transfer may have
            # completed long before (its end), or the rank waited for it.
            rec.add(self.kind, self.start, max(self.start, self._done.at), bytes=self.bytes, peer=self.peer,
                    seq=self.seq, waited=waited_from)
        if self._done.error is not None:
            raise self._done.error
        return True

    def is_completed(self) -> bool:
        return self._done.is_set()

    def __getattr__(self, name: str):
        return getattr(self.work, name)


class _Done(threading.Event):
    """Set when a watched work completed; ``at`` is when, on the rank's clock."""

    def __init__(self):
        super().__init__()
        self.at = 0.0
        self.error: BaseException | None = None


class _CompletionWatcher:
    """Stamps the completion of point-to-point works as it happens.

    gloo's send and receive works have no future to attach a callback to,
    and waiting on one twice blocks for ever, so one daemon thread per
    channel (kind, peer) is the only caller of ``wait()`` on that channel's
    works, in the order they were posted; the rank's thread waits on the
    thread's ``_Done`` instead. Works that do have a future (NCCL) are
    stamped by a callback on it."""

    def __init__(self, recorder: Recorder):
        self.recorder = recorder
        self._channels: dict[tuple, queue.SimpleQueue] = {}
        self._threads: list[threading.Thread] = []

    def watch(self, work, channel: tuple) -> _Done:
        done = _Done()
        try:
            fut = work.get_future()
        except RuntimeError:  # gloo point to point: "Work::getFuture not implemented"
            fut = None
        if fut is not None:
            def stamp(f, done=done):
                done.at = self.recorder.now()
                try:
                    f.wait()
                except BaseException as e:  # noqa: BLE001 - raised on the rank's thread
                    done.error = e
                done.set()
            fut.then(stamp)
            return done
        q = self._channels.get(channel)
        if q is None:
            q = self._channels[channel] = queue.SimpleQueue()
            t = threading.Thread(target=self._serve, args=(q,), daemon=True, name=f"watch-{channel}")
            t.start()
            self._threads.append(t)
        q.put((work, done))
        return done

    def _serve(self, q: queue.SimpleQueue) -> None:
        while True:
            item = q.get()
            if item is None:
                return
            work, done = item
            try:
                work.wait()  # the patched wait lets other threads than the rank's through
            except BaseException as e:  # noqa: BLE001 - raised on the rank's thread
                done.error = e
            done.at = self.recorder.now()
            done.set()

    def close(self) -> None:
        for q in self._channels.values():
            q.put(None)
        for t in self._threads:
            t.join(timeout=5)
        self._channels, self._threads = {}, []


class _CudaSpans:
    """Compute spans timed on the GPU: a pair of CUDA events per span,
    converted to the rank's clock at the end of the step through a
    reference event recorded at the step's start (after a synchronize, so
    that the reference and the host clock agree)."""

    def __init__(self, recorder: Recorder):
        self.recorder = recorder
        self._pending: list[tuple[Any, Any, str, dict]] = []
        self._ref = None
        self._ref_t = 0.0

    def begin_step(self) -> None:
        torch.cuda.synchronize()
        self._ref = torch.cuda.Event(enable_timing=True)
        self._ref.record()
        self._ref_t = self.recorder.now()

    @contextmanager
    def span(self, kind: str, fields: dict) -> Iterator[None]:
        if self._ref is None:
            self.begin_step()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        try:
            yield
        finally:
            end.record()
            self._pending.append((start, end, kind, fields))

    def end_step(self) -> None:
        torch.cuda.synchronize()
        for start, end, kind, fields in self._pending:
            a = self._ref_t + self._ref.elapsed_time(start) / 1e3
            b = self._ref_t + self._ref.elapsed_time(end) / 1e3
            self.recorder.add(kind, a, b, device_timed=True, **fields)
        self._pending = []


def local_bytes(t: torch.Tensor) -> int:
    """Bytes this rank holds of ``t``: a DTensor's local shard only."""
    to_local = getattr(t, "to_local", None)
    if to_local is not None:
        t = to_local()
    return t.numel() * t.element_size()


def memory_bytes(module: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, int]:
    """Bytes held by parameters, their gradients and the optimizer's state
    on this rank (at ZeRO stage 1, the state of this rank's partition:
    ``state_held``)."""
    params = list(module.parameters())
    state = 0
    if optimizer is not None:
        for s in getattr(optimizer, "state_held", optimizer.state).values():
            state += sum(local_bytes(v) for v in s.values() if isinstance(v, torch.Tensor))
    return {
        "params": sum(local_bytes(p) for p in params),
        "grads": sum(local_bytes(p.grad) for p in params if p.grad is not None),
        "optimizer": state,
    }
