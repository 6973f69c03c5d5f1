"""Activations held for backward, counted as autograd holds them: every
tensor it saves, by storage (views of one storage count once), from the
moment it is saved until it is freed. The rank's recorder counts a run's
activations with it; the cost model counts its profile's with it."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from playground.instrument import storage_key


class SavedTensors:
    """Live and peak bytes of the tensors autograd saved for backward,
    parameters (and whatever else is ignored) excluded."""

    def __init__(self):
        self._live: dict[int, list[int]] = {}
        self.bytes = 0
        """Bytes held now."""
        self.peak = 0
        """The most bytes held at once."""
        self._ignored: set[int] = set()

    def ignore_only_storages_of(self, tensors) -> None:
        """Forget the storages ignored so far (freed memory is reused: an
        activation may later live where a gathered weight was) and ignore
        those of ``tensors``."""
        self._ignored = set()
        self.ignore_storages_of(tensors)

    def ignore_storages_of(self, tensors) -> set[int]:
        """Parameters are saved by many ops; they are not activations.
        Returns the storage keys newly ignored (for ``unignore``)."""
        added = set()
        for t in tensors:
            local = t.to_local() if hasattr(t, "to_local") else t  # a DTensor's shard
            key = storage_key(local.untyped_storage())
            if key not in self._ignored:
                self._ignored.add(key)
                added.add(key)
        return added

    def unignore(self, keys: set[int]) -> None:
        """Stop ignoring ``keys``: their storages were freed (FSDP's gathered
        weights after their block's forward), and an activation may be
        allocated at the same address next."""
        self._ignored -= keys

    def saw(self, key: int) -> bool:
        """Whether the storage ``key`` (``instrument.storage_key``) is held now."""
        return key in self._live

    @contextmanager
    def counting(self) -> Iterator[None]:
        """Count every tensor autograd saves, by storage, until it is freed."""
        with torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack):
            yield

    def _pack(self, t: torch.Tensor):
        if isinstance(t, torch.nn.Parameter):
            return t
        # A weight's cast copy (autocast's) is 16-bit: the walk of its
        # history, a cost per saved tensor, is skipped for every other dtype.
        if t.dtype in _CAST_DTYPES and is_parameter_cast(t):
            return t
        local = t.to_local() if hasattr(t, "to_local") else t  # a DTensor's shard
        local = getattr(local, "elem", local)  # an AsyncCollectiveTensor's result
        try:
            storage = local.untyped_storage()
            key = storage_key(storage)
        except (RuntimeError, NotImplementedError):  # a tensor without storage: nothing held
            return t
        if key in self._ignored or key == 0:
            return t
        entry = self._live.get(key)
        if entry is None:
            self._live[key] = [1, storage.nbytes()]
            self.bytes += storage.nbytes()
            self.peak = max(self.peak, self.bytes)
        else:
            entry[0] += 1
        # Detached: a tensor saved as its own node's output would otherwise
        # form a cycle with that node (tensor -> grad_fn -> saved -> tensor)
        # that outlives backward when a zero-bubble schedule keeps the graph.
        return _Saved(t.detach(), key, self)

    def _release(self, key: int) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            del self._live[key]
            self.bytes -= entry[1]


def is_parameter_cast(t: torch.Tensor) -> bool:
    """A parameter cast to another dtype (autocast's bf16 copy of a weight,
    cached for the autocast region), or a view of one (``linear`` saves the
    transposed copy): a weight, not an activation. Read off the tensor's
    autograd history: views back to a cast (ToCopyBackward0) of a leaf
    that is a Parameter."""
    fn = t.grad_fn
    while fn is not None and fn.name() in _VIEW_BACKWARDS:
        fn = fn.next_functions[0][0]
    if fn is None or fn.name() != "ToCopyBackward0":
        return False
    source = fn.next_functions[0][0]
    return isinstance(getattr(source, "variable", None), torch.nn.Parameter)


_CAST_DTYPES = (torch.bfloat16, torch.float16)
_VIEW_BACKWARDS = ("TBackward0", "TransposeBackward0", "PermuteBackward0", "ViewBackward0", "ExpandBackward0",
                   "UnsqueezeBackward0", "SqueezeBackward0", "AliasBackward0")


class _Saved:
    __slots__ = ("tensor", "key", "owner")

    def __init__(self, tensor: torch.Tensor, key: int, owner: SavedTensors):
        self.tensor, self.key, self.owner = tensor, key, owner

    def __del__(self) -> None:
        self.owner._release(self.key)


def _unpack(x):
    return x.tensor if isinstance(x, _Saved) else x
