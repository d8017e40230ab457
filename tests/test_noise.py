import numpy as np
import pytest

from diffdenoise.data import noise


@pytest.mark.parametrize("kind", sorted(noise.GENERATORS))
@pytest.mark.parametrize("snr", [-5.0, 0.0, 7.3, 20.0])
def test_mix_hits_requested_snr(kind, snr):
    rng = np.random.default_rng(1)
    clean = np.sin(np.linspace(0, 300, 16000)).astype(np.float32) * 0.3
    noisy = noise.mix_at_snr(clean, noise.GENERATORS[kind](rng, 16000), snr)
    assert noise.snr_db(clean, noisy) == pytest.approx(snr, abs=0.1)


def test_silent_clean_gives_finite_quiet_mix():
    rng = np.random.default_rng(0)
    silent = np.zeros(8000, np.float32)
    noisy = noise.mix_at_snr(silent, noise.gaussian(rng, 8000), 10.0)
    assert np.isfinite(noisy).all()
    assert 0 < noise.power(noisy) < noise.SILENCE_POWER  # noise 10 dB below the floor
    assert np.array_equal(noise.mix_at_snr(silent, np.zeros(8000, np.float32), 0), silent)


def test_coloured_noise_spectral_tilt():
    rng = np.random.default_rng(0)
    n = 1 << 15

    def low_high_ratio(x):
        spec = np.abs(np.fft.rfft(x)) ** 2
        return spec[1 : n // 64].mean() / spec[n // 4 :].mean()

    white = low_high_ratio(noise.gaussian(rng, n))
    pink = low_high_ratio(noise.pink(rng, n))
    brown = low_high_ratio(noise.brown(rng, n))
    assert white < 3 < pink < brown
    for gen in (noise.pink, noise.brown):
        assert np.sqrt(noise.power(gen(rng, 1000))) == pytest.approx(1.0, rel=1e-3)
    assert noise.pink(rng, 1).shape == (1,)
