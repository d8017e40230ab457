"""Overlap-add and block-wise resampling: unity gain, exact lengths, stream == whole."""

import numpy as np
import pytest
import torch
import torchaudio.functional as AF
from hypothesis import given, settings
from hypothesis import strategies as st

from diffdenoise import Denoiser
from diffdenoise.inference.overlap import mirrored, plan_segments, resample_stream, segment_window


class Identity(torch.nn.Module):
    """A test double for the model: returns its input."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, t=None):
        return x


@settings(max_examples=80, deadline=None)
@given(
    length=st.integers(1, 6000),
    channels=st.integers(1, 3),
    segment=st.integers(16, 1500),
    overlap_pct=st.floats(0.0, 0.95),
    context=st.integers(0, 300),
    batch=st.integers(1, 9),
)
def test_identity_model_reproduces_input(length, channels, segment, overlap_pct, context, batch):
    rate = 1000  # seconds map to samples one-to-one in thousandths
    overlap = int(segment * overlap_pct)
    denoiser = Denoiser(
        Identity(),
        rate,
        segment=segment / rate,
        overlap=overlap / rate,
        context=context / rate,
        batch_size=batch,
    )
    x = np.random.default_rng(length).standard_normal((channels, length)).astype(np.float32)
    y = denoiser(x, rate)
    assert y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=1e-5)


class Recorder(Identity):
    """A test double that keeps every row it was given."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def forward(self, x, t=None):
        self.rows += list(x[:, 0].numpy().copy())
        return x


@settings(max_examples=60, deadline=None)
@given(total=st.integers(1, 400), pad=st.integers(0, 900))
def test_mirrored_indices_are_numpy_reflect_padding(total, pad):
    x = np.arange(total)
    expected = np.pad(x, pad, mode="reflect") if total > 1 else np.zeros(total + 2 * pad)
    np.testing.assert_array_equal(mirrored(np.arange(-pad, total + pad), total), expected)


@pytest.mark.parametrize("length", [300, 2500])
def test_context_beyond_the_ends_is_the_signal_mirrored(length):
    """Digital silence in a segment's context would sit among its quietest frames, which
    a spectral model takes for the noise, and it never saw such zeros in training."""
    rate, context = 1000, 50
    model = Recorder()
    denoiser = Denoiser(model, rate, segment=1.0, overlap=0.1, context=context / rate)
    x = np.random.default_rng(length).standard_normal(length).astype(np.float32)
    np.testing.assert_allclose(denoiser(x, rate), x, atol=1e-5)
    padded = np.pad(x, context, mode="reflect")
    first, last = model.rows[0], model.rows[-1]
    np.testing.assert_array_equal(first, padded[: len(first)])
    np.testing.assert_array_equal(last, padded[len(padded) - len(last) :])
    assert all(np.abs(row).min() > 0 for row in model.rows)  # no zero-filled sample


@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(1, 3000),
    segment=st.integers(16, 800),
    context=st.integers(0, 400),
    batch=st.integers(1, 5),
)
def test_every_row_is_the_signal_mirrored_at_its_place(length, segment, context, batch):
    """Rows, context included, for any cut and batching: also where a pad is longer than
    the file or the buffer has moved on (the context is cropped away, so the identity
    test above could not see a wrong one)."""
    rate, overlap = 1000, segment // 4
    model = Recorder()
    denoiser = Denoiser(
        model, rate, segment=segment / rate, overlap=overlap / rate, context=context / rate,
        batch_size=batch,
    )  # fmt: skip
    x = np.random.default_rng(length).standard_normal(length).astype(np.float32)
    denoiser(x, rate)
    used, segments = plan_segments(length, segment, overlap)
    padded = x[mirrored(np.arange(-context, length + context + used), length)]
    assert len(model.rows) == len(segments)
    for row, seg in zip(model.rows, segments):
        np.testing.assert_array_equal(row, padded[seg.start : seg.start + used + 2 * context])


def test_seed_mode_keeps_the_originals_zero_padding():
    model = Recorder()
    x = np.ones(1500, np.float32)
    Denoiser(model, 1000, segment=1.0, mode="seed")(x, 1000)
    assert [len(r) for r in model.rows] == [1000, 1000]
    assert (model.rows[1][500:] == 0).all()


@pytest.mark.parametrize("total,length,overlap", [(10, 4, 1), (4000, 1000, 250), (1001, 1000, 0)])
def test_segments_cover_everything_with_real_audio(total, length, overlap):
    used, segments = plan_segments(total, length, overlap)
    assert used == length and segments[0].start == 0
    assert segments[-1].start + length == total  # the last one ends on the last sample
    weight = np.zeros(total)
    for seg in segments:
        weight[seg.start : seg.start + length] += segment_window(length, seg)
    np.testing.assert_allclose(weight, 1.0, atol=1e-12)


def test_seed_plan_is_the_original_non_overlapping_grid():
    used, segments = plan_segments(2500, 1000, 0, pad_last=True)
    assert used == 1000 and [s.start for s in segments] == [0, 1000, 2000]
    assert plan_segments(300, 1000, 0, pad_last=True)[0] == 1000  # short file: zero-padded


@pytest.mark.parametrize("orig,new", [(44100, 16000), (16000, 48000), (22050, 16000)])
@pytest.mark.parametrize("block", [1, 777, 100000])
def test_block_resampling_equals_whole_signal(orig, new, block):
    x = np.random.default_rng(0).standard_normal((2, 30001)).astype(np.float32)
    whole = AF.resample(torch.from_numpy(x), orig, new).numpy()
    blocks = [x[:, i : i + block] for i in range(0, x.shape[1], block)]
    streamed = np.concatenate(list(resample_stream(blocks, orig, new, 2)), axis=1)
    assert streamed.shape == whole.shape
    np.testing.assert_allclose(streamed, whole, atol=1e-6)
