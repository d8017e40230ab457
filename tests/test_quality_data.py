"""The quality loop's second test set: a recorded corpus scored beside the held-out split."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from diffdenoise.bench import quality, quality_data
from diffdenoise.data import noise

# make reccorpus's languages; by the split's hash: ca, el, sl dev; da, en, gl test; the
# rest (sr and its variants, one speaker, together) train.
LANGUAGES = ["ca", "da", "de", "el", "en", "fr", "gl", "lt", "sl", "sr", "sr@latin", "uk"]


def corpus(root, utterances: int = 4, more: tuple[str, ...] = ()):
    """``utterances`` files of each of :data:`LANGUAGES`, named as make reccorpus does, two
    of each of ``more`` in ``train-speech/``, test noise and training noise (25 s, 3 s)."""
    rng = np.random.default_rng(0)
    for folder in ("speech", "noise", "train-speech", "train-noise"):
        (root / folder).mkdir(parents=True)
    for i in range(utterances * len(LANGUAGES)):
        name = f"{i:05d}_{LANGUAGES[i % len(LANGUAGES)]}.wav"
        sf.write(root / "speech" / name, 0.1 * rng.standard_normal(8000), 8000)
    for i in range(2 * len(more)):
        name = f"{i:05d}_{more[i % len(more)]}.wav"
        sf.write(root / "train-speech" / name, 0.1 * rng.standard_normal(8000), 8000)
    sf.write(root / "noise" / "music.wav", 0.2 * rng.standard_normal(48000), 48000)
    sf.write(root / "train-noise" / "music.wav", 0.2 * rng.standard_normal(25 * 8000), 8000)
    sf.write(root / "train-noise" / "sfx.wav", 0.2 * rng.standard_normal(3 * 8000), 8000)
    return root


def test_recorded_parts_split_by_language_and_no_language_is_in_two_parts(tmp_path):
    rec = quality_data.recorded_parts(corpus(tmp_path / "rec"), 16000)
    part_of = {lang: quality_data.recorded_part(quality_data.language_of(f"0_{lang}.wav"))
               for lang in LANGUAGES}  # fmt: skip
    assert {lang for lang, part in part_of.items() if part == "test"} == {"da", "en", "gl"}
    assert {lang for lang, part in part_of.items() if part == "dev"} == {"ca", "el", "sl"}
    assert part_of["sr@latin"] == part_of["sr"] == "train"  # one speaker, one part
    for part in ("train", "dev", "test"):
        assert {part_of[p.stem.split("_", 1)[1]] for p in getattr(rec, part)} == {part}
    assert len(rec.train) == 4 * 6  # all of train's utterances; every 3rd of dev and test
    assert len(rec.test) == len(range(0, 12, 3)) and len(rec.dev) == 4
    assert list(rec.noises) == ["recorded music"] and len(rec.noises["recorded music"]) == 16000
    assert [p.relative_to(tmp_path) for p in rec.train_noise] == [
        Path("rec/train-noise/music.wav"), Path("rec/train-noise/sfx.wav")]  # fmt: skip


def test_the_recorded_test_languages_never_reach_the_training_shards(tmp_path):
    from tests.helpers import make_corpus

    # train-speech/ holds other speakers of a train language (pt, as pt@BR), of a test one
    # (en) and of a dev one (ca): only pt's may train
    root = corpus(tmp_path / "rec", more=("pt@BR", "en", "ca"))
    assert len(quality_data.recorded_parts(root, 16000).train) == 4 * 6  # not asked for
    rec = quality_data.recorded_parts(root, 16000, train_speech=True)
    assert len(rec.train) == 4 * 6 + 2 and len(rec.test) == 4 and len(rec.dev) == 4
    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    for name in ("hiss", "rumble"):
        sf.write(
            noise_dir / f"{name}.wav", 0.1 * np.random.default_rng(0).normal(size=32000), 16000
        )
    speech = make_corpus(tmp_path / "speech", n=8, seconds=1.0)
    quality_data.prepare(speech, noise_dir, tmp_path / "w", 16000, "rumble", rec.train)
    import json
    import tarfile

    sources = set()  # each sample's source file, from its JSON member
    for shard in (tmp_path / "w" / "shards" / "speech").glob("*.tar"):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    sources.add(json.loads(tar.extractfile(member).read())["source"])
    trained = {quality_data.language_of(s) for s in sources if s.startswith("recorded__")}
    assert trained == {"de", "fr", "lt", "sr", "uk", "pt"}  # train's languages, only those


def test_a_corpus_of_too_few_languages_is_a_one_line_error(tmp_path):
    root = corpus(tmp_path / "rec")
    for f in (root / "speech").iterdir():
        if quality_data.recorded_part(quality_data.language_of(f)) == "test":
            f.unlink()
    with pytest.raises(SystemExit, match="leave no test or dev part; it needs more languages"):
        quality_data.recorded_parts(root, 16000)


def test_recorded_items_mix_each_file_at_every_snr_with_the_noises_in_turn(tmp_path):
    rec = quality_data.recorded_parts(corpus(tmp_path / "rec", utterances=2), 16000)
    speech, noises = rec.test, rec.noises
    assert len(speech) == 2
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
    root = corpus(tmp_path / "rec", utterances=1)
    for f in (root / missing).iterdir():
        f.unlink()
    (root / missing).rmdir()
    with pytest.raises(SystemExit, match=rf"--recorded .*rec: no {missing}/ folder in it"):
        quality_data.recorded_parts(root, 16000)
    (root / missing).mkdir()
    with pytest.raises(SystemExit, match="needs audio in both speech/ and noise/"):
        quality_data.recorded_parts(root, 16000)


@pytest.mark.slow
def two_noises(folder: Path) -> Path:
    """``folder`` with two 2 s noise files (hum, white), one to hold out."""
    folder.mkdir()
    for name in ("hum", "white"):
        sf.write(
            folder / f"{name}.wav", 0.1 * np.random.default_rng(2).standard_normal(32000), 16000
        )
    return folder


def test_quality_scores_a_recorded_corpus_beside_its_own_split(trained_tiny, tmp_path):
    import json
    import shutil

    from tests.helpers import make_corpus

    runs = tmp_path / "runs"
    shutil.copytree(trained_tiny.parent, runs / "quality-tiny")
    noise_dir = two_noises(tmp_path / "noise")
    out = tmp_path / "out"
    quality.main([
        "--clean-dir", str(make_corpus(tmp_path / "speech", n=8)), "--noise-dir", str(noise_dir),
        "--recipes", "tiny", "--skip-training", "--runs", str(runs), "--work", str(tmp_path / "w"),
        "--out", str(out), "--recorded", str(corpus(tmp_path / "rec", utterances=2)),
        "--train-noise",
    ])  # fmt: skip
    # asked for, train-noise/ trains beside the first 80 % of each noise but the held-out one
    trained = shard_sources(tmp_path / "w" / "shards" / "noise")
    assert trained == pytest.approx({"white.wav": 1.6, "recorded__music.wav": 25.0,
                                     "recorded__sfx.wav": 3.0}, abs=0.01)  # fmt: skip
    text = (out / "quality.md").read_text()
    section = text[text.index("## Recorded speech, test") : text.index("## Recorded speech, dev")]
    assert "2 utterances people recorded" in section
    assert "| all | tiny | 12 |" in section and "| all | wiener | 12 |" in section
    assert "| recorded music | tiny |" in section and "| clean | tiny | 2 |" in section
    tables = json.loads((out / "quality.json").read_text())["tables"]
    assert tables["recorded_test"]["snr"]["all"]["tiny"]["n"] == 12
    assert tables["recorded_dev"]["snr"]["all"]["tiny"]["n"] == 12
    targets = text[text.index("## Targets") :]
    for target in (
        "recorded test: si_sdr at or above Wiener at every SNR",
        "recorded test, clean speech in: >= 35 dB SI-SDR out",
        "recorded test: STOI at or above the noisy input at every SNR",
        "| tiny applies >= 0.5 of its learned correction | correction_scale 1 | PASS |",
    ):
        assert target in targets  # fmt: skip


def test_the_share_is_tuned_on_the_dev_languages_only(tmp_path):
    from pathlib import Path

    from diffdenoise.bench.quality_recorded import tune_on_dev
    from diffdenoise.evaluation import tune

    rec = quality_data.recorded_parts(corpus(tmp_path / "rec", utterances=2), 16000)
    items = quality.mixed_items(rec.dev, rec.noises, 16000, clean_rows=True)
    assert {quality_data.language_of(it.key.split("@")[0]) for it in items} <= {"ca", "el", "sl"}
    checkpoint = Path(__file__).parent / "data" / "premove-spectral" / "best.pt"
    chosen, lines = tune_on_dev(checkpoint, items)
    assert chosen in tune.GRID
    text = "\n".join(lines)
    assert f"| {chosen[0]:g}/{chosen[1]:g} (chosen) |" in text and "dev part's 12 noisy" in text


def shard_sources(folder: Path) -> dict[str, float]:
    """Source file -> seconds over the shards in ``folder``, from each sample's JSON."""
    import json
    import tarfile

    seconds: dict[str, float] = {}
    for shard in folder.glob("*.tar"):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    seconds[meta["source"]] = seconds.get(meta["source"], 0.0) + meta["duration"]
    return seconds


@pytest.fixture
def speech_and_noise(tmp_path) -> tuple[Path, Path]:
    """A speech folder (8 files of 1 s) and a noise folder (hiss, rumble: 20 s each)."""
    from tests.helpers import make_corpus

    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    for name in ("hiss", "rumble"):
        sf.write(noise_dir / f"{name}.wav", 0.1 * np.ones(20 * 16000), 16000)
    return make_corpus(tmp_path / "speech", n=8, seconds=1.0), noise_dir


def test_each_preparation_trains_on_its_own_noise_only(tmp_path, speech_and_noise):
    speech, noise_dir = speech_and_noise
    work = tmp_path / "w"
    qd = quality_data.prepare(speech, noise_dir, work, 16000, "rumble")
    assert shard_sources(qd.noise_shards) == pytest.approx({"hiss.wav": 16.0}, abs=0.01)
    # held out the other way round: nothing of the last preparation's files stays behind
    qd = quality_data.prepare(speech, noise_dir, work, 16000, "hiss")
    assert shard_sources(qd.noise_shards) == pytest.approx({"rumble.wav": 16.0}, abs=0.01)


def test_the_training_noise_is_train_noise_whole_and_never_the_test_noise(
    tmp_path, speech_and_noise
):
    rec = quality_data.recorded_parts(corpus(tmp_path / "rec"), 16000)
    speech, noise_dir = speech_and_noise
    work = tmp_path / "w"
    qd = quality_data.prepare(speech, noise_dir, work, 16000, "rumble", [], rec.train_noise)
    trained = shard_sources(qd.noise_shards)
    # the first 80 % of hiss (16 s), all of train-noise/, none of rumble nor of noise/
    assert trained == pytest.approx({"hiss.wav": 16.0, "recorded__music.wav": 25.0,
                                     "recorded__sfx.wav": 3.0}, abs=0.01)  # fmt: skip


def test_a_recipes_own_keys_win_over_the_loops_data_and_budget(tmp_path):
    from diffdenoise.config import loading as config

    qd = quality_data.QualityData(tmp_path / "s", tmp_path / "n", [], {}, "hum", 16000)
    spec = "ab=configs/default.yaml+data.noise_shards=other/*.tar+model.spectral.hidden=128"
    name, run, args = quality.train_args(spec, 25.0, qd, tmp_path / "runs")
    assert (name, run) == ("ab", tmp_path / "runs" / "quality-ab")
    cfg = config.load([a for a in args if "=" not in a], [a for a in args if "=" in a])
    assert cfg.data.noise_shards == "other/*.tar"  # the recipe's, not the loop's
    assert cfg.model.spectral.hidden == 128
    assert cfg.data.train_shards == f"{tmp_path}/s/train-*.tar"  # the loop's where it is silent
    assert (cfg.data.sample_rate, cfg.data.segment, cfg.train.max_minutes) == (16000, 32000, 25.0)


def dev_shares(tmp_path, runs: dict[str, Path], shares: str = "0/0,1/1") -> Path:
    """``quality --skip-training --dev-shares`` over ``runs`` (name -> its best.pt)."""
    import shutil

    from tests.helpers import make_corpus

    for name, checkpoint in runs.items():
        (tmp_path / "runs" / f"quality-{name}").mkdir(parents=True)
        shutil.copy(checkpoint, tmp_path / "runs" / f"quality-{name}" / "best.pt")
    noise_dir = two_noises(tmp_path / "noise")
    out = tmp_path / "out"
    code = quality.main([
        "--clean-dir", str(make_corpus(tmp_path / "speech", n=8)), "--noise-dir", str(noise_dir),
        "--recipes", ",".join(f"{name}=configs/tiny.yaml" for name in runs), "--skip-training",
        "--runs", str(tmp_path / "runs"), "--work", str(tmp_path / "w"), "--out", str(out),
        "--recorded", str(corpus(tmp_path / "rec", utterances=2)), "--dev-shares", shares,
    ])  # fmt: skip
    return code, out


def test_dev_shares_scores_each_run_on_dev_at_each_share_and_nothing_on_test(tmp_path):
    import torch

    payload = torch.load(Path(__file__).parent / "data" / "premove-spectral" / "best.pt",
                         weights_only=True)  # fmt: skip
    payload["ema_model"]["out.bias"] += 2.0  # a learned correction: raise every gain
    spectral = tmp_path / "corrected.pt"
    torch.save(payload, spectral)
    code, out = dev_shares(tmp_path, {"a": spectral, "b": spectral})
    assert code == 0 and not (out / "quality.md").exists()  # stopped before any test item
    lines = (out / "dev-shares.md").read_text().splitlines()
    assert lines[0] == "## Dev languages: each run at each share (12 noisy items)"
    assert lines[2].startswith("| run | 0/0 SI-SDR / PESQ / STOI | 1/1 SI-SDR / PESQ / STOI |")
    rows = {line.split(" | ")[0]: line.split(" | ")[1:] for line in lines[4:] if line}
    assert set(rows) == {"| a", "| b"} and rows["| a"] == rows["| b"]  # one checkpoint twice
    assert rows["| a"][0] != rows["| a"][1]  # the learned correction changes the output
    assert all(cell.strip(" |") != "n/a" for cell in rows["| a"])


def test_dev_shares_of_a_unet_run_is_a_one_line_error(trained_tiny, tmp_path, capsys):
    code, out = dev_shares(tmp_path, {"tiny": trained_tiny})
    assert code == 2 and not (out / "dev-shares.md").exists()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "applies to spectral models, not a U-Net" in err


@pytest.mark.parametrize("value", ["0.5", "0.5/2", "a/b", ""])
def test_a_bad_dev_shares_value_is_a_one_line_usage_error(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        quality.parse_args(["--clean-dir", "x", "--noise-dir", "y", "--recorded", "r",
                            "--dev-shares", value])  # fmt: skip
    assert exit_.value.code == 2
    assert "argument --dev-shares: invalid share_pairs value" in capsys.readouterr().err


def test_dev_shares_without_a_recorded_corpus_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        quality.parse_args(["--clean-dir", "x", "--noise-dir", "y", "--dev-shares", "1/1"])
    assert "--dev-shares needs --recorded" in capsys.readouterr().err
