"""Local tar shards read by offset: samples whose audio members are read only as far as a
crop needs.

WebDataset's tar reader hands every member over as bytes, so a 1 s crop of a 10 s pcm16
member reads all ten seconds, and a shuffle buffer holds whole members. Here a sample's
members are :class:`Member` references (file, offset, size), found from the 512-byte tar
headers alone; :mod:`diffdenoise.audio` slices them (``member[a:b]``) like bytes, and only
those bytes are read. Samples are grouped as WebDataset groups them (key: the name up to
the first dot of its base name), so both readers give the same samples.
"""

from __future__ import annotations

import collections
import os
import re
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from diffdenoise.data import fetchproc, remote
from diffdenoise.data.shards import DataError, warn_once_per_shard

BLOCK = 512
HEAD = 256  # bytes of a member read (and kept) on first touch: a WAV header fits
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset.tariterators.base_plus_ext
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skipped meta members


class _Files:
    """Open descriptors of the shards a worker reads, the least recently used closed first."""

    def __init__(self, keep: int = 16):
        self.keep, self.fds, self.pid = keep, OrderedDict(), os.getpid()

    def fd(self, path: str) -> int:
        if self.pid != os.getpid():  # a forked loader worker: the parent's table is not ours
            self.fds, self.pid = OrderedDict(), os.getpid()
        fd = self.fds.pop(path, None)
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
            if len(self.fds) >= self.keep:
                os.close(self.fds.popitem(last=False)[1])
        self.fds[path] = fd
        return fd


_FILES = _Files()
_READS = [0, 0]  # reads and bytes read by this process, for tests and benchmarks


class Buffer:
    """A shard fetched into memory (a remote one, with no cache folder): read like a file,
    and kept alive by the :class:`Member` objects that point into it. Once the shuffle
    buffer has used its last sample it goes, and its memory receives a later shard
    (:func:`~diffdenoise.data.fetchproc.recycle`)."""

    __slots__ = ("data", "name")

    def __init__(self, data: memoryview, name: str):
        self.data, self.name = data, name

    def __str__(self) -> str:
        return self.name

    def __del__(self):
        if fetchproc is not None:  # None while the interpreter shuts down: nothing to reuse
            fetchproc.recycle(self.data)


def size_of(path) -> int:
    return len(path.data) if isinstance(path, Buffer) else os.path.getsize(path)


def pread(path, offset: int, count: int) -> bytes | memoryview:
    """``count`` bytes of ``path`` from ``offset`` (fewer only at the end): of a file,
    bytes; of a :class:`Buffer`, a read-only view of them, not a copy."""
    if isinstance(path, Buffer):
        out = path.data[offset : offset + count]
    else:
        out = os.pread(_FILES.fd(path), count, offset)
    _READS[0] += 1
    _READS[1] += len(out)
    return out


def read_stats() -> tuple[int, int]:
    """``(reads, bytes)`` this process has read through :func:`pread` so far."""
    return _READS[0], _READS[1]


class Member:
    """One tar member's bytes, read on demand: ``len(m)`` and ``m[a:b]`` work as on bytes
    (a slice of a fetched shard is a read-only view of its buffer; ``bytes(m)`` copies)."""

    __slots__ = ("_head", "offset", "path", "size")

    def __init__(self, path: str, offset: int, size: int):
        self.path, self.offset, self.size, self._head = path, offset, size, None

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, where: slice) -> bytes | memoryview:
        start, stop, _ = where.indices(self.size)
        if stop <= start:
            return b""
        if stop <= HEAD:
            if self._head is None:  # a copy: a view kept here would hold a shard's buffer
                self._head = bytes(self._read(0, min(HEAD, self.size)))
            return self._head[start:stop]
        return self._read(start, stop - start)

    def _read(self, start: int, count: int) -> bytes | memoryview:
        out = pread(self.path, self.offset + start, count)
        if len(out) != count:
            raise DataError(f"{self.path}: truncated tar member at byte {self.offset + start}")
        return out

    def __bytes__(self) -> bytes:
        return bytes(self[:])


def _number(field: bytes) -> int:
    """A tar header number: octal text, or base-256 when the top bit is set."""
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a pax extended header (``"<len> path=<name>\\n"`` records)."""
    for record in data.decode("utf-8", "replace").split("\n"):
        _, _, field = record.partition(" ")
        if field.startswith("path="):
            return field[5:]
    return None


def members(path: str) -> Iterator[tuple[str, int, int]]:
    """``(name, data offset, size)`` of each regular file in a tar, from its headers.

    A damaged header or a member that runs past the end of the file raises
    :class:`DataError` naming the byte where it starts.
    """
    end, pos, long_name = size_of(path), 0, None
    while pos + BLOCK <= end:
        header = bytes(pread(path, pos, BLOCK))
        if header.count(0) == BLOCK:
            return  # the end-of-archive blocks
        if _number(header[148:156]) != sum(header[:148]) + 256 + sum(header[156:]):
            raise DataError(f"{path}: damaged tar header at byte {pos}")
        size, kind = _number(header[124:136]), header[156:157]
        data = pos + BLOCK
        if data + size > end:
            raise DataError(f"{path}: truncated tar member at byte {pos}")
        if kind in (b"L", b"x"):  # the next member's name: GNU long name or pax header
            raw = bytes(pread(path, data, size))
            long_name = _text(raw.rstrip(b"\0")) if kind == b"L" else _pax_path(raw)
        elif kind in (b"0", b"\0", b"7"):
            name = long_name or _name(header)
            long_name = None
            yield name, data, size
        pos = data + -(-size // BLOCK) * BLOCK


def _name(header: bytes) -> str:
    name = _text(header[:100].split(b"\0", 1)[0])
    prefix = _text(header[345:500].split(b"\0", 1)[0]) if header[257:262] == b"ustar" else ""
    return f"{prefix}/{name}" if prefix else name


def _text(raw: bytes) -> str:
    """A member name; bytes that are not UTF-8 become U+FFFD and the name is marked
    (:data:`BAD_NAME`), so its sample is skipped and counted, not the loader killed."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return BAD_NAME + raw.decode("utf-8", "replace")


BAD_NAME = "\0bad-name\0"  # a prefix no tar name can hold (names end at NUL)


def samples(path: str) -> Iterator[dict]:
    """Samples of a local tar shard as WebDataset groups them, with :class:`Member` values
    (``__key__``, ``__url__`` and lower-case extensions as keys)."""
    current: dict = {}
    for name, offset, size in members(path):
        bad = name.startswith(BAD_NAME)
        name = name.removeprefix(BAD_NAME)
        match = _KEY.match(name)
        if match is None or _META.search(name) or os.path.basename(name).startswith("."):
            continue
        key, ext = match.group(1), match.group(2).lower()
        if current and current["__key__"] != key:
            yield current
            current = {}
        if not current:
            current = {"__key__": key, "__url__": path}
        if bad:  # decode_example refuses the sample, naming this
            current["__bad__"] = f"member name {name!r} is not valid UTF-8"
        if ext in current:
            raise DataError(f"{path}: duplicate member {name} in sample {key}")
        current[ext] = Member(path, offset, size)
    if current:
        yield current


class ShardsUnreachable(DataError):
    """Every shard of a list failed to fetch, one after another: the network or the
    store is down, and waiting longer would only hang the run."""


def fetched(
    urls: Iterator[str], horizon: int | None = None
) -> Iterator[tuple[str, str | Buffer | None, Exception | None]]:
    """``(url, local file or Buffer, error)`` for each URL in order. Remote ones are
    fetched ahead (:func:`~diffdenoise.data.fetchproc.submit`), several at once, while
    the ones before them are read: up to :data:`~diffdenoise.data.remote.IN_FLIGHT`
    requests and the policy's ``read_ahead_mb`` of shards, so a store's latency hides
    behind reading; past the first ``horizon`` URLs (those the reader can need, where it
    is known) only when the reader asks for one. After a shard fails all its tries, the
    next ones get one try each until one arrives, so a dead network stops the run in
    bounded time."""
    pool, queue, failing = ThreadPoolExecutor(remote.IN_FLIGHT), collections.deque(), [False]
    budget, urls, pulled = remote.policy().read_ahead_mb * 1e6, iter(urls), [0]

    def top_up():
        while len(queue) < remote.IN_FLIGHT:
            ahead = sum(remote.expected_size(u) for u, _ in queue)
            if queue and (ahead >= budget or (horizon is not None and pulled[0] >= horizon)):
                return
            url = next(urls, None)
            if url is None:
                return
            pulled[0] += 1
            job = None
            if remote.is_remote(url):
                job = fetchproc.submit(pool, url, 1 if failing[0] else None)
            queue.append((url, job))

    try:
        top_up()
        while queue:
            url, job = queue.popleft()
            try:
                got = job.result() if job else url
                fetched_whole = isinstance(got, memoryview)
                source, error = (Buffer(got, url) if fetched_whole else str(got)), None
            except remote.FetchError as err:
                source, error = None, err
            failing[0] = error is not None
            top_up()
            yield url, source, error
    finally:
        for _, job in queue:
            if job is not None:
                job.cancel()
        pool.shutdown(wait=False)


def read_shards(sources: Iterator[dict], handler=warn_once_per_shard, give_up_after: int = 0,
                horizon: int | None = None) -> Iterator[dict]:  # fmt: skip
    """``{"url": ...}`` -> the shards' samples, indexed from their headers and read by
    offset. Remote shards are fetched first (:func:`fetched`, ahead up to ``horizon``);
    one that stays unreachable is skipped with a warning from ``handler``, and
    ``give_up_after`` different ones failing with none arriving between raise
    :class:`ShardsUnreachable`. Damage ends the shard with one warning from ``handler``,
    as WebDataset's handlers do."""
    failed: set[str] = set()  # the shards that failed since the last one that arrived
    for url, path, error in fetched((source["url"] for source in sources), horizon):
        if error is not None:
            failed.add(url)
            if give_up_after and len(failed) >= give_up_after:
                raise ShardsUnreachable(f"{len(failed)} shards in a row could not be fetched; "
                                        f"the last: {error}")  # fmt: skip
            reason = str(error).removeprefix(f"{url}: ")
            handler(DataError(f"unreachable after retries: {reason}", url))
            continue
        failed.clear()
        try:
            for sample in samples(path):
                yield {**sample, "__url__": url}
        except (DataError, OSError) as err:
            damage = DataError(str(err).removeprefix(f"{path}: "), url)
            if not handler(damage):
                raise damage from None
