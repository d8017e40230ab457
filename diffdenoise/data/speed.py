"""Speed perturbation of the training speech: a crop played slightly faster or slower,
pitch and tempo together, as a tape would. A corpus of a few dozen voices then stands for
voices higher, lower, quicker and slower than its own, which is where a denoiser trained
on few speakers meets people it never heard.

The loader worker reads a window of the file and resamples it in one FFT to a fixed
length; both lengths are 11-smooth, so the FFT stays fast (a prime length costs 20x).
"""

from __future__ import annotations

from functools import cache

import numpy as np

MARGIN = 256  # output samples kept on each side of the crop: the FFT's wrap-around rings there


@cache  # asked for every training example, of a few hundred lengths per config
def smooth_at_least(n: int) -> int:
    """The smallest 11-smooth number (a product of 2, 3, 5, 7, 11) ``>= n``."""
    while True:
        m = n
        for p in (2, 3, 5, 7, 11):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def draw_window(rng: np.random.Generator, segment: int, speed: float) -> tuple[int, int]:
    """``(window, played)``: read ``window`` samples, play them as ``played`` samples, and
    keep ``segment`` of them (:func:`played_at`). The speed ``window / played`` is drawn
    uniformly from ``[1 - speed, 1 + speed]`` and moved by under 1 % to a fast FFT length."""
    played = smooth_at_least(segment + 2 * MARGIN)
    factor = rng.uniform(1.0 - speed, 1.0 + speed)
    return smooth_at_least(round(played * factor)), played


def played_at(wave: np.ndarray, window: int, played: int, segment: int) -> np.ndarray:
    """``(time,)`` audio read from a ``window`` (shorter at a file's end: zeros follow) ->
    the ``(segment,)`` crop it becomes at speed ``window / played``, in the input's dtype
    (int16 stays int16)."""
    as_int16 = wave.dtype == np.int16
    signal = wave.astype(np.float32) / 32768 if as_int16 else wave.astype(np.float32)
    signal = np.pad(signal, (0, window - signal.shape[0]))
    spectrum = np.fft.rfft(signal)
    bins = played // 2 + 1
    spectrum = spectrum[:bins] if bins <= spectrum.shape[0] else np.pad(
        spectrum, (0, bins - spectrum.shape[0])
    )  # fmt: skip
    out = np.fft.irfft(spectrum, played)[MARGIN : MARGIN + segment] * (played / window)
    if as_int16:
        return np.round(np.clip(out, -1.0, 1.0 - 1 / 32768) * 32768).astype(np.int16)
    return out.astype(np.float32)
