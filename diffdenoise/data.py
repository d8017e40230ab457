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

import glob
import json
import random
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from diffdenoise import audio, noise

VAL_SEED = 20240531  # fixed, so validation is the same in every run
AUDIO_EXTS = ("flac", "wav")


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
            m = json.loads(mpath.read_text())
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


def batches_per_epoch(samples: int, batch_size: int, world_size: int) -> int:
    """Full batches each rank yields per epoch: the same number on every rank."""
    return max(1, samples // (batch_size * world_size))


def slot_shards(urls: list[str], seed: int, epoch: int, slot: int, slots: int) -> list[str]:
    """The shards one (rank, worker) slot reads in ``epoch``: a partition when possible."""
    perm = list(urls)
    random.Random(seed * 1_000_003 + epoch).shuffle(perm)  # same on every rank
    mine = perm[slot::slots]
    return mine or [perm[slot % len(perm)]]


class Mixer:
    """Turns a clean crop into ``(noisy, clean, t, snr)`` with noise drawn from ``rng``."""

    def __init__(
        self,
        weights: dict,
        snr_min: float,
        snr_max: float,
        gain_min_db: float,
        gain_max_db: float,
        timestep: str,
        timesteps: int,
        infer_timestep: int,
        bank: NoiseBank | None = None,
        clean_prob: float = 0.0,
        eq_db: float = 0.0,
        second_prob: float = 0.0,
    ):
        self.names = [k for k, w in weights.items() if w > 0]
        if not self.names:
            raise DataError("noise.weights: give at least one noise type a positive weight")
        total = sum(weights[k] for k in self.names)
        self.probs = [weights[k] / total for k in self.names]
        self.snr, self.gain_db = (snr_min, snr_max), (gain_min_db, gain_max_db)
        self.timestep, self.timesteps, self.infer_timestep = timestep, timesteps, infer_timestep
        self.clean_prob, self.eq_db, self.second_prob = clean_prob, eq_db, second_prob
        self.bank = bank

    def __call__(self, clean, rng, noisy=None, train=True):
        """``clean``: ``(time,)`` -> ``(noisy, clean, t, snr)``; snr is inf for clean copies.

        Each augmentation draws from ``rng`` only when it is switched on, so recipes
        without it see exactly the random stream they always saw.
        """
        snr = float("nan")
        if noisy is None and self.clean_prob and rng.random() < self.clean_prob:
            noisy, snr = clean.copy(), float("inf")
        elif noisy is None:
            sound = self.noise(rng, clean.shape[0])
            if self.second_prob and rng.random() < self.second_prob:
                level = 10 ** (rng.uniform(-10.0, 0.0) / 20)
                sound = sound / max(noise.power(sound), 1e-12) ** 0.5
                second = self.noise(rng, clean.shape[0])
                sound = sound + level * second / max(noise.power(second), 1e-12) ** 0.5
            snr = float(rng.uniform(*self.snr))
            noisy = noise.mix_at_snr(clean, sound, snr)
        gain = np.float32(10 ** (rng.uniform(*self.gain_db) / 20))
        if train and self.timestep == "random":
            t = int(rng.integers(0, self.timesteps))
        else:
            t = self.infer_timestep
        return noisy * gain, clean * gain, t, snr

    def noise(self, rng, n: int) -> np.ndarray:
        """``(n,)`` noise of a type drawn by weight, through the random EQ when it is on."""
        kind = self.names[rng.choice(len(self.names), p=self.probs)]
        if kind == "corpus":
            if self.bank is None:
                raise DataError("noise.weights.corpus needs data.noise_shards")
            sound = self.bank.draw(rng, n)
        else:
            sound = noise.GENERATORS[kind](rng, n)
        return noise.random_eq(sound, rng, self.eq_db) if self.eq_db else sound


class NoiseBank:
    """Random noise crops from noise shards.

    Training (``stream=True``): a reservoir of ``size`` encoded clips refilled from an
    endless shuffled stream, so memory stays bounded however large the noise corpus.
    Validation (``stream=False``): the first ``size`` clips in shard order, fixed.
    """

    def __init__(self, urls: list[str], seed: int, size: int = 128, stream: bool = True):
        self.urls, self.seed, self.size = urls, seed, size
        self.source = self._stream() if stream else None
        self.pool = []
        for sample in self.source or _samples(sorted(urls)):
            self.pool.append(sample)
            if len(self.pool) >= size:
                break
        if not self.pool:
            raise DataError(f"{urls[0]}: noise shards hold no readable audio")

    def _stream(self) -> Iterator[bytes]:
        rng = random.Random(self.seed)
        while True:
            order = list(self.urls)
            rng.shuffle(order)
            yield from _samples(order)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        i = int(rng.integers(len(self.pool)))
        data = self.pool[i]
        if self.source is not None:
            self.pool[i] = next(self.source)
        frames = audio.num_frames(data)
        start = int(rng.integers(0, max(frames - n, 0) + 1))
        clip, _ = audio.decode(data, start, n)
        if clip.shape[0] < n:  # loop short noise to fill the crop
            clip = np.resize(clip, n) if clip.size else np.zeros(n, np.float32)
        return clip


def _samples(urls: list[str]) -> Iterator[bytes]:
    """Encoded audio of every readable sample in ``urls``."""
    for sample in wds.DataPipeline(
        wds.SimpleShardList(urls), wds.tarfile_to_samples(handler=warn_once_per_shard)
    ):
        ext = next((e for e in AUDIO_EXTS if e in sample), None)
        if ext:
            yield sample[ext]


def decode_example(sample: dict, segment: int, rng, rate: int):
    """A crop of ``segment`` samples (zero-padded) from a sample, and its stored noisy twin."""
    ext = next((e for e in AUDIO_EXTS if e in sample), None)
    if ext is None:
        raise DataError(f"sample {sample.get('__key__')} has no flac or wav audio")
    data = sample[ext]
    frames = audio.num_frames(data)
    start = int(rng.integers(0, max(frames - segment, 0) + 1)) if segment else 0
    clean, sr = audio.decode(data, start, segment or -1)
    if sr != rate:
        raise DataError(f"sample {sample['__key__']} is {sr} Hz, data.sample_rate is {rate}")
    noisy = None
    if f"noisy.{ext}" in sample:
        noisy, _ = audio.decode(sample[f"noisy.{ext}"], start, segment or -1)
    if segment and clean.shape[0] < segment:
        clean = np.pad(clean, (0, segment - clean.shape[0]))
        noisy = None if noisy is None else np.pad(noisy, (0, segment - noisy.shape[0]))
    return clean, noisy


def collate(examples: list[tuple]) -> dict:
    """List of ``(noisy, clean, t, snr, key, url)`` -> batch of ``(batch, 1, time)`` tensors."""
    noisy, clean, t, snr, keys, urls = zip(*examples)
    return {
        "noisy": torch.from_numpy(np.stack(noisy))[:, None],
        "clean": torch.from_numpy(np.stack(clean))[:, None],
        "t": torch.tensor(t, dtype=torch.long),
        "snr": torch.tensor(snr, dtype=torch.float32),
        "keys": list(keys),
        "urls": list(urls),
    }


class TrainStream(IterableDataset):
    """Endless shuffled shards cut into exactly ``batches`` full batches per rank and epoch."""

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
        noise_urls: list[str] | None = None,
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
        self.noise_urls = noise_urls

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        mine = range(wid, self.batches, nw)  # loader batches j this worker produces
        todo = [j for j in mine if j >= self.skip_batches]
        if not todo:
            return
        skip_samples = (len(mine) - len(todo)) * self.batch_size
        slot, slots = self.rank * nw + wid, self.world * nw
        shards = slot_shards(self.urls, self.seed, self.epoch, slot, slots)
        seeds = [self.seed, self.epoch, self.rank, wid]
        if self.noise_urls:  # each worker streams its own noise, seeded like its data
            self.mixer.bank = NoiseBank(self.noise_urls, _crc(seeds, "noise"))
        pipeline = wds.DataPipeline(
            lambda: _cycle(shards, _crc(seeds, "shards")),
            wds.tarfile_to_samples(handler=warn_once_per_shard),
            wds.shuffle(
                self.shuffle_buffer, initial=self.shuffle_buffer, seed=_crc(seeds, "shuffle")
            ),
        )
        yield from self._batches(iter(pipeline), skip_samples, len(todo), seeds)

    def _batches(self, samples, skip: int, n_batches: int, seeds: list[int]):
        examples, bad = [], 0
        for position, sample in enumerate(samples):
            if position < skip:
                continue  # resume: skip without decoding
            rng = np.random.default_rng([*seeds, position])
            try:
                clean, stored_noisy = decode_example(sample, self.segment, rng, self.rate)
            except Exception as err:
                bad += 1
                url, key = sample.get("__url__"), sample.get("__key__")
                warn_once((url, key), f"skipping undecodable sample {key} in {url}: {err}")
                continue
            noisy, clean, t, snr = self.mixer(clean, rng, stored_noisy, train=True)
            examples.append((noisy, clean, t, snr, sample["__key__"], sample["__url__"]))
            if len(examples) == self.batch_size:
                batch = collate(examples)
                batch["bad_samples"] = bad
                yield batch
                examples, bad = [], 0
                n_batches -= 1
                if n_batches == 0:
                    return


def _crc(seeds: list[int], tag: str) -> int:
    return zlib.crc32(f"{seeds}/{tag}".encode())


def _cycle(shards: list[str], seed: int) -> Iterator[dict]:
    """Endless shard source: the slot's list in order first, then reshuffled each round."""
    rng, order = random.Random(seed), list(shards)
    while True:
        for url in order:
            yield {"url": url}
        rng.shuffle(order)


def train_loader(dataset: TrainStream, num_workers: int) -> DataLoader:
    """A DataLoader over a :class:`TrainStream`; do NOT pass it to ``accelerator.prepare``."""
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
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
):
    """Deterministic validation batches for one rank: its round-robin share of the set.

    Crop position, noise type, noise and SNR are seeded by the sample key, so the union
    over ranks is the same set of examples for any world size.
    """
    if not urls:
        return
    examples = []
    ordered = wds.DataPipeline(
        wds.SimpleShardList(sorted(urls)), wds.tarfile_to_samples(handler=warn_once_per_shard)
    )
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
        noisy, clean, t, snr = mixer(clean, rng, stored, train=False)
        examples.append((noisy, clean, t, snr, sample["__key__"], sample["__url__"]))
        if len(examples) == batch_size:
            yield collate(examples)
            examples = []
    if examples:
        yield collate(examples)
