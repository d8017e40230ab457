"""Synthetic room reverberation: speech as a microphone in a room hears it.

Real recordings carry a room's reverberation; TTS and studio speech do not. Both uses here
reverberate the clean speech itself and keep the reverberant clean as the reference, as
the DNS Challenge's reverberant sets do: a denoiser should remove the noise and keep the
room, and one that mistakes the decaying tail for noise loses SI-SDR and PESQ for it.
``evaluate --reverb RT60`` scores a checkpoint that way; ``noise.reverb_prob`` trains on it.

The impulse response is the usual statistical one (Polack's model): a direct path, then
from ``GAP_S`` on a Gaussian tail whose energy decays 60 dB in ``rt60`` seconds, scaled
to a fixed direct-to-reverberant ratio. Batched torch, so it runs on the training device.
"""

from __future__ import annotations

import math

import torch

from diffdenoise.config.schema import RT60_RANGE  # noqa: F401 (the valid RT60s, here too)

DRR_DB = 3.0  # direct-to-reverberant energy ratio: a talker about a metre from the mic
GAP_S = 0.0025  # the first reflection arrives this long after the direct sound
DECAY_DB = 60.0  # what RT60 means
LENGTH_RT60 = 1.2  # each tail is cut 72 dB down


def taps(rate: int, rt60: float) -> int:
    """Length of the impulse response of a room with this RT60."""
    return max(1, round(GAP_S * rate)) + max(1, round(LENGTH_RT60 * rt60 * rate))


def impulse_responses(normal: torch.Tensor, rt60: torch.Tensor, rate: int) -> torch.Tensor:
    """``(n, taps)`` room impulse responses from ``(n, taps)`` N(0, 1) draws and ``(n,)``
    RT60s in seconds (each row zero past its own :func:`taps`)."""
    if not bool((rt60 > 0).all()):
        raise ValueError(f"rt60 must be positive, got {rt60.min().item():g}")
    gap = max(1, round(GAP_S * rate))
    t = torch.arange(normal.shape[1] - gap, device=normal.device) / rate
    nepers = DECAY_DB / 20 * math.log(10) / rt60[:, None]  # amplitude decay per second
    lengths = torch.round(LENGTH_RT60 * rt60 * rate).clamp_min(1)[:, None]
    inside = torch.arange(len(t), device=normal.device)[None] < lengths
    tail = normal[:, gap:] * torch.exp(-nepers * t) * inside
    tail = tail * torch.sqrt(10 ** (-DRR_DB / 10) / tail.square().sum(1, keepdim=True))
    direct = torch.zeros(len(rt60), gap, device=normal.device)
    direct[:, 0] = 1.0  # direct path energy is 1
    return torch.cat([direct, tail], 1)


def reverberate(clean: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
    """``(n, time)`` convolved with ``(n, taps)``, cut to ``time``, each row at its dry
    RMS level (so SNR and gain mean what they meant)."""
    length = clean.shape[1]
    # Taps past `time` cannot reach the kept output; and an FFT size set by `time` alone
    # gives every row the same result whatever responses share its batch.
    responses = responses[:, :length]
    size = 1 << max(0, 2 * length - 2).bit_length()  # a power of two >= 2 * time - 1
    spec = torch.fft.rfft(clean.float(), size) * torch.fft.rfft(responses.float(), size)
    wet = torch.fft.irfft(spec, size)[:, :length]
    wet_rms = wet.square().mean(1, keepdim=True).sqrt()
    dry_rms = clean.float().square().mean(1, keepdim=True).sqrt()
    return wet * torch.where(wet_rms > 0, dry_rms / wet_rms.clamp_min(1e-20), 1.0)
