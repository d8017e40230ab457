"""Training objectives and their samplers: ``predictive`` and ``bridge``.

``predictive`` is the one-call denoiser: the network maps the noisy ``y`` (and a timestep
that carries nothing, as in the original) to the clean ``x0``.

``bridge`` is a data-to-data diffusion between ``x0`` (t = 0) and ``y`` (t = 1), a
Brownian bridge as in the Schrödinger-bridge speech enhancers (Jukić et al., 2024; sgmse
and NeMo), in the waveform::

    x_t = (1 - t) x0 + t y + sigma * rms(y) * sqrt(t (1 - t)) * z,     z ~ N(0, I)

so ``x_1 = y`` and ``x_0 = x0`` exactly, and the noise is largest mid-way. ``rms(y)``
(per example) makes ``sigma`` a level-free share of the input. The network sees ``x_t``
and ``y`` and predicts ``x0`` (the data-prediction form of those papers, trained with the
ordinary loss). ``t`` is drawn uniformly, as the bridge papers draw it: each level is
one step of an N-step sampler for some N. The sampler starts at ``x_1 = y`` and walks a
uniform grid down to 0 with the bridge posterior given the predicted ``x0``::

    x_s = x0 + (s / t) (x_t - x0) + sigma * rms(y) * sqrt(s (t - s) / t) * z

N = 1 is a single call at t = 1 on ``(y, y)``, the predictive path; its output does not
depend on the seed. t reaches the network through the sinusoidal embedding scaled by
:data:`TIME_SCALE`, the integer range the embedding was sized for.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

TIME_SCALE = 1000.0
Normal = Callable[[int], torch.Tensor]  # step k -> its N(0, I) draw


def rms(x: torch.Tensor) -> torch.Tensor:
    """Per-example RMS over ``(channel, time)``: ``(batch, 1, 1)``."""
    return x.float().square().mean(dim=(-2, -1), keepdim=True).sqrt()


class Predictive:
    """The model maps ``noisy`` (and a timestep) to the clean estimate in one call."""

    name, conditioned = "predictive", False

    def predict(self, model, batch: dict) -> torch.Tensor:
        return model(batch["noisy"], batch["t"])

    def sample(self, model, noisy, t, steps: int = 1, normal=None) -> torch.Tensor:
        return model(noisy, t)


class Bridge:
    """The Brownian bridge between clean and noisy audio (see the module docstring)."""

    name, conditioned = "bridge", True

    def __init__(self, sigma: float = 0.5):
        self.sigma = sigma

    def corrupt(self, clean, noisy, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``x_t`` for ``(batch, 1, time)`` clean, noisy and z, and ``(batch,)`` t in [0, 1]."""
        t = t.float()[:, None, None]
        spread = self.sigma * rms(noisy) * (t * (1 - t)).clamp_min(0).sqrt()
        return (1 - t) * clean + t * noisy + spread * z

    def predict(self, model, batch: dict) -> torch.Tensor:
        """The network's ``x0`` estimate for a training batch rendered with ``state``."""
        return model(batch["state"], batch["t"].float() * TIME_SCALE, cond=batch["noisy"])

    def sample(
        self, model, noisy, t=None, steps: int = 1, normal: Normal | None = None
    ) -> torch.Tensor:
        """``steps`` network calls from ``x_1 = noisy`` to ``x_0``; ``normal(k)`` is the
        N(0, I) draw (shaped like ``noisy``) of step ``k``, needed only when sigma > 0."""
        grid = torch.linspace(1.0, 0.0, steps + 1).tolist()
        level = self.sigma * rms(noisy)
        x = noisy
        for k in range(steps):
            t_now, t_next = grid[k], grid[k + 1]
            times = torch.full((noisy.shape[0],), t_now * TIME_SCALE, device=noisy.device)
            x0 = model(x, times, cond=noisy).float()
            if t_next <= 0:
                return x0
            x = x0 + (t_next / t_now) * (x - x0)
            if self.sigma > 0:
                x = x + level * (t_next * (t_now - t_next) / t_now) ** 0.5 * normal(k)
        return x


def objective_of(cfg_diffusion) -> Predictive | Bridge:
    """The objective a config's ``diffusion`` group names."""
    if cfg_diffusion.objective == "bridge":
        return Bridge(cfg_diffusion.sigma)
    return Predictive()
