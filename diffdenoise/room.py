"""Synthetic room reverberation, to test a denoiser on speech recorded in a room.

Real recordings carry a room's reverberation; TTS and studio speech do not. The evaluation
reverberates the clean reference itself (``evaluate --reverb RT60``) and scores against
the reverberant clean, as the DNS Challenge's reverberant test set does: the denoiser is
asked to remove the noise and keep the room, and one that mistakes the decaying tail for
noise loses SI-SDR for it.

The impulse response is the usual statistical one: a direct path, then from
``GAP_S`` on a Gaussian tail whose energy decays 60 dB in ``rt60`` seconds (Polack's
model), scaled to a fixed direct-to-reverberant ratio.
"""

from __future__ import annotations

import numpy as np

DRR_DB = 3.0  # direct-to-reverberant energy ratio: a talker about a metre from the mic
GAP_S = 0.0025  # the first reflection arrives this long after the direct sound
DECAY_DB = 60.0  # what RT60 means
LENGTH_RT60 = 1.2  # the tail is cut 72 dB down


def impulse_response(rng: np.random.Generator, rate: int, rt60: float) -> np.ndarray:
    """A ``(taps,)`` float32 room impulse response with reverberation time ``rt60`` s."""
    if not rt60 > 0:
        raise ValueError(f"rt60 must be positive, got {rt60}")
    gap = max(1, round(GAP_S * rate))
    t = np.arange(max(1, round(LENGTH_RT60 * rt60 * rate))) / rate
    amplitude_decay = DECAY_DB / 20 * np.log(10) / rt60  # nepers per second
    tail = rng.standard_normal(len(t)) * np.exp(-amplitude_decay * t)
    tail *= np.sqrt(10 ** (-DRR_DB / 10) / np.sum(tail**2))  # direct path energy is 1
    return np.concatenate([[1.0], np.zeros(gap - 1), tail]).astype(np.float32)


def reverberate(clean: np.ndarray, response: np.ndarray) -> np.ndarray:
    """``clean`` convolved with ``response``, cut to its length, at its RMS level."""
    n = len(clean) + len(response) - 1
    size = 1 << max(0, n - 1).bit_length()  # a power of two: numpy's FFT is fastest there
    wet = np.fft.irfft(np.fft.rfft(clean, size) * np.fft.rfft(response, size), size)
    wet = wet[: len(clean)]
    wet_rms = np.sqrt(np.mean(np.square(wet))) if len(wet) else 0.0
    dry_rms = np.sqrt(np.mean(np.square(clean, dtype=np.float64))) if len(clean) else 0.0
    return (wet * (dry_rms / wet_rms if wet_rms > 0 else 1.0)).astype(np.float32)
