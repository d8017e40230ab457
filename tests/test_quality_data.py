"""The quality loop's second test set: a recorded corpus scored beside the held-out split."""

import numpy as np
import pytest
import soundfile as sf

from diffdenoise.bench import quality, quality_data
from diffdenoise.data import noise


def corpus(root, utterances: int = 27):
    rng = np.random.default_rng(0)
    (root / "speech").mkdir(parents=True)
    (root / "noise").mkdir()
    for i in range(utterances):
        sf.write(root / "speech" / f"{i:05d}_xx.wav", 0.1 * rng.standard_normal(8000), 8000)
    sf.write(root / "noise" / "music.wav", 0.2 * rng.standard_normal(48000), 48000)
    return root


def test_recorded_parts_take_every_13th_utterance_and_each_noise_at_the_rate(tmp_path):
    speech, noises = quality_data.recorded_parts(corpus(tmp_path / "rec"), 16000)
    assert [p.name for p in speech] == ["00006_xx.wav", "00019_xx.wav"]
    assert list(noises) == ["recorded music"] and len(noises["recorded music"]) == 16000


def test_recorded_items_mix_each_file_at_every_snr_with_the_noises_in_turn(tmp_path):
    speech, noises = quality_data.recorded_parts(corpus(tmp_path / "rec"), 16000)
    noises["white"] = np.random.default_rng(1).standard_normal(4000).astype(np.float32)
    items = quality.mixed_items(speech, noises, 16000)
    assert len(items) == 2 * len(quality.SNRS)  # no clean rows for this set
    assert {it.noise for it in items} == {"recorded music", "white"}
    for it in items:
        assert len(it.clean) == 16000  # 1 s at 8 kHz, resampled
        assert noise.snr_db(it.clean, it.noisy) == pytest.approx(it.snr, abs=0.01)
    again = quality.mixed_items(speech, noises, 16000)
    assert all(np.array_equal(a.noisy, b.noisy) for a, b in zip(items, again))


@pytest.mark.parametrize("missing", ["speech", "noise"])
def test_a_recorded_folder_without_its_parts_is_a_one_line_error(tmp_path, missing):
    root = corpus(tmp_path / "rec", utterances=3)
    for f in (root / missing).iterdir():
        f.unlink()
    (root / missing).rmdir()
    with pytest.raises(SystemExit, match=rf"--recorded .*rec: no {missing}/ folder in it"):
        quality_data.recorded_parts(root, 16000)
    (root / missing).mkdir()
    with pytest.raises(SystemExit, match="needs audio in both speech/ and noise/"):
        quality_data.recorded_parts(root, 16000)


@pytest.mark.slow
def test_quality_scores_a_recorded_corpus_beside_its_own_split(trained_tiny, tmp_path):
    import json
    import shutil

    from tests.helpers import make_corpus

    runs = tmp_path / "runs"
    shutil.copytree(trained_tiny.parent, runs / "quality-tiny")
    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    for name in ("hum", "white"):
        sf.write(
            noise_dir / f"{name}.wav", 0.1 * np.random.default_rng(2).standard_normal(32000), 16000
        )
    out = tmp_path / "out"
    quality.main([
        "--clean-dir", str(make_corpus(tmp_path / "speech", n=8)), "--noise-dir", str(noise_dir),
        "--recipes", "tiny", "--skip-training", "--runs", str(runs), "--work", str(tmp_path / "w"),
        "--out", str(out), "--recorded", str(corpus(tmp_path / "rec")),
    ])  # fmt: skip
    text = (out / "quality.md").read_text()
    section = text[text.index("## Recorded speech") : text.index("## Targets")]
    assert "2 utterances people recorded" in section
    assert "| all | tiny | 12 |" in section and "| all | wiener | 12 |" in section
    assert "| recorded music | tiny |" in section
    recorded = json.loads((out / "quality.json").read_text())["tables"]["recorded"]
    assert recorded["snr"]["all"]["tiny"]["n"] == 12
