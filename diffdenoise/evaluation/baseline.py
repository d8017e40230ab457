"""A classical baseline: a Wiener filter with decision-directed a-priori SNR.

It needs no training, so it shows what a learned model adds. The noise spectrum is the
mean power of the quietest fifth of the frames, which holds for stationary noise with
pauses in the speech: the usual case such a filter is built for.
"""

from __future__ import annotations

import numpy as np
import torch

SMOOTHING = 0.98  # decision-directed weight of the previous frame's estimate
GAIN_FLOOR = 0.1  # -20 dB: deeper suppression turns residual noise into musical tones
QUIET_FRACTION = 0.2


def wiener(noisy: np.ndarray, rate: int) -> np.ndarray:
    """Denoise ``(time,)`` audio; returns ``(time,)`` of the same length."""
    x = torch.as_tensor(np.asarray(noisy, np.float32), dtype=torch.float64)
    n_fft = 2 ** round(np.log2(rate * 0.032))  # 32 ms frames
    hop, window = n_fft // 4, torch.hann_window(n_fft, dtype=torch.float64)
    spec = torch.stft(x, n_fft, hop, window=window, return_complex=True)  # (freq, frames)
    power = spec.abs().square()
    energy = power.sum(0)
    quiet = energy <= torch.quantile(energy, QUIET_FRACTION)
    noise = power[:, quiet].mean(1).clamp_min(1e-12)
    gains = torch.empty_like(power)
    previous = torch.ones_like(noise)  # |G * X|^2 / noise of the frame before
    for t in range(power.shape[1]):
        posterior = power[:, t] / noise
        prior = SMOOTHING * previous + (1 - SMOOTHING) * (posterior - 1).clamp_min(0)
        gain = (prior / (1 + prior)).clamp_min(GAIN_FLOOR)
        gains[:, t] = gain
        previous = gain.square() * posterior
    out = torch.istft(spec * gains, n_fft, hop, window=window, length=x.shape[0])
    return out.float().numpy()
