"""Training losses: STFT magnitude + phase, its multi-resolution form, and waveform L1.

Every loss returns ``(total, parts)`` where ``parts`` maps a component name to a scalar
tensor, so the trainer can log each component separately.
"""

from __future__ import annotations

import functools
import operator

import torch
from torch import nn
from torch.nn import functional as F

# Power floor: keeps sqrt/log gradients finite at digital silence.
POWER_EPS = 1e-12
LOG_MAG_FLOOR = 1e-5
SISDR_MAX_DB = 30.0
# Power-law compression of the compressed-spectrum term, and its complex share (Braun &
# Tashev 2021, "A consolidated view of loss functions for supervised deep learning-based
# speech enhancement": c = 0.3, alpha = 0.3).
COMPRESS_POWER = 0.3
COMPLEX_SHARE = 0.3


def add_all(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Their sum, without the extra launch of adding the first to a Python zero."""
    return functools.reduce(operator.add, tensors)


def weighted(weight: float, term: torch.Tensor) -> torch.Tensor:
    """``weight * term``, without the launch (and its backward's) of multiplying by 1."""
    return term if weight == 1 else weight * term


class STFT(nn.Module):
    """Differentiable STFT of waveforms.

    Inputs shorter than ``n_fft`` are fine: frames are centred with zero padding, so every
    length >= 1 gives at least one frame.
    """

    def __init__(self, n_fft: int, hop: int, win_length: int | None = None):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.win_length = win_length or n_fft
        if self.win_length > n_fft or hop < 1:
            raise ValueError(f"bad STFT resolution n_fft={n_fft} hop={hop} win={win_length}")
        self.register_buffer("window", torch.hann_window(self.win_length), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, 1, time)`` or ``(batch, time)`` -> complex ``(batch, freq, frames)``."""
        x = x.reshape(-1, x.shape[-1]).float()
        return torch.stft(
            x,
            self.n_fft,
            self.hop,
            self.win_length,
            self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )


class STFTLoss(nn.Module):
    """Spectral convergence + log-magnitude L1 + magnitude-weighted phase consistency
    + power-law compressed spectra.

    The phase term is ``sum(|X||Y| (1 - cos(dphi))) / sum(|X||Y|)``: zero when the phases
    match, and weighted by magnitude so phase in near-silent bins does not dominate.
    """

    def __init__(
        self,
        n_fft=1024,
        hop=256,
        win_length=None,
        sc_weight=1.0,
        mag_weight=1.0,
        phase_weight=1.0,
        compressed_weight=0.0,
        compress_power=COMPRESS_POWER,
    ):
        super().__init__()
        self.stft = STFT(n_fft, hop, win_length)
        self.sc_weight, self.mag_weight, self.phase_weight = sc_weight, mag_weight, phase_weight
        self.compressed_weight, self.compress_power = compressed_weight, compress_power

    def forward(self, estimate: torch.Tensor, target: torch.Tensor):
        """Returns ``(total, parts)``; a term whose weight is 0 is neither computed (its
        launches cost GPU time for nothing) nor reported."""
        X, Y = self.stft(estimate), self.stft(target)
        # Views, as .real and .imag are, but their gradients meet in one stack backward,
        # where each use of .real or .imag zero-fills a complex gradient and copies into it.
        xr, xi = torch.view_as_real(X).unbind(-1)
        yr, yi = torch.view_as_real(Y).unbind(-1)
        px, py = xr.square() + xi.square(), yr.square() + yi.square()
        mx, my = torch.sqrt(px + POWER_EPS), torch.sqrt(py + POWER_EPS)
        parts = {}
        if self.sc_weight:
            parts["sc"] = torch.linalg.vector_norm(my - mx) / torch.linalg.vector_norm(
                my
            ).clamp_min(1e-6)
        if self.mag_weight:
            parts["mag"] = F.l1_loss(
                torch.log(mx.clamp_min(LOG_MAG_FLOOR)), torch.log(my.clamp_min(LOG_MAG_FLOOR))
            )
        if self.phase_weight or self.compressed_weight:
            weight = mx * my
            gap = weight - (xr * yr + xi * yi)  # |X||Y| (1 - cos(dphi))
        if self.phase_weight:
            parts["phase"] = gap.sum() / weight.sum().clamp_min(1e-6)
        if self.compressed_weight:
            parts["compressed"] = compressed_error(mx, my, weight, gap, py, self.compress_power)
        weights = {
            "sc": self.sc_weight,
            "mag": self.mag_weight,
            "phase": self.phase_weight,
            "compressed": self.compressed_weight,
        }
        terms = [weighted(weights[k], v) for k, v in parts.items()]
        return (add_all(terms) if terms else mx.new_zeros(())), parts


def compressed_error(mx, my, weight, gap, py, power: float) -> torch.Tensor:
    """Mean squared error of power-law compressed spectra, ``|X|^c`` and ``X |X|^(c-1)``
    mixed 0.7 / 0.3 (Braun & Tashev 2021), each example scaled to a unit mean power first.

    ``mx, my``: the estimate's and target's magnitudes, ``(batch, freq, frames)``;
    ``weight = mx * my``, ``gap = weight - Re(X conj(Y))`` and ``py = my^2``, as the phase
    term computes them. The compression lifts quiet bins (consonants, high bands, the
    onsets PESQ and STOI weigh) that spectral convergence, led by the loud low bins, hardly
    sees; the per-example scale keeps loud examples from leading the batch.

    Per bin, ``0.7 (|X|^c - |Y|^c)^2 + 0.3 |X|X|^(c-1) - Y|Y|^(c-1)|^2`` equals
    ``(|X|^c - |Y|^c)^2 + 0.6 (|X||Y|)^(c-1) gap``: written so, it reuses the phase term's
    products and takes about half the launches of the two spectra formed apart.
    """
    magnitude = (mx.pow(power) - my.pow(power)).square()
    per_bin = torch.addcmul(magnitude, weight.pow(power - 1), gap, value=2 * COMPLEX_SHARE)
    # An example's power scaled by 1/s (to unit mean) scales its compressed terms by s^(-c).
    scale = py.mean((1, 2)).clamp_min(POWER_EPS).pow(-power)
    return (per_bin.mean((1, 2)) * scale).mean()


class MultiResolutionSTFTLoss(nn.Module):
    """Mean of :class:`STFTLoss` over ``resolutions``, a list of ``(n_fft, hop, win)``."""

    def __init__(self, resolutions, **weights):
        """``weights``: :class:`STFTLoss`'s keywords (``sc_weight`` ... ``compress_power``)."""
        super().__init__()
        if not resolutions:
            raise ValueError("loss.resolutions needs at least one (n_fft, hop, win) triple")
        self.losses = nn.ModuleList(STFTLoss(*res, **weights) for res in resolutions)

    def forward(self, estimate: torch.Tensor, target: torch.Tensor):
        totals, parts = [], {}
        for loss in self.losses:
            t, p = loss(estimate, target)
            totals.append(t)
            for k, v in p.items():
                parts.setdefault(k, []).append(v)
        n = len(self.losses)
        return add_all(totals) / n, {k: add_all(v) / n for k, v in parts.items()}


class DenoiseLoss(nn.Module):
    """``stft_weight * MR-STFT + l1_weight * L1 - sisdr_weight * SI-SDR(dB)``.

    The seed recipe uses one STFT resolution and no SI-SDR term.
    """

    def __init__(
        self,
        resolutions,
        stft_weight=1.0,
        l1_weight=1.0,
        sc_weight=1.0,
        mag_weight=1.0,
        phase_weight=1.0,
        sisdr_weight=0.0,
        compressed_weight=0.0,
        compress_power=COMPRESS_POWER,
    ):
        super().__init__()
        self.stft = MultiResolutionSTFTLoss(
            resolutions,
            sc_weight=sc_weight,
            mag_weight=mag_weight,
            phase_weight=phase_weight,
            compressed_weight=compressed_weight,
            compress_power=compress_power,
        )
        self.stft_weight, self.l1_weight, self.sisdr_weight = stft_weight, l1_weight, sisdr_weight

    def forward(self, estimate: torch.Tensor, target: torch.Tensor):
        """``estimate``, ``target``: ``(batch, 1, time)`` -> ``(total, parts)``."""
        if estimate.shape != target.shape:
            raise ValueError(f"shape mismatch: {tuple(estimate.shape)} vs {tuple(target.shape)}")
        stft, parts = self.stft(estimate, target)
        l1 = F.l1_loss(estimate.float(), target.float())
        total = weighted(self.stft_weight, stft) + weighted(self.l1_weight, l1)
        parts = {f"stft_{k}": v for k, v in parts.items()}
        if self.sisdr_weight:
            neg_sisdr = -si_sdr(estimate.float(), target.float()).mean()
            total = total + weighted(self.sisdr_weight, neg_sisdr)
            parts["neg_sisdr"] = neg_sisdr
        parts.update(stft=stft, l1=l1, total=total)
        return total, parts


def si_sdr(estimate: torch.Tensor, target: torch.Tensor, max_db: float = SISDR_MAX_DB):
    """Scale-invariant SDR in dB over the last axis, ``(..., time)`` -> ``(...)``, soft-capped
    at ``max_db``: ``|t|^2 / (|e|^2 + 10^(-max_db/10) |t|^2)``.

    Without the cap, clean (or nearly clean) training examples reach 80 dB and more, and
    their gradient drowns every noisy example's.
    """
    est = estimate - estimate.mean(-1, keepdim=True)
    ref = target - target.mean(-1, keepdim=True)
    scale = (est * ref).sum(-1, keepdim=True) / (ref.square().sum(-1, keepdim=True) + 1e-8)
    projection = scale * ref
    signal = projection.square().sum(-1)
    error = (est - projection).square().sum(-1) + 10 ** (-max_db / 10) * signal
    return 10 * torch.log10((signal + 1e-8) / (error + 1e-8))


def build_loss(cfg_loss) -> DenoiseLoss:
    """The one place a config turns into a loss: ``DenoiseLoss(**cfg.loss)``."""
    kwargs = dict(cfg_loss)
    kwargs["resolutions"] = [tuple(r) for r in kwargs["resolutions"]]
    return DenoiseLoss(**kwargs)
