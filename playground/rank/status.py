"""Where a rank says what it is doing, for its caller to read if it hangs."""

from __future__ import annotations

import os


class StatusSlot:
    """A few bytes of shared memory where a rank writes what it is doing;
    its caller reads them if the rank stops answering (a hang in a
    collective leaves no other way to ask)."""

    SIZE = 256

    def __init__(self, fd: int):
        import mmap

        self.fd = fd
        self._map = mmap.mmap(fd, self.SIZE)

    @classmethod
    def create(cls) -> int:
        """A new slot's file descriptor (to pass to the rank)."""
        fd = os.memfd_create("playground-rank-status")
        os.ftruncate(fd, cls.SIZE)
        return fd

    def write(self, text: str) -> None:
        data = text.encode()[: self.SIZE - 1]
        self._map[: len(data) + 1] = data + b"\0"

    @staticmethod
    def read(fd: int) -> str:
        return os.pread(fd, StatusSlot.SIZE, 0).split(b"\0", 1)[0].decode(errors="replace")
