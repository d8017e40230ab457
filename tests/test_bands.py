"""ERB band pooling of the spectral model's input: bands cover every bin once, keep the low
bins single, follow the ERB scale at any window, and average what they pool."""

import itertools

import numpy as np
import pytest
import torch

from diffdenoise.models.bands import band_edges, band_matrix, pool_bands
from diffdenoise.models.spectral import SpectralMaskModel


@pytest.mark.parametrize(("bins", "rate", "bands"), [(513, 16000, 64), (1537, 48000, 96)])
def test_bands_cover_every_bin_once_and_widen_with_frequency(bins, rate, bands):
    edges = band_edges(bins, rate, bands)
    widths = np.diff(edges)
    assert edges[0] == 0 and edges[-1] == bins and len(widths) == bands
    assert widths.min() >= 1 and widths[:5].tolist() == [1] * 5  # below 80 Hz: single bins
    assert widths[-1] > 20  # at Nyquist a band is many bins wide


def test_band_edges_follow_the_erb_scale_whatever_the_window():
    # Past the single-bin bands, a 64 ms and a 256 ms window put each edge at one frequency
    coarse = np.array(band_edges(513, 16000, 32)) * 8000 / 512
    fine = np.array(band_edges(2049, 16000, 32)) * 8000 / 2048
    assert np.abs(coarse - fine)[8:].max() <= 8000 / 512  # within one coarse bin


def test_pooling_averages_each_band():
    edges = band_edges(513, 16000, 64)
    matrix = band_matrix(513, 16000, 64)
    per_bin = torch.zeros(513)
    for k, (a, b) in enumerate(itertools.pairwise(edges)):
        per_bin[a:b] = torch.linspace(k - 0.5, k + 0.5, b - a) if b - a > 1 else k
    feats = torch.stack([per_bin, 2 * per_bin])[None, :, :, None].expand(3, 2, 513, 5)
    pooled = pool_bands(feats, matrix)  # (3, 2 * 64, 5)
    assert pooled.shape == (3, 128, 5)
    np.testing.assert_allclose(pooled[0, :64, 0].numpy(), np.arange(64), atol=1e-5)
    np.testing.assert_allclose(pooled[2, 64:, 4].numpy(), 2 * np.arange(64), atol=1e-5)


def model(**kw):
    torch.manual_seed(0)
    return SpectralMaskModel(16000, win_ms=64, hop_ms=16, hidden=16, layers=1, time_dim=8, **kw)


def test_a_banded_model_reads_fewer_inputs_and_starts_as_the_prior():
    plain, banded = model().eval(), model(input_bands=64).eval()
    assert plain.inp.in_channels == 4 * 513 and banded.inp.in_channels == 4 * 64
    x = torch.randn(2, 1, 8000)
    with torch.no_grad():
        np.testing.assert_array_equal(banded(x).numpy(), plain(x).numpy())
        torch.nn.init.normal_(banded.out.weight, std=0.5)  # a trained head: bands matter
        out = banded(x)
    assert out.shape == x.shape and not torch.allclose(out, plain(x))
