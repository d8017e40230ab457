"""WebDataset pipelines: shards -> decode -> crop -> mix noise at an SNR -> batch.

Distributed design (see DESIGN.md, "Pitfalls"):

* Each epoch, every rank permutes the shard list with the same seed and each
  (rank, worker) slot takes every ``slots``-th shard, so with at least as many shards as
  slots no shard is read twice in an epoch. The slot's list then repeats, and the stream
  is cut at a fixed number of batches taken from the manifest, identical on every rank:
  DDP can never wait on a rank that ran dry.
* Shuffle, crop, noise and timestep are seeded by (seed, epoch, rank, worker, position),
  so ranks and workers see different data and a resumed run can skip to a step without
  decoding what it skips.
* The training loader is never passed through ``accelerator.prepare()``: that would shard
  the already-split stream a second time.
* Validation crops and noise are seeded by the sample key alone and samples are dealt
  round-robin to ranks, so any world size sees the same set, exactly once.
"""

from __future__ import annotations

import os
import random
import zlib
from collections.abc import Iterator
from functools import partial

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from diffdenoise.data import audio, remote, tarindex
from diffdenoise.data import speed as speed_module
from diffdenoise.data.mixer import Mixer, collate_plans
from diffdenoise.data.mixing import NoiseBank, render
from diffdenoise.data.shards import (
    DataError,
    expand_urls,
    manifest_stats,
    warn_once,
)

__all__ = [  # the shard helpers are used through this module too
    "DataError", "Mixer", "NoiseBank", "expand_urls", "manifest_stats", "render", "warn_once",
]  # fmt: skip

VAL_SEED = 20240531  # fixed, so validation is the same in every run


def batches_per_epoch(samples: int, batch_size: int, world_size: int) -> int:
    """Full batches each rank yields per epoch: the same number on every rank."""
    return max(1, samples // (batch_size * world_size))


def slot_shards(urls: list[str], seed: int, epoch: int, slot: int, slots: int) -> list[str]:
    """The shards one (rank, worker) slot reads in ``epoch``: a partition when possible."""
    perm = list(urls)
    random.Random(seed * 1_000_003 + epoch).shuffle(perm)  # same on every rank
    mine = perm[slot::slots]
    return mine or [perm[slot % len(perm)]]


def decode_example(sample: dict, segment: int, rng, rate: int, speed: float = 0.0):
    """A crop of ``segment`` samples (zero-padded) from a sample, and its stored noisy twin:
    int16 where the shard stores 16-bit audio (the device makes it float), else float32.
    ``speed`` > 0 plays both up to that share faster or slower (:mod:`diffdenoise.data.speed`);
    ``rng`` draws the speed only then, so a run without it keeps its random stream."""
    if "__bad__" in sample:  # marked by the tar reader
        raise DataError(sample["__bad__"])
    data, noisy_data = audio.member(sample), audio.member(sample, "noisy.")
    if data is None:
        raise DataError(f"sample {sample.get('__key__')} has no flac or wav audio")
    encoded = audio.Encoded(data)
    if encoded.rate != rate:
        key = sample["__key__"]
        raise DataError(f"sample {key} is {encoded.rate} Hz, data.sample_rate is {rate}")
    window, played = (
        speed_module.draw_window(rng, segment, speed) if speed and segment else (segment, 0)
    )
    start = int(rng.integers(0, max(encoded.frames - window, 0) + 1)) if segment else 0
    clean = encoded.read(start, window or -1, keep_int16=True)
    noisy = None
    if noisy_data is not None:
        noisy = audio.Encoded(noisy_data).read(start, window or -1, keep_int16=True)
    if played:
        clean = speed_module.played_at(clean, window, played, segment)
        noisy = None if noisy is None else speed_module.played_at(noisy, window, played, segment)
    if segment and clean.shape[0] < segment:
        clean = np.pad(clean, (0, segment - clean.shape[0]))
        noisy = None if noisy is None else np.pad(noisy, (0, segment - noisy.shape[0]))
    return clean, noisy


def stack(waves) -> torch.Tensor:
    """Crops -> ``(batch, 1, time)``: int16 when every crop is int16, else float32. In a
    loader worker the batch is built in shared memory, as ``default_collate`` builds it,
    so handing it to the training process copies nothing."""
    if any(w.dtype != np.int16 for w in waves):
        waves = [w * np.float32(1 / 32768) if w.dtype == np.int16 else w for w in waves]
    n, length = len(waves), waves[0].shape[0]
    proto = torch.empty(0, dtype=torch.int16 if waves[0].dtype == np.int16 else torch.float32)
    if get_worker_info() is None:
        out = proto.new_empty(n, length)
    else:
        out = proto.new(proto._typed_storage()._new_shared(n * length, device="cpu"))
    np.stack(waves, out=out.view(n, length).numpy())
    return out.view(n, 1, length)


def collate(examples: list[tuple]) -> dict:
    """``(clean, stored noisy or None, plan, key, url)`` examples -> a batch: ``clean``
    ``(batch, 1, time)``, the stored ``noisy`` twins (or None), the noise ``plan``
    tensors, ``t``, ``snr``; :func:`diffdenoise.data.mixing.render` mixes it on the device."""
    clean, stored, plans, keys, urls = zip(*examples)
    noisy = None
    if any(s is not None for s in stored):
        noisy = stack([c if s is None else s for c, s in zip(clean, stored)])
    plan = collate_plans(list(plans))
    return {
        "clean": stack(clean),
        "noisy": noisy,
        "plan": plan,
        "t": torch.tensor([p["t"] for p in plans]),  # int steps, or a bridge's float t
        "snr": plan["snr"],
        "keys": list(keys),
        "urls": list(urls),
    }


class TrainStream(IterableDataset):
    """Shuffled shards cut into exactly ``batches`` full batches per rank and epoch, from
    batch ``skip_batches`` of ``epoch`` on, for ``epochs`` epochs (``None``: forever).

    The batches of an epoch are the same for any start: batch ``j`` of epoch ``e`` is made
    from the shards and seeds of its slot ``j % workers``, whichever worker process makes
    it. A DataLoader takes batches from its workers in turn, so worker ``w`` of ``n`` makes
    the global batches ``start + w + k * n``; within one epoch those are one slot's. The
    workers therefore live across epochs (no restart, no refill stall per epoch) and a
    resume from any batch yields the uninterrupted order.
    """

    def __init__(
        self,
        urls: list[str],
        *,
        segment: int,
        sample_rate: int,
        batch_size: int,
        batches: int,
        mixer: Mixer,
        seed: int,
        rank: int,
        world_size: int,
        epoch: int = 0,
        skip_batches: int = 0,
        shuffle_buffer: int = 256,
        epochs: int | None = 1,
        fetch: remote.FetchPolicy | None = None,
        shard_samples: dict[str, int] | None = None,
    ):
        super().__init__()
        self.urls, self.segment, self.rate, self.batch_size = urls, segment, sample_rate, batch_size
        self.batches, self.mixer, self.seed, self.rank, self.world = (
            batches,
            mixer,
            seed,
            rank,
            world_size,
        )
        self.epoch, self.skip_batches, self.shuffle_buffer = epoch, skip_batches, shuffle_buffer
        self.epochs, self.fetch, self.shard_samples = epochs, fetch, shard_samples

    def __iter__(self):
        if self.fetch is not None:  # a worker process: how to fetch remote shards
            remote.configure(self.fetch)
        info = get_worker_info()
        wid, workers = (info.id, info.num_workers) if info else (0, 1)
        start = self.epoch * self.batches + self.skip_batches  # global index of batch one
        epoch = self.epoch
        while self.epochs is None or epoch < self.epoch + self.epochs:
            slot = (start + wid - epoch * self.batches) % workers  # this epoch's j % workers
            skip = self.skip_batches if epoch == self.epoch else 0
            yield from self._epoch(epoch, slot, workers, skip)
            epoch += 1

    def _epoch(self, epoch: int, wid: int, nw: int, skip: int):
        """Epoch ``epoch``'s batches ``j >= skip`` with ``j % nw == wid``."""
        mine = range(wid, self.batches, nw)
        first = wid + max(0, -(-(skip - wid) // nw)) * nw  # first j >= skip
        todo = range(first, self.batches, nw)  # a range: no list of an epoch's batches
        if not todo:
            return
        skip_samples = (len(mine) - len(todo)) * self.batch_size
        slot, slots = self.rank * nw + wid, self.world * nw
        shards = slot_shards(self.urls, self.seed, epoch, slot, slots)
        seeds = [self.seed, epoch, self.rank, wid]
        order = _crc(seeds, "shards")
        # The shuffle has read at most its buffer more samples than it has given out.
        need = skip_samples + len(todo) * self.batch_size + self.shuffle_buffer + 1
        horizon = read_horizon(shards, order, self.shard_samples, need)
        pipeline = wds.DataPipeline(
            lambda: _cycle(shards, order),
            partial(tarindex.read_shards, give_up_after=len(set(shards)), horizon=horizon),
            wds.shuffle(
                self.shuffle_buffer, initial=self.shuffle_buffer, seed=_crc(seeds, "shuffle")
            ),
        )
        yield from self._batches(iter(pipeline), skip_samples, len(todo), seeds)

    def _batches(self, samples, skip: int, n_batches: int, seeds: list[int]):
        """Batches of the sample stream; where its shards cannot be fetched any more, one
        ``{"fatal": line}`` (an exception here would reach the loop as a traceback)."""
        try:
            yield from self._examples(samples, skip, n_batches, seeds)
        except tarindex.ShardsUnreachable as err:
            yield {"fatal": str(err)}

    def _examples(self, samples, skip: int, n_batches: int, seeds: list[int]):
        examples, bad = [], 0
        for position, sample in enumerate(samples):
            if position < skip:
                continue  # resume: skip without decoding
            rng = np.random.default_rng([*seeds, position])
            try:
                clean, stored_noisy = decode_example(
                    sample, self.segment, rng, self.rate, self.mixer.speed_perturb
                )
            except Exception as err:
                bad += 1
                url, key = sample.get("__url__"), sample.get("__key__")
                warn_once((url, key), f"skipping undecodable sample {key} in {url}: {err}")
                continue
            plan = self.mixer.plan(rng, clean.shape[0], stored_noisy is not None, train=True)
            examples.append((clean, stored_noisy, plan, sample["__key__"], sample["__url__"]))
            if len(examples) == self.batch_size:
                batch = collate(examples)
                batch["bad_samples"] = bad
                batch["shard_retries"] = remote.take_retries()
                yield batch
                examples, bad = [], 0
                n_batches -= 1
                if n_batches == 0:
                    return


def _crc(seeds: list[int], tag: str) -> int:
    return zlib.crc32(f"{seeds}/{tag}".encode())


def read_horizon(shards: list[str], seed: int, counts: dict[str, int] | None,
                 need: int) -> int | None:  # fmt: skip
    """How many of :func:`_cycle`'s shards hold ``need`` samples by the manifest's
    ``counts``: an epoch reads no more unless samples are damaged, so remote shards past
    them are fetched only on demand, not ahead (ahead, each epoch of each loader worker
    fetched up to ``IN_FLIGHT`` shards it then dropped). None where a count is unknown."""
    if not counts or any(url not in counts for url in shards):
        return None
    held = 0
    for n, source in enumerate(_cycle(shards, seed), 1):
        held += max(1, counts[source["url"]])
        if held >= need:
            return n
    return None  # unreachable: the cycle is endless


def _cycle(shards: list[str], seed: int) -> Iterator[dict]:
    """Endless shard source: the slot's list in order first, then reshuffled each round."""
    rng, order = random.Random(seed), list(shards)
    while True:
        for url in order:
            yield {"url": url}
        rng.shuffle(order)


def workers_for(setting: int | str) -> int:
    """``data.num_workers``: a count, or ``auto``: the cores this process may use (its
    affinity, shared among the processes of its node) less one for the training loop."""
    if setting != "auto":
        return int(setting)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, (cores or 1) // max(local, 1) - 1)


def train_loader(dataset: TrainStream, num_workers: int | str, pin_memory=False) -> DataLoader:
    """A DataLoader over a :class:`TrainStream`; do NOT pass it to ``accelerate.prepare``.

    ``pin_memory`` (for a CUDA device) lets :func:`render`'s ``non_blocking`` copies
    overlap the step instead of waiting on a pageable buffer.
    """
    num_workers = workers_for(num_workers)
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(0),  # keep the global RNG untouched for resume
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
    )


def val_batches(
    urls: list[str],
    *,
    segment: int,
    sample_rate: int,
    batch_size: int,
    mixer: Mixer,
    rank: int,
    world_size: int,
    max_samples: int = 0,
    device="cpu",
    bank: NoiseBank | None = None,
    objective=None,
    babble: NoiseBank | None = None,
):
    """Deterministic validation batches for one rank, mixed on ``device``: its round-robin
    share of the set.

    Crop position, noise type, noise and SNR are seeded by the sample key, so the union
    over ranks is the same set of examples for any world size.
    """
    if not urls:
        return
    examples = []
    ordered = tarindex.read_shards(({"url": url} for url in sorted(urls)),
                                   give_up_after=len(urls))  # fmt: skip
    for index, sample in enumerate(ordered):
        if max_samples and index >= max_samples:
            break
        if index % world_size != rank:
            continue
        rng = np.random.default_rng([VAL_SEED, zlib.crc32(sample["__key__"].encode())])
        try:
            clean, stored = decode_example(sample, segment, rng, sample_rate)
        except Exception as err:
            url, key = sample.get("__url__"), sample.get("__key__")
            warn_once((url, key), f"skipping undecodable validation sample {key} in {url}: {err}")
            continue
        plan = mixer.plan(rng, clean.shape[0], stored is not None, train=False)
        examples.append((clean, stored, plan, sample["__key__"], sample["__url__"]))
        if len(examples) == batch_size:
            yield render(collate(examples), device, bank, objective, babble, sample_rate)
            examples = []
    if examples:
        yield render(collate(examples), device, bank, objective, babble, sample_rate)
