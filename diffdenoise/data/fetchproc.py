"""Remote shards received by a helper process, into memory the loader maps.

A loader worker that fetches shards with its own threads pays for them in its own time:
each request's Python (``urllib``, ``http.client``) and each received chunk takes the GIL
from the thread that reads, crops and plans the noise. Measured on the bench machine (one
worker, pcm16 shards over HTTP from a local server), that took the loader to 0.61-0.84 of
its speed on local files, while the same requests made by another process took it to
0.79-1.09 (``docs/experiments.md``, 2026-12-07). So, on Linux, each loader worker starts
one helper (``python -m diffdenoise.data.fetchproc``) that receives every shard into an
anonymous memory file (``memfd_create``) and passes the file back over a Unix socket; the
worker maps it read-only and reads it as it reads any shard in memory. The worker's
threads only send a request and wait; retries, backoff and their count stay in the worker
(:func:`~diffdenoise.data.remote.retrying`), so they are counted as before.

Memory files are used again, as :mod:`~diffdenoise.data.recvpool` uses buffers: fresh
shared memory cost the helper 1.3 CPU-seconds per GB received (a page fault per page),
four times the receive itself, and mapping each shard anew cost the worker a fifth of a
shard's reading. So both sides map each file once; when the worker has read a shard and
no crop views its bytes any more, the helper is told, and receives a later shard into the
same pages, keeping at most ``data.read_ahead_mb`` of them idle.

The helper ends when its worker does (its socket closes); a terminal's Ctrl-C does not
reach it (its own process group), so the worker alone decides what an interrupt means. It
runs at nice 19: it works ahead of the loader, which must never wait for its core.
Where it cannot run (no ``memfd_create``: not Linux), shards are fetched in the worker as
before (:func:`~diffdenoise.data.remote.fetch_bytes`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import mmap
import os
import signal
import socket
import subprocess
import sys
import threading
import warnings
import weakref
from concurrent.futures import Future, ThreadPoolExecutor

from diffdenoise.data import remote

AVAILABLE = hasattr(os, "memfd_create") and hasattr(socket, "send_fds")
MESSAGE = 1 << 16  # bytes of one request or reply at most (a URL and a few numbers)
# A process group of its own, so that a terminal's Ctrl-C (sent to the foreground group) is
# the worker's alone; but the worker's session, since Linux shares the CPU between sessions
# first: a session of its own would weigh the helper as much as the whole training run.
_OWN_GROUP = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
# The helper's niceness: its 32 threads' wake-ups must not take the core from the loader
# it feeds, which waits for a shard only when the helper is behind and then leaves the core
# to it. At 19 the loader waited 0.03-0.05 s to run per 1.25 s read, against 0.06-0.11 at
# 0, and the helper took 0.5 CPU-s against 0.7 (docs/experiments.md, 2026-12-07).
NICE = 19


def submit(pool: ThreadPoolExecutor, url: str, tries: int | None = None) -> Future:
    """Start fetching shard ``url``: a future of its copy in ``data.cache_dir``
    (:func:`~diffdenoise.data.remote.cached`), or with no cache folder of its bytes,
    received by this process's helper where one can run (no thread here waits for it),
    else by one of ``pool``'s threads."""
    fetch = remote.policy()
    if fetch.cache_dir:
        return pool.submit(remote.cached, url, fetch, tries)
    if not AVAILABLE:
        return pool.submit(remote.fetch_bytes, url, fetch, tries)
    return _helper().submit(url, fetch, tries)


class Helper:
    """The client side: one helper process, and a thread that hands its replies to the
    threads waiting for them."""

    def __init__(self):
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "diffdenoise.data.fetchproc", str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                **_OWN_GROUP,
            )  # fmt: skip
        self.sock, self.lock, self.count = mine, threading.Lock(), 0
        self.pending: dict[int, tuple[dict, Future]] = {}
        self.maps: dict[int, mmap.mmap] = {}  # the helper's memory files, mapped here
        self.alive = True
        threading.Thread(target=self._replies, name="fetchproc-replies", daemon=True).start()

    def submit(self, url: str, fetch: remote.FetchPolicy, tries: int | None) -> Future:
        """A future of ``url``'s bytes (a read-only view), or of its
        :class:`~diffdenoise.data.remote.FetchError` once the helper's tries are spent."""
        request = {"url": url, "expected": fetch.sizes.get(url), "tries": tries,
                   "keep": fetch.read_ahead_mb * 1e6, "retries": fetch.retries,
                   "timeout_s": fetch.timeout_s, "max_wait_s": fetch.max_wait_s}  # fmt: skip
        future: Future = Future()
        future.set_running_or_notify_cancel()  # a reply may come after the reader moved on
        return self._request(request, future)

    def _request(self, request: dict, future: Future) -> Future:
        with self.lock:
            if not self.alive:
                return _helper().resend(request, future)
            self.count += 1
            request = {**request, "id": self.count}
            self.pending[self.count] = (request, future)
        self._send(request)
        return future

    def resend(self, request: dict, future: Future) -> Future:
        """A request a helper that exited had not answered, made again once."""
        if request.get("resent"):
            message = f"{request['url']}: the fetch process has exited"
            future.set_exception(remote.FetchError(message, transient=True))
            return future
        return self._request({**request, "resent": True}, future)

    def _send(self, message: dict) -> None:
        with contextlib.suppress(OSError):  # the helper is gone: the reply thread fails all
            self.sock.send(json.dumps(message).encode())

    def _replies(self) -> None:
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(self.sock, MESSAGE, 1,
                                                     socket.MSG_CMSG_CLOEXEC)  # fmt: skip
            except OSError:
                message, fds = b"", []
            if not message:
                return self._lost()
            try:
                self._settle(json.loads(message), fds)
            except Exception as err:  # a bug here: never leave a loader waiting forever
                warnings.warn(f"fetch helper reply: {type(err).__name__}: {err}", stacklevel=1)
                self.process.kill()
                return self._lost()

    def _settle(self, reply: dict, fds: list[int]) -> None:
        """Hand a reply to the thread waiting for it (a function of its own, so that no
        frame of the reply loop keeps a shard's view, which would keep its memory)."""
        if "closed" in reply:  # an idle file the helper let go: so does this process
            mapping = self.maps.pop(reply["closed"], None)  # (none if never sent here)
            if mapping is not None:
                mapping.close()
            return
        with self.lock:
            _, future = self.pending.pop(reply["id"])
        remote.count_retries(reply["retries"])
        if "error" in reply:
            future.set_exception(remote.FetchError(reply["error"], reply["transient"]))
        else:
            future.set_result(self._mapped(fds[0], **reply["shard"]))

    def _mapped(self, fd: int, size: int, slot: int, capacity: int) -> memoryview:
        """A read-only view of the first ``size`` bytes of memory file ``slot`` (``fd``,
        closed here). Each file is mapped once, and again only when the helper has grown
        it: a mapping per shard cost the loader a fifth more than reading the shard. The
        view's bytes are a ctypes array over the mapping, so that when the last view of
        them goes, the helper is told that the file is free for a later shard."""
        try:
            if not size:  # an empty shard: nothing to map, the file free at once
                self._free(slot, os.getpid())
                return memoryview(b"")
            mapping = self.maps.get(slot)
            if mapping is None or len(mapping) < capacity:
                if mapping is not None:
                    mapping.close()  # its last shard's views are gone: the helper reused it
                # Writable only because ctypes maps a writable buffer; the view is read-only.
                mapping = self.maps[slot] = mmap.mmap(fd, capacity)
        finally:
            os.close(fd)
        # The array spans the whole file: ctypes keeps every array type it makes, and a
        # file's capacity takes few values where shard sizes take one per shard.
        shard = (ctypes.c_char * len(mapping)).from_buffer(mapping)
        done = weakref.finalize(shard, self._free, slot, os.getpid())
        done.atexit = False  # at exit the helper goes too
        return memoryview(shard).cast("B")[:size].toreadonly()

    def _free(self, slot: int, pid: int) -> None:
        if os.getpid() == pid:  # a forked child's copy is not the helper's to free
            self._send({"free": slot})

    def _lost(self) -> None:
        """The helper exited (killed, out of memory): what it had not answered goes to
        another helper, once."""
        with self.lock:
            self.alive = False
            waiting, self.pending = list(self.pending.values()), {}
        for request, future in waiting:
            _helper().resend(request, future)


def recycle(view: memoryview) -> None:
    """Hand back the memory behind a fetched shard's view once it is read: a buffer to
    :func:`~diffdenoise.data.remote.recycle`; a helper's mapped file goes with its last
    view, which tells the helper (:meth:`Helper._mapped`)."""
    if isinstance(view.obj, ctypes.Array):
        with contextlib.suppress(BufferError):  # a view of the view: the mapping waits
            view.release()
        return
    remote.recycle(view)


_HELPER: list = [None, 0]  # this process's helper and its pid (a forked worker starts its own)
_GUARD = threading.Lock()


def _helper() -> Helper:
    with _GUARD:
        helper, pid = _HELPER
        if helper is None or pid != os.getpid() or not helper.alive:
            _HELPER[:] = [Helper(), os.getpid()]
        return _HELPER[0]


# The helper process.


class Slots:
    """The helper's memory files, each mapped once here: lent (a shard the worker reads)
    or idle; the smallest idle one that fits is used first."""

    def __init__(self):
        self.lock, self.count = threading.Lock(), 0
        self.idle: dict[int, tuple[int, mmap.mmap]] = {}
        self.lent: dict[int, tuple[int, mmap.mmap]] = {}

    def take(self, need: int) -> int:
        with self.lock:
            fits = [k for k, (_, memory) in self.idle.items() if len(memory) >= need]
            if fits:
                slot = min(fits, key=lambda k: len(self.idle[k][1]))
                self.lent[slot] = self.idle.pop(slot)
                return slot
            self.count += 1
            slot = self.count
        fd = os.memfd_create(f"shard-{slot}")
        os.ftruncate(fd, need)
        self.lent[slot] = (fd, mmap.mmap(fd, need))
        return slot

    def memory(self, slot: int) -> mmap.mmap:
        return self.lent[slot][1]

    def grow(self, slot: int, size: int) -> mmap.mmap:
        """Slot ``slot`` holding ``size`` bytes at least, its first bytes kept."""
        fd, memory = self.lent[slot]
        memory.close()
        os.ftruncate(fd, size)
        self.lent[slot] = (fd, mmap.mmap(fd, size))
        return self.lent[slot][1]

    def give(self, slot: int, keep_bytes: float) -> bool:
        """Slot ``slot`` idle again, or closed (False) when the idle ones would pass
        ``keep_bytes``."""
        with self.lock:
            fd, memory = self.lent.pop(slot)
            if sum(len(m) for _, m in self.idle.values()) + len(memory) <= keep_bytes:
                self.idle[slot] = (fd, memory)
                return True
        memory.close()
        os.close(fd)
        return False


def receive(url: str, timeout: float, expected: int | None, slots: Slots, slot: int) -> int:
    """One try of ``url`` into memory file ``slot``: the bytes received, or
    :class:`FetchError` (a truncated or overlong download included, against ``expected``)."""
    with remote.as_fetch_error(url):
        stream, check = remote.open_stream(url, timeout)
        with stream:
            size = _read_into(stream, slots, slot)
        check()
    remote.check_size(url, size, expected)
    return size


def _read_into(stream, slots: Slots, slot: int) -> int:
    """All of ``stream`` into memory file ``slot``, received straight into its mapped pages
    (``readinto``), the file doubled when full; the bytes received."""
    size, memory = 0, slots.memory(slot)
    while True:
        if size == len(memory):
            memory = slots.grow(slot, max(2 * size, remote.CHUNK))
        with memoryview(memory) as view:
            got = stream.readinto(view[size:])
        if not got:
            return size
        size += got


def _give_back(sock: socket.socket, slots: Slots, slot: int, keep: float) -> None:
    """Slot ``slot`` idle again; if it is closed instead, the worker unmaps it too."""
    if not slots.give(slot, keep):
        sock.send(json.dumps({"closed": slot}).encode())


def _answer(sock: socket.socket, slots: Slots, request: dict) -> None:
    """Fetch a shard with the worker's policy (retries and backoff here, their count in
    the reply) and send the worker its memory file, or the error in one line."""
    url, expected, keep = request["url"], request["expected"], request["keep"]
    fetch = remote.FetchPolicy(request["retries"], request["timeout_s"], request["max_wait_s"])
    tries = [0]

    def attempt() -> tuple[int, int]:
        tries[0] += 1
        slot = slots.take(max(expected or 0, remote.CHUNK - 1) + 1)  # 1 byte more: overlong
        try:
            return slot, receive(url, fetch.timeout_s, expected, slots, slot)
        except BaseException:
            _give_back(sock, slots, slot, keep)
            raise

    try:
        slot, size = remote.retrying(url, fetch, request["tries"], attempt)
    except Exception as err:
        message = (
            str(err)
            if isinstance(err, remote.FetchError)
            else (f"{url}: {type(err).__name__}: {err}")
        )  # a bug here: one line, not a hang
        transient = isinstance(err, remote.FetchError) and err.transient
        reply = {"id": request["id"], "error": message, "transient": transient}
        sock.send(json.dumps({**reply, "retries": tries[0] - 1}).encode())
        return
    fd, memory = slots.lent[slot]
    shard = {"size": size, "slot": slot, "capacity": len(memory)}
    reply = {"id": request["id"], "shard": shard, "retries": tries[0] - 1}
    socket.send_fds(sock, [json.dumps(reply).encode()], [fd])


def serve(sock: socket.socket) -> None:
    """Answer the worker's requests, up to :data:`~diffdenoise.data.remote.IN_FLIGHT` at
    once, and take back the memory files it has read, until its end of the socket
    closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the worker's to handle
    os.nice(NICE - os.nice(0))  # before the pool's threads start: they inherit it
    pool, slots, keep = ThreadPoolExecutor(remote.IN_FLIGHT), Slots(), 0.0
    while True:
        try:
            message = sock.recv(MESSAGE)
        except OSError:
            message = b""
        if not message:
            os._exit(0)  # the worker is gone: requests still in flight are nobody's
        request = json.loads(message)
        if "free" in request:
            _give_back(sock, slots, request["free"], keep)
            continue
        keep = request["keep"]
        pool.submit(_answer, sock, slots, request)


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
