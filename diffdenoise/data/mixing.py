"""Noise mixed on the training device, a whole batch in one step.

Loader workers only read and crop clean audio and draw each example's *plan*: a few
numbers saying which noise, where in the noise bank, which EQ, which SNR and gain (see
:meth:`diffdenoise.data.mixer.Mixer.plan`). This module turns a batch of plans into noisy audio
on the device the model trains on (a GPU; the CPU in tests): white noise from per-example
seeded generators, colour and EQ as one batched FFT, recorded noise sliced out of a
resident bank, an optional loudness envelope, an optional room around the clean speech
(:mod:`diffdenoise.room`), then the mix at each example's SNR. Seeded
plans keep exact resume, and a plan depends on its example alone, so validation is the
same for any world size.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

import numpy as np
import torch

from diffdenoise.data import audio, moving, room, tarindex
from diffdenoise.data.noise import SILENCE_POWER
from diffdenoise.data.shards import DataError

KINDS = ("gaussian", "pink", "brown", "corpus", "babble", "tonal", "bursts")
EXPONENTS = torch.tensor([0.0, 1.0, 2.0, 0.0, 0.0, 0.0, 1.0])  # power ~ 1 / f**exponent
CORPUS, BABBLE = KINDS.index("corpus"), KINDS.index("babble")
COLOURS = torch.tensor([KINDS.index(k) for k in ("gaussian", "pink", "brown")])
MOVING = {KINDS.index("tonal"): moving.tonal, KINDS.index("bursts"): moving.bursts}
SOURCES = 2  # a primary noise and an optional second one
EQ_BANDS = 8  # random EQ: independent gains at this many log-spaced points, interpolated
SEED_RANGE = 2**62  # per-source generator seeds (an envelope's: its source's + 1)


def mix_batch(clean, noise, snr_db, gain_db):
    """``clean + g * noise`` with ``g`` set for each example's SNR, then its gain.

    Args:
        clean, noise: ``(batch, time)``.
        snr_db: ``(batch,)``; ``inf`` leaves the example clean.
        gain_db: ``(batch,)``, applied to clean and noisy alike.
    Returns:
        ``(noisy, clean)``, each ``(batch, time)``.
    """
    p_clean = clean.square().mean(-1).clamp_min(SILENCE_POWER)
    p_noise = noise.square().mean(-1)
    scale = torch.sqrt(p_clean / (p_noise.clamp_min(1e-20) * 10 ** (snr_db / 10)))
    scale = torch.where(torch.isfinite(snr_db) & (p_noise > 0), scale, torch.zeros_like(scale))
    gain = (10 ** (gain_db / 20))[:, None]
    return (clean + scale[:, None] * noise) * gain, clean * gain


@cache
def _eq_weights(bins: int, device: str) -> torch.Tensor:
    """``(bins, EQ_BANDS)`` weights that interpolate band gains (dB) linearly in log
    frequency: recorded noise comes in every colour, and a smooth random EQ keeps a model
    from learning the few spectra of its noise corpus by heart."""
    points = np.log(np.linspace(1.0, bins, EQ_BANDS))
    eye = np.eye(EQ_BANDS)
    where = np.log(np.arange(1, bins + 1))
    weights = np.stack([np.interp(where, points, e) for e in eye], 1)
    return torch.from_numpy(weights).float().to(device)


class NoiseBank:
    """Every clip of a noise corpus, decoded once into one int16 tensor (on the training
    device when given one), so a crop is a slice, not a decode."""

    def __init__(self, clips: list[np.ndarray], device="cpu"):
        if not clips:
            raise DataError("noise shards hold no readable audio")
        self.lengths = [int(c.shape[0]) for c in clips]
        pcm = np.concatenate([np.clip(c, -1, 1 - 1 / 32768) for c in clips]) * 32768
        self.offsets = torch.tensor(np.cumsum([0, *self.lengths[:-1]]), device=device)
        self.sizes = torch.tensor(self.lengths, device=device)
        self.pcm = torch.from_numpy(np.round(pcm).astype(np.int16)).to(device)

    @classmethod
    def from_urls(cls, urls: list[str], device="cpu", max_seconds: float = 0.0) -> NoiseBank:
        """The whole corpus (or its first ``max_seconds``), in shard order: the same bank
        on every rank."""
        clips, seconds = [], 0.0
        for data in encoded_clips(sorted(urls)):
            clip, rate = audio.decode(data)
            clips.append(clip)
            seconds += clip.shape[0] / rate
            if max_seconds and seconds >= max_seconds:
                break
        return cls(clips, device)

    def crop(self, clip: torch.Tensor, start: torch.Tensor, length: int) -> torch.Tensor:
        """``(n,)`` clip indices and starts -> ``(n, length)`` float audio; short clips loop."""
        clip, start = clip.to(self.pcm.device), start.to(self.pcm.device)
        step = torch.arange(length, device=self.pcm.device)
        index = self.offsets[clip, None] + (start[:, None] + step) % self.sizes[clip, None]
        return self.pcm[index].float() / 32768


def synthesize(
    plan: dict, length: int, device, bank=None, babble=None, sample_rate: int | None = None
) -> torch.Tensor:
    """The noise of a batch of plans: ``(batch, length)``.

    Each example sums up to :data:`SOURCES` sources, each white noise (coloured by its
    kind), notes or bursts (:mod:`diffdenoise.moving`, which need ``sample_rate``), a crop
    of the noise ``bank`` or talkers from the ``babble`` bank (both :class:`NoiseBank`),
    through its EQ and polarity, at unit power; the second source is weighted by
    ``plan["level"]`` (0: none).
    """
    # Which rows to make is decided from the plan on the host, where the loader left it:
    # choosing them from device tensors would stall on every batch.
    kinds = plan["kind"].cpu().flatten()
    active = torch.stack([torch.isfinite(plan["snr"].cpu()), plan["level"].cpu() > 0], 1)
    rows = active.flatten().nonzero()[:, 0]
    corpus, talking = rows[kinds[rows] == CORPUS], rows[kinds[rows] == BABBLE]
    batch = plan["kind"].shape[0]
    waves = torch.zeros(batch * SOURCES, length, device=device)
    seeds = plan["seed"].cpu().flatten().tolist()
    white = rows[torch.isin(kinds[rows], COLOURS)]
    if len(white):
        waves[white.tolist()] = seeded_normal([seeds[r] for r in white.tolist()], length, device)
    for kind, make in MOVING.items():
        made = rows[kinds[rows] == kind].tolist()
        if made and sample_rate is None:
            raise DataError(f"noise.weights.{KINDS[kind]}: synthesize() needs the sample rate")
        if made:
            waves[made] = make([seeds[r] for r in made], length, sample_rate, device)
    if len(corpus):
        if bank is None:
            raise DataError("noise.weights.corpus needs data.noise_shards")
        waves[corpus.to(device)] = bank.crop(
            plan["clip"].cpu().flatten()[corpus], plan["start"].cpu().flatten()[corpus], length
        ).to(device)
    if len(talking):
        if babble is None:
            raise DataError("noise.weights.babble needs the babble bank (data.train_shards)")
        clips, starts = (
            plan[k].cpu().flatten(0, 1)[talking] for k in ("talker_clip", "talker_start")
        )
        waves[talking.to(device)] = babble_of(babble, clips, starts, length).to(device)
    flat_kind = kinds.to(device)
    level = plan["level"].to(device)
    spec = torch.fft.rfft(waves)
    bins = spec.shape[-1]
    freq = torch.arange(bins, device=device, dtype=torch.float32).clamp_min(1.0)
    exponent = EXPONENTS.to(device)[flat_kind]
    colour = freq[None] ** (-exponent[:, None] / 2)
    colour[:, 0] = torch.where(exponent > 0, 0.0, 1.0)  # coloured noise has no DC
    eq_db = plan["eq"].to(device).reshape(batch * SOURCES, EQ_BANDS)
    eq = 10 ** (eq_db @ _eq_weights(bins, str(device)).T / 20)
    sign = plan["sign"].to(device).flatten()[:, None]
    waves = torch.fft.irfft(spec * colour * eq * sign, length)
    waves = waves * envelopes(plan, seeds, length, device)
    waves = waves / waves.square().mean(-1, keepdim=True).clamp_min(1e-20).sqrt()
    waves = waves.view(batch, SOURCES, length)
    return waves[:, 0] + level[:, None] * waves[:, 1]


def babble_of(bank: NoiseBank, clips, starts, length: int) -> torch.Tensor:
    """``(n, talkers)`` clips and starts in ``bank`` -> ``(n, length)``: the talkers,
    each at unit power (a pause stays a pause), summed."""
    talkers = bank.crop(clips.flatten(), starts.flatten(), length).view(*clips.shape, length)
    power = talkers.square().mean(-1, keepdim=True).clamp_min(1e-20)
    return (talkers / power.sqrt()).sum(1)


def envelopes(plan: dict, seeds: list[int], length: int, device) -> torch.Tensor | float:
    """Each source's loudness over time, ``(batch * SOURCES, length)``, or 1.0 when no
    source is modulated: ``plan["mod_points"]`` seeded normal points, squashed into
    +-``mod_db / 2`` dB and joined by straight lines (in dB) across the crop."""
    depth = plan.get("mod_db")
    if depth is None or not bool((depth > 0).any()):  # decided on the host, like the rows
        return 1.0
    points = plan["mod_points"].flatten()
    rows = (depth.flatten() > 0).nonzero()[:, 0]
    control = seeded_normal([(seeds[r] + 1) % SEED_RANGE for r in rows.tolist()],
                            int(points.max()), device)  # fmt: skip
    where = torch.linspace(0, 1, length, device=device)[None] * (points[rows, None] - 1).to(device)
    low = where.floor().long().clamp_max(control.shape[1] - 2)
    frac = where - low
    curve = torch.tanh(control).gather(1, low) * (1 - frac)
    curve = curve + torch.tanh(control).gather(1, low + 1) * frac
    env_db = depth.flatten()[rows, None].to(device) / 2 * curve
    out = torch.ones(points.shape[0], length, device=device)
    out[rows.to(device)] = 10 ** (env_db / 20)
    return out


def seeded_normal(seeds: list[int], length: int, device) -> torch.Tensor:
    """``(len(seeds), length)`` N(0, 1) rows, each from its own seeded generator."""
    rows = []
    for seed in seeds:
        g = torch.Generator(device=device).manual_seed(seed)
        rows.append(torch.randn(length, generator=g, device=device))
    return torch.stack(rows)


def reverberated(clean: torch.Tensor, plan: dict, sample_rate: int | None) -> torch.Tensor:
    """``(batch, time)`` clean speech with each planned room (``plan["rt60"]`` > 0) around
    it, from its seeded tail; the rest as it was. Rows are chosen on the host."""
    rt60 = plan["rt60"].cpu() if "rt60" in plan else torch.zeros(0)
    rows = (rt60 > 0).nonzero()[:, 0]
    if not len(rows):
        return clean
    if sample_rate is None:
        raise DataError("noise.reverb_prob: render() needs the sample rate to build rooms")
    seeds, lengths = plan["room_seed"].cpu()[rows].tolist(), rt60[rows].tolist()
    # Each row draws its own length: a generator's first n draws change with how many are
    # asked for, and a room must not depend on the rooms batched with it.
    taps = [room.taps(sample_rate, seconds) for seconds in lengths]
    normal = torch.zeros(len(rows), max(taps), device=clean.device)
    for k, (seed, count) in enumerate(zip(seeds, taps)):
        normal[k, :count] = seeded_normal([seed], count, clean.device)[0]
    responses = room.impulse_responses(normal, rt60[rows].to(clean.device), sample_rate)
    index = rows.to(clean.device)
    return clean.index_copy(0, index, room.reverberate(clean[index], responses))


def equalized(clean: torch.Tensor, plan: dict) -> torch.Tensor:
    """``(batch, time)`` clean speech through each example's smooth EQ
    (``plan["speech_eq"]``, dB at :data:`EQ_BANDS` log-spaced points), level kept; rows
    without one (all-zero gains) come back as they were. Rows are chosen on the host."""
    gains = plan.get("speech_eq")
    rows = (gains.cpu() != 0).any(1).nonzero()[:, 0] if gains is not None else []
    if not len(rows):
        return clean
    index = rows.to(clean.device)
    picked = clean[index]
    spec = torch.fft.rfft(picked)
    curve = 10 ** (
        gains.to(clean.device)[index] @ _eq_weights(spec.shape[-1], str(clean.device)).T / 20
    )
    shaped = torch.fft.irfft(spec * curve, picked.shape[-1])
    level = picked.square().mean(-1, keepdim=True) / shaped.square().mean(
        -1, keepdim=True
    ).clamp_min(1e-20)
    return clean.index_copy(0, index, shaped * level.sqrt())


def render(
    batch: dict, device, bank=None, objective=None, babble=None, sample_rate: int | None = None
) -> dict:
    """A loader batch of clean crops and plans -> the same batch with ``noisy``, ``clean``
    and ``t`` on ``device`` (``(batch, 1, time)``; ``t``: ``(batch,)``).

    Examples with a stored noisy twin (paired shards) keep it; the rest are mixed here.
    ``bank`` and ``babble``: the :class:`NoiseBank` of ``corpus`` and ``babble`` sources.
    Planned rooms reverberate the clean speech first (it stays the target, room and all).
    A bridge ``objective`` adds ``state``, the ``x_t`` between clean and noisy at each
    example's ``t``, with its seeded ``z``.
    """
    clean = as_float(batch["clean"].to(device, non_blocking=True)[:, 0])
    plan = batch["plan"]
    clean = equalized(reverberated(clean, plan, sample_rate), plan)
    snr, gain = plan["snr"].to(device), plan["gain_db"].to(device)
    noise = synthesize(plan, clean.shape[-1], device, bank, babble, sample_rate)
    noisy, clean_out = mix_batch(clean, noise, snr, gain)
    if batch.get("noisy") is not None:
        stored = plan["stored"].to(device)[:, None]
        twin = as_float(batch["noisy"].to(device, non_blocking=True)[:, 0])
        twin = twin * (10 ** (gain / 20))[:, None]
        noisy = torch.where(stored, twin, noisy)
    t = batch["t"].to(device, non_blocking=True)
    out = {**batch, "noisy": noisy[:, None], "clean": clean_out[:, None], "t": t}
    if getattr(objective, "conditioned", False):
        z = seeded_normal(plan["z_seed"].tolist(), clean.shape[-1], device)[:, None]
        out["state"] = objective.corrupt(out["clean"], out["noisy"], t, z)
    return out


def as_float(wave: torch.Tensor) -> torch.Tensor:
    """Loader audio (int16 for 16-bit shards, else float) -> float32 in [-1, 1)."""
    return wave.float() / 32768 if wave.dtype == torch.int16 else wave


def encoded_clips(urls: list[str]) -> Iterator[bytes]:
    """Encoded audio of every readable sample in ``urls``, in order."""
    sources = ({"url": url} for url in urls)
    for sample in tarindex.read_shards(sources, give_up_after=len(urls)):
        data = audio.member(sample)
        if data is not None:
            yield data
