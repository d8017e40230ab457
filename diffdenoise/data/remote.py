"""Shards kept elsewhere: ``http(s)://``, ``pipe:``, ``s3://`` and ``gs://`` URLs.

A remote shard is fetched whole, into ``data.cache_dir`` or else into memory (on Linux
received by a helper process, :mod:`~diffdenoise.data.fetchproc`; elsewhere into a buffer
reused once the shard is read, :mod:`~diffdenoise.data.recvpool`), and then read exactly
as a local shard is, so the samples, crops and losses are the same wherever the shards
live, and resume stays exact. Fetching:

* ``http(s)://``: Python's ``urllib`` (no extra dependency; status codes tell a 404 from a
  503), with the proxy and CA settings Python reads (``HTTPS_PROXY``, ``SSL_CERT_FILE``).
* ``pipe:CMD``: the command's standard output, as WebDataset reads it; a non-zero exit is a
  failure (``pipe:curl -sf URL``, ``pipe:aws s3 cp s3://b/k -``).
* ``s3://``, ``gs://``: fsspec with ``s3fs`` or ``gcsfs`` (``pip install
  'diffdenoise[cloud]'``), with the credentials they read (:mod:`~diffdenoise.data.cloud`).

Transient failures (connection refused or reset, timeouts, HTTP 5xx, 408, 429, a
truncated download, a failing ``pipe:``) are retried with exponential backoff within
:class:`FetchPolicy`'s count and time; a missing object (HTTP 404, 403) is not.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from diffdenoise.data import cloud
from diffdenoise.data.recvpool import POOL

REMOTE = ("http://", "https://", "pipe:", "s3://", "gs://")
IN_FLIGHT = 32  # remote shards a loader worker fetches at once (why: docs/experiments.md)
CHUNK = 1 << 20
TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


def is_remote(url: str) -> bool:
    return url.startswith(REMOTE)


class FetchError(OSError):
    """A shard or manifest that could not be fetched, in one line; ``transient`` says
    whether trying again may help."""

    def __init__(self, message: str, transient: bool):
        super().__init__(message)
        self.transient = transient


@dataclass
class FetchPolicy:
    """How remote shards are fetched (``data.fetch_*``, ``data.cache_dir``), and the
    shard sizes the manifest lists (URL -> bytes) to catch truncated downloads."""

    retries: int = 5
    timeout_s: float = 30.0
    max_wait_s: float = 120.0
    cache_dir: str = ""
    read_ahead_mb: float = 256.0
    sizes: dict[str, int] = field(default_factory=dict)


_POLICY = FetchPolicy()
_RETRIES = [0]  # retries made by this process, for train/shard_retries


def configure(policy: FetchPolicy) -> None:
    """Set this process's policy (the training loader sets it again in each worker)."""
    global _POLICY
    _POLICY = policy


def policy() -> FetchPolicy:
    return _POLICY


def expected_size(url: str) -> int:
    """Bytes the manifest lists for ``url``: a local shard's none (it is not fetched), an
    unlisted remote one's 64 MB."""
    return _POLICY.sizes.get(url, 64_000_000) if is_remote(url) else 0


def count_retries(count: int) -> None:
    """Add ``count`` retries made for this process (by its fetch helper)."""
    _RETRIES[0] += count


def take_retries() -> int:
    """Retries made by this process since the last call."""
    count, _RETRIES[0] = _RETRIES[0], 0
    return count


def manifest_url(url: str) -> str:
    """The ``manifest.json`` beside a shard URL, in the same scheme: the shard's last path
    component replaced (for ``pipe:``, in the command's last token naming a ``.tar``)."""
    if url.startswith("pipe:"):
        tokens = url[5:].split(" ")
        at = max((i for i, t in enumerate(tokens) if ".tar" in t), default=None)
        if at is None:
            raise FetchError(f"{url}: no .tar in this command to find manifest.json beside",
                             transient=False)  # fmt: skip
        tokens[at] = (
            tokens[at].rsplit("/", 1)[0] + "/manifest.json"
            if "/" in tokens[at]
            else ("manifest.json")
        )
        return "pipe:" + " ".join(tokens)
    return url.rsplit("/", 1)[0] + "/manifest.json"


def shard_name(url: str) -> str:
    """The shard's file name in a URL (the manifest lists shards by it)."""
    token = url[5:].split(" ") if url.startswith("pipe:") else [url]
    tar = [t for t in token if ".tar" in t] or token
    return tar[-1].rstrip("/").rsplit("/", 1)[-1].split("?")[0]


@contextlib.contextmanager
def as_fetch_error(url: str):
    """Network, HTTP and object-store failures inside as one-line :class:`FetchError` s:
    a 5xx, 408, 429, timeout or lost connection transient; a missing object, a refusal,
    missing credentials or a missing backend not."""
    try:
        yield
    except FetchError:
        raise
    except urllib.error.HTTPError as err:
        raise FetchError(f"{url}: HTTP {err.code} {err.reason}",
                         transient=err.code in TRANSIENT_HTTP) from None  # fmt: skip
    except cloud.MissingBackend as err:
        raise FetchError(f"{url}: {err}", transient=False) from None
    except FileNotFoundError:  # an object store's 404
        raise FetchError(f"{url}: not found", transient=False) from None
    except PermissionError as err:  # an object store's 403
        raise FetchError(f"{url}: access denied: {err}", transient=False) from None
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise FetchError(f"{url}: {type(err).__name__}: {reason}", transient=True) from None
    except Exception as err:
        if not cloud.is_client_error(err):
            raise  # a bug here, not a failed request
        raise FetchError(f"{url}: {type(err).__name__}: {err}",
                         transient=cloud.is_transient(err, TRANSIENT_HTTP)) from None  # fmt: skip


def open_stream(url: str, timeout: float):
    """An open binary stream of ``url`` and a function that raises if it ended badly."""
    if url.startswith(("http://", "https://")):
        return urllib.request.urlopen(url, timeout=timeout), lambda: None
    if url.startswith("pipe:"):
        proc = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)  # fmt: skip

        def check():
            if proc.wait(timeout=timeout) != 0:
                raise FetchError(f"{url}: the command exited with {proc.returncode}",
                                 transient=True)  # fmt: skip

        return proc.stdout, check
    return cloud.open_stream(url), lambda: None


def _copy(url: str, out, timeout: float, expected: int | None) -> None:
    """One try: ``url`` into the binary file object ``out``, checked against ``expected``
    bytes."""
    with as_fetch_error(url):
        stream, check = open_stream(url, timeout)
        with stream:
            shutil.copyfileobj(stream, out, CHUNK)
        check()
    check_size(url, out.tell(), expected)


def check_size(url: str, size: int, expected: int | None) -> None:
    if expected is not None and size < expected:
        raise FetchError(f"{url}: truncated download, {size} of {expected} bytes (the "
                         "manifest's size)", transient=True)  # fmt: skip
    if expected is not None and size > expected:
        raise FetchError(f"{url}: {size} bytes downloaded, {expected} in the manifest",
                         transient=True)  # fmt: skip


def retrying(url: str, fetch: FetchPolicy, tries: int | None, attempt):
    """``attempt()``'s value once it succeeds, transient failures retried with exponential
    backoff within the policy's count and time (at most ``tries`` tries when given), and
    counted for ``train/shard_retries``."""
    deadline = time.monotonic() + fetch.max_wait_s
    attempts = fetch.retries + 1 if tries is None else tries
    for n in range(attempts):
        try:
            return attempt()
        except FetchError as err:
            pause = min(0.25 * 2**n, 8.0)
            last = n == attempts - 1 or time.monotonic() + pause > deadline
            if not err.transient or last:
                raise
            _RETRIES[0] += 1
            time.sleep(pause)


def download(url: str, dest: Path, fetch: FetchPolicy | None = None, tries: int | None = None):
    """Fetch ``url`` into the file ``dest``, atomically, with :func:`retrying`' retries."""
    fetch = fetch or _POLICY
    # One name per process and thread: read-ahead may fetch the same shard twice at once.
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.part")

    def attempt():
        try:
            with open(tmp, "wb") as out:
                _copy(url, out, fetch.timeout_s, fetch.sizes.get(url))
            os.replace(tmp, dest)
        except OSError as err:  # the cache folder's disk, not the network
            tmp.unlink(missing_ok=True)
            if isinstance(err, FetchError):
                raise
            raise FetchError(f"{dest}: {err.strerror or err}", transient=False) from None
        return dest

    return retrying(url, fetch, tries, attempt)


def _read_into(stream, out: bytearray) -> int:
    """Receive all of ``stream`` into ``out`` (``readinto``, no copy per chunk), growing it
    when full; the bytes received."""
    size = 0
    while True:
        if size == len(out):
            out.extend(bytes(max(len(out), CHUNK)))
        with memoryview(out) as view:
            got = stream.readinto(view[size:])
        if not got:
            return size
        size += got


def fetch_bytes(url: str, fetch: FetchPolicy | None = None, tries: int | None = None):
    """``url`` whole in memory, with :func:`retrying`' retries: a read-only ``memoryview``
    of a buffer from :data:`~diffdenoise.data.recvpool.POOL` (sized from the manifest
    when it lists ``url``), to hand back with :func:`recycle` once read."""
    fetch = fetch or _POLICY
    expected = fetch.sizes.get(url)

    def attempt():
        out = POOL.take(expected) if expected is not None else bytearray(CHUNK)
        try:
            with as_fetch_error(url):
                stream, check = open_stream(url, fetch.timeout_s)
                with stream:
                    size = _read_into(stream, out)
                check()
            check_size(url, size, expected)
        except FetchError:
            POOL.give(out, fetch.read_ahead_mb * 1e6)
            raise
        return memoryview(out)[:size].toreadonly()

    return retrying(url, fetch, tries, attempt)


def probe(url: str, fetch: FetchPolicy | None = None) -> None:
    """Raise :class:`FetchError` unless an ``http(s)://`` shard answers a HEAD request or an
    ``s3://`` / ``gs://`` object exists (retrying transient failures as :func:`download`
    does); a ``pipe:`` command is not run, a local file not checked here."""
    if url.startswith("pipe:") or not is_remote(url):
        return
    fetch = fetch or _POLICY

    def attempt():
        with as_fetch_error(url):
            if url.startswith(("http://", "https://")):
                request = urllib.request.Request(url, method="HEAD")
                urllib.request.urlopen(request, timeout=fetch.timeout_s).close()
            else:
                cloud.open_stream(url).close()  # reads the object's size: a 404 raises

    retrying(url, fetch, None, attempt)


def read_bytes(url: str, fetch: FetchPolicy | None = None) -> bytes:
    """A small remote file (a manifest) whole, with the same retries."""
    return bytes(fetch_bytes(url, fetch))


def recycle(view: memoryview) -> None:
    """Give the buffer behind a :func:`fetch_bytes` view back for the next fetch, which
    receives into it once no read of the shard views it any more
    (:func:`~diffdenoise.data.recvpool.in_use`)."""
    buffer = view.obj
    try:
        view.release()
    except BufferError:  # something still holds a view into it: let it go, never reuse it
        return
    if isinstance(buffer, bytearray):  # not a helper's mapped file: that goes with its views
        POOL.give(buffer, _POLICY.read_ahead_mb * 1e6)


def cached(url: str, fetch: FetchPolicy, tries: int | None = None) -> Path:
    """Shard ``url``'s copy in ``fetch.cache_dir``, fetched there first unless a copy with
    the manifest's size is there already."""
    folder = Path(fetch.cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha1(url.encode()).hexdigest()[:16]}-{shard_name(url)}"
    expected = fetch.sizes.get(url)
    with _lock_for(url):  # read-ahead may ask for one shard twice: fetch it once
        if path.is_file() and (expected is None or path.stat().st_size == expected):
            return path
        return download(url, path, fetch, tries)


_CACHE_LOCKS: dict[str, threading.Lock] = {}
_GUARD = threading.Lock()


def _lock_for(url: str) -> threading.Lock:
    with _GUARD:
        return _CACHE_LOCKS.setdefault(url, threading.Lock())
