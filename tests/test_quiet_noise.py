"""The causal quiet-frames noise estimate against the filter's rule, frame by frame."""

import math

import pytest
import torch

from diffdenoise.models import quiet


def by_the_rule(power: torch.Tensor, window: int) -> torch.Tensor:
    """Per frame, the mean power of the frames of its window at or below the window's
    ``torch.quantile`` of energy: the baseline filter's rule over the frames heard."""
    energy, out = power.sum(1), torch.empty_like(power)
    for b in range(power.shape[0]):
        for t in range(power.shape[-1]):
            first = max(0, t - window + 1)
            heard = energy[b, first : t + 1]
            chosen = heard <= torch.quantile(heard, quiet.QUIET_FRACTION)
            out[b, :, t] = power[b, :, first : t + 1][:, chosen].mean(1)
    return out


@pytest.mark.parametrize("window, block", [(16, 1024), (16, 7), (200, 5)])
def test_each_frame_is_the_quietest_fifth_of_its_window(window, block, monkeypatch):
    monkeypatch.setattr(quiet, "BLOCK", block)  # blocks of frames give the same numbers
    torch.manual_seed(0)
    power = torch.rand(2, 5, 60, dtype=torch.float64) ** 3
    got = quiet.quiet_noise(power, power.sum(1), 60, window)
    torch.testing.assert_close(got, by_the_rule(power, window), rtol=1e-12, atol=0)


def test_a_stream_of_frames_gets_the_estimate_of_the_whole():
    torch.manual_seed(1)
    power = torch.rand(1, 4, 30) ** 3
    whole = quiet.quiet_noise(power, power.sum(1), 30, 8)
    state, pieces, at = quiet.history(1, 4, 8, "cpu"), [], 0
    for frames in (1, 3, 0, 9, 17):
        noise, state = quiet.extend(power[..., at : at + frames], state, 8)
        pieces.append(noise)
        at += frames
    torch.testing.assert_close(torch.cat(pieces, -1), whole, rtol=1e-6, atol=0)
    assert state["quiet_power"].shape == (1, 4, 7) and not math.isinf(state["quiet_energy"][0, 0])


def test_quiet_frames_find_the_noise_level_between_loud_frames():
    power = torch.full((1, 3, 50), 1e-3)
    power[..., ::2] = 1.0
    power[..., 1::4] = 1.0  # three frames in four loud: a quarter at the noise's level
    noise = quiet.quiet_noise(power, power.sum(1), 50, 50)
    torch.testing.assert_close(
        noise[..., 20:], torch.full((1, 3, 30), 1e-3)
    )  # once a fifth is heard
