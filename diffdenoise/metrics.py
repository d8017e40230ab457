"""Signal metrics on ``(..., time)`` tensors or arrays."""

from __future__ import annotations

import numpy as np
import torch


def si_sdr(estimate, reference, eps: float = 1e-8):
    """Scale-invariant SDR in dB along the last axis (tensors or numpy arrays)."""
    if isinstance(estimate, np.ndarray):
        return si_sdr(torch.from_numpy(estimate), torch.from_numpy(reference), eps).numpy()
    est = estimate.double() - estimate.double().mean(-1, keepdim=True)
    ref = reference.double() - reference.double().mean(-1, keepdim=True)
    scale = (est * ref).sum(-1, keepdim=True) / (ref.square().sum(-1, keepdim=True) + eps)
    target = scale * ref
    ratio = target.square().sum(-1) / ((est - target).square().sum(-1) + eps)
    return 10 * torch.log10(ratio + eps)
