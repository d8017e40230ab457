"""Synthetic rooms: reverberation time, direct-to-reverberant ratio, convolution."""

import numpy as np
import pytest
import torch

from diffdenoise.data import room


def schroeder_rt60(response: np.ndarray, rate: int) -> float:
    """RT60 from the energy decay curve's fall from -5 to -35 dB (T30), as ISO 3382 does."""
    energy = np.cumsum(response[::-1] ** 2)[::-1]
    decay_db = 10 * np.log10(energy / energy[0])
    start, stop = np.argmax(decay_db < -5), np.argmax(decay_db < -35)
    return 2 * (stop - start) / rate


def rooms(rt60s, rate=16000, seed=0):
    longest = room.taps(rate, max(rt60s))
    normal = torch.randn(len(rt60s), longest, generator=torch.Generator().manual_seed(seed))
    return room.impulse_responses(normal, torch.tensor(rt60s), rate)


def test_impulse_responses_decay_60_db_in_their_rt60_at_the_set_drr():
    rt60s, gap = [0.3, 0.8], round(room.GAP_S * 16000)
    responses = rooms(rt60s).numpy()
    assert responses.shape == (2, room.taps(16000, 0.8))
    for response, rt60 in zip(responses, rt60s):
        tail = response[gap : room.taps(16000, rt60)]
        assert response[0] == 1.0 and np.all(response[1:gap] == 0)
        assert 10 * np.log10(1.0 / np.sum(tail**2)) == pytest.approx(room.DRR_DB, abs=0.01)
        assert schroeder_rt60(tail, 16000) == pytest.approx(rt60, rel=0.1)
        assert np.all(response[room.taps(16000, rt60) :] == 0)  # the shorter room ends


def test_impulse_responses_come_from_their_draws_and_refuse_no_room():
    assert torch.equal(rooms([0.4], seed=1), rooms([0.4], seed=1))
    assert not torch.equal(rooms([0.4], seed=1), rooms([0.4], seed=2))
    with pytest.raises(ValueError, match="rt60 must be positive, got 0"):
        room.impulse_responses(torch.randn(1, 100), torch.tensor([0.0]), 16000)


def test_reverberate_is_a_level_kept_convolution_per_row():
    rng = np.random.default_rng(3)
    clean = rng.standard_normal((2, 1000)).astype(np.float32)
    unit = torch.zeros(2, 5)
    unit[:, 0] = 1.0
    assert torch.allclose(room.reverberate(torch.from_numpy(clean), unit), torch.from_numpy(clean),
                          atol=1e-5)  # fmt: skip
    responses = rng.standard_normal((2, 300)).astype(np.float32)
    wet = room.reverberate(torch.from_numpy(clean), torch.from_numpy(responses)).numpy()
    assert wet.shape == clean.shape and wet.dtype == np.float32
    for row in range(2):
        direct = np.convolve(clean[row], responses[row])[:1000]
        level = np.sqrt(np.mean(clean[row] ** 2) / np.mean(direct**2))
        assert np.allclose(wet[row], direct * level, atol=1e-4)
