"""Which shards, and whether they are sound: URLs, manifests, and damage warnings.

Everything here runs before or beside decoding; :mod:`diffdenoise.data` builds the
pipelines on top of it.
"""

from __future__ import annotations

import glob
import warnings
from pathlib import Path

import webdataset as wds

from diffdenoise.data import remote
from diffdenoise.data.manifest import ManifestError, parse_manifest, read_manifest


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


def manifest_stats(urls: list[str], manifest: str = "", read=None) -> dict | None:
    """Samples, seconds and sample rate of ``urls`` from the manifest.json beside each
    shard (for a remote one: at the same location, same scheme), or from ``manifest`` (a
    path or URL) for all; ``sizes``: what the manifest lists for each remote shard, to
    catch a truncated download; ``counts``: each shard's samples. ``read(url) -> bytes``
    reads a remote manifest (default: :func:`~diffdenoise.data.remote.read_bytes`); None
    when none can be reached."""
    cache: dict = {}
    samples, seconds, rates, sizes, counts = 0, 0.0, set(), {}, {}
    for url in urls:
        where = manifest or (remote.manifest_url(url) if remote.is_remote(url) else
                             str(Path(url).parent / "manifest.json"))  # fmt: skip
        if where not in cache:
            cache[where] = _manifest_shards(where, read or remote.read_bytes)
        if cache[where] is None:
            return None
        rate, shards = cache[where]
        name = remote.shard_name(url) if remote.is_remote(url) else Path(url).name
        if name not in shards:
            raise DataError(f"{url}: not listed in {where}")
        entry = shards[name]
        if remote.is_remote(url):
            sizes[url] = entry["bytes"]
        else:
            _check_size(Path(url), entry["bytes"], where)
        samples += entry["samples"]
        counts[url] = entry["samples"]
        seconds += entry["seconds"]
        rates.add(rate)
    return {"samples": samples, "seconds": seconds, "sample_rates": sorted(rates),
            "sizes": sizes, "counts": counts}  # fmt: skip


def _manifest_shards(where: str, read) -> tuple[int, dict] | None:
    """``(sample rate, shard name -> entry)`` of a manifest; None for a remote one that
    cannot be fetched."""
    try:
        if remote.is_remote(where):
            m = parse_manifest(read(where), where)
        elif not Path(where).is_file():
            raise DataError(f"{where}: manifest missing; run the shard tool to completion")
        else:
            m = read_manifest(Path(where))
    except remote.FetchError as err:
        warn_once(("manifest", where), f"no manifest for these shards: {err}")
        return None
    except ManifestError as err:
        raise DataError(str(err)) from None
    return m["sample_rate"], {s["file"]: s for sp in m["splits"].values() for s in sp["shards"]}


def _check_size(path: Path, listed: int, where: str) -> None:
    size = path.stat().st_size
    if size != listed:
        raise DataError(
            f"{path}: {size} bytes but {where} lists {listed}: the shard changed after "
            f"sharding; check all with python -m diffdenoise.shard verify {path.parent}"
        )
