import numpy as np
import pytest
import torch

from diffdenoise.data import mixing, moving
from diffdenoise.data import pipeline as data

RATE = 16000


def frame_levels_db(x: np.ndarray, frame: int) -> np.ndarray:
    frames = x[: len(x) // frame * frame].reshape(-1, frame)
    return 10 * np.log10(np.mean(frames**2, 1) + 1e-12)


@pytest.mark.parametrize("make", [moving.tonal, moving.bursts])
def test_a_source_depends_on_its_seed_alone(make):
    together = make([3, 11, 12], 2 * RATE, RATE, "cpu")
    alone = make([11], 2 * RATE, RATE, "cpu")
    assert together.shape == (3, 2 * RATE) and torch.isfinite(together).all()
    assert torch.equal(together[1], alone[0])  # resume and any batch or world size
    assert not torch.equal(together[0], together[1])
    assert (together.square().mean(1) > 0).all()


def test_tonal_noise_is_harmonic_notes_whose_pitch_changes():
    rows = moving.tonal(list(range(12)), 2 * RATE, RATE, "cpu").numpy()
    white = np.random.default_rng(0).standard_normal(2 * RATE)
    frame = 1024  # 64 ms: a note lasts at least 80 ms
    window = np.hanning(frame)

    def peak_share(x):
        """Share of each loud frame's power in its top 2 % of bins (median over frames)."""
        spec = np.abs(np.fft.rfft(x[: len(x) // frame * frame].reshape(-1, frame) * window)) ** 2
        loud = spec.sum(1) > 1e-3 * spec.sum(1).max()
        top = np.sort(spec[loud], 1)[:, -spec.shape[1] // 50 :].sum(1)
        return np.median(top / spec[loud].sum(1)), spec[loud].argmax(1)

    assert peak_share(white)[0] < 0.2  # about 0.1: the top of an exponential spread
    changed = 0
    for row in rows:
        share, strongest = peak_share(row)
        assert share > 0.7  # a few partials, not a noise floor
        changed += len(set(strongest.tolist())) > 1
        spectrum = np.abs(np.fft.rfft(row)) ** 2
        top = spectrum[int(0.92 * len(spectrum)) :].sum()  # above 0.46 x the rate
        assert top < 1e-3 * spectrum.sum()  # partials stop below Nyquist: no aliasing
    assert changed >= 10  # notes follow one another


def test_bursts_start_from_silence_and_decay():
    rows = moving.bursts(list(range(12)), 2 * RATE, RATE, "cpu").numpy()
    swings = []
    for row in rows:
        levels = frame_levels_db(row, 160)  # 10 ms frames
        swings.append(levels.max() - np.percentile(levels, 10))
        loudest = int(levels.argmax())
        tail = levels[loudest : loudest + 100]
        assert tail[-1] < tail[0] or len(tail) < 100  # it rings out rather than holds
    assert np.median(swings) > 20.0  # bursts, not a steady noise


def test_moving_noise_needs_the_sample_rate():
    m = data.Mixer(weights={"tonal": 1.0}, snr_min=0, snr_max=0, gain_min_db=0, gain_max_db=0,
                   timestep="zero", timesteps=1000, infer_timestep=0)  # fmt: skip
    plan = m.plan(np.random.default_rng(0), 4000)
    batch = data.collate([(np.zeros(4000, np.float32), None, plan, "k", "u")])
    with pytest.raises(data.DataError, match="noise.weights.tonal: .* needs the sample rate"):
        mixing.synthesize(batch["plan"], 4000, "cpu")
    noise = mixing.synthesize(batch["plan"], 4000, "cpu", sample_rate=RATE)
    assert noise.square().mean().item() == pytest.approx(1.0, rel=1e-4)
