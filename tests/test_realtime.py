"""The causal model, its frame-by-frame streaming, and the live-style CLI."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from diffdenoise.bench import demo_data
from diffdenoise.config import loading as config
from diffdenoise.inference.realtime import StreamingDenoiser
from diffdenoise.models.causal import CausalSpectralModel
from diffdenoise.models.factory import build_model, model_for
from diffdenoise.models.metrics import si_sdr
from diffdenoise.training.checkpoint import CheckpointError
from tests.distributed import ROOT


def trained_looking(lookahead_ms=0.0, context=3, layers=2, quiet_s=0.0) -> CausalSpectralModel:
    """A small causal model with random (not zero) output weights, as after training;
    ``quiet_s`` > 0: the quiet-frames prior over that window (6 frames at 0.05 s)."""
    torch.manual_seed(0)
    model = CausalSpectralModel(
        16000, hidden=16, layers=layers, context_frames=context, noise_window_s=0.1,
        correction_scale=0.5, lookahead_ms=lookahead_ms, time_dim=8, quiet_window_s=quiet_s,
    )  # fmt: skip
    for p in model.out.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model.eval()


def offline(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)[None, None])[0, 0].numpy()


def streamed(model, x: np.ndarray, sizes, seed=0) -> np.ndarray:
    live, rng, outs, i = StreamingDenoiser(model, 16000), np.random.default_rng(seed), [], 0
    while i < x.size:
        n = int(rng.choice(sizes))
        outs.append(live.process(x[i : i + n]))
        i += n
    outs.append(live.flush())
    return np.concatenate(outs)


@pytest.mark.parametrize(
    "lookahead_ms, length, quiet_s, context",
    [
        (0.0, 3001, 0.0, 3),
        (8.0, 3001, 0.0, 3),
        (16.0, 3001, 0.0, 3),
        (0.0, 6400, 0.0, 3),
        (8.0, 6400, 0.05, 3),
        (0.0, 6400, 0.05, 1),  # realtime.yaml's shape: one-frame registers, no copy
    ],
)
def test_streaming_equals_the_offline_causal_model_for_any_chunks(
    lookahead_ms, length, quiet_s, context
):
    model = trained_looking(lookahead_ms, context=context, quiet_s=quiet_s)
    x = np.random.default_rng(1).standard_normal(length).astype(np.float32) * 0.1
    want = offline(model, x)
    for seed, sizes in enumerate([[1], [0, 1, 2, 7, 128, 333], [160], [10000]]):
        got = streamed(model, x, sizes, seed)
        assert got.shape == x.shape
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_flush_starts_a_new_stream_and_short_inputs_come_back_whole():
    model = trained_looking()
    live = StreamingDenoiser(model, 16000)
    x = np.random.default_rng(2).standard_normal(700).astype(np.float32) * 0.1
    first = np.concatenate([live.process(x), live.flush()])
    second = np.concatenate([live.process(x), live.flush()])
    np.testing.assert_array_equal(first, second)
    assert live.process(x[:3]).size == 0 and live.flush().shape == (3,)
    assert live.flush().size == 0  # an empty stream
    with pytest.raises(ValueError, match="NaN"):
        live.process(np.array([np.nan], np.float32))


@pytest.mark.parametrize("lookahead_ms, quiet_s", [(0.0, 0.0), (8.0, 0.0), (8.0, 0.05)])
def test_no_output_depends_on_input_beyond_the_latency(lookahead_ms, quiet_s):
    model = trained_looking(lookahead_ms, quiet_s=quiet_s)
    latency = round(model.latency_ms * 16)  # samples at 16 kHz
    assert latency == model.n_fft + model.lookahead * model.hop
    x = np.random.default_rng(3).standard_normal(4000).astype(np.float32) * 0.1
    changed = x.copy()
    changed[2000:] += 0.5
    moved = np.flatnonzero(np.abs(offline(model, changed) - offline(model, x)) > 1e-7)
    assert moved[0] >= 2000 - latency + 1  # output n waits for input up to n + latency - 1
    assert moved[0] <= 2000  # and it does react


def test_untrained_causal_model_is_a_working_classical_filter():
    rng = np.random.default_rng(4)
    clean = demo_data.utterance(rng, 3.0, 16000).astype(np.float32)
    noisy = clean + 0.05 * rng.standard_normal(clean.size).astype(np.float32)
    out = offline(CausalSpectralModel(16000, hidden=8, layers=1, time_dim=8).eval(), noisy)
    assert si_sdr(clean, out) > si_sdr(clean, noisy) + 3


def test_the_quiet_frames_prior_hears_noise_under_running_speech_better():
    """A trailing one-second minimum holds speech when the talker does not pause for a
    second, and takes it for noise; the quietest fifth of the frames so far does not."""
    rng = np.random.default_rng(5)
    clean = demo_data.utterance(rng, 4.0, 16000).astype(np.float32)
    noisy = clean + 0.05 * rng.standard_normal(clean.size).astype(np.float32)
    scores = {}
    for quiet_s in (0.0, 8.0):
        model = CausalSpectralModel(16000, hidden=8, layers=1, time_dim=8, quiet_window_s=quiet_s)
        scores[quiet_s] = si_sdr(clean, offline(model.eval(), noisy))
    assert scores[8.0] > scores[0.0] + 0.5, scores


def test_realtime_config_meets_the_latency_target_and_builds_the_causal_model():
    cfg = config.load([config.find_config("realtime")])
    model = model_for(cfg)
    assert isinstance(model, CausalSpectralModel) and cfg.data.sample_rate == 48000
    assert model.latency_ms <= 20.0
    plain = OmegaConf.merge(cfg.model, {"causal": False})
    assert not isinstance(build_model(plain, 48000), CausalSpectralModel)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.family=unet"], "'model.causal' needs model.family: spectral"),
        (["diffusion.objective=bridge"], "needs diffusion.objective: predictive"),
        (["model.spectral.local_channels=8"], "'model.spectral.local_channels' reads frames"),
        (["model.spectral.bidirectional=true"], "'model.spectral.bidirectional' reads the whole"),
        (["model.spectral.deep_filter_taps=2"], "'model.spectral.deep_filter_taps' is built for"),
        (["model.spectral.input_bands=32"], "'model.spectral.input_bands' is built for the"),
        (["model.lookahead_ms=8"], r"'model.lookahead_ms' is 8, 1 frame\(s\); it must be fewer"),
        (["model.lookahead_ms=-1"], "'model.lookahead_ms' is -1.0; it must be >= 0"),
    ],
)
def test_causal_config_errors_are_one_line(overrides, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load([config.find_config("realtime")], overrides)


def test_streaming_a_trained_checkpoint_equals_its_offline_model(causal_checkpoint):
    live = StreamingDenoiser.from_checkpoint(causal_checkpoint)
    assert live.sample_rate == 16000 and live.latency_ms == 16.0
    x = np.random.default_rng(5).standard_normal(4000).astype(np.float32) * 0.1
    want = offline(live.model, x)
    got = np.concatenate([live.process(x[:1234]), live.process(x[1234:]), live.flush()])
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize(
    "lookahead_ms, quiet_s", [(0.0, 0.0), (8.0, 0.0), (16.0, 0.0), (8.0, 0.05)]
)
def test_frames_run_in_one_pass_equal_frames_stepped_one_by_one(lookahead_ms, quiet_s):
    model = trained_looking(lookahead_ms, quiet_s=quiet_s)
    film = model.film(torch.zeros(1))
    x = torch.from_numpy(
        np.random.default_rng(2).standard_normal(40 * model.hop).astype(np.float32)
    )
    state, stepped = model.initial_state(), []
    for block in x.view(-1, 1, model.hop):
        out, state = model.step(block, state, *film)
        stepped.append(out)
    state, passes, i = model.initial_state(), [], 0
    for frames in [0, 1, 2, 5, 0, 12, 20]:  # some shorter than the lookahead, one empty
        out, state = model.run_frames(x[None, i : i + frames * model.hop], state, *film)
        passes.append(out)
        i += frames * model.hop
    assert i == x.numel()
    torch.testing.assert_close(torch.cat(passes, -1), torch.cat(stepped, -1), atol=1e-6, rtol=0)


def test_files_through_a_causal_checkpoint_are_one_stream_per_channel(causal_checkpoint):
    """``Denoiser`` (``infer -c``, ``evaluate``, ``make quality``) hears a causal model's
    input as one stream, as it is heard live, not as segments that each start cold."""
    from diffdenoise.inference.denoiser import Denoiser

    denoiser = Denoiser.from_checkpoint(causal_checkpoint, device="cpu")
    assert denoiser.segment == 8000  # 0.5 s: the file below is five segments long
    rng = np.random.default_rng(9)
    x = np.stack([demo_data.utterance(rng, 2.5, 16000) for _ in range(2)]).astype(np.float32)
    x += 0.05 * rng.standard_normal(x.shape).astype(np.float32)
    got = denoiser(x, 16000)
    assert got.shape == x.shape
    for channel in range(2):
        want = offline(denoiser.model, x[channel])
        np.testing.assert_allclose(got[channel], want, atol=1e-5)


def test_a_non_causal_checkpoint_is_refused_in_one_line(ckpt):
    with pytest.raises(CheckpointError, match=f"{ckpt}: not a causal model"):
        StreamingDenoiser.from_checkpoint(ckpt)


def test_stream_cli_writes_the_file_and_prints_latency_and_chunk_times(causal_checkpoint, tmp_path):
    src, dst = tmp_path / "in.wav", tmp_path / "out.wav"
    rng = np.random.default_rng(6)
    sf.write(src, (demo_data.utterance(rng, 1.5, 16000) * 0.5).astype(np.float32), 16000)
    cmd = [sys.executable, "-m", "diffdenoise.stream", str(src), str(dst)]
    run = subprocess.run(
        [*cmd, "-c", str(causal_checkpoint), "--chunk-ms", "10"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "algorithmic latency 16.0 ms" in run.stdout
    assert "in 150 chunks of 10.0 ms" in run.stdout and "p99" in run.stdout
    out, rate = sf.read(dst)
    assert rate == 16000 and out.shape == (24000,)
    want = offline(StreamingDenoiser.from_checkpoint(causal_checkpoint).model, sf.read(src)[0])
    np.testing.assert_allclose(out, want, atol=1e-4)  # the WAV's 16-bit rounding
    missing = subprocess.run(
        [*cmd[:3], str(tmp_path / "none.wav"), str(dst), "-c", str(causal_checkpoint)],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert missing.returncode == 2
    (line,) = missing.stderr.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / 'none.wav'}: ")


@pytest.mark.parametrize(
    "case, extra, message",
    [
        ("same", [], "{src}: output would overwrite the input (use --overwrite)"),
        ("nan", [], "{src}: audio contains NaN or infinite samples"),
        ("no folder", [], "cannot write {missing}: folder {missing.parent} does not exist"),
        (
            "chunk 0",
            ["--chunk-ms", "0"],
            "argument --chunk-ms: 0 is out of range: must be > 0 and <= 10000",
        ),
        (
            "chunk -5",
            ["--chunk-ms=-5"],
            "argument --chunk-ms: -5 is out of range: must be > 0 and <= 10000",
        ),
        (
            "threads 0",
            ["--threads", "0"],
            "argument --threads: 0 is out of range: must be >= 1 and <= 1024",
        ),
    ],
)
def test_stream_refuses_in_one_line_before_any_work(
    causal_checkpoint, tmp_path, capsys, case, extra, message
):
    from diffdenoise.inference import realtime as stream

    src, dst, missing = tmp_path / "in.wav", tmp_path / "out.wav", tmp_path / "no" / "o.wav"
    wave = np.full(1600, 0.1, np.float32)
    if case == "nan":
        wave[100] = np.nan
    sf.write(src, wave, 16000, subtype="FLOAT")
    before = src.read_bytes()
    out = {"same": src, "no folder": missing}.get(case, dst)
    try:
        code = stream.main([str(src), str(out), "-c", str(causal_checkpoint), *extra])
    except SystemExit as stop:  # argparse
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(message.format(src=src, missing=missing)), err
    assert src.read_bytes() == before and not dst.exists() and not missing.parent.exists()


@pytest.mark.parametrize("n_fft", [15, 16, 256, 768])
def test_factored_dft_is_torch_fft(n_fft):
    from diffdenoise.models.causal import FactoredDft

    dft, x = FactoredDft(n_fft), torch.randn(3, n_fft)
    spec = torch.fft.rfft(x)
    real, imag = dft.rfft(x)
    scale = spec.abs().max()
    assert (real - spec.real).abs().max() < 1e-6 * scale * n_fft**0.5
    assert (imag - spec.imag).abs().max() < 1e-6 * scale * n_fft**0.5
    re, im = torch.randn(2, n_fft // 2 + 1), torch.randn(2, n_fft // 2 + 1)
    want = torch.fft.irfft(torch.complex(re, im), n_fft)  # ignores DC's (and Nyquist's) imag
    torch.testing.assert_close(dft.irfft(re, im, n_fft), want, atol=1e-6, rtol=0)
