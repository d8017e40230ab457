"""``make bench`` rows of remote shards: B19 (one loader worker reading pcm16 shards over
HTTP from a local server in another process, against the same shards as local files) and
B20 (the same with 50 ms added to every request, a slow store that the loader's
prefetching must hide)."""

from __future__ import annotations

import contextlib
import statistics
from pathlib import Path

import torch

from diffdenoise.bench.common import make_corpus, quiet, row
from diffdenoise.bench.data import RATE, format_shards, loader_rate
from diffdenoise.bench.shard_server import served_elsewhere
from diffdenoise.data import remote
from diffdenoise.data import sharding as shard

LATENCY_S = 0.05


def shard_pattern(base: str, folder: Path) -> str:
    """``base/train-{000000..00000N}.tar`` for the train shards of ``folder``."""
    names = sorted(p.stem for p in folder.glob("train-*.tar"))
    first, last = names[0].split("-")[1], names[-1].split("-")[1]
    return f"{base}/train-{{{first}..{last}}}.tar"


def crop_shards(work: Path) -> Path:
    """The bench corpus as pcm16 shards of crop-long members (2 s) in 4 MB shards: each
    reader, local or remote, then reads every byte once per epoch. (With 10 s members a
    local reader reads a fifth of each by offset, and a remote one must fetch all of it.)"""
    out = work / "remote" / "crops"
    if not (out / "manifest.json").exists():
        args = [str(make_corpus(work, 4.0, RATE)), "--name", "crops", "--out", str(out.parent)]
        args += ["--format", "pcm16", "--sample-rate", str(RATE), "--max-seconds", "2"]
        quiet(shard.main, [*args, "--min-seconds", "2", "--shard-mb", "4", "--val-fraction", "0"])
    return out


def remote_rate(url: str, shards: Path, batches: int) -> float:
    """Audio-s/s of one loader reading ``shards`` over HTTP from the server at ``url``."""
    sizes = {f"{url}/{p.name}": p.stat().st_size for p in shards.glob("train-*.tar")}
    remote.configure(remote.FetchPolicy(sizes=sizes))
    try:
        return loader_rate(shard_pattern(url, shards), batches)
    finally:
        remote.configure(remote.FetchPolicy())


def bench_remote(work: Path, rounds: int = 7, batches: int = 400) -> list[dict]:
    """Each round reads the same shards locally and from each server, one after another,
    so that a shared machine's slow spells fall on both sides of a share; a row is the
    median of the rounds' shares. A first pass, not counted, warms every path (page cache,
    allocator, buffer pool), and the rounds alternate which side reads first, so neither
    side gains from a process that speeds up as it runs."""
    torch.set_num_threads(1)
    crops, long_members = crop_shards(work), format_shards(work)["pcm16"]
    shares: dict[str, list[float]] = {"plain": [], "slow": [], "long": []}
    rates: dict[str, list[float]] = {"local": [], "plain": [], "slow": []}
    with contextlib.ExitStack() as stack:
        plain, slow, long_url = (stack.enter_context(served_elsewhere(folder, latency=latency))
                                 for folder, latency in ((crops, 0.0), (crops, LATENCY_S),
                                                         (long_members, 0.0)))  # fmt: skip
        measure = {
            "local": lambda: loader_rate(crops, batches),
            "plain": lambda: remote_rate(plain, crops, batches),
            "slow": lambda: remote_rate(slow, crops, batches),
            "long_local": lambda: loader_rate(long_members, batches),
            "long": lambda: remote_rate(long_url, long_members, batches),
        }
        for warm in measure.values():
            warm()
        for n in range(rounds):
            order = list(measure) if n % 2 == 0 else list(reversed(measure))
            got = {name: measure[name]() for name in order}
            for name in ("plain", "slow"):
                rates[name].append(got[name])
                shares[name].append(got[name] / got["local"])
            rates["local"].append(got["local"])
            shares["long"].append(got["long"] / got["long_local"])
    torch.set_num_threads(2)
    rate = {name: round(statistics.median(r)) for name, r in rates.items()}
    share = {name: round(statistics.median(s), 2) for name, s in shares.items()}
    return [
        row("B19", "loader over HTTP (a local server), pcm16 shards of 2 s members: share of "
            "the same shards read as local files, one worker (median of rounds side by side)",
            share["plain"], ">= 0.90", share["plain"] >= 0.9, http_audio_s_per_s=rate["plain"],
            local_audio_s_per_s=rate["local"], share_with_10s_members=share["long"]),
        row("B20", f"loader over HTTP with {LATENCY_S * 1000:g} ms per request: share of local",
            share["slow"], ">= 0.80 (prefetching hides the latency)", share["slow"] >= 0.8,
            http_audio_s_per_s=rate["slow"]),
    ]  # fmt: skip
