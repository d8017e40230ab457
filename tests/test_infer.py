"""Inference: the CLI on real files, the Python API, bad input, and a real trained model."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from diffdenoise import Denoiser, denoise_audio
from diffdenoise.data.noise import mix_at_snr, pink
from diffdenoise.inference import infer
from diffdenoise.models.metrics import si_sdr
from tests.helpers import write_speech


def cli(*args):
    return infer.main([str(a) for a in args])


def test_rates_channels_and_subtype_survive(ckpt, tmp_path):
    src = write_speech(tmp_path / "song.wav", 1.3, rate=44100, channels=2)
    assert cli(src, "-c", ckpt) == 0
    out = tmp_path / "song_denoised.wav"
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.frames) == (44100, 2, sf.info(str(src)).frames)
    assert info.subtype == sf.info(str(src)).subtype == "PCM_16"


@pytest.mark.parametrize("ext,subtype", [(".flac", "PCM_16"), (".ogg", "VORBIS")])
def test_output_format_follows_extension(ckpt, tmp_path, ext, subtype):
    src = write_speech(tmp_path / "a.wav", 0.7, rate=22050)
    dst = tmp_path / f"out{ext}"
    assert cli(src, "-c", ckpt, "-o", dst) == 0
    info = sf.info(str(dst))
    assert info.subtype == subtype and info.samplerate == 22050
    assert abs(info.frames - sf.info(str(src)).frames) == 0


def test_streamed_file_equals_in_memory(ckpt, tmp_path):
    src = tmp_path / "long.wav"
    x = np.random.default_rng(1).standard_normal(22050 * 3 + 17).astype(np.float32) * 0.1
    sf.write(str(src), x, 22050, subtype="FLOAT")
    denoiser = Denoiser.from_checkpoint(ckpt, device="cpu", batch_size=3)
    in_memory = denoiser(x, 22050)
    denoiser.denoise_file(src, tmp_path / "streamed.wav", block_seconds=0.37)
    streamed, rate = sf.read(str(tmp_path / "streamed.wav"), dtype="float32")
    assert rate == 22050 and streamed.shape == x.shape
    assert np.abs(in_memory).max() > 1e-3  # a real, non-trivial model output
    np.testing.assert_allclose(streamed, in_memory, atol=1e-5)


def test_api_takes_numpy_and_tensors_of_any_shape(ckpt):
    denoiser = Denoiser.from_checkpoint(ckpt, device="cpu")
    mono = np.random.default_rng(0).standard_normal(5000).astype(np.float32)
    assert denoiser(mono, 16000).shape == (5000,)
    stereo = torch.from_numpy(np.stack([mono, mono[::-1].copy()]))
    out = denoiser(stereo, 8000)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5000)
    # channels are denoised independently: channel 0 alone gives the same answer
    np.testing.assert_allclose(out[0].numpy(), denoiser(mono, 8000), atol=1e-5)


def test_seed_mode_is_the_original_one_second_cut(ckpt):
    seed = Denoiser.from_checkpoint(ckpt, device="cpu", mode="seed")
    x = np.random.default_rng(2).standard_normal(16000 * 2 + 500).astype(np.float32)
    padded = np.pad(x, (0, 16000 - 500)).reshape(3, 1, 16000)
    with torch.no_grad():
        expected = seed.model(torch.from_numpy(padded)).reshape(-1)[: len(x)].numpy()
    np.testing.assert_allclose(seed(x, 16000), expected, atol=1e-5)
    overlap = Denoiser.from_checkpoint(ckpt, device="cpu")
    assert not np.allclose(overlap(x, 16000), expected, atol=1e-3)


def test_output_naming_folders_globs_and_overwrite(ckpt, tmp_path):
    src = tmp_path / "in"
    write_speech(src / "a.wav", 0.3)
    write_speech(src / "sub" / "b.flac", 0.3)
    assert cli(src, "-c", ckpt) == 0  # beside each input
    assert (src / "a_denoised.wav").exists() and (src / "sub" / "b_denoised.flac").exists()
    assert cli(src, "-c", ckpt, "-o", tmp_path / "out") == 0  # earlier outputs are skipped
    produced = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*.*"))
    assert [str(p) for p in produced] == ["a.wav", "sub/b.flac"]
    assert cli(f"{src}/**/*.flac", "-c", ckpt, "-o", tmp_path / "g") == 0
    assert [p.name for p in (tmp_path / "g").iterdir()] == ["b.flac"]
    before = (src / "a.wav").read_bytes()
    assert cli(src / "a.wav", "-c", ckpt, "-o", src / "a.wav") == 2
    assert (src / "a.wav").read_bytes() == before
    assert cli(src / "a.wav", "-c", ckpt, "-o", src / "a.wav", "--overwrite") == 0
    assert (src / "a.wav").read_bytes() != before


def test_bad_files_are_reported_and_the_rest_processed(ckpt, tmp_path, capsys):
    good = write_speech(tmp_path / "good.wav", 0.5)
    short = write_speech(tmp_path / "short.wav", 0.01)  # shorter than one segment: padded
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "notes.wav").write_text("not audio")
    nan = np.ones(4000, np.float32)
    nan[2000] = np.nan
    sf.write(str(tmp_path / "nan.wav"), nan, 16000, subtype="FLOAT")
    code = cli(tmp_path / "*.wav", tmp_path / "missing.wav", "-c", ckpt, "-o", tmp_path / "o")
    err = capsys.readouterr().err
    assert code == 1
    assert f"error: {tmp_path / 'empty.wav'}: empty file (0 bytes)" in err
    assert f"error: {tmp_path / 'notes.wav'}: unreadable or corrupt audio" in err
    assert f"error: {tmp_path / 'nan.wav'}: NaN or infinite samples at 0.12 s" in err
    assert f"error: {tmp_path / 'missing.wav'}: no such file" in err
    assert "error: 4 of 6 file(s) failed" in err
    outputs = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert outputs == [good.name, short.name]  # no half-written files from the failures
    assert sf.info(str(tmp_path / "o" / short.name)).frames == 160


def test_unwritable_output_is_one_line(ckpt, tmp_path, capsys):
    src = write_speech(tmp_path / "a.wav", 0.3)
    (tmp_path / "file").write_text("a file, not a folder")
    target = tmp_path / "file" / "x.wav"
    assert cli(src, "-c", ckpt, "-o", target) == 1
    assert f"error: {src}: cannot write output {target} (" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "a file, not a folder"


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--steps", "0", "0 is out of range: must be >= 1 and <= 1000"),
        ("--steps", "-1", "-1 is out of range: must be >= 1 and <= 1000"),
        ("--steps", "100000", "100000 is out of range: must be >= 1 and <= 1000"),
        ("--segment", "0", "0 is out of range: must be > 0 and <= 3600"),
        ("--batch-size", "0", "0 is out of range: must be >= 1 and <= 4096"),
        ("--overlap", "-0.1", "-0.1 is out of range: must be >= 0 and <= 60"),
        ("--steps", "two", "'two' is not a number"),
    ],
)
def test_bad_numbers_are_refused_before_any_work(tmp_path, capsys, flag, value, message):
    src = write_speech(tmp_path / "a.wav", 0.3)
    with pytest.raises(SystemExit) as stop:
        cli(src, "-c", tmp_path / "none.pt", f"{flag}={value}")
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"error: argument {flag}: {message}")
    assert list(tmp_path.iterdir()) == [src]


def test_checkpoint_errors_are_one_line(tmp_path, capsys):
    src = write_speech(tmp_path / "a.wav", 0.3)
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 truncated")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    cases = {
        tmp_path / "none.pt": "checkpoint not found",
        tmp_path / "corrupt.pt": "not a readable checkpoint",
        tmp_path / "foreign.pt": "not a diffdenoise checkpoint",
    }
    for path, message in cases.items():
        assert cli(src, "-c", path) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines == [f"error: {path}: {message}" + lines[0].split(message, 1)[1]]
    assert not (tmp_path / "a_denoised.wav").exists()


def test_checkpoint_with_wrong_weights_is_refused(ckpt, tmp_path, capsys):
    payload = torch.load(ckpt, weights_only=True)
    payload["config"]["model"]["channels"] = 32
    torch.save(payload, tmp_path / "bad.pt")
    src = write_speech(tmp_path / "a.wav", 0.3)
    assert cli(src, "-c", tmp_path / "bad.pt") == 2
    assert "weights do not fit its model config" in capsys.readouterr().err


def test_plot_and_original_api(ckpt, tmp_path):
    src = write_speech(tmp_path / "a.wav", 0.5)
    assert cli(src, "-c", ckpt, "--plot") == 0
    png = tmp_path / "a_denoised.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    out = denoise_audio(model_path=ckpt, noisy_audio_path=src, output_path=tmp_path / "b.wav")
    assert sf.info(str(out)).frames == 8000


@pytest.mark.slow
def test_trained_tiny_model_improves_si_sdr(trained_tiny, tmp_path):
    clean_path = write_speech(tmp_path / "clean.wav", 3.0, seed=123)
    clean, rate = sf.read(str(clean_path), dtype="float32")
    noise = pink(np.random.default_rng(5), len(clean))
    noisy = mix_at_snr(clean, noise, 0.0)
    sf.write(str(tmp_path / "noisy.wav"), noisy, rate, subtype="FLOAT")
    assert cli(tmp_path / "noisy.wav", "-c", trained_tiny) == 0
    denoised, _ = sf.read(str(tmp_path / "noisy_denoised.wav"), dtype="float32")
    before, after = float(si_sdr(noisy, clean)), float(si_sdr(denoised, clean))
    assert after > before + 3.0, (before, after)


def test_ema_weights_by_default_raw_with_no_ema(ckpt, tmp_path):
    payload = torch.load(ckpt, weights_only=True)
    payload["ema_model"] = {k: v * 0.5 for k, v in payload["model"].items()}
    torch.save(payload, tmp_path / "ema.pt")
    src = write_speech(tmp_path / "a.wav", 0.4)
    assert cli(src, "-c", tmp_path / "ema.pt", "-o", tmp_path / "ema.wav") == 0
    assert cli(src, "-c", tmp_path / "ema.pt", "-o", tmp_path / "raw.wav", "--no-ema") == 0
    assert cli(src, "-c", ckpt, "-o", tmp_path / "ref.wav") == 0
    ema, raw, ref = (sf.read(str(tmp_path / f"{n}.wav"))[0] for n in ("ema", "raw", "ref"))
    np.testing.assert_array_equal(raw, ref)  # --no-ema: the raw weights, as saved
    assert np.abs(ema - raw).max() > 1e-3


def test_a_spectral_model_hears_segments_of_8_s_or_its_crop(ckpt, tmp_path):
    """Its noise estimate takes the quietest fifth of a segment's frames: longer segments
    than the 0.5 s training crop, a better estimate (see SPECTRAL_SEGMENT_S)."""
    from diffdenoise.config import loading as config
    from diffdenoise.models.factory import build_model
    from diffdenoise.training.checkpoint import save_best

    cfg = config.load(["configs/tiny.yaml"], ["model.family=spectral"])
    weights = build_model(cfg.model, cfg.data.sample_rate).state_dict()
    payload = {"model": weights, "ema_model": weights, "config": config.to_plain(cfg)}
    spectral = save_best(tmp_path, payload, keep_copies=1)
    assert Denoiser.from_checkpoint(spectral, device="cpu").segment == 8 * 16000
    assert Denoiser.from_checkpoint(spectral, device="cpu").batch_size == 1  # 8 s a call
    assert Denoiser.from_checkpoint(ckpt, device="cpu").batch_size == 4
    assert Denoiser.from_checkpoint(spectral, device="cpu", segment=1.0).segment == 16000
    assert Denoiser.from_checkpoint(ckpt, device="cpu").segment == 8000  # a U-Net: its crop
    x = np.random.default_rng(3).standard_normal((2, 3 * 16000)).astype(np.float32) * 0.1
    assert Denoiser.from_checkpoint(spectral, device="cpu")(x, 16000).shape == x.shape


def spectral_checkpoint(folder, bias: float):
    """An untrained tiny spectral model whose learned correction is ``bias`` logits wide,
    from -bias to +bias across the bins (so it lowers some gains and raises others)."""
    from diffdenoise.config import loading as config
    from diffdenoise.models.factory import build_model
    from diffdenoise.training.checkpoint import save_best

    cfg = config.load(["configs/tiny.yaml"], ["model.family=spectral"])
    model = build_model(cfg.model, cfg.data.sample_rate)
    with torch.no_grad():
        model.out.bias.copy_(torch.linspace(-bias, bias, model.bins))
    weights = model.state_dict()
    payload = {"model": weights, "ema_model": weights, "config": config.to_plain(cfg)}
    return save_best(folder, payload, keep_copies=1), cfg.model.spectral


def test_correction_shares_are_set_at_inference_without_retraining(ckpt, tmp_path, capsys):
    spectral, trained = spectral_checkpoint(tmp_path, bias=3.0)
    assert trained.correction_scale == 1.0 and trained.suppress_scale is None
    src = write_speech(tmp_path / "a.wav", 1.0)
    outs = {}
    for name, flags in {
        "trained": [],
        "same": ["--correction-scale", trained.correction_scale],
        "quarter": ["--correction-scale", 0.25],
        "lowered": ["--suppress-scale", 0.25],
    }.items():
        assert cli(src, "-c", spectral, "-o", tmp_path / f"{name}.wav", *flags) == 0
        outs[name] = sf.read(str(tmp_path / f"{name}.wav"))[0]
    np.testing.assert_array_equal(outs["same"], outs["trained"])
    assert np.abs(outs["quarter"] - outs["trained"]).max() > 1e-3
    assert np.abs(outs["lowered"] - outs["trained"]).max() > 1e-3
    shares = {"correction_scale": 0.5, "suppress_scale": 0.75}
    model = Denoiser.from_checkpoint(spectral, device="cpu", shares=shares).model
    assert (model.correction_scale, model.suppress_scale) == (0.5, 0.75)
    capsys.readouterr()
    assert cli(src, "-c", ckpt, "--correction-scale", 0.5) == 2  # a U-Net has no correction
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {ckpt}: --correction-scale applies to spectral models, not a U-Net"]
    assert cli(src, "--onnx", tmp_path / "m.onnx", "--suppress-scale", 0.5) == 2
    assert "an ONNX graph has its shares built in" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(src, "-c", spectral, "--suppress-scale", 1.5)
    assert "--suppress-scale: 1.5 is not between 0 and 1" in capsys.readouterr().err


def test_a_bug_is_one_line_naming_the_file_with_its_traceback(ckpt, tmp_path, capsys, monkeypatch):
    def broken(self, *args, **kwargs):
        return 1 / 0

    monkeypatch.setattr(Denoiser, "denoise_file", broken)
    src = write_speech(tmp_path / "a.wav", 0.3)
    assert cli(src, "-c", ckpt) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    prefix = "error: internal error ZeroDivisionError: division by zero (a bug in diffdenoise; "
    assert line.startswith(prefix + "the full traceback is in ")
    trace = Path(line.rsplit(" ", 1)[1].rstrip(")"))
    assert "in broken" in trace.read_text() and "ZeroDivisionError" in trace.read_text()
    trace.unlink()
