"""Synthetic rooms: reverberation time, direct-to-reverberant ratio, convolution."""

import numpy as np
import pytest

from diffdenoise import room


def schroeder_rt60(response: np.ndarray, rate: int) -> float:
    """RT60 from the energy decay curve's fall from -5 to -35 dB (T30), as ISO 3382 does."""
    energy = np.cumsum(response[::-1] ** 2)[::-1]
    decay_db = 10 * np.log10(energy / energy[0])
    start, stop = np.argmax(decay_db < -5), np.argmax(decay_db < -35)
    return 2 * (stop - start) / rate


@pytest.mark.parametrize("rt60", [0.3, 0.8])
def test_impulse_response_decays_60_db_in_rt60_at_the_set_drr(rt60):
    response = room.impulse_response(np.random.default_rng(0), 16000, rt60)
    tail = response[round(room.GAP_S * 16000) :]
    assert response[0] == 1.0 and np.all(response[1 : round(room.GAP_S * 16000)] == 0)
    assert 10 * np.log10(1.0 / np.sum(tail**2)) == pytest.approx(room.DRR_DB, abs=0.01)
    assert schroeder_rt60(tail, 16000) == pytest.approx(rt60, rel=0.1)
    assert len(response) == round(room.GAP_S * 16000) + round(room.LENGTH_RT60 * rt60 * 16000)


def test_impulse_response_is_seeded_and_refuses_no_room():
    def make(seed):
        return room.impulse_response(np.random.default_rng(seed), 16000, 0.4)

    assert np.array_equal(make(1), make(1)) and not np.array_equal(make(1), make(2))
    with pytest.raises(ValueError, match="rt60 must be positive, got 0"):
        room.impulse_response(np.random.default_rng(0), 16000, 0.0)


def test_reverberate_is_a_level_kept_convolution():
    rng = np.random.default_rng(3)
    clean = rng.standard_normal(1000).astype(np.float32)
    assert np.allclose(room.reverberate(clean, np.ones(1, np.float32)), clean, atol=1e-5)
    response = rng.standard_normal(300).astype(np.float32)
    wet = room.reverberate(clean, response)
    direct = np.convolve(clean, response)[:1000]
    assert wet.shape == clean.shape and wet.dtype == np.float32
    assert np.allclose(wet, direct * np.sqrt(np.mean(clean**2) / np.mean(direct**2)), atol=1e-4)
