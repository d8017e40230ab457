"""``make bench`` rows of remote shards: B19 (one loader worker reading pcm16 shards over
HTTP from a local server in another process, against the same shards as local files) and
B20 (the same with 50 ms added to every request, a slow store that the loader's
prefetching must hide)."""

from __future__ import annotations

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


def remote_rate(shards: Path, latency: float, repeats: int) -> float:
    """Audio-s/s of one loader reading ``shards`` over HTTP from a server elsewhere."""
    with served_elsewhere(shards, latency=latency) as url:
        sizes = {f"{url}/{p.name}": p.stat().st_size for p in shards.glob("train-*.tar")}
        remote.configure(remote.FetchPolicy(sizes=sizes))
        try:
            pattern = shard_pattern(url, shards)
            return statistics.median(loader_rate(pattern) for _ in range(repeats))
        finally:
            remote.configure(remote.FetchPolicy())


def bench_remote(work: Path, repeats: int = 3) -> list[dict]:
    torch.set_num_threads(1)
    shards = crop_shards(work)
    local = statistics.median(loader_rate(shards) for _ in range(repeats))
    rates = {latency: remote_rate(shards, latency, repeats) for latency in (0.0, LATENCY_S)}
    long_members = format_shards(work)["pcm16"]
    whole = remote_rate(long_members, 0.0, repeats) / loader_rate(long_members)
    torch.set_num_threads(2)
    plain, slow = rates[0.0] / local, rates[LATENCY_S] / local
    return [
        row("B19", "loader over HTTP (a local server), pcm16 shards of 2 s members: share of "
            "the same shards read as local files, one worker", round(plain, 2), ">= 0.90",
            plain >= 0.9, http_audio_s_per_s=round(rates[0.0]), local_audio_s_per_s=round(local),
            share_with_10s_members=round(whole, 2)),
        row("B20", f"loader over HTTP with {LATENCY_S * 1000:g} ms per request: share of local",
            round(slow, 2), ">= 0.80 (prefetching hides the latency)", slow >= 0.8,
            http_audio_s_per_s=round(rates[LATENCY_S])),
    ]  # fmt: skip
