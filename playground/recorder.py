"""What one rank did, when, with how many bytes.

The recorder keeps a list of events ``{kind, start, end, ...}`` on a clock
that all ranks share (seconds since a barrier every rank left together),
and counts the bytes of activations saved for backward.

Event kinds:
  compute:        forward, loss, backward, backward_weight, optimizer, setup
  communication:  send, recv (point to point), all_reduce (collective)
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator

import torch

COMPUTE_KINDS = ("setup", "forward", "loss", "backward", "backward_weight", "optimizer")
COMM_KINDS = ("send", "recv", "all_reduce")


class Recorder:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.events: list[dict[str, Any]] = []
        self.step_times: list[tuple[float, float]] = []
        self._t0 = time.perf_counter()
        self._seq: dict[tuple[str, int | str], int] = {}
        self._pending_sends: list["_TimedWork"] = []
        self.last_bucket_ready: float | None = None
        # Saved-for-backward activation bytes, live and peak, per storage.
        self._live: dict[int, list[int]] = {}
        self.activation_bytes = 0
        self.activations_peak = 0
        self._param_storages: set[int] = set()

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
        self._poll_sends()
        start = self.now()
        try:
            yield
        finally:
            self.add(kind, start, self.now(), **fields)

    def next_seq(self, kind: str, key: int | str) -> int:
        """Order of this event among events of ``kind`` with the same peer or
        group: the n-th send to a peer matches the peer's n-th recv."""
        k = (kind, key)
        self._seq[k] = self._seq.get(k, -1) + 1
        return self._seq[k]

    @contextmanager
    def step(self, index: int) -> Iterator[None]:
        start = self.now()
        try:
            yield
        finally:
            self.step_times.append((start, self.now()))

    # -- activations saved for backward ---------------------------------

    def ignore_storages_of(self, tensors) -> None:
        """Parameters are saved by many ops; they are not activations."""
        self._param_storages |= {t.untyped_storage().data_ptr() for t in tensors}

    @contextmanager
    def saving_activations(self) -> Iterator[None]:
        """Count every tensor autograd saves, by storage, until it is freed."""
        if not self.enabled:
            yield
            return
        with torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack):
            yield

    def _pack(self, t: torch.Tensor):
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in self._param_storages or key == 0:
            return t
        entry = self._live.get(key)
        if entry is None:
            self._live[key] = [1, storage.nbytes()]
            self.activation_bytes += storage.nbytes()
            self.activations_peak = max(self.activations_peak, self.activation_bytes)
        else:
            entry[0] += 1
        return _Saved(t, key, self)

    def _release(self, key: int) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            del self._live[key]
            self.activation_bytes -= entry[1]

    # -- communication ---------------------------------------------------

    def _poll_sends(self) -> None:
        """A deferred send's end is when it was first seen complete."""
        if self._pending_sends:
            t = self.now()
            still = []
            for w in self._pending_sends:
                if w.work.is_completed():
                    w.done_at = t
                else:
                    still.append(w)
            self._pending_sends = still

    def wrap_p2p(self, ops, works, start: float) -> list:
        """Time each point-to-point op from ``start`` (just before it was
        posted: posting a small send may already complete it) to completion."""
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
            start = self.last_bucket_ready = self.now()
            seq = self.next_seq("all_reduce", "dp")
            buf.div_(group_size)
            fut = dist.all_reduce(buf, group=group, async_op=True).get_future()

            def done(f):
                self.add("all_reduce", start, self.now(), bytes=buf.numel() * buf.element_size(),
                         group="dp", group_size=group_size, seq=seq)
                return f.value()[0]

            return fut.then(done)

        return hook


class _Saved:
    __slots__ = ("tensor", "key", "recorder")

    def __init__(self, tensor: torch.Tensor, key: int, recorder: Recorder):
        self.tensor, self.key, self.recorder = tensor, key, recorder

    def __del__(self) -> None:
        self.recorder._release(self.key)


def _unpack(x):
    return x.tensor if isinstance(x, _Saved) else x


class _TimedWork:
    """A point-to-point ``Work`` that records itself when waited on."""

    def __init__(self, recorder: Recorder, work, ops, start: float):
        import torch.distributed as dist

        self.recorder, self.work, self.start = recorder, work, start
        self.done_at: float | None = None
        self.kind = "send" if ops[0].op in (dist.isend, dist.send) else "recv"
        self.peer = ops[0].peer
        self.bytes = sum(op.tensor.numel() * op.tensor.element_size() for op in ops)
        self.seq = recorder.next_seq(self.kind, self.peer)
        if self.kind == "send":
            recorder._pending_sends.append(self)

    def wait(self, *args, **kwargs):
        result = self.work.wait(*args, **kwargs)
        end = self.recorder.now()
        if self.done_at is not None:
            end = min(end, self.done_at)
        else:
            self.recorder._pending_sends = [w for w in self.recorder._pending_sends if w is not self]
        self.recorder.add(self.kind, self.start, end, bytes=self.bytes, peer=self.peer, seq=self.seq)
        return result

    def __getattr__(self, name: str):
        return getattr(self.work, name)


def memory_bytes(module: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, int]:
    """Bytes held by parameters, their gradients and the optimizer's state."""
    params = list(module.parameters())
    state = 0
    if optimizer is not None:
        for s in optimizer.state.values():
            state += sum(v.numel() * v.element_size() for v in s.values() if isinstance(v, torch.Tensor))
    return {
        "params": sum(p.numel() * p.element_size() for p in params),
        "grads": sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None),
        "optimizer": state,
    }
