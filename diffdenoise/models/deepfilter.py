"""Deep filtering: a complex filter over a bin's past frames, added to the spectral gain.

A gain per bin keeps the noisy phase. On the recorded dev speech the default's own gains
put on the clean phase score 2.1 to 2.6 dB SI-SDR higher at every input SNR
(docs/experiments.md, 2026-12-07): the phase is where the headroom is. A complex filter
over a bin's last few frames (DeepFilterNet's deep filtering) can take some of it back: a
voiced harmonic turns by a steady angle from one frame to the next, so its past frames,
turned into line, add to it in phase, where noise adds at random.

The coefficients come from 2-D convolutions over (freq, frames), shared by every bin: the
filter reads each past frame's phase relative to the current one after taking out the
turn of the bin's centre frequency over the hop, so the same rule holds at every
frequency. Only bins below :data:`MAX_HZ` are filtered, where voiced harmonics lie. The
last layer starts at zero: an untrained filter adds nothing, and the model starts as the
plain gain does.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

MAX_HZ = 5000.0  # DeepFilterNet filters up to about 5 kHz as well
CHANNELS = 8  # width of the shared convolutions


def aligned_past(spec: torch.Tensor, taps: int, hop: int, n_fft: int) -> list[torch.Tensor]:
    """The ``taps`` previous frames of each bin, turned by the bin's centre frequency over
    ``k`` hops so that a tone at the centre lines up with the current frame.

    Args:
        spec: complex ``(batch, freq, frames)`` spectrum (the lowest ``freq`` bins).
    Returns:
        ``taps`` complex ``(batch, freq, frames)`` tensors, frame ``t`` holding frame
        ``t - k`` (zeros before the first frame), for ``k = 1 .. taps``.
    """
    bins = torch.arange(spec.shape[1], device=spec.device, dtype=torch.float32)
    turn = 2 * math.pi * hop / n_fft * bins[:, None]  # (freq, 1): radians per hop
    past = []
    for k in range(1, taps + 1):
        shifted = F.pad(spec, (k, 0))[..., : spec.shape[-1]]
        past.append(shifted * torch.polar(torch.ones_like(turn), k * turn))
    return past


def relative_phase(spec: torch.Tensor, past: list[torch.Tensor]) -> torch.Tensor:
    """Each aligned past frame's phase against the current frame's, as unit vectors:
    ``(batch, 2 * taps, freq, frames)`` real features (cosine and sine per tap)."""
    parts = []
    for frame in past:
        product = frame * spec.conj()
        unit = product / (product.abs() + 1e-8)
        parts += [unit.real, unit.imag]
    return torch.stack(parts, 1)


class DeepFilter(nn.Module):
    """Complex coefficients for ``taps`` past frames per bin below :data:`MAX_HZ`.

    ``forward(spec, gain, feats)`` returns the filter's addition to the gained spectrum,
    complex ``(batch, freq, frames)`` over all bins (zero above the filtered ones): per
    bin ``gain * sum_k c_k * Y[t - k]`` (aligned), with each coefficient's real and
    imaginary parts in ``(-1, 1)``.
    """

    def __init__(self, features: int, taps: int, sample_rate: int, n_fft: int, hop: int):
        super().__init__()
        self.taps, self.n_fft, self.hop = taps, n_fft, hop
        self.low_bins = min(n_fft // 2 + 1, math.ceil(MAX_HZ * n_fft / sample_rate) + 1)
        inputs = features + 1 + 2 * taps  # the model's features, its gain, the phases
        self.net = nn.Sequential(
            nn.Conv2d(inputs, CHANNELS, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(CHANNELS, CHANNELS, 3, padding=(1, 2), dilation=(1, 2)),
            nn.LeakyReLU(0.2),
            nn.Conv2d(CHANNELS, 2 * taps, 1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, spec: torch.Tensor, gain: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """``spec``: complex ``(batch, freq, frames)``; ``gain``: ``(batch, freq, frames)``;
        ``feats``: the model's per-bin features ``(batch, features, freq, frames)``."""
        low = self.low_bins
        spec_low, gain_low = spec[:, :low], gain[:, :low]
        past = aligned_past(spec_low, self.taps, self.hop, self.n_fft)
        inputs = torch.cat(
            [feats[:, :, :low], gain_low[:, None], relative_phase(spec_low, past)], 1
        )
        # (batch, 2 * taps, low, frames); in fp32, as complex tensors have no bf16 form
        coeffs = torch.tanh(self.net(inputs)).float()
        added = sum(
            torch.complex(coeffs[:, 2 * k], coeffs[:, 2 * k + 1]) * frame
            for k, frame in enumerate(past)
        )
        added = gain_low * added
        return F.pad(added, (0, 0, 0, spec.shape[1] - low))
