"""Shard tars written by the sharding workers, byte-identical for any number of them.

A worker that has encoded a source file writes the tar blocks of its samples (header and
padded data, exactly as ``tarfile`` writes them) to a spool file. The main process lays
samples out into size-capped shards from their block sizes alone, in file order, so the
cut is the same for any worker count, and hands each full shard to a worker: concatenate
its pieces, close the archive as ``tarfile`` closes it, hash it, rename it into place.
The main process touches no audio bytes, so adding workers is not capped by it.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections import deque
from concurrent.futures import Future
from pathlib import Path

ENCODING = tarfile.ENCODING  # what tarfile.open(mode="w") would use


def tar_blocks(key: str, entry: dict[str, bytes]) -> bytes:
    """One sample's members as ``tarfile`` (USTAR) writes them: header, data, padding."""
    out = []
    for ext, data in entry.items():
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size, info.mtime, info.mode = len(data), 0, 0o444
        info.uname = info.gname = "diffdenoise"
        out += [info.tobuf(tarfile.USTAR_FORMAT, ENCODING, "surrogateescape"), data]
        out.append(b"\0" * (-len(data) % tarfile.BLOCKSIZE))
    return b"".join(out)


def spool(path: Path, samples: list[tuple[str, dict]]) -> list[int]:
    """Write samples' tar blocks to ``path``; returns each sample's size in bytes."""
    sizes = []
    with open(path, "wb") as f:
        for key, entry in samples:
            sizes.append(f.write(tar_blocks(key, entry)))
    return sizes


def assemble(tmp: Path, final: Path, pieces: list[tuple[str, int, int]]) -> dict:
    """Concatenate ``(spool, offset, size)`` pieces into a closed tar at ``final`` (written
    as ``tmp``, then renamed); returns its ``sha256`` and ``bytes``."""
    try:
        result = _write_tar(tmp, pieces)
    except OSError:  # a full disk: leave no half shard taking the space a rerun needs
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)
    return result


def _write_tar(tmp: Path, pieces: list[tuple[str, int, int]]) -> dict:
    digest, total = hashlib.sha256(), 0
    with open(tmp, "wb") as f:
        for path, offset, size in pieces:
            with open(path, "rb") as src:
                src.seek(offset)
                chunk = src.read(size)
            f.write(chunk)
            digest.update(chunk)
            total += size
        end = 2 * tarfile.BLOCKSIZE  # tarfile.close(): two zero blocks, then a full record
        end += -(total + end) % tarfile.RECORDSIZE
        f.write(b"\0" * end)
        digest.update(b"\0" * end)
        f.flush()
        os.fsync(f.fileno())
    return {"sha256": digest.hexdigest(), "bytes": total + end}


def run_here(fn, args: tuple) -> Future:
    """``fn(*args)`` now, as a finished future: the one-process path of a pool's ``submit``."""
    done = Future()
    done.set_result(fn(*args))
    return done


class ShardLayout:
    """Cuts one split's sample stream into shards of at least ``shard_bytes`` (the last one
    may be smaller) and submits each full shard to ``run(assemble, args)``."""

    def __init__(self, out: Path, prefix: str, shard_bytes: int, run, spools: SpoolFiles):
        self.out, self.prefix, self.shard_bytes, self.run = out, prefix, shard_bytes, run
        self.spools = spools
        self.shards: list[dict] = []
        self.pending: deque = deque()  # (result, shard, its spool files), oldest first
        self.current, self.size = None, 0  # the open shard and its bytes so far

    def add(self, key: str, piece: tuple[str, int, int], seconds: float) -> None:
        if self.current is None:
            name = f"{self.prefix}-{len(self.shards) + len(self.pending):06d}.tar"
            self.current = {"file": name, "samples": 0, "seconds": 0.0, "pieces": []}
            self.size = 0
        self.current["pieces"].append(piece)
        self.size += piece[2]
        self.current["samples"] += 1
        self.current["seconds"] += seconds
        self.spools.use(piece[0])
        if self.size >= self.shard_bytes:
            self.close()

    def close(self) -> None:
        """Submit the open shard, if any."""
        shard, self.current = self.current, None
        if shard is None:
            return
        pieces = shard.pop("pieces")
        final = self.out / shard["file"]
        result = self.run(assemble, (self.out / f".{shard['file']}.tmp", final, pieces))
        self.pending.append((result, shard, [p[0] for p in pieces]))

    def collect(self, wait: bool = False) -> None:
        """Record the shards assembled so far, in order (all of them with ``wait``)."""
        while self.pending and (wait or self.pending[0][0].done()):
            result, shard, used = self.pending.popleft()
            shard.update(result.result())
            shard["seconds"] = round(shard["seconds"], 6)
            self.shards.append(shard)
            for path in used:
                self.spools.release(path)


class SpoolFiles:
    """Spool files and how many submitted shards still read each; a file goes when none
    does and its source file has been laid out whole."""

    def __init__(self, folder: Path):
        self.folder, self.users = folder, {}
        if folder.is_dir():
            self.remove()  # left by an interrupted run
        folder.mkdir(parents=True)

    def path(self, index: int) -> Path:
        return self.folder / f"{index:09d}.blocks"

    def use(self, path: str) -> None:
        self.users[path] = self.users.get(path, 0) + 1

    def laid_out(self, path: str) -> None:
        self.users.setdefault(path, 0)
        self._drop_if_unused(path)

    def release(self, path: str) -> None:
        self.users[path] -= 1
        self._drop_if_unused(path)

    def _drop_if_unused(self, path: str) -> None:
        if self.users.get(path) == 0:
            del self.users[path]
            Path(path).unlink(missing_ok=True)

    def remove(self) -> None:
        for path in self.folder.glob("*.blocks"):
            path.unlink()
        self.folder.rmdir()
