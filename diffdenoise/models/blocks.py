"""Building blocks the model families share: the timestep embedding and input checks."""

from __future__ import annotations

import math

import torch


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer/DDPM sinusoidal embedding of timesteps.

    Args:
        t: ``(batch,)`` integer or float timesteps.
        dim: embedding size (even).
    Returns:
        ``(batch, dim)``: ``[sin(t * f_k), cos(t * f_k)]`` for geometric frequencies ``f_k``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


def check_input(x: torch.Tensor, cond, conditioned: bool) -> None:
    """One-line errors for inputs a model cannot take."""
    if x.dim() != 3 or x.shape[1] != 1:
        raise ValueError(f"expected input of shape (batch, 1, time), got {tuple(x.shape)}")
    if conditioned and (cond is None or cond.shape != x.shape):
        got = None if cond is None else tuple(cond.shape)
        raise ValueError(f"a bridge model needs cond (the noisy input) shaped like x; got {got}")
    if not conditioned and cond is not None:
        raise ValueError("this model was built for diffusion.objective=predictive: no cond")


def shift_in(register: torch.Tensor, new: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """A shift register's next contents: ``register`` without its oldest entries along
    ``dim``, then ``new`` (as many entries as it holds in all). A register of one entry
    is ``new`` itself: no copy, which is a streaming step's saving when it keeps one frame
    (in the register's shape: an exported scan's carry must keep its sizes and layout)."""
    if register.shape[dim] == new.shape[dim]:
        return new.reshape(register.shape)
    return torch.cat(
        [register.narrow(dim, new.shape[dim], register.shape[dim] - new.shape[dim]), new], dim
    )
