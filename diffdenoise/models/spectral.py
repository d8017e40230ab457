"""The spectral-mask denoiser: a bounded gain per time-frequency bin on the noisy phase.

This is the form of a Wiener filter (and of RNNoise, GTCRN, DeepFilterNet): the output is
``istft(gain * stft(noisy))`` with ``0 <= gain <= 1``. The network starts from a classical
estimate computed in torch inside the model, a minimum-statistics noise spectrum and the
Wiener gain it implies, and learns a correction of that gain in the logit domain. The
correction's last layer is zero-initialised, so an untrained model *is* the classical
filter; training can only have to improve on it, and clean input (where the classical
gain is about 1 wherever speech has energy) starts out untouched.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from diffdenoise.models import kernels
from diffdenoise.models.bands import band_matrix, pool_bands
from diffdenoise.models.blocks import check_input, sinusoidal_embedding
from diffdenoise.models.deepfilter import DeepFilter

# Minimum statistics: the minimum of a smoothed periodogram underestimates the mean noise
# power; this factor brings it back for stationary noise (measured on white noise with the
# default smoothing and window, see tests/test_spectral.py).
MIN_STATS_BIAS = 5.5
SMOOTH_FRAMES = 5  # periodogram smoothing, about 40 ms at the default 8 ms hop
POWER_FLOOR = 1e-10  # relative to the segment's mean power: digital silence stays finite
GAIN_EPS = 0.02  # the prior's logit stays within +-3.9, where the correction still learns
QUIET_FRACTION = 0.2
DD_SMOOTHING = 0.98  # decision-directed weight of the previous frame, as in the baseline


def noise_psd(power: torch.Tensor, window: int) -> torch.Tensor:
    """Minimum-statistics noise power per bin.

    Args:
        power: ``(batch, freq, frames)`` periodogram ``|Y|^2``.
        window: frames over which the minimum is taken (about one second).
    Returns:
        ``(batch, freq, frames)`` noise power estimate.
    """
    smooth = F.avg_pool1d(
        F.pad(power, (SMOOTH_FRAMES // 2,) * 2, mode="replicate"), SMOOTH_FRAMES, stride=1
    )
    window = window | 1  # odd, so the output keeps the frame count
    minimum = -F.max_pool1d(-smooth, window, stride=1, padding=window // 2)
    return MIN_STATS_BIAS * minimum, smooth


def quiet_frames(power: torch.Tensor) -> torch.Tensor:
    """The quietest fifth of the frames (as the baseline Wiener filter picks them) as a
    ``(batch, 1, frames)`` weight of 0 or 1."""
    energy = power.sum(1)  # (batch, frames)
    return (energy <= quantile_of_rows(energy, QUIET_FRACTION)).float()[:, None]


def quantile_of_rows(values: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(values, q, dim=1, keepdim=True)`` (linear interpolation) for a
    ``(batch, n)`` tensor, ``-> (batch, 1)``: one sort and one lerp, where torch.quantile
    launches about twenty small kernels checking its arguments on the device."""
    ordered = values.sort(dim=1).values
    rank = torch.tensor(q, dtype=values.dtype) * (values.shape[1] - 1)  # in torch's precision
    below = int(rank)
    above = min(below + 1, values.shape[1] - 1)
    low, high = ordered[:, below : below + 1], ordered[:, above : above + 1]
    return torch.lerp(low, high, float(rank - below))


def mean_over(values: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """``(batch, freq, frames)`` -> ``(batch, freq, 1)``: the mean over the chosen frames."""
    return (values * frames).sum(2, keepdim=True) / frames.sum(2, keepdim=True)


@torch.no_grad()
def decision_directed_gain(power: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Wiener gain with the decision-directed a-priori SNR (Ephraim-Malah), frame by frame.

    ``power``: ``(batch, freq, frames)``; ``noise``: broadcastable to it. The recursion
    smooths the SNR estimate over time, which keeps musical noise down; it carries no
    gradient (the prior is an input, the network learns the correction). On a GPU it runs
    as one fused kernel (:mod:`diffdenoise.kernels`).
    """
    return kernels.decision_directed(power / noise.expand_as(power), DD_SMOOTHING)


def wiener_gain(
    power: torch.Tensor, window: int, tracking: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The classical prior gain and the features the network reads beside it.

    The gain is decision-directed Wiener against the mean power of the quietest frames:
    stronger than minimum statistics at low SNR, but it mistakes quiet speech for noise in
    clean input. The features are the log a-posteriori SNRs against both estimates:
    minimum statistics tells speech from noise where the quietest frames still hold speech
    (high SNR, clean input), which is where the prior needs correcting.

    ``tracking`` > 0 lets the prior's estimate follow noise that grows in time (music,
    effects: louder than their quietest fifth most of the time). Per frame it rises by
    ``tracking`` times how far minimum statistics rose above its own level in the quiet
    frames, never below that level, so noise that does not move (hum's tones included,
    whose statistics minimum statistics misjudges) keeps the quiet-frames estimate.

    Returns ``(gain, log SNRs)``: ``(batch, freq, frames)`` and ``(batch, 2 * freq, frames)``.
    """
    power = power + POWER_FLOOR * power.mean(dim=(1, 2), keepdim=True) + 1e-20
    min_stats, smooth = noise_psd(power, window)
    quiet = quiet_frames(power)
    noise = mean_over(power, quiet)
    log_snrs = torch.cat([torch.log(smooth / min_stats), torch.log(smooth / noise)], 1)
    if tracking > 0:
        rise = min_stats / mean_over(min_stats, quiet)
        noise = noise * (tracking * rise).clamp_min(1.0)
    return decision_directed_gain(power, noise), log_snrs


def film_mlp(time_dim: int, hidden: int) -> nn.Sequential:
    """The timestep embedding -> FiLM ``(scale, shift)``, zero at the start (no effect)."""
    mlp = nn.Sequential(
        nn.Linear(time_dim, 4 * time_dim), nn.SiLU(), nn.Linear(4 * time_dim, 2 * hidden)
    )
    nn.init.zeros_(mlp[-1].weight)
    nn.init.zeros_(mlp[-1].bias)
    return mlp


def correction_head(hidden: int, bins: int) -> nn.Linear:
    """Hidden state -> gain correction per bin; zero at the start, so an untrained model
    is the classical gain (or 0.5 without it)."""
    head = nn.Linear(hidden, bins)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


class _Anchor(torch.autograd.Function):
    """The identity, whose backward adds the gradient of ``weight * mean(correction**2)``:
    a pull toward the Wiener prior wherever the loss does not push the gain away from it,
    so the correction stays near zero where the prior is already right."""

    @staticmethod
    def forward(ctx, correction: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.save_for_backward(correction)
        ctx.weight = weight
        return correction.view_as(correction)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (correction,) = ctx.saved_tensors
        return grad + (2 * ctx.weight / correction.numel()) * correction, None


def corrected_gain(model: nn.Module, correction: torch.Tensor, classical: torch.Tensor):
    """``sigmoid(logit(classical gain) + correction)``, in ``[0, 1]``; in training the
    correction is anchored to the prior by ``model.anchor_weight`` (:class:`_Anchor`)."""
    if model.training and getattr(model, "anchor_weight", 0.0):
        correction = _Anchor.apply(correction, model.anchor_weight)
    if not model.training:
        # Trained corrections overshoot on noise and speech the model has not seen:
        # applying a share of them generalises better (measured on held-out speech). Raising
        # the gain is the riskier side (unseen noise kept as speech), so where the correction
        # lowers it a larger share may apply (measured on TTS and recorded speech).
        suppress = getattr(model, "suppress_scale", None)
        keep = model.correction_scale
        scale = keep if suppress is None else torch.where(correction > 0, keep, suppress)
        correction = correction * scale
    # The prior's floor keeps it from suppressing deeper than the noise estimate can
    # justify (moving noise); the correction may still go below it where it is sure.
    low = max(GAIN_EPS, getattr(model, "prior_floor", 0.0))
    base = torch.logit(classical.clamp(low, 1 - GAIN_EPS)) if model.prior else 0.0
    return torch.sigmoid(base + correction)


def local_head(features: int, channels: int) -> nn.Sequential:
    """2-D convolutions over (freq, frames), shared by every bin: the per-bin correction
    from its neighbourhood (+-1 bin, about +-7 frames), which a dense layer over all bins
    would have to learn separately for each frequency. Its last layer starts at zero."""
    layers: list[nn.Module] = [nn.Conv2d(features, channels, 3, padding=1), nn.LeakyReLU(0.2)]
    for dilation in (2, 4):
        layers += [
            nn.Conv2d(channels, channels, 3, padding=(1, dilation), dilation=(1, dilation)),
            nn.LeakyReLU(0.2),
        ]
    layers.append(nn.Conv2d(channels, 1, 1))
    nn.init.zeros_(layers[-1].weight)
    nn.init.zeros_(layers[-1].bias)
    return nn.Sequential(*layers)


def pad_to(wave: torch.Tensor, length: int) -> torch.Tensor:
    """``(batch, time)`` zero-padded at the end to at least ``length`` samples (as is, with
    no copy, when it is long enough)."""
    return wave if wave.shape[-1] >= length else F.pad(wave, (0, length - wave.shape[-1]))


class SpectralMaskModel(nn.Module):
    """Noisy STFT -> per-frame features -> temporal conv + GRU -> gain correction -> iSTFT.

    Per frame the network sees four vectors over all bins (or averaged into ERB bands,
    ``input_bands``): the log spectrum (minus the segment's mean, so the level does not
    matter), the log a-posteriori SNRs against two noise estimates (minimum statistics, and
    the quietest frames), and the classical gain.
    The diffusion timestep enters through the sinusoidal embedding as a FiLM on the hidden
    state (zero-initialised, like the U-Net's).
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        win_ms: float = 32.0,
        hop_ms: float = 8.0,
        hidden: int = 256,
        layers: int = 2,
        context_frames: int = 3,
        noise_window_s: float = 1.0,
        prior: bool = True,
        local_channels: int = 0,
        correction_scale: float = 1.0,
        suppress_scale: float | None = None,
        prior_floor: float = 0.0,
        prior_tracking: float = 0.0,
        anchor_weight: float = 0.0,
        bidirectional: bool = False,
        deep_filter_taps: int = 0,
        input_bands: int = 0,
        time_dim: int = 64,
        conditioned: bool = False,
    ):
        super().__init__()
        self.conditioned = conditioned
        feats = 5 if conditioned else 4  # a bridge model also reads the noisy log spectrum
        self.n_fft = max(16, round(sample_rate * win_ms / 1000))
        self.hop = max(1, round(sample_rate * hop_ms / 1000))
        self.bins = self.n_fft // 2 + 1
        self.window_frames = max(3, round(noise_window_s * sample_rate / self.hop))
        self.prior, self.time_dim = prior, time_dim
        self.correction_scale, self.prior_floor = correction_scale, prior_floor
        self.suppress_scale, self.anchor_weight = suppress_scale, anchor_weight
        self.prior_tracking = prior_tracking
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        # The network may read its features pooled into ERB bands (0: every bin).
        bands = band_matrix(self.bins, sample_rate, input_bands) if input_bands else None
        self.register_buffer("bands", bands, persistent=False)
        width = self.bins if bands is None else bands.shape[0]
        self.inp = nn.Conv1d(feats * width, hidden, context_frames, padding=context_frames // 2)
        # Offline, the GRU may also read the segment backwards: a frame's gain then knows
        # what follows it (a word's end, the noise after it), as the prior's window does.
        self.rnn = nn.GRU(hidden, hidden, num_layers=layers, batch_first=True,
                          bidirectional=bidirectional)  # fmt: skip
        directions = 2 if bidirectional else 1
        self.time_mlp = film_mlp(time_dim, hidden)
        self.out = correction_head(hidden * directions, self.bins)
        self.local = local_head(feats, local_channels) if local_channels else None
        self.deep_filter = (
            DeepFilter(feats, deep_filter_taps, sample_rate, self.n_fft, self.hop)
            if deep_filter_taps
            else None
        )

    def stft(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, time)`` -> complex ``(batch, freq, frames)``."""
        return torch.stft(
            x.float(), self.n_fft, self.hop, window=self.window, center=True, return_complex=True
        )

    def gain(self, spec: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        """Gain in ``[0, 1]`` for a complex ``(batch, freq, frames)`` spectrum (a bridge
        model: the state's, with the noisy input's spectrum ``cond``)."""
        return self.gain_and_features(spec, t, cond)[0]

    def gain_and_features(self, spec: torch.Tensor, t: torch.Tensor, cond=None):
        """:meth:`gain`, and the per-bin features it read, ``(batch, features, freq,
        frames)``."""
        power = spec.real.square() + spec.imag.square()
        classical, log_snr = wiener_gain(power, self.window_frames, self.prior_tracking)
        log_power = torch.log(power + 1e-10)
        logs = [log_power]
        if cond is not None:  # both levels against the noisy input's: their ratio tells t
            logs.append(torch.log(cond.real.square() + cond.imag.square() + 1e-10))
        offset = logs[-1].mean(dim=(1, 2), keepdim=True)
        logs = [x - offset for x in logs]
        feats = torch.cat([logs[0], log_snr.clamp(-10, 20), classical, *logs[1:]], dim=1)
        stacked = feats.view(feats.shape[0], -1, self.bins, feats.shape[-1])
        read = feats if self.bands is None else pool_bands(stacked, self.bands)
        h = F.leaky_relu(self.inp(read), 0.2).transpose(1, 2)  # (batch, frames, hidden)
        scale, shift = self.time_mlp(sinusoidal_embedding(t, self.time_dim))[:, None].chunk(2, -1)
        h, _ = self.rnn(h * (1 + scale) + shift)  # (batch, frames, hidden x directions)
        correction = self.out(h).transpose(1, 2)  # (batch, freq, frames)
        if self.local is not None:
            correction = correction + self.local(stacked)[:, 0]
        return corrected_gain(self, correction, classical), stacked

    def enhanced(self, spec: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        """The denoised complex ``(batch, freq, frames)`` spectrum: the gain on the noisy
        phase, plus the deep filter's addition where there is one (at inference, its
        ``correction_scale`` share, as of the gain's correction)."""
        gain, stacked = self.gain_and_features(spec, t, cond)
        out = spec * gain
        if self.deep_filter is not None:
            share = 1.0 if self.training else self.correction_scale
            out = out + share * self.deep_filter(spec, gain, stacked)
        return out

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None, cond=None) -> torch.Tensor:
        """``(batch, 1, time)`` noisy waveform -> ``(batch, 1, time)`` denoised waveform. A
        bridge model takes the state ``x_t`` as ``x`` and the noisy input as ``cond``."""
        check_input(x, cond, self.conditioned)
        length = x.shape[-1]
        if t is None:
            t = torch.zeros(x.shape[0], device=x.device)
        wave = pad_to(x[:, 0].float(), self.n_fft)
        spec = self.stft(wave)
        cond_spec = None if cond is None else self.stft(pad_to(cond[:, 0].float(), self.n_fft))
        out = torch.istft(
            self.enhanced(spec, t, cond_spec), self.n_fft, self.hop, window=self.window,
            length=wave.shape[-1],
        )  # fmt: skip
        return out[:, None, :length].to(x.dtype)
