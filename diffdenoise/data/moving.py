"""Synthetic noise that moves, made on the training device from each source's seed.

The colours (:mod:`diffdenoise.mixing`) hold still, and a model trained on them learns that
noise does: on recorded music and game effects it lost to the Wiener filter it starts from
(bench/README.md, "Recorded speech"). Two kinds stand in for those:

- ``tonal``: music-like. Up to :data:`VOICES` voices, each a sequence of notes (a pitch,
  harmonics falling off at a random slope, a 5 ms attack and an exponential decay cut off
  by the next note, now and then a rest).
- ``bursts``: effect-like. Bursts of noise at random times (shots, impacts, engines
  starting), each with its own level and exponential decay, on silence.

Each row comes from its own seeded generator and draws a fixed number of values for a given
length, so a source depends on its seed alone (exact resume, any batch or world size).
"""

from __future__ import annotations

import math

import torch

VOICES = 3  # the first always plays, the others each with probability VOICE_PROB
VOICE_PROB = 0.5
HARMONICS = 8
F0_HZ = (60.0, 1500.0)  # note pitch, log-uniform
NOTE_S = (0.08, 0.6)  # note length, log-uniform
DECAY_S = (0.05, 1.0)  # note decay time constant, log-uniform
REST_PROB = 0.15
ATTACK_S = 0.005  # a note's rise
BURST_RATE_HZ = (0.5, 8.0)  # bursts per second, log-uniform per source
BURST_DECAY_S = (0.005, 0.3)  # burst decay time constant, log-uniform
BURST_RANGE_DB = 20.0  # bursts' levels spread over this range
BURST_ATTACK_S = 0.001


def _log_uniform(g: torch.Generator, size: int, bounds, device) -> torch.Tensor:
    low, high = math.log(bounds[0]), math.log(bounds[1])
    return torch.exp(low + (high - low) * torch.rand(size, generator=g, device=device))


def tonal(seeds: list[int], length: int, sample_rate: int, device) -> torch.Tensor:
    """``(len(seeds), length)`` music-like notes, one row per seed (not normalised)."""
    return torch.stack([_tonal_row(s, length, sample_rate, device) for s in seeds])


def _tonal_row(seed: int, length: int, rate: int, device) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    notes = math.ceil(length / (NOTE_S[0] * rate)) + 1  # enough to cover the crop
    n = torch.arange(length, device=device)
    out = torch.zeros(length, device=device)
    plays = torch.rand(VOICES, generator=g, device=device) < VOICE_PROB
    for voice in range(VOICES):
        ends = torch.cumsum(_log_uniform(g, notes, NOTE_S, device) * rate, 0)
        f0 = _log_uniform(g, notes, F0_HZ, device)
        decay = _log_uniform(g, notes, DECAY_S, device) * rate
        level = 10 ** (-10 * torch.rand(notes, generator=g, device=device) / 20)
        level = level * (torch.rand(notes, generator=g, device=device) >= REST_PROB)
        slope = 0.5 + 1.5 * torch.rand(1, generator=g, device=device)
        if voice and not plays[voice]:
            continue
        note = torch.searchsorted(ends, n.float(), right=True).clamp_max(notes - 1)
        since = n - torch.cat([ends.new_zeros(1), ends[:-1]])[note]
        envelope = level[note] * torch.exp(-since / decay[note])
        # A note ends where the next begins, at whatever level it has decayed to: the
        # onsets of struck and plucked instruments, broadband for an instant.
        envelope = envelope * (since / (ATTACK_S * rate)).clamp(0, 1)
        # The phase integrates the pitch: no jump in the waveform where the pitch changes.
        phase = torch.cumsum(2 * math.pi * f0[note].double() / rate, 0)
        k = torch.arange(1, HARMONICS + 1, device=device)
        amp = k.float()[:, None] ** -slope * (k[:, None] * f0[note][None] < 0.45 * rate)
        out = out + envelope * (amp * torch.sin(k[:, None] * phase[None]).float()).sum(0)
    return out


def bursts(seeds: list[int], length: int, sample_rate: int, device) -> torch.Tensor:
    """``(len(seeds), length)`` decaying bursts of white noise (not normalised; the
    mixer colours and equalises them like any other source)."""
    return torch.stack([_burst_row(s, length, sample_rate, device) for s in seeds])


def _burst_row(seed: int, length: int, rate: int, device) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    candidates = math.ceil(BURST_RATE_HZ[1] * length / rate) + 1
    keep = _log_uniform(g, 1, BURST_RATE_HZ, device) / BURST_RATE_HZ[1]
    lead = BURST_DECAY_S[1] * rate  # a burst may start before the crop and ring into it
    start = -lead + (length + lead) * torch.rand(candidates, generator=g, device=device)
    start[0] = start[0].clamp_min(0)  # never a silent source: the first is kept, in the crop
    decay = _log_uniform(g, candidates, BURST_DECAY_S, device) * rate
    level_db = -BURST_RANGE_DB * torch.rand(candidates, generator=g, device=device)
    kept = torch.rand(candidates, generator=g, device=device) < keep
    kept[0] = True
    carrier = torch.randn(length, generator=g, device=device)
    since = torch.arange(length, device=device)[None] - start[kept, None]
    shape = torch.exp(-since.clamp_min(0) / decay[kept, None])
    shape = shape * (since / (BURST_ATTACK_S * rate)).clamp(0, 1)
    envelope = (10 ** (level_db[kept, None] / 20) * shape).sum(0)
    return carrier * envelope
