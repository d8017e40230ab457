"""Noise for training examples: the mixer (type, SNR, augmentation, gain, timestep) and
the bank of recorded-noise clips it draws ``corpus`` noise from."""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator

import numpy as np
import webdataset as wds

from diffdenoise import audio, noise
from diffdenoise.shards import DataError, warn_once_per_shard


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

    def with_bank(self, bank: NoiseBank) -> Mixer:
        """A copy drawing ``corpus`` noise from ``bank`` (the original is left as it was)."""
        twin = copy.copy(self)
        twin.bank = bank
        return twin

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
        data = audio.member(sample)
        if data is not None:
            yield data
