"""Where a run's shards come from, checked before training: the fetch policy of remote
shards, their manifests read once per run (the global main process reads, every rank
receives), and one line, exit 2, for a shard URL that is wrong at the start."""

from __future__ import annotations

import torch
import torch.distributed as dist
from accelerate import Accelerator

from diffdenoise.data import pipeline as data
from diffdenoise.data import remote

# Batches in an "epoch" of shards whose manifest cannot be read: each loader slot goes
# through its shards over and over, and only train.max_steps or a time budget ends a run.
UNKNOWN_EPOCH = 10**9


def fetch_policy(cfg) -> remote.FetchPolicy:
    d = cfg.data
    return remote.FetchPolicy(
        d.fetch_retries, d.fetch_timeout_s, d.fetch_max_wait_s, d.cache_dir, d.read_ahead_mb
    )


def main_process_reader(acc: Accelerator | None):
    """``read(url) -> bytes`` that fetches on the global main process only and sends the
    bytes (or the failure) to every other rank: one request per run, not one per rank."""
    if acc is None or acc.num_processes == 1:
        return remote.read_bytes

    def read(url: str) -> bytes:
        payload, failed = b"", False
        if acc.is_main_process:
            try:
                payload = remote.read_bytes(url)
            except remote.FetchError as err:
                payload, failed = str(err).encode(), True
        head = torch.tensor([len(payload), int(failed)], device=acc.device)
        dist.broadcast(head, src=0)
        body = torch.zeros(int(head[0]), dtype=torch.uint8, device=acc.device)
        if acc.is_main_process:
            body = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(acc.device)
        dist.broadcast(body, src=0)
        received = bytes(body.cpu().tolist())
        if head[1]:
            raise remote.FetchError(received.decode(), transient=False)
        return received

    return read


def stats_of(urls: list[str], what: str, read, manifest: str = "", say=print) -> dict | None:
    """:func:`~diffdenoise.data.shards.manifest_stats` of ``urls``; None, with one line,
    when their manifest cannot be reached. Where the manifest is missing or does not list
    a shard, the first remote shard is probed, so a wrong URL is one line with its status."""
    try:
        stats = data.manifest_stats(urls, manifest, read)
    except data.DataError:
        probe(urls[0], what)
        raise
    if stats is None:
        probe(urls[0], what)
        say(f"warning: {what}: no manifest.json reachable beside {urls[0]} (nor "
            "data.manifest): sample totals and epochs are unknown")  # fmt: skip
    return stats


def probe(url: str, what: str) -> None:
    try:
        remote.probe(url)
    except remote.FetchError as err:
        raise data.DataError(f"{what}: {err}") from None
