"""Which shards, and whether they are sound: URLs, manifests, and damage warnings.

Everything here runs before or beside decoding; :mod:`diffdenoise.data` builds the
pipelines on top of it.
"""

from __future__ import annotations

import glob
import warnings
from pathlib import Path

import webdataset as wds

from diffdenoise.data.manifest import ManifestError, read_manifest


class DataError(ValueError):
    """A data problem phrased for the user in one line."""


_WARNED: set[tuple] = set()


def warn_once(key: tuple, message: str) -> None:
    """Warn the first time ``key`` is seen in this process: shards are read again every
    epoch, and validation every time it runs, so the same damage would repeat forever."""
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, stacklevel=3)


def warn_once_per_shard(exn: Exception) -> bool:
    """WebDataset error handler: one warning per shard and kind of damage, then go on."""
    url = next((a for a in reversed(exn.args) if isinstance(a, str) and a), "?")
    first = (str(exn.args[0]) if exn.args else type(exn).__name__).splitlines()[0]
    warn_once(
        (url, type(exn).__name__),
        f"{url}: {type(exn).__name__}: {first[:200]} (skipped; not repeated for this shard)",
    )
    return True


def expand_urls(spec: str | list[str]) -> list[str]:
    """Shard URLs from a glob, a brace pattern, a list, or WebDataset URLs (``pipe:``...)."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    urls = []
    for item in specs:
        for url in wds.shardlists.expand_urls(item) if "{" in item else [item]:
            if ":" in url.split("/")[0]:  # pipe:, http:, s3: ... are opened by WebDataset
                urls.append(url)
                continue
            matches = sorted(glob.glob(url))
            if not matches:
                raise DataError(f"{url}: no shard matches this path or glob")
            urls.extend(matches)
    if not urls:
        raise DataError(f"{spec!r}: no shards given")
    return urls


def _local_path(url: str) -> Path | None:
    if url.startswith("pipe:"):
        tokens = [t for t in url[5:].split() if Path(t).is_file()]
        return Path(tokens[-1]) if tokens else None
    return Path(url) if ":" not in url.split("/")[0] else None


def manifest_stats(urls: list[str]) -> dict:
    """Samples, seconds and sample rate of ``urls`` from the manifest.json beside them."""
    cache, samples, seconds, rates = {}, 0, 0.0, set()
    for url in urls:
        path = _local_path(url)
        if path is None:
            raise DataError(f"{url}: cannot find manifest.json for a remote shard")
        mpath = path.parent / "manifest.json"
        if mpath not in cache:
            if not mpath.is_file():
                raise DataError(f"{mpath}: manifest missing; run the shard tool to completion")
            try:
                m = read_manifest(mpath)
            except ManifestError as err:
                raise DataError(str(err)) from None
            shards = {s["file"]: s for sp in m["splits"].values() for s in sp["shards"]}
            cache[mpath] = (m["sample_rate"], shards)
        rate, shards = cache[mpath]
        if path.name not in shards:
            raise DataError(f"{path}: not listed in {mpath}")
        size, listed = path.stat().st_size, shards[path.name]["bytes"]
        if size != listed:
            raise DataError(
                f"{path}: {size} bytes but {mpath} lists {listed}: the shard changed after "
                f"sharding; check all with python -m diffdenoise.shard verify {path.parent}"
            )
        samples += shards[path.name]["samples"]
        seconds += shards[path.name]["seconds"]
        rates.add(rate)
    return {"samples": samples, "seconds": seconds, "sample_rates": sorted(rates)}
