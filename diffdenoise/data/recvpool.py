"""Receive buffers for remote shards, used again once a shard is read.

A shard fetched into memory is received into a buffer of its manifest size. A fresh
``bytearray`` of a few megabytes costs the kernel a page fault per 4 KB page it touches:
on the bench machine 0.2 CPU-seconds per GB received, half the cost of the receive
itself, and taken from the loader. So a shard's buffer comes back here when the last
sample that points into it is gone (:class:`~diffdenoise.data.tarindex.Buffer`), and the
next fetch receives into it, its pages already mapped. At most ``read_ahead_mb`` of idle
buffers are kept per process: the memory that read-ahead holds anyway.

Reads of a fetched shard are views into its buffer, not copies (a copy per member cost
the loader a tenth of its speed), and a decoded int16 crop may still view it when the
shard itself is gone. So a buffer given back is handed out again only once no view of it
is left: Python refuses to resize a ``bytearray`` that is viewed, which :func:`in_use`
asks without changing it.
"""

from __future__ import annotations

import os
import threading


class RecvPool:
    """Idle buffers, the smallest that fits handed out first; thread-safe, and empty again
    in a forked loader worker (the parent's buffers are not the worker's to reuse)."""

    def __init__(self):
        self.free: list[bytearray] = []
        self.lock, self.pid = threading.Lock(), os.getpid()

    def _mine(self) -> list[bytearray]:
        if self.pid != os.getpid():
            self.free, self.lock, self.pid = [], threading.Lock(), os.getpid()
        return self.free

    def take(self, size: int) -> bytearray:
        """A buffer of more than ``size`` bytes (one more shows a download too long)."""
        with self.lock:
            free = self._mine()
            fits = [b for b in free if len(b) > size and not in_use(b)]
            if fits:
                best = min(fits, key=len)
                free.remove(best)
                return best
        return bytearray(size + 1)

    def give(self, buffer: bytearray, keep_bytes: float) -> None:
        """Keep ``buffer`` for a later :meth:`take` while the idle ones stay within
        ``keep_bytes``; otherwise let it go."""
        with self.lock:
            free = self._mine()
            if sum(map(len, free)) + len(buffer) <= keep_bytes:
                free.append(buffer)

    def idle_bytes(self) -> int:
        with self.lock:
            return sum(map(len, self._mine()))


def in_use(buffer: bytearray) -> bool:
    """Whether a view of ``buffer`` is alive: then a resize is refused, and the buffer left
    as it was (the last byte is taken off and put back, in place)."""
    try:
        buffer.append(buffer.pop())
    except BufferError:
        return True
    return False


POOL = RecvPool()
