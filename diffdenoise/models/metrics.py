"""Signal metrics: SI-SDR on tensors or arrays, and wideband PESQ and STOI on arrays.

PESQ is defined at 8 and 16 kHz, so wideband PESQ resamples to 16 kHz first. It raises on
silent or too-short audio; :func:`pesq_wb` returns NaN for those instead, and callers
count them rather than crash.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from diffdenoise.config import schema

PESQ_RATE = 16000


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


def pesq_wb(estimate: np.ndarray, reference: np.ndarray, rate: int) -> float:
    """Wideband PESQ (MOS-LQO, about 1.0-4.6) of ``(time,)`` audio; NaN where PESQ refuses."""
    from pesq import pesq

    from diffdenoise.data.audio import resample

    if not np.abs(reference).max(initial=0.0) > 0 or not np.abs(estimate).max(initial=0.0) > 0:
        return float("nan")  # PESQ normalises by the peak: silence has none
    ref = resample(np.asarray(reference, np.float32), rate, PESQ_RATE)
    est = resample(np.asarray(estimate, np.float32), rate, PESQ_RATE)
    try:
        return float(pesq(PESQ_RATE, ref.astype(np.float64), est.astype(np.float64), "wb"))
    except Exception:  # NoUtterancesError, BufferTooShortError, ... on silent or short audio
        return float("nan")


def stoi(estimate: np.ndarray, reference: np.ndarray, rate: int) -> float:
    """Short-time objective intelligibility (0-1) of ``(time,)`` audio."""
    from pystoi import stoi as _stoi

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pystoi warns on signals shorter than 30 frames
        return float(_stoi(np.asarray(reference), np.asarray(estimate), rate, extended=False))


def score(estimate: np.ndarray, reference: np.ndarray, rate: int, names) -> dict[str, float]:
    """The named metrics (``si_sdr``, ``pesq``, ``stoi``) of one ``(time,)`` signal."""
    funcs = {
        "si_sdr": lambda e, r, _: float(si_sdr(e, r)),
        "pesq": pesq_wb,
        "stoi": stoi,
    }
    return {name: funcs[name](estimate, reference, rate) for name in names}


METRICS = schema.METRICS
