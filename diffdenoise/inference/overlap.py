"""Streaming building blocks for inference: block-wise resampling and overlap-add.

Both work on a stream of ``(channels, n)`` float32 blocks of any size and give the same
result as processing the whole signal at once (to float rounding), so a one-hour file is
denoised in bounded memory with exactly the answer the in-memory path gives.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torchaudio.functional as AF

# torchaudio's default sinc kernel: 6 zero crossings at 99 % of the lower Nyquist rate.
_ZERO_CROSSINGS, _ROLLOFF = 6, 0.99


class StreamResampler:
    """Resample a stream fed in blocks; the output equals resampling the whole signal.

    torchaudio computes output block ``k`` (``q`` samples) from input samples around
    ``k * p``. Every chunk we resample starts on a multiple of ``p`` and carries a
    ``margin`` of real neighbouring input on both sides, so each output sample sees the
    same input neighbourhood as in a whole-signal resample.
    """

    def __init__(self, orig: int, new: int, channels: int):
        g = math.gcd(orig, new)
        self.p, self.q = orig // g, new // g
        width = math.ceil(_ZERO_CROSSINGS * self.p / (min(self.p, self.q) * _ROLLOFF))
        self.margin = self.p * math.ceil((width + 2) / self.p)
        self.identity = orig == new
        self.buf = np.zeros((channels, 0), np.float32)
        self.buf_start = 0  # input index of buf[:, 0]
        self.fed = 0  # input samples received
        self.emitted = 0  # output samples returned

    def feed(self, block: np.ndarray) -> np.ndarray:
        """Take ``(channels, n)`` input; return the output samples that are now final."""
        if self.identity:
            return block
        self.buf = np.concatenate([self.buf, block], axis=1)
        self.fed += block.shape[1]
        end_in = (self.fed - self.margin) // self.p * self.p
        return self._emit(end_in, end_in // self.p * self.q)

    def flush(self) -> np.ndarray:
        """Return the rest, as the end of the signal (zeros beyond it, like torchaudio)."""
        if self.identity:
            return self.buf[:, :0]
        return self._emit(self.fed, math.ceil(self.fed * self.q / self.p))

    def _emit(self, end_in: int, end_out: int) -> np.ndarray:
        if end_out <= self.emitted:
            return self.buf[:, :0]
        start_in = self.emitted // self.q * self.p
        lo = max(0, start_in - self.margin)
        hi = min(self.fed, end_in + self.margin)
        chunk = torch.from_numpy(self.buf[:, lo - self.buf_start : hi - self.buf_start])
        out = AF.resample(chunk, self.p, self.q).numpy()
        offset = (start_in - lo) // self.p * self.q
        out = out[:, offset : offset + end_out - self.emitted]
        self.emitted = end_out
        keep_from = max(0, end_in - self.margin) - self.buf_start
        self.buf, self.buf_start = self.buf[:, keep_from:], self.buf_start + keep_from
        return out


def resample_stream(
    blocks: Iterable[np.ndarray], orig: int, new: int, channels: int
) -> Iterator[np.ndarray]:
    """Resample an iterator of ``(channels, n)`` blocks."""
    resampler = StreamResampler(orig, new, channels)
    for block in blocks:
        yield resampler.feed(block)
    yield resampler.flush()


def resampled_length(frames: int, orig: int, new: int) -> int:
    """Samples torchaudio returns for ``frames`` input samples (``ceil(frames * new / orig)``)."""
    g = math.gcd(orig, new)
    return math.ceil(frames * (new // g) / (orig // g))


@dataclass(frozen=True)
class Segment:
    """One model input: ``[start, start + length)`` plus cross-fades shared with neighbours."""

    start: int
    fade_in: int
    fade_out: int


def plan_segments(
    total: int, length: int, overlap: int, pad_last: bool = False
) -> tuple[int, list[Segment]]:
    """Cut ``total`` samples into segments of ``length`` overlapping by ``overlap``.

    The last segment is moved back to end on the last sample, so it holds real audio,
    not zeros (its overlap with the one before grows). ``pad_last`` instead keeps the grid
    and zero-pads the end: the original's non-overlapping 1 s cut. A file shorter than one
    segment is one segment of its own length (or zero-padded to ``length`` with
    ``pad_last``). Returns the segment length used and the segments.
    """
    if total <= length:
        return (length if pad_last else total), [Segment(0, 0, 0)]
    hop = length - overlap
    if pad_last:
        starts = list(range(0, total, hop))
    else:
        starts = [*range(0, total - length, hop), total - length]
    fades = [max(0, prev + length - start) for prev, start in itertools.pairwise(starts)]
    fade_in, fade_out = [0, *fades], [*fades, 0]
    return length, [Segment(s, i, o) for s, i, o in zip(starts, fade_in, fade_out)]


def segment_window(length: int, seg: Segment) -> np.ndarray:
    """Raised-sine fade-in and fade-out: neighbouring fades sum to exactly 1."""
    window = np.ones(length, np.float64)
    if seg.fade_in:
        phase = (np.arange(seg.fade_in) + 0.5) / seg.fade_in * (np.pi / 2)
        window[: seg.fade_in] *= np.sin(phase) ** 2
    if seg.fade_out:
        phase = (np.arange(seg.fade_out) + 0.5) / seg.fade_out * (np.pi / 2)
        window[length - seg.fade_out :] *= np.cos(phase) ** 2
    return window


class _Window:
    """A sliding view of a block stream: slices by absolute sample index."""

    def __init__(self, blocks: Iterator[np.ndarray], channels: int):
        self.blocks = blocks
        self.buf = np.zeros((channels, 0), np.float32)
        self.start = 0

    def take(self, lo: int, hi: int, total: int | None = None) -> np.ndarray:
        """Samples ``lo`` to ``hi``. Beyond the ends of a signal of ``total`` samples they
        are its mirror image; without ``total``, zeros."""
        while self.start + self.buf.shape[1] < hi:
            block = next(self.blocks, None)
            if block is None:
                break
            self.buf = np.concatenate([self.buf, block], axis=1)
        if total is not None and (lo < 0 or hi > total):
            return self.buf[:, mirrored(np.arange(lo, hi), total) - self.start]
        out = np.zeros((self.buf.shape[0], hi - lo), np.float32)
        a, b = max(lo, self.start), min(hi, self.start + self.buf.shape[1])
        if b > a:
            out[:, a - lo : b - lo] = self.buf[:, a - self.start : b - self.start]
        return out

    def drop_before(self, index: int) -> None:
        cut = max(0, min(index - self.start, self.buf.shape[1]))
        self.buf, self.start = self.buf[:, cut:], self.start + cut


def mirrored(index: np.ndarray, total: int) -> np.ndarray:
    """Sample indices reflected into ``[0, total)`` about the end samples, as ``np.pad``'s
    ``reflect`` (repeatedly, for a pad longer than the signal)."""
    if total == 1:
        return np.zeros_like(index)
    period = 2 * (total - 1)
    index = np.mod(index, period)
    return np.where(index >= total, period - index, index)


def overlap_add(
    blocks: Iterable[np.ndarray],
    total: int,
    channels: int,
    process: Callable[[np.ndarray], np.ndarray],
    length: int,
    overlap: int,
    context: int = 0,
    batch_rows: int = 16,
    pad_last: bool = False,
) -> Iterator[np.ndarray]:
    """Denoise a stream segment by segment and join the outputs by overlap-add.

    Args:
        blocks: ``(channels, n)`` input blocks, ``total`` samples in all.
        process: ``(rows, time), keys`` -> ``(rows, time)``; each channel of each segment
            is a row, and ``keys`` gives each row's ``(segment start, channel)``.
        context: real neighbouring audio added on both sides of each segment for the model
            to see, then cropped away. Beyond the ends of the signal it is the signal's
            mirror image, not zeros: a spectral model takes its noise estimate from a
            segment's quietest frames, and digital silence there would make it too low.
        batch_rows: rows per ``process`` call.
    Yields:
        ``(channels, n)`` output blocks, ``total`` samples in all, as soon as final.
    """
    length, segments = plan_segments(total, length, overlap, pad_last)
    source = _Window(iter(blocks), channels)
    edge = None if pad_last else total  # the original's cut keeps its zero padding
    per_call = max(1, batch_rows // channels)
    acc = np.zeros((channels, 0), np.float64)
    weight = np.zeros(0, np.float64)
    acc_start = 0
    for first in range(0, len(segments), per_call):
        group = segments[first : first + per_call]
        rows = np.concatenate(
            [source.take(s.start - context, s.start + length + context, edge) for s in group]
        )
        keys = [(s.start, c) for s in group for c in range(channels)]
        out = process(rows, keys)[:, context : context + length]
        out = out.reshape(len(group), channels, -1)
        end = group[-1].start + length
        if end - acc_start > acc.shape[1]:
            grow = end - acc_start - acc.shape[1]
            acc = np.pad(acc, ((0, 0), (0, grow)))
            weight = np.pad(weight, (0, grow))
        for seg, y in zip(group, out):
            window = segment_window(length, seg)
            a = seg.start - acc_start
            acc[:, a : a + length] += y * window
            weight[a : a + length] += window
        following = first + per_call
        done = segments[following].start if following < len(segments) else total
        n = min(done, total) - acc_start
        if n > 0:
            yield (acc[:, :n] / weight[:n]).astype(np.float32)
            acc, weight, acc_start = acc[:, n:], weight[n:], acc_start + n
        if following < len(segments):
            source.drop_before(segments[following].start - context)
