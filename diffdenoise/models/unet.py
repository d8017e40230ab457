"""The denoiser: a Conv1d encoder–decoder with diffusion-style sinusoidal timestep embeddings.

``skips=False, output="direct", normalize=False`` is the original skip-less network.
``skips=True`` makes it a U-Net whose every level is conditioned on the timestep by FiLM;
``output="residual"`` (or ``"mask"``) together with ``normalize=True`` gives the network an
easy identity, so audio that is nearly clean comes out nearly unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from diffdenoise.models.blocks import check_input, sinusoidal_embedding


class FiLM(nn.Module):
    """Per-channel scale and shift from the time embedding, zero-initialised to identity."""

    def __init__(self, emb_dim: int, channels: int):
        super().__init__()
        self.proj = nn.Linear(emb_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.proj(emb)[..., None].chunk(2, dim=1)
        return x * (1 + scale) + shift


class AudioDiffusionModel(nn.Module):
    """Conv1d encoder–decoder conditioned on a diffusion timestep.

    Each encoder level is a strided ``Conv1d(kernel, stride)`` followed by a 1x1 ``Conv1d``,
    LeakyReLU activations and dropout; each decoder level mirrors it with a 1x1 ``Conv1d``
    and a ``ConvTranspose1d``. Inputs are padded to a length the strides divide exactly
    and the output is cropped back, so any input length is returned unchanged.
    """

    def __init__(
        self,
        depth: int = 4,
        channels: int = 32,
        growth: float = 2.0,
        max_channels: int = 512,
        kernel_size: int = 8,
        stride: int = 4,
        widths: list[int] | tuple = (),
        kernel_sizes: list[int] | tuple = (),
        strides: list[int] | tuple = (),
        dropout: float = 0.0,
        skips: bool = True,
        skip_mode: str = "add",
        output: str = "residual",
        normalize: bool = True,
        time_dim: int = 64,
        conditioned: bool = False,
    ):
        super().__init__()
        self.conditioned = conditioned
        self.widths = list(widths) or [
            min(round(channels * growth**i), max_channels) for i in range(depth)
        ]
        self.kernels = list(kernel_sizes) or [kernel_size] * depth
        self.strides = list(strides) or [stride] * depth
        for k, s in zip(self.kernels, self.strides):
            if k < s:
                raise ValueError(f"kernel size {k} is smaller than its stride {s}")
        self.skips, self.skip_mode, self.output, self.normalize = (
            skips,
            skip_mode,
            output,
            normalize,
        )
        self.time_dim = time_dim
        latent = self.widths[-1]
        self.time_mlp = nn.Sequential(
            nn.Linear(time_dim, 4 * time_dim), nn.SiLU(), nn.Linear(4 * time_dim, latent)
        )
        self.encoder, self.decoder = nn.ModuleList(), nn.ModuleList()
        self.enc_film, self.dec_film = nn.ModuleList(), nn.ModuleList()
        c_in = 2 if conditioned else 1  # a bridge model also sees the noisy input
        for i, (w, k, s) in enumerate(zip(self.widths, self.kernels, self.strides)):
            self.encoder.append(self._down(c_in, w, k, s, dropout))
            last = i == 0
            c_out = 2 if output == "mask" and last else 1 if last else self.widths[i - 1]
            mid = 2 * w if skips and skip_mode == "concat" else w
            self.decoder.insert(0, self._up(mid, w, c_out, k, s, dropout, final=last))
            if skips:
                self.enc_film.append(FiLM(latent, w))
                self.dec_film.insert(0, FiLM(latent, mid))
            c_in = w
        if output == "residual":
            final = self.decoder[-1][-1]  # zero-init so the untrained network is the identity
            nn.init.zeros_(final.weight)
            nn.init.zeros_(final.bias)

    @staticmethod
    def _down(c_in: int, c_out: int, k: int, s: int, p: float) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv1d(c_in, c_out, k, s),
            nn.LeakyReLU(0.2),
            nn.Conv1d(c_out, c_out, 1),
            nn.LeakyReLU(0.2),
            nn.Dropout(p),
        )

    @staticmethod
    def _up(c_in: int, w: int, c_out: int, k: int, s: int, p: float, final: bool) -> nn.Sequential:
        layers = [nn.Conv1d(c_in, w, 1), nn.LeakyReLU(0.2), nn.Dropout(p)]
        layers.append(nn.ConvTranspose1d(w, c_out, k, s))
        if not final:
            layers.append(nn.LeakyReLU(0.2))
        return nn.Sequential(*layers)

    def valid_length(self, length: int) -> int:
        """Smallest length >= ``length`` that the strided stack maps back exactly onto itself."""
        n = length
        for k, s in zip(self.kernels, self.strides):
            n = max(math.ceil((n - k) / s) + 1, 1)
        for k, s in zip(reversed(self.kernels), reversed(self.strides)):
            n = (n - 1) * s + k
        return max(n, length)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None, cond=None) -> torch.Tensor:
        """Denoise a batch.

        Args:
            x: ``(batch, 1, time)`` noisy waveform (a bridge model: the state ``x_t``),
                any ``time >= 1``.
            t: ``(batch,)`` timesteps; ``None`` means t = 0 (inference).
            cond: a bridge model's ``(batch, 1, time)`` noisy input; its level sets the
                normalisation, so every step of a sampler is scaled alike.
        Returns:
            ``(batch, 1, time)`` estimate of the clean waveform.
        """
        check_input(x, cond, self.conditioned)
        length = x.shape[-1]
        if t is None:
            t = torch.zeros(x.shape[0], device=x.device)
        emb = self.time_mlp(sinusoidal_embedding(t, self.time_dim).to(x.dtype))
        ref = x if cond is None else cond
        std = ref.std(dim=-1, keepdim=True) if length > 1 else ref.abs()
        scale = (1e-3 + std) if self.normalize else torch.ones_like(std)
        h = F.pad(x / scale, (0, self.valid_length(length) - length))
        inp = h
        if cond is not None:
            h = torch.cat([h, F.pad(cond / scale, (0, h.shape[-1] - length))], dim=1)
        skips = []
        for i, layer in enumerate(self.encoder):
            h = layer(h)
            if self.skips:
                h = self.enc_film[i](h, emb)
                skips.append(h)
        if not self.skips:
            h = h + emb[..., None]  # the original injects time at the latent only
        for i, layer in enumerate(self.decoder):
            if self.skips:
                skip = skips.pop()
                h = h + skip if self.skip_mode == "add" else torch.cat([h, skip], dim=1)
                h = self.dec_film[i](h, emb)
            h = layer(h)
        y = self._combine(inp, h)
        return y[..., :length] * scale

    def _combine(self, inp: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.output == "residual":
            return inp + h
        if self.output == "mask":  # a bounded gain plus a small additive correction
            return inp * torch.sigmoid(h[:, :1] + 4.0) + h[:, 1:]
        return h
