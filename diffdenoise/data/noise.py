"""Noise generators and mixing at a controlled SNR.

Generators take a numpy ``Generator`` and a length and return float32 ``(time,)`` noise
with unit RMS. Coloured noise is shaped in the frequency domain, which keeps the hot path
vectorised.
"""

from __future__ import annotations

import numpy as np

# Clean power below this (about -80 dBFS) counts as silence: the SNR is then taken
# against this floor, so silent crops get quiet noise instead of NaN or inf.
SILENCE_POWER = 1e-8


def _unit_rms(x: np.ndarray) -> np.ndarray:
    return (x / max(float(np.sqrt(np.mean(x * x))), 1e-12)).astype(np.float32)


def gaussian(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal(n, dtype=np.float32)


def _coloured(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """White noise with its power spectrum shaped as ``1 / f**exponent``."""
    spec = np.fft.rfft(rng.standard_normal(max(n, 2)))
    freqs = np.arange(spec.shape[0], dtype=np.float64)
    freqs[0] = 1.0
    spec *= freqs ** (-exponent / 2)
    spec[0] = 0.0  # no DC offset
    return _unit_rms(np.fft.irfft(spec, max(n, 2))[:n])


def pink(rng: np.random.Generator, n: int) -> np.ndarray:
    return _coloured(rng, n, 1.0)


def brown(rng: np.random.Generator, n: int) -> np.ndarray:
    return _coloured(rng, n, 2.0)


GENERATORS = {"gaussian": gaussian, "pink": pink, "brown": brown}


def power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64))) if x.size else 0.0


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Return ``clean + g * noise`` with ``10 log10(P_clean / P_g*noise) == snr_db``.

    A silent ``clean`` uses :data:`SILENCE_POWER` as its power; silent noise adds nothing.
    """
    p_clean = max(power(clean), SILENCE_POWER)
    p_noise = power(noise)
    if p_noise <= 0.0:
        return clean.astype(np.float32, copy=True)
    gain = np.sqrt(p_clean / (p_noise * 10.0 ** (snr_db / 10.0)))
    return (clean + gain * noise).astype(np.float32)


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    """Measured SNR of ``noisy`` against ``clean`` in dB."""
    return 10.0 * np.log10(max(power(clean), 1e-20) / max(power(noisy - clean), 1e-20))
