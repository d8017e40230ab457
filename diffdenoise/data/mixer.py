"""Each training example's noise plan: type, bank position, EQ, loudness envelope, second
noise, SNR, gain, room and timestep, drawn in the loader worker; :mod:`diffdenoise.mixing`
renders it on the device."""

from __future__ import annotations

import copy

import numpy as np
import torch

from diffdenoise.data.mixing import EQ_BANDS, KINDS, SEED_RANGE, SOURCES
from diffdenoise.data.shards import DataError

MODULATION_HZ = (0.5, 8.0)  # envelope rates, log-uniform: slow swells to syllable rate


class Mixer:
    """Draws ``plan(rng, n)``: everything random about one example's noise, as numbers."""

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
        bank_lengths: list[int] | None = None,
        clean_prob: float = 0.0,
        eq_db: float = 0.0,
        second_prob: float = 0.0,
        bridge_t: tuple[float, float] | None = None,
        modulation_prob: float = 0.0,
        modulation_db: float = 20.0,
        sample_rate: int = 16000,
        babble_talkers: int = 5,
        babble_lengths: list[int] | None = None,
        reverb_prob: float = 0.0,
        reverb_rt60_min: float = 0.2,
        reverb_rt60_max: float = 1.0,
        speech_eq_db: float = 0.0,
        speed_perturb: float = 0.0,
    ):
        unknown = sorted(set(weights) - set(KINDS))
        if unknown:
            raise DataError(f"noise.weights: unknown noise type {unknown[0]!r} (use {KINDS})")
        self.names = [k for k, w in weights.items() if w > 0]
        if not self.names:
            raise DataError("noise.weights: give at least one noise type a positive weight")
        total = sum(weights[k] for k in self.names)
        self.probs = [weights[k] / total for k in self.names]
        self.snr, self.gain_db = (snr_min, snr_max), (gain_min_db, gain_max_db)
        self.timestep, self.timesteps, self.infer_timestep = timestep, timesteps, infer_timestep
        self.clean_prob, self.eq_db, self.second_prob = clean_prob, eq_db, second_prob
        self.bank_lengths = bank_lengths
        self.bridge_t = bridge_t  # a bridge objective: t in this range, and a seed for z
        self.modulation_prob, self.modulation_db = modulation_prob, modulation_db
        self.sample_rate = sample_rate
        self.babble_talkers, self.babble_lengths = babble_talkers, babble_lengths
        self.reverb_prob, self.rt60 = reverb_prob, (reverb_rt60_min, reverb_rt60_max)
        self.speech_eq_db = speech_eq_db
        self.speed_perturb = speed_perturb  # read by the loader: it crops the speech

    def plan(self, rng: np.random.Generator, n: int, stored: bool = False, train=True) -> dict:
        """One example's plan for an ``n``-sample crop; ``snr`` is inf for a clean copy.

        Each augmentation draws from ``rng`` only when it is switched on, so recipes
        without it see exactly the random stream they always saw.
        """
        sources = [self._source(rng, n, active=False)] * SOURCES
        snr, level = float("inf"), 0.0
        if stored:
            snr = float("nan")
        elif not (self.clean_prob and rng.random() < self.clean_prob):
            sources[0] = self._source(rng, n)
            if self.second_prob and rng.random() < self.second_prob:
                level = 10 ** (rng.uniform(-10.0, 0.0) / 20)
                sources[1] = self._source(rng, n)
            snr = float(rng.uniform(*self.snr))
        gain_db = float(rng.uniform(*self.gain_db))
        rt60, room_seed = self._room(rng) if not stored else (0.0, 0)
        speech_eq = self._speech_eq(rng) if not stored else np.zeros(EQ_BANDS)
        common = {"sources": sources, "level": level, "snr": snr, "gain_db": gain_db,
                  "stored": stored, "rt60": rt60, "room_seed": room_seed,
                  "speech_eq": speech_eq}  # fmt: skip
        if self.bridge_t is not None:  # validation: t = 1, the one-call estimate
            t = float(rng.uniform(*self.bridge_t)) if train else 1.0
            z_seed = int(rng.integers(SEED_RANGE)) if train else 0
            return {**common, "t": t, "z_seed": z_seed}
        t = int(rng.integers(0, self.timesteps)) if train and self.timestep == "random" else None
        return {**common, "t": self.infer_timestep if t is None else t}

    def _room(self, rng) -> tuple[float, int]:
        """``(RT60 s, seed of its tail)`` of the room the clean speech is heard in, ``(0.0,
        0)`` for none: real speech is recorded in rooms, and a model that only heard dry
        speech takes the reverberant tail for noise."""
        if not (self.reverb_prob and rng.random() < self.reverb_prob):
            return 0.0, 0
        return float(rng.uniform(*self.rt60)), int(rng.integers(SEED_RANGE))

    def _speech_eq(self, rng) -> np.ndarray:
        """Gains (dB) of a smooth random EQ of the clean speech, zeros for none: voices,
        microphones and rooms each colour speech, and a model trained on one corpus's
        colour leans on it (measured: TTS-trained corrections hurt recorded speech)."""
        if not self.speech_eq_db:
            return np.zeros(EQ_BANDS)
        return rng.uniform(-self.speech_eq_db, self.speech_eq_db, EQ_BANDS)

    def _source(self, rng, n: int, active: bool = True) -> tuple:
        """``(kind, seed, clip, start, eq gains, sign, modulation dB, envelope points,
        talker clips, talker starts)`` of one noise source."""
        if not active:
            return (0, 0, 0, 0, np.zeros(EQ_BANDS), 1.0, 0.0, 0, *self._talkers())
        kind = self.names[rng.choice(len(self.names), p=self.probs)]
        seed = int(rng.integers(SEED_RANGE))
        clip = start = 0
        if kind == "corpus":
            if not self.bank_lengths:
                raise DataError("noise.weights.corpus needs data.noise_shards")
            clip = int(rng.integers(len(self.bank_lengths)))
            start = int(rng.integers(0, max(self.bank_lengths[clip] - n, 0) + 1))
        talkers = self._talkers(rng, n) if kind == "babble" else self._talkers()
        eq, sign = np.zeros(EQ_BANDS), 1.0
        if self.eq_db:
            eq = rng.uniform(-self.eq_db, self.eq_db, EQ_BANDS)
            sign = 1.0 if rng.random() < 0.5 else -1.0
        modulation = self._modulation(rng, n)
        return (KINDS.index(kind), seed, clip, start, eq, sign, *modulation, *talkers)

    def _talkers(self, rng=None, n: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Clips and starts of a babble source's talkers in the babble bank (zeros for
        any other source)."""
        if rng is None:
            return (np.zeros(self.babble_talkers, np.int64),) * 2
        if not self.babble_lengths:
            raise DataError("noise.weights.babble needs the babble bank (data.train_shards)")
        clips = rng.integers(len(self.babble_lengths), size=self.babble_talkers)
        room = np.maximum(np.asarray(self.babble_lengths)[clips] - n, 0) + 1
        return clips, (rng.random(self.babble_talkers) * room).astype(np.int64)

    def _modulation(self, rng, n: int) -> tuple[float, int]:
        """``(depth dB, envelope points)`` of a random loudness envelope, ``(0.0, 0)`` for
        none: real noise rises and falls (voices, traffic, machines) where the synthetic
        colours hold still, and a noise estimate that only knows still noise fails there."""
        if not (self.modulation_prob and rng.random() < self.modulation_prob):
            return 0.0, 0
        depth = float(rng.uniform(0.0, self.modulation_db))
        hz = float(np.exp(rng.uniform(np.log(MODULATION_HZ[0]), np.log(MODULATION_HZ[1]))))
        return depth, max(2, round(n / self.sample_rate * hz) + 1)

    def with_bank(self, lengths: list[int]) -> Mixer:
        """A copy that draws ``corpus`` crops from a bank of clips of these lengths."""
        twin = copy.copy(self)
        twin.bank_lengths = list(lengths)
        return twin

    def with_babble(self, lengths: list[int]) -> Mixer:
        """A copy that draws ``babble`` talkers from a bank of speech clips of these
        lengths."""
        twin = copy.copy(self)
        twin.babble_lengths = list(lengths)
        return twin

    @classmethod
    def from_config(cls, config, bridge_t: tuple[float, float] | None = None) -> Mixer:
        """The mixer of a run's ``noise`` keys (``babble_bank_s`` sizes the bank instead)."""
        noise = {k: v for k, v in dict(config.noise).items() if k != "babble_bank_s"}
        noise["weights"] = dict(config.noise.weights)
        return cls(**noise, bridge_t=bridge_t, sample_rate=config.data.sample_rate)


def collate_plans(plans: list[dict]) -> dict[str, torch.Tensor]:
    """Plans of a batch -> tensors (``(batch, SOURCES)`` per source field)."""
    fields = list(zip(*(zip(*p["sources"]) for p in plans)))  # field -> examples -> sources
    kind, seed, clip, start, eq, sign, mod_db, mod_points, talker_clip, talker_start = fields
    bridge = {}
    if "z_seed" in plans[0]:
        bridge = {"z_seed": torch.tensor([p["z_seed"] for p in plans], dtype=torch.long)}
    return {
        **bridge,
        "kind": torch.tensor(kind, dtype=torch.long),
        "seed": torch.tensor(seed, dtype=torch.long),
        "clip": torch.tensor(clip, dtype=torch.long),
        "start": torch.tensor(start, dtype=torch.long),
        "eq": torch.tensor(np.array(eq), dtype=torch.float32),
        "sign": torch.tensor(sign, dtype=torch.float32),
        "mod_db": torch.tensor(mod_db, dtype=torch.float32),
        "mod_points": torch.tensor(mod_points, dtype=torch.long),
        "talker_clip": torch.from_numpy(np.array(talker_clip, dtype=np.int64)),
        "talker_start": torch.from_numpy(np.array(talker_start, dtype=np.int64)),
        "level": torch.tensor([p["level"] for p in plans], dtype=torch.float32),
        "snr": torch.tensor([p["snr"] for p in plans], dtype=torch.float32),
        "gain_db": torch.tensor([p["gain_db"] for p in plans], dtype=torch.float32),
        "stored": torch.tensor([p["stored"] for p in plans], dtype=torch.bool),
        "rt60": torch.tensor([p.get("rt60", 0.0) for p in plans], dtype=torch.float32),
        "room_seed": torch.tensor([p.get("room_seed", 0) for p in plans], dtype=torch.long),
        "speech_eq": torch.tensor(
            np.array([p.get("speech_eq", np.zeros(EQ_BANDS)) for p in plans]), dtype=torch.float32
        ),
    }
