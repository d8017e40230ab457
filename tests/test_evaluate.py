"""Evaluation on real shards and folders: metrics, buckets, baseline, PESQ failures, errors."""

import json

import numpy as np
import pytest
import soundfile as sf

from diffdenoise.data.noise import mix_at_snr, pink
from diffdenoise.evaluation import evaluate
from diffdenoise.evaluation.baseline import wiener
from diffdenoise.models.metrics import pesq_wb, si_sdr, stoi
from tests.helpers import make_shards


@pytest.fixture(scope="module")
def val_shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("eval"), n=8, extra=["--max-seconds", "2"])


def run_eval(tmp_path, *args):
    out = tmp_path / "eval.json"
    code = evaluate.main([*map(str, args), "--json", str(out)])
    return code, (json.loads(out.read_text()) if out.exists() else None)


def test_metrics_on_known_signals():
    clean = write_speech_array(2.0)
    noisy = mix_at_snr(clean, pink(np.random.default_rng(0), len(clean)), 5.0)
    assert float(si_sdr(noisy, clean)) == pytest.approx(5.0, abs=0.05)
    assert pesq_wb(clean, clean, 16000) > 4.4 > pesq_wb(noisy, clean, 16000)
    assert stoi(clean, clean, 16000) > 0.99 > stoi(noisy, clean, 16000)
    assert np.isnan(pesq_wb(np.zeros(16000), np.zeros(16000), 16000))  # refused, not raised
    assert float(si_sdr(wiener(noisy, 16000), clean)) > 5.0 + 2.0  # the baseline helps


def write_speech_array(seconds, rate=16000):
    from diffdenoise.bench import demo_data

    return demo_data.utterance(np.random.default_rng(7), seconds, rate)


@pytest.mark.slow
def test_shards_evaluation_with_trained_model_and_baseline(trained_tiny, val_shards, tmp_path):
    args = ["-c", trained_tiny, "--shards", f"{val_shards}/val-*.tar", "--snr", "0,10"]
    code, report = run_eval(tmp_path, *args, "--baseline", "--max-files", "3")
    assert code == 0
    summary = report["summary"]
    assert list(summary) == ["0 dB", "10 dB", "all"]
    assert list(summary["all"]) == ["noisy", "model", "wiener"]
    assert summary["all"]["noisy"]["n"] == 6 and len(report["items"]) == 6
    for bucket, snr in (("0 dB", 0.0), ("10 dB", 10.0)):
        assert summary[bucket]["noisy"]["si_sdr"] == pytest.approx(snr, abs=0.1)
    assert summary["0 dB"]["model"]["si_sdr_delta"] > 1.0  # a trained model improves 0 dB
    for system in summary["all"].values():
        assert 1.0 <= system["pesq"] <= 4.7 and 0.0 <= system["stoi"] <= 1.0
    _, again = run_eval(tmp_path, *args, "--baseline", "--max-files", "3")
    assert again["items"] == report["items"]  # noise is seeded by the file


def test_folder_pairs_bucket_by_measured_snr_and_pesq_failures_are_counted(ckpt, tmp_path, capsys):
    clean_dir, noisy_dir = tmp_path / "clean", tmp_path / "noisy"
    rng = np.random.default_rng(0)
    for i, snr in enumerate((-4.0, 11.0)):
        clean = write_speech_array(1.5 + i)
        write_audio(clean_dir / f"u{i}.wav", clean)
        write_audio(noisy_dir / f"u{i}.wav", mix_at_snr(clean, pink(rng, len(clean)), snr))
    write_audio(clean_dir / "silent.wav", np.zeros(16000, np.float32))
    write_audio(noisy_dir / "noisy_silent.wav", np.zeros(16000, np.float32))  # original naming
    short = 0.3 * np.sin(np.arange(800) * 0.2).astype(np.float32)  # 50 ms: too short for PESQ
    write_audio(clean_dir / "short.wav", short)
    write_audio(noisy_dir / "short.wav", short + 0.05 * pink(rng, 800))
    code, report = run_eval(
        tmp_path, "-c", ckpt, "--clean-dir", clean_dir, "--noisy-dir", noisy_dir
    )
    assert code == 0
    buckets = report["summary"]
    assert list(buckets) == [
        "-5 dB",
        "10 dB",
        bucket_of_short(short, noisy_dir / "short.wav"),
        "all",
    ]
    assert buckets["-5 dB"]["noisy"]["si_sdr"] == pytest.approx(-4.0, abs=0.2)
    assert buckets["all"]["noisy"]["n"] == 3  # the silent pair has no defined metric
    assert buckets["all"]["noisy"]["pesq_failed"] == 1
    out = capsys.readouterr()
    assert "PESQ refused 1 item(s)" in out.out and "silent.wav: silent clean reference" in out.err


def bucket_of_short(short, path):
    from diffdenoise.data.noise import snr_db

    noisy, _ = sf.read(str(path), dtype="float32")
    return evaluate.bucket_of(snr_db(short, noisy))


def write_audio(path, data, rate=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, rate, subtype="FLOAT")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--baseline"], "give exactly one of --shards GLOB or --clean-dir DIR"),
        (["--baseline", "--shards", "/nowhere/*.tar"], "matches no shard files"),
        (["--baseline", "--clean-dir", "/nowhere"], "/nowhere: not a folder"),
        (["--baseline", "--clean-dir", ".", "--snr", "0,ten"], "--snr '0,ten'"),
        (["-c", "/nowhere/best.pt", "--clean-dir", "."], "checkpoint not found"),
        (
            ["--baseline", "--clean-dir", ".", "--reverb", "-1"],
            "--reverb -1: expected an RT60 in seconds from 0.05 to 5 (0: off)",
        ),
        (
            ["--baseline", "--clean-dir", ".", "--noisy-dir", ".", "--reverb", "0.5"],
            "--noisy-dir pairs are scored as recorded",
        ),
    ],
)
def test_bad_arguments_are_one_line(tmp_path, capsys, args, message):
    code, report = run_eval(tmp_path, *args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and report is None
    assert len(err) == 1 and message in err[0]


def test_correction_scale_for_a_u_net_checkpoint_is_one_line(ckpt, tmp_path, capsys):
    code, report = run_eval(
        tmp_path, "-c", str(ckpt), "--clean-dir", ".", "--correction-scale", "1"
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and report is None
    assert err == [f"error: {ckpt}: --correction-scale applies to spectral models, not a U-Net"]


def test_steps_for_a_predictive_checkpoint_is_one_line(ckpt, tmp_path, capsys):
    code, report = run_eval(tmp_path, "-c", str(ckpt), "--clean-dir", ".", "--steps", "4")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and report is None
    assert len(err) == 1 and f"{ckpt}: --steps 4: a predictive model takes exactly 1 step" in err[0]


def test_report_lands_beside_the_checkpoint_and_a_bad_path_fails_first(
    ckpt, val_shards, tmp_path, capsys
):
    import shutil

    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    shutil.copy(ckpt, run / "best.pt")
    args = ["-c", run / "best.pt", "--shards", f"{val_shards}/val-*.tar", "--snr", "5"]
    assert evaluate.main([*map(str, args), "--max-files", "1"]) == 0
    report = json.loads((run / "eval.json").read_text())
    assert report["summary"]["all"]["noisy"]["n"] == 1
    assert report["shares"] == {"correction_scale": None, "suppress_scale": None}  # as trained
    deep = tmp_path / "new" / "folder" / "e.json"  # a folder that does not exist yet
    assert evaluate.main([*map(str, args), "--max-files", "1", "--json", str(deep)]) == 0
    assert deep.is_file()
    capsys.readouterr()
    bad = ["--json", "/proc/version/e.json"]
    assert evaluate.main([*map(str, args), *bad]) == 2
    err = capsys.readouterr()
    assert "error: --json /proc/version/e.json: cannot create its folder" in err.err
    assert "scoring" not in err.err  # refused before any item was scored


def test_reverb_scores_against_the_reverberant_clean(tmp_path):
    dry = np.concatenate([write_speech_array(1.5), np.zeros(8000, np.float32)])
    write_audio(tmp_path / "clean" / "u.wav", dry)
    args = ["--baseline", "--clean-dir", tmp_path / "clean", "--snr", "0,10"]
    code, report = run_eval(tmp_path, *args, "--reverb", "0.5")
    assert code == 0 and report["reverb_rt60"] == 0.5
    for bucket, snr in (("0 dB", 0.0), ("10 dB", 10.0)):  # noisy = reference + noise at snr
        assert report["summary"][bucket]["noisy"]["si_sdr"] == pytest.approx(snr, abs=0.1)
    _, dry_report = run_eval(tmp_path, *args)
    assert dry_report["reverb_rt60"] == 0.0
    wet_scores = [r["scores"]["wiener"]["si_sdr"] for r in report["items"]]
    assert wet_scores != [r["scores"]["wiener"]["si_sdr"] for r in dry_report["items"]]
    _, again = run_eval(tmp_path, *args, "--reverb", "0.5")
    assert again["items"] == report["items"]  # the room is seeded by the file


def test_reverb_room_is_one_per_file_and_its_tail_rings_on():
    dry = np.concatenate([write_speech_array(1.5), np.zeros(8000, np.float32)])
    mixing = evaluate.Mixing([0.0, 10.0], [], rt60=0.5)
    items = list(evaluate.mixed("u.wav", dry, 16000, mixing))
    assert np.array_equal(items[0].clean, items[1].clean)  # the same room at every SNR
    wet, speech_end = items[0].clean, 24000
    assert np.sqrt(np.mean(wet**2)) == pytest.approx(np.sqrt(np.mean(dry**2)), rel=1e-4)
    after = wet[speech_end : speech_end + 1600]  # 100 ms after the speech stopped
    assert np.all(dry[speech_end:] == 0) and np.sqrt(np.mean(after**2)) > 1e-3
    assert np.corrcoef(wet, dry)[0, 1] > 0.7  # still the same speech
    other = next(iter(evaluate.mixed("v.wav", dry, 16000, mixing))).clean
    assert not np.array_equal(other, wet)  # another file, another room
