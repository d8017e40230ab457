"""The causal spectral-mask model: no output sample depends on input after it, plus a lookahead.

It is the spectral model (:mod:`diffdenoise.spectral`) rebuilt so that every stage only
looks back: frames end at the newest sample (left-padded, square-root Hann analysis and
synthesis windows whose overlap-add is exact), the periodogram is smoothed over the last
frames and its minimum taken over the last second, the Wiener prior runs on that
minimum-statistics noise estimate, the log spectrum is normalised per frame (no segment
mean), and the frame convolution pads on the left. The one exception is ``lookahead_ms``:
the convolution may read that many frames ahead, and the output waits for them.

The same module runs offline (``forward``, whole tensors, for training and files) and one
frame at a time (:meth:`CausalSpectralModel.step`, for :mod:`diffdenoise.realtime`), and the
two agree to float rounding. The step is tensors in, tensors out, so it exports as is.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from diffdenoise.models import quiet
from diffdenoise.models.blocks import check_input, shift_in, sinusoidal_embedding
from diffdenoise.models.kernels import decision_directed
from diffdenoise.models.spectral import (
    DD_SMOOTHING,
    SMOOTH_FRAMES,
    corrected_gain,
    correction_head,
    film_mlp,
)

# The untrained causal model (the classical gain alone) on held-out speech in 2 s segments,
# mean over -5..20 dB input, SI-SDR: 5.99 dB with the offline model's minimum-statistics
# bias (5.5), 7.98 at 1.5, 8.21 at 1.0, 8.28 at 0.7 (noisy: 7.50). The trailing minimum of
# a one-second window that holds speech is already high; scaled up, it takes speech for
# noise. On training speech heard as one stream: 11.06 / 11.53 / 11.70 / 11.45 dB at 0.7 /
# 1.0 / 1.5 / 2.0, too close to retrain for.
CAUSAL_NOISE_BIAS = 1.0
POWER_EPS = 1e-10  # absolute floor: a causal model has no segment level to scale one by


class CausalSpectralModel(nn.Module):
    """Noisy frames -> per-frame features -> causal conv + GRU -> gain -> overlap-add.

    Features per frame, over all bins: the log spectrum minus its mean over bins, the log
    a-posteriori SNR against the noise estimate (minimum statistics, or with
    ``quiet_window_s`` the quietest frames heard, :mod:`~diffdenoise.models.quiet`), and the
    decision-directed Wiener gain.
    The frame is ``hop_ms``; the window ``win_ms`` is rounded to a whole number (at least
    two) of hops so the windows add up to one.
    """

    def __init__(
        self,
        sample_rate: int = 48000,
        win_ms: float = 16.0,
        hop_ms: float = 8.0,
        hidden: int = 128,
        layers: int = 1,
        context_frames: int = 3,
        noise_window_s: float = 1.0,
        quiet_window_s: float = 0.0,
        prior: bool = True,
        correction_scale: float = 1.0,
        suppress_scale: float | None = None,
        prior_floor: float = 0.0,
        anchor_weight: float = 0.0,
        lookahead_ms: float = 0.0,
        time_dim: int = 64,
    ):
        super().__init__()
        self.conditioned = False
        self.rate = sample_rate
        self.hop = max(1, round(sample_rate * hop_ms / 1000))
        self.overlap = max(2, round(win_ms / hop_ms))  # frames covering each sample
        self.n_fft = self.hop * self.overlap
        self.bins = self.n_fft // 2 + 1
        self.lookahead = round(lookahead_ms / hop_ms)
        self.context = context_frames
        if not 0 <= self.lookahead < context_frames:
            raise ValueError(
                f"a lookahead of {lookahead_ms:g} ms is {self.lookahead} frames; it must be "
                f"fewer than context_frames ({context_frames})"
            )
        self.window_frames = max(3, round(noise_window_s * sample_rate / self.hop))
        self.noise_bias = CAUSAL_NOISE_BIAS
        # > 0: the prior's noise is the quietest frames' mean over this many (models.quiet);
        # 0: the trailing minimum of the smoothed periodogram over window_frames
        quiet_frames = max(2, round(quiet_window_s * sample_rate / self.hop))
        self.quiet_frames = quiet_frames if quiet_window_s > 0 else 0
        self.prior, self.time_dim, self.correction_scale = prior, time_dim, correction_scale
        self.prior_floor, self.suppress_scale = prior_floor, suppress_scale
        self.anchor_weight = anchor_weight
        analysis = torch.hann_window(self.n_fft, periodic=True).sqrt()
        self.register_buffer("analysis", analysis, persistent=False)
        # Periodic Hann windows a hop apart add up to overlap / 2.
        self.register_buffer("synthesis", analysis * 2 / self.overlap, persistent=False)
        self.inp = nn.Conv1d(3 * self.bins, hidden, context_frames)
        self.rnn = nn.GRU(hidden, hidden, num_layers=layers, batch_first=True)
        self.time_mlp, self.out = film_mlp(time_dim, hidden), correction_head(hidden, self.bins)

    @property
    def latency_ms(self) -> float:
        """Algorithmic latency: the window plus the lookahead frames."""
        return (self.n_fft + self.lookahead * self.hop) / self.rate * 1000

    # --- offline ---------------------------------------------------------------------

    def frames_for(self, length: int) -> int:
        """Output frames for ``length`` samples: enough for every sample's last window."""
        return math.ceil((length + self.n_fft - self.hop) / self.hop)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None, cond=None) -> torch.Tensor:
        """``(batch, 1, time)`` noisy -> ``(batch, 1, time)`` denoised, causally."""
        check_input(x, cond, False)
        length, frames = x.shape[-1], self.frames_for(x.shape[-1])
        if t is None:
            t = torch.zeros(x.shape[0], device=x.device)
        past = self.n_fft - self.hop
        total = (frames + self.lookahead - 1) * self.hop + self.n_fft  # + lookahead frames
        wave = F.pad(x[:, 0].float(), (past, total - past - length))
        spec = torch.fft.rfft(wave.unfold(-1, self.n_fft, self.hop) * self.analysis)
        spec = spec.transpose(1, 2)  # (batch, bins, frames + lookahead)
        feats, classical = self.features(spec)
        h = F.leaky_relu(self.inp(F.pad(feats, (self.context - 1 - self.lookahead, 0))), 0.2)
        scale, shift = self.film(t)
        h, _ = self.rnn(h.transpose(1, 2)[:, :frames] * (1 + scale) + shift)
        gain = self.gain(self.out(h).transpose(1, 2), classical[..., :frames])
        pieces = torch.fft.irfft(spec[..., :frames] * gain, self.n_fft, dim=1)
        pieces = pieces * self.synthesis[:, None]  # (batch, n_fft, frames)
        span = (frames - 1) * self.hop + self.n_fft
        out = F.fold(pieces, (1, span), (1, self.n_fft), stride=(1, self.hop))
        return out[:, 0, :, past : past + length].to(x.dtype)

    @torch.no_grad()
    def features(self, spec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Complex ``(batch, bins, frames)`` -> features ``(batch, 3 * bins, frames)`` and
        the classical gain ``(batch, bins, frames)``, each frame from frames before it."""
        power = spec.real.square() + spec.imag.square() + POWER_EPS
        padded = F.pad(power, (SMOOTH_FRAMES - 1, 0), mode="replicate")
        smooth = F.avg_pool1d(padded, SMOOTH_FRAMES, stride=1)
        if self.quiet_frames:
            noise = quiet.quiet_noise(power, power.sum(1), power.shape[-1], self.quiet_frames)
        else:
            past = F.pad(smooth, (self.window_frames - 1, 0), value=math.inf)
            noise = self.noise_bias * -F.max_pool1d(-past, self.window_frames, stride=1)
        classical = decision_directed(power / noise, DD_SMOOTHING)
        return self.stack(power, smooth, noise, classical), classical

    @staticmethod
    def stack(power, smooth, noise, classical) -> torch.Tensor:
        log_power = torch.log(power)
        log_power = log_power - log_power.mean(1, keepdim=True)
        log_snr = torch.log(smooth / noise).clamp(-10, 20)
        return torch.cat([log_power, log_snr, classical], 1)

    def film(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The timestep's FiLM ``(batch, 1, hidden)`` scale and shift."""
        return self.time_mlp(sinusoidal_embedding(t, self.time_dim))[:, None].chunk(2, -1)

    def gain(self, correction: torch.Tensor, classical: torch.Tensor) -> torch.Tensor:
        return corrected_gain(self, correction, classical)

    # --- one frame at a time ---------------------------------------------------------

    def initial_state(self, batch: int = 1) -> dict[str, torch.Tensor]:
        """The state before the first frame (see :meth:`step`)."""
        w = self.analysis
        zeros = lambda *shape: torch.zeros(*shape, device=w.device)  # noqa: E731
        return {
            "history": zeros(batch, self.n_fft - self.hop),  # input samples of the frame before
            "power": zeros(batch, self.bins, SMOOTH_FRAMES),
            "dd": torch.ones(batch, self.bins, device=w.device),
            "feats": zeros(batch, 3 * self.bins, self.context),
            "classical": zeros(batch, self.bins, self.lookahead + 1),
            "spec": torch.zeros(batch, self.bins, self.lookahead + 1, 2, device=w.device),
            "ola": zeros(batch, self.n_fft - self.hop),
            "h": zeros(self.rnn.num_layers, batch, self.rnn.hidden_size),
            "count": zeros(batch, 1),  # frames seen
        } | self.noise_state(batch)

    def noise_state(self, batch: int) -> dict[str, torch.Tensor]:
        """The noise estimate's history: the quiet frames' window, or the smoothed
        periodogram's last ``window_frames`` for the trailing minimum (``inf``: none)."""
        w = self.analysis
        if self.quiet_frames:
            return quiet.history(batch, self.bins, self.quiet_frames, w.device)
        return {
            "smooth": torch.full((batch, self.bins, self.window_frames), math.inf, device=w.device)
        }

    @torch.inference_mode()
    def step(self, samples: torch.Tensor, state: dict, scale, shift, dft=None):
        """One frame: ``(batch, hop)`` new input samples -> ``(batch, hop)`` output samples
        and the next state. Until ``lookahead`` frames have passed the output is not yet
        audio (the caller drops it); ``scale``, ``shift``: :meth:`film` at the timestep.
        ``dft``: how to take the frame's (inverse) real DFT, default :class:`TorchDft`."""
        return self.step_graph(samples, state, scale, shift, dft or TorchDft())

    def step_graph(self, samples, state: dict, scale, shift, dft) -> tuple:
        """:meth:`step` without its inference mode, for tracing and export."""
        frame = torch.cat([state["history"], samples], -1)
        real, imag = dft.rfft(frame * self.analysis)
        power = real.square() + imag.square() + POWER_EPS
        started = (state["count"] > 0)[..., None]  # the first frame fills the smoothing past
        past = torch.where(started, state["power"], power[..., None].expand_as(state["power"]))
        powers = torch.cat([past[..., 1:], power[..., None]], -1)
        smooth = powers.mean(-1)
        if self.quiet_frames:
            noise, history = quiet.extend(power[..., None], state, self.quiet_frames)
            noise = noise[..., 0]
        else:
            smooths = torch.cat([state["smooth"][..., 1:], smooth[..., None]], -1)
            noise, history = self.noise_bias * smooths.amin(-1), {"smooth": smooths}
        posterior = power / noise
        prior = DD_SMOOTHING * state["dd"] + (1 - DD_SMOOTHING) * (posterior - 1).clamp_min(0)
        classical = prior / (1 + prior)
        feats = self.stack(
            power[..., None], smooth[..., None], noise[..., None], classical[..., None]
        )
        feats = shift_in(state["feats"], feats)
        classicals = shift_in(state["classical"], classical[..., None])
        spec = torch.stack([real, imag], -1)[:, :, None]  # (batch, bins, 1, 2)
        specs = shift_in(state["spec"], spec, 2)
        # The convolution at one position as a matrix product: conv1d's CPU kernel for a
        # 3-frame input costs 0.2 ms, a quarter of the step.
        h = F.linear(feats.flatten(1), self.inp.weight.flatten(1), self.inp.bias)
        h = F.leaky_relu(h, 0.2)[:, None]  # (batch, 1, hidden)
        ready = state["count"] >= self.lookahead  # this step's output frame exists
        out, hidden = gru_step(self.rnn, (h * (1 + scale) + shift)[:, 0], state["h"])
        hidden = torch.where(ready[None], hidden, state["h"])
        gain = self.gain(self.out(out), classicals[..., 0])
        piece = dft.irfft(specs[:, :, 0, 0] * gain, specs[:, :, 0, 1] * gain, self.n_fft)
        piece = piece * self.synthesis * ready
        ola = torch.cat([state["ola"], torch.zeros_like(samples)], -1) + piece
        new = {
            "history": frame[:, self.hop :],
            "power": powers,
            "dd": classical.square() * posterior,
            "feats": feats,
            "classical": classicals,
            "spec": specs,
            "ola": torch.where(ready, ola[:, self.hop :], state["ola"]),
            "h": hidden,
            "count": state["count"] + 1,
        } | history
        return ola[:, : self.hop], new

    @torch.inference_mode()
    def run_frames(self, samples: torch.Tensor, state: dict, scale, shift) -> tuple:
        """Many frames at once: ``(batch, frames * hop)`` new input samples -> as many
        output samples and the next state, equal to :meth:`step` called once per frame
        (to float rounding), at the offline model's speed. Every row of the batch must be
        at the same frame of its stream (``state["count"]``)."""
        hop, n = self.hop, samples.shape[-1] // self.hop
        if n == 0:
            return samples[:, :0], state
        wave = torch.cat([state["history"], samples], -1)
        real_imag = torch.fft.rfft(wave.unfold(-1, self.n_fft, hop) * self.analysis)
        spec = real_imag.transpose(1, 2)  # (batch, bins, n)
        power = spec.real.square() + spec.imag.square() + POWER_EPS
        started = (state["count"] > 0)[..., None]  # the first frame fills the smoothing past
        past = torch.where(started, state["power"], power[..., :1].expand_as(state["power"]))
        powers = torch.cat([past[..., 1:], power], -1)
        smooth = F.avg_pool1d(powers, SMOOTH_FRAMES, stride=1)
        if self.quiet_frames:
            noise, history = quiet.extend(power, state, self.quiet_frames)
        else:
            smooths = torch.cat([state["smooth"][..., 1:], smooth], -1)
            noise = self.noise_bias * -F.max_pool1d(-smooths, self.window_frames, stride=1)
            history = {"smooth": smooths[..., -self.window_frames :]}
        posterior = power / noise
        classical = decision_directed(posterior, DD_SMOOTHING, state["dd"])
        feats = torch.cat(
            [state["feats"][..., 1:], self.stack(power, smooth, noise, classical)], -1
        )
        classicals = torch.cat([state["classical"][..., 1:], classical], -1)
        pair = torch.stack([spec.real, spec.imag], -1)  # (batch, bins, n, 2)
        specs = torch.cat([state["spec"][:, :, 1:], pair], 2)
        # frames before the lookahead has passed give no output and leave the GRU as it is
        wait = max(0, min(n, self.lookahead - int(state["count"][0, 0])))
        ola, hidden = self._synthesise(feats, classicals, specs, wait, n, state, scale, shift)
        new = {
            "history": wave[:, n * hop :],
            "power": powers[..., -SMOOTH_FRAMES:],
            "dd": classical[..., -1].square() * posterior[..., -1],
            "feats": feats[..., -self.context :],
            "classical": classicals[..., -(self.lookahead + 1) :],
            "spec": specs[:, :, -(self.lookahead + 1) :],
            "ola": ola[:, (n - wait) * hop :],
            "h": hidden,
            "count": state["count"] + n,
        } | history
        silent = samples.new_zeros(samples.shape[0], wait * hop)
        return torch.cat([silent, ola[:, : (n - wait) * hop]], -1), new

    def _synthesise(self, feats, classicals, specs, wait: int, n: int, state, scale, shift):
        """:meth:`run_frames`' output frames ``wait..n``: the conv, GRU, gain and
        overlap-add; returns the overlap-added samples (with the next tail) and the GRU's
        state."""
        if wait == n:
            return state["ola"], state["h"]
        h = F.leaky_relu(self.inp(feats), 0.2).transpose(1, 2)[:, wait:]
        out, hidden = self.rnn(h * (1 + scale) + shift, state["h"])
        gain = self.gain(self.out(out).transpose(1, 2), classicals[..., wait:n])
        spec = torch.complex(specs[:, :, wait:n, 0], specs[:, :, wait:n, 1])
        pieces = torch.fft.irfft(spec * gain, self.n_fft, dim=1) * self.synthesis[:, None]
        span = (n - wait) * self.hop + self.n_fft - self.hop
        ola = F.fold(pieces, (1, span), (1, self.n_fft), stride=(1, self.hop))[:, 0, 0]
        return ola + F.pad(state["ola"], (0, span - state["ola"].shape[-1])), hidden


def gru_step(rnn: nn.GRU, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One time step of ``rnn``, written out (its equations in the ``nn.GRU`` docs): the
    exporter cannot trace an ``nn.GRU`` inside a scan. ``x``: ``(batch, input)``, ``h``:
    ``(layers, batch, hidden)``; returns the last layer's output and the new ``h``."""
    new = []
    for layer in range(rnn.num_layers):
        weights = [getattr(rnn, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh")]
        biases = [getattr(rnn, f"{name}_l{layer}") for name in ("bias_ih", "bias_hh")]
        size = rnn.hidden_size  # slices, not chunk(): chunk exports as a tensor sequence
        gates_i = F.linear(x, weights[0], biases[0])
        gates_h = F.linear(h[layer], weights[1], biases[1])
        r_i, z_i, n_i = (gates_i[..., k * size : (k + 1) * size] for k in range(3))
        r_h, z_h, n_h = (gates_h[..., k * size : (k + 1) * size] for k in range(3))
        r, z = torch.sigmoid(r_i + r_h), torch.sigmoid(z_i + z_h)
        x = (1 - z) * torch.tanh(n_i + r * n_h) + z * h[layer]
        new.append(x)
    return x, torch.stack(new)


class TorchDft:
    """A frame's real DFT and its inverse as ``(real, imag)`` pairs, by ``torch.fft``."""

    @staticmethod
    def rfft(frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spec = torch.fft.rfft(frame)
        return spec.real, spec.imag

    @staticmethod
    def irfft(real: torch.Tensor, imag: torch.Tensor, n: int) -> torch.Tensor:
        return torch.fft.irfft(torch.complex(real, imag), n)


class FactoredDft(nn.Module):
    """The same transforms in small matrix products, for export: onnxruntime's DFT of a
    768-point frame (not a power of two) is slow and loses about 1e-4 of relative
    precision, and one dense ``(768, 770)`` matrix makes each frame stream 2.4 MB of
    weights. ``N = N1 * N2`` splits it (Cooley-Tukey, one step): a length-``N1`` DFT, a
    twiddle, a length-``N2`` DFT, about a quarter of the dense product's work."""

    def __init__(self, n_fft: int):
        super().__init__()
        n1 = max(d for d in range(1, math.isqrt(n_fft) + 1) if n_fft % d == 0)
        self.n, self.n1, self.n2, self.bins = n_fft, n1, n_fft // n1, n_fft // 2 + 1
        for name, rows, cols, size in (("1", n1, n1, n1), ("2", self.n2, self.n2, self.n2),
                                       ("t", self.n2, n1, n_fft)):  # fmt: skip
            angle = 2 * math.pi * torch.outer(torch.arange(rows), torch.arange(cols)).double()
            self.register_buffer(f"cos{name}", (angle / size).cos().float())
            self.register_buffer(f"sin{name}", (angle / size).sin().float())

    def dft(self, real, imag, sign: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Complex DFT of ``(..., N)`` pairs with kernel ``exp(sign * 2 pi i n k / N)``."""
        lead = real.shape[:-1]
        real, imag = (x.reshape(*lead, self.n1, self.n2).transpose(-1, -2) for x in (real, imag))
        sin1, sint, sin2 = sign * self.sin1, sign * self.sint, sign * self.sin2
        a_re, a_im = real @ self.cos1 - imag @ sin1, real @ sin1 + imag @ self.cos1
        t_re = (a_re * self.cost - a_im * sint).transpose(-1, -2)
        t_im = (a_re * sint + a_im * self.cost).transpose(-1, -2)
        out_re, out_im = t_re @ self.cos2 - t_im @ sin2, t_re @ sin2 + t_im @ self.cos2
        return (x.transpose(-1, -2).reshape(*lead, self.n) for x in (out_re, out_im))

    def rfft(self, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        real, imag = self.dft(frame, torch.zeros_like(frame), -1.0)
        return real[..., : self.bins], imag[..., : self.bins]

    def irfft(self, real: torch.Tensor, imag: torch.Tensor, n: int) -> torch.Tensor:
        mirrored = self.n - self.bins  # bins N - k, conjugates of bins k
        edges = 2 if self.n % 2 == 0 else 1  # DC (and Nyquist): their imaginary part is ignored
        imag = torch.cat(
            [
                imag[..., :1] * 0,
                imag[..., 1 : self.bins + 1 - edges],
                imag[..., self.bins + 1 - edges :] * 0,
            ],
            -1,
        )
        real = torch.cat([real, real[..., 1 : 1 + mirrored].flip(-1)], -1)
        imag = torch.cat([imag, -imag[..., 1 : 1 + mirrored].flip(-1)], -1)
        return next(iter(self.dft(real, imag, 1.0))) / self.n
