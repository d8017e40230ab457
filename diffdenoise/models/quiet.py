"""A causal form of the Wiener filter's noise estimate: the mean power of the quietest
fifth of the frames heard in the last ``window`` frames.

The baseline filter (:mod:`diffdenoise.evaluation.baseline`) takes the quietest fifth of a
whole file, which a stream does not have. Over the frames heard so far the same rule
scores 0.13 dB under it on recorded speech, where a trailing one-second minimum (the
causal model's other estimate) holds speech, overestimates the noise and costs the prior
0.94 dB of SI-SDR at the realtime frame (docs/experiments.md, 2026-12-06). A bounded
window keeps a stream's state finite.

One function serves whole files, training crops, blocks of frames and a single frame
alike, so that streaming equals offline: every frame's estimate depends only on the
powers of its own window, found by the same quantile and comparison in each.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from diffdenoise.models.spectral import QUIET_FRACTION  # as the offline prior picks them

BLOCK = 1024  # output frames per block: the (block, window + block) mask stays small


def quiet_noise(power: torch.Tensor, energy: torch.Tensor, frames: int, window: int):
    """Noise power of the last ``frames`` of ``power``, each from its own ``window``.

    Args:
        power: ``(batch, bins, S)`` periodograms; the first ``S - frames`` are the history
            (zero where no frame was heard yet).
        energy: ``(batch, S)`` each frame's power summed over bins; ``inf`` where no frame
            was heard, so that it is never counted.
        frames: how many of the last frames to estimate for.
        window: frames each estimate looks back over, its own included.
    Returns:
        ``(batch, bins, frames)``: per output frame, the mean power of the frames of its
        window whose energy is at most the window's ``QUIET_FRACTION`` quantile (linear
        interpolation between the finite energies, as ``torch.quantile``).
    """
    total = power.shape[-1]
    pieces = [power[..., total:]]  # no frames: none out
    for start in range(total - frames, total, BLOCK):
        stop = min(start + BLOCK, total)
        first = max(0, start - window + 1)  # the oldest frame any of this block reads
        pieces.append(_block(power[..., first:stop], energy[:, first:stop], stop - start, window))
    return torch.cat(pieces, -1)


def _block(power: torch.Tensor, energy: torch.Tensor, frames: int, window: int):
    """:func:`quiet_noise` of the last ``frames`` of ``power`` (``frames`` <= :data:`BLOCK`)."""
    total = energy.shape[-1]
    padded = F.pad(energy, (window - 1, 0), value=math.inf)
    newest = torch.arange(total - frames, total, device=power.device)[:, None]
    # The output frames' windows by index, not unfold: an exported graph would build all
    # ``total`` windows before taking the last ``frames`` (one frame per streaming step).
    windows = padded[:, newest + torch.arange(window, device=power.device)]  # (b, frames, w)
    threshold = _quantile(windows)  # (batch, frames)
    source = torch.arange(total, device=power.device)
    inside = (source <= newest) & (source > newest - window)  # (frames, total)
    quiet = (inside & (energy[:, None, :] <= threshold[..., None])).to(power.dtype)
    summed = torch.einsum("bks,bjs->bkj", power, quiet)
    return summed / quiet.sum(-1)[:, None, :]


def _last_frame(powers: torch.Tensor, energies: torch.Tensor) -> torch.Tensor:
    """:func:`quiet_noise` of the last frame when ``powers`` ``(batch, bins, window)`` is
    exactly its window: the same quantile and comparison in a third of the operators, since
    one frame per step is a streaming model's hot path."""
    threshold = _quantile(energies[:, None])  # (batch, 1)
    quiet = (energies <= threshold).to(powers.dtype)[..., None]  # (batch, window, 1)
    return (powers @ quiet) / quiet.sum(1, keepdim=True)  # (batch, bins, 1)


def _quantile(windows: torch.Tensor) -> torch.Tensor:
    """``(batch, frames, window)`` energies, ``inf`` where none -> ``(batch, frames)``
    the :data:`QUIET_FRACTION` quantile of each row's finite values."""
    window = windows.shape[-1]
    ranks, weight = _ranks(window, windows.dtype, windows.device)
    # the smallest values, in order, as far as the highest rank read (infs sort last)
    needed = min(window, int(QUIET_FRACTION * (window - 1)) + 3)
    ordered = windows.topk(needed, -1, largest=False).values
    count = torch.isfinite(windows).sum(-1)  # (batch, frames)
    pair = ordered.gather(-1, ranks[count])  # (batch, frames, 2): below and above the rank
    return torch.lerp(pair[..., 0], pair[..., 1], weight[count])


def _ranks(window: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """For each count of finite values ``0..window``: ``(window + 1, 2)`` the ranks of
    the two order statistics the quantile lies between and ``(window + 1,)`` its weight
    on the upper one, in ``dtype`` as ``torch.quantile`` computes them. A lookup by count
    is a third of the operators of that arithmetic on a streaming step's hot path. Kept
    between calls, except in a graph being traced (export, compile), where it is part of
    the graph: a tensor made while tracing is no tensor to keep."""
    if torch.compiler.is_compiling():
        return _rank_table(window, dtype, device)
    key = (window, dtype, torch.device(device))
    if key not in _RANKS:
        with torch.inference_mode(False):  # plain tensors, usable in and out of inference mode
            _RANKS[key] = _rank_table(window, dtype, device)
    return _RANKS[key]


_RANKS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _rank_table(window: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    last = (torch.arange(window + 1, device=device) - 1).clamp_min(0).to(dtype)
    rank = QUIET_FRACTION * last
    below = rank.floor()
    above = torch.minimum(below + 1, last)
    return torch.stack([below, above], -1).long(), rank - below


def history(batch: int, bins: int, window: int, device) -> dict[str, torch.Tensor]:
    """A stream's state before its first frame: the last ``window - 1`` frames' powers
    ``(batch, bins, window - 1)`` and energies ``(batch, window - 1)`` (``inf``: none)."""
    return {
        "quiet_power": torch.zeros(batch, bins, window - 1, device=device),
        "quiet_energy": torch.full((batch, window - 1), math.inf, device=device),
    }


def extend(power: torch.Tensor, state: dict, window: int) -> tuple[torch.Tensor, dict]:
    """``(batch, bins, n)`` new frames' powers -> their noise ``(batch, bins, n)`` by
    :func:`quiet_noise` over the stream's :func:`history`, and the next history."""
    powers = torch.cat([state["quiet_power"], power], -1)
    energies = torch.cat([state["quiet_energy"], power.sum(1)], -1)
    if power.shape[-1] == 1:  # a streaming step: its window is the whole history
        noise = _last_frame(powers, energies)
    else:
        noise = quiet_noise(powers, energies, power.shape[-1], window)
    keep = window - 1
    return noise, {"quiet_power": powers[..., -keep:], "quiet_energy": energies[:, -keep:]}
