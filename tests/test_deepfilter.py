"""Deep filtering on top of the spectral gain: it starts as nothing, lines a tone's past
frames up with its current one, and takes the inference share of the correction."""

import math

import numpy as np
import torch

from diffdenoise.models.deepfilter import MAX_HZ, aligned_past, relative_phase
from diffdenoise.models.spectral import SpectralMaskModel


def model(**kw):
    torch.manual_seed(0)
    return SpectralMaskModel(16000, win_ms=64, hop_ms=16, hidden=16, layers=1, time_dim=8, **kw)


def perturbed(m):
    with torch.no_grad():
        for p in m.deep_filter.parameters():
            p.normal_(0, 0.5)
    return m


def test_an_untrained_filter_adds_nothing_and_a_trained_one_keeps_shapes():
    x = torch.randn(2, 1, 8000)
    plain, filtered = model().eval(), model(deep_filter_taps=2).eval()
    with torch.no_grad():
        np.testing.assert_array_equal(filtered(x).numpy(), plain(x).numpy())
        out = perturbed(filtered)(x)
    assert out.shape == x.shape and not torch.allclose(out, plain(x))


def test_only_bins_below_the_limit_are_filtered():
    m = perturbed(model(deep_filter_taps=3)).eval()
    spec = m.stft(torch.randn(1, 8000))
    gain, stacked = m.gain_and_features(spec, torch.zeros(1))
    added = m.deep_filter(spec, gain, stacked)
    low = m.deep_filter.low_bins
    assert low == math.ceil(MAX_HZ * 1024 / 16000) + 1 == 321
    assert added.shape == spec.shape and added[:, low:].abs().max() == 0
    assert added[:, :low, 1:].abs().min() > 0  # frame 0 has no past


def test_past_frames_of_a_tone_at_a_bin_centre_line_up_with_the_current_frame():
    n_fft, hop, rate, bin_ = 1024, 256, 16000, 41  # turns by a quarter each hop
    t = torch.arange(rate) / rate
    tone = torch.cos(2 * math.pi * bin_ * rate / n_fft * t + 0.3)[None]
    spec = torch.stft(tone, n_fft, hop, window=torch.hann_window(n_fft), return_complex=True)
    past = aligned_past(spec, 2, hop, n_fft)
    middle = slice(8, 50)
    for frame in past:
        torch.testing.assert_close(frame[0, bin_, middle], spec[0, bin_, middle], rtol=1e-4, atol=0)
    phases = relative_phase(spec, past)  # cos 1, sin 0 for both taps
    assert phases.shape == (1, 4, spec.shape[1], spec.shape[2])
    torch.testing.assert_close(phases[0, :, bin_, middle], torch.tensor([1.0, 0, 1, 0])[:, None]
                               .expand(4, 42), atol=1e-4, rtol=0)  # fmt: skip
    assert torch.all(past[1][..., :2] == 0)  # nothing before the first frame


def test_the_inference_share_scales_the_filter_and_training_applies_all_of_it():
    x = torch.randn(1, 1, 8000)
    with torch.no_grad():
        none = model(correction_scale=0.0, deep_filter_taps=2)
        perturbed(none).eval()
        np.testing.assert_allclose(none(x).numpy(), model(correction_scale=0.0).eval()(x).numpy(),
                                   atol=1e-6)  # fmt: skip
        none.train()
        assert not torch.allclose(none(x), model(correction_scale=0.0).train()(x))


def test_the_filter_runs_under_bf16_autocast_as_training_on_a_gpu_does():
    m = perturbed(model(deep_filter_taps=2))
    x = torch.randn(2, 1, 8000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    y.float().square().mean().backward()
    assert y.shape == x.shape and m.deep_filter.net[0].weight.grad.abs().sum() > 0
