"""Speed perturbation of the training speech (``noise.speed_perturb``)."""

import numpy as np
import pytest
import torch

from diffdenoise.data import pipeline as data
from diffdenoise.data import speed
from tests.test_data import mixer, shards, stream  # noqa: F401 (shards: a fixture)

RATE, SEGMENT = 16000, 8000


def peak_hz(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave.astype(np.float64) * np.hanning(wave.shape[0])))
    return float(np.fft.rfftfreq(wave.shape[0], 1 / RATE)[spectrum.argmax()])


@pytest.mark.parametrize("seed", range(4))
def test_a_tone_comes_out_at_its_speed_its_level_and_the_crop_length(seed):
    window, played = speed.draw_window(np.random.default_rng(seed), SEGMENT, 0.2)
    factor = window / played
    assert 0.8 * 0.99 <= factor <= 1.2 * 1.01 and factor != 1.0
    tone = 0.5 * np.sin(2 * np.pi * 1000.0 * np.arange(3 * SEGMENT) / RATE)
    out = speed.played_at((tone[:window] * 32768).astype(np.int16), window, played, SEGMENT)
    assert out.dtype == np.int16 and out.shape == (SEGMENT,)
    assert peak_hz(out) == pytest.approx(1000.0 * factor, abs=RATE / SEGMENT)
    level = np.sqrt(np.mean((out / 32768.0) ** 2))
    assert level == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_both_fft_lengths_are_fast_ones():
    for seed in range(20):
        window, played = speed.draw_window(np.random.default_rng(seed), 96000, 0.1)
        for n in (window, played):
            assert speed.smooth_at_least(n) == n
    assert speed.smooth_at_least(35027) == 35200 == 2**7 * 5**2 * 11  # 35027 is prime


def test_a_file_end_inside_the_window_reads_as_silence_not_as_its_start():
    burst = np.zeros(SEGMENT, np.float32)
    burst[:2000] = 0.5  # audio, then the file ends
    window, played = speed.draw_window(np.random.default_rng(0), SEGMENT, 0.1)
    out = speed.played_at(burst[: SEGMENT // 2], window, played, SEGMENT)
    assert out.dtype == np.float32 and np.abs(out[-2000:]).max() < 1e-2


def test_perturbed_batches_resume_exactly_and_differ_from_unperturbed_ones(shards):  # noqa: F811
    urls = data.expand_urls(str(shards / "train-*.tar"))
    full = list(stream(urls, batches=6, mixer=mixer(speed_perturb=0.2)))
    resumed = list(stream(urls, batches=6, skip_batches=4, mixer=mixer(speed_perturb=0.2)))
    for a, b in zip(full[4:], resumed, strict=True):
        assert torch.equal(a["clean"], b["clean"]) and torch.equal(a["noisy"], b["noisy"])
    plain = list(stream(urls, batches=6))
    assert [b["keys"] for b in plain] == [b["keys"] for b in full]  # the same samples...
    assert all(a["clean"].shape == b["clean"].shape == (3, 1, SEGMENT) for a, b in zip(plain, full))
    assert not any(torch.equal(a["clean"], b["clean"]) for a, b in zip(plain, full))  # ...played
