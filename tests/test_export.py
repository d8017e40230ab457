"""ONNX export of a causal checkpoint: offline and streaming graphs, run in onnxruntime."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from diffdenoise.bench import demo_data
from diffdenoise.inference.realtime import StreamingDenoiser
from tests.distributed import ROOT

ort = pytest.importorskip("onnxruntime")


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def graphs(causal_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    paths = {"offline": out / "model.onnx", "streaming": out / "stream.onnx"}
    for kind, path in paths.items():
        flags = ["--streaming"] if kind == "streaming" else []
        run = cli("diffdenoise.export", str(causal_checkpoint), "-o", str(path), *flags)
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith(f"wrote {path} ({kind} graph,")
    return paths


def torch_offline(checkpoint, x: np.ndarray) -> np.ndarray:
    model = StreamingDenoiser.from_checkpoint(checkpoint).model
    with torch.no_grad():
        return model(torch.from_numpy(x)[None, None])[0, 0].numpy()


def test_offline_graph_matches_torch_for_any_length(graphs, causal_checkpoint):
    from diffdenoise.inference.export import OnnxDenoiser

    onnx = OnnxDenoiser(graphs["offline"])
    assert onnx.sample_rate == 16000 and onnx.meta["latency_ms"] == 16.0
    for length in (1, 255, 4001):  # one dynamic graph for every length
        x = np.random.default_rng(length).standard_normal(length).astype(np.float32) * 0.1
        got = onnx(x)
        assert got.shape == (length,)
        np.testing.assert_allclose(got, torch_offline(causal_checkpoint, x), atol=1e-4)


def test_streaming_graph_carries_its_state_like_the_torch_streamer(graphs, causal_checkpoint):
    session = ort.InferenceSession(str(graphs["streaming"]))
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    live = StreamingDenoiser.from_checkpoint(causal_checkpoint)
    state = {k: v.numpy() for k, v in live.model.initial_state(1).items()}
    assert meta["states"] == list(state) and meta["hop"] == live.hop
    x = np.random.default_rng(7).standard_normal(40 * live.hop).astype(np.float32) * 0.1
    outs = []
    for block in x.reshape(-1, 1, live.hop):
        result = session.run(None, {"samples": block, **state})
        outs.append(result[0][0])
        state = dict(zip(meta["states"], result[1:]))
    got = np.concatenate(outs)[live.model.n_fft - live.hop :]  # the leading past, as the streamer
    want = live.process(x)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_infer_runs_an_onnx_graph(graphs, causal_checkpoint, tmp_path):
    src, dst = tmp_path / "noisy.wav", tmp_path / "clean.wav"
    x = (demo_data.utterance(np.random.default_rng(8), 1.0, 16000) * 0.5).astype(np.float32)
    sf.write(src, x, 16000, subtype="FLOAT")
    run = cli("diffdenoise.infer", str(src), "--onnx", str(graphs["offline"]), "-o", str(dst))
    assert run.returncode == 0, run.stderr
    assert "on onnxruntime (CPU)" in run.stdout
    np.testing.assert_allclose(sf.read(dst)[0], torch_offline(causal_checkpoint, x), atol=1e-4)
    bad = tmp_path / "nan.wav"
    sf.write(bad, np.full(800, np.nan, np.float32), 16000, subtype="FLOAT")
    failed = cli("diffdenoise.infer", str(bad), "--onnx", str(graphs["offline"]), "-o", "x.wav")
    assert failed.returncode == 1 and not (ROOT / "x.wav").exists()
    assert f"error: {bad}: NaN or infinite samples at 0.00 s" in failed.stderr
    both = cli("diffdenoise.infer", str(src), "--onnx", "m.onnx", "-c", "best.pt")
    assert both.returncode == 2
    assert both.stderr.strip() == "error: give one of -c CHECKPOINT and --onnx MODEL"
    streaming = cli("diffdenoise.infer", str(src), "--onnx", str(graphs["streaming"]))
    assert streaming.returncode == 2
    assert "not an offline diffdenoise graph (export without --streaming)" in streaming.stderr


def test_export_refuses_a_non_causal_checkpoint_in_one_line(ckpt, tmp_path):
    run = cli("diffdenoise.export", str(ckpt), "-o", str(tmp_path / "m.onnx"))
    assert run.returncode == 2 and not (tmp_path / "m.onnx").exists()
    assert run.stderr.strip() == (
        f"error: {ckpt}: export needs a causal model (model.causal: true, as in "
        "configs/realtime.yaml)"
    )


def test_the_graph_applies_the_suppress_share_as_torch_does(tmp_path):
    from diffdenoise.config import loading as config
    from diffdenoise.inference.export import OnnxDenoiser, export
    from diffdenoise.models.factory import build_model

    cfg = config.load([config.find_config("realtime")], ["model.spectral.suppress_scale=1.0"])
    model = build_model(cfg.model, 16000).eval()
    with torch.no_grad():
        model.out.bias.copy_(torch.linspace(-3, 3, model.bins))  # lowers some bins, raises others
    export(model, 16000, tmp_path / "m.onnx", streaming=False)
    x = np.random.default_rng(3).standard_normal(4000).astype(np.float32) * 0.1
    with torch.no_grad():
        want = model(torch.from_numpy(x)[None, None])[0, 0].numpy()
        model.suppress_scale = None
        both_ways = model(torch.from_numpy(x)[None, None])[0, 0].numpy()
    got = OnnxDenoiser(tmp_path / "m.onnx")(x)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.abs(got - both_ways).max() > 1e-2  # the share made a difference


def test_export_takes_the_shares_the_graph_keeps(causal_checkpoint, tmp_path):
    from diffdenoise.inference.export import OnnxDenoiser

    payload = torch.load(causal_checkpoint, weights_only=True)
    bins = payload["ema_model"]["out.bias"].numel()
    payload["ema_model"]["out.bias"] = torch.linspace(-3, 3, bins)  # a correction both ways
    torch.save(payload, tmp_path / "best.pt")
    path = tmp_path / "shares.onnx"
    run = cli("diffdenoise.export", str(tmp_path / "best.pt"), "-o", str(path),
              "--correction-scale", "0.25", "--suppress-scale", "1")  # fmt: skip
    assert run.returncode == 0, run.stderr
    model = StreamingDenoiser.from_checkpoint(tmp_path / "best.pt").model
    x = np.random.default_rng(5).standard_normal(4000).astype(np.float32) * 0.1
    with torch.no_grad():
        as_trained = model(torch.from_numpy(x)[None, None])[0, 0].numpy()
        model.correction_scale, model.suppress_scale = 0.25, 1.0
        want = model(torch.from_numpy(x)[None, None])[0, 0].numpy()
    got = OnnxDenoiser(path)(x)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.abs(got - as_trained).max() > 1e-2


def test_export_to_a_missing_folder_is_refused_before_the_work(causal_checkpoint, tmp_path):
    target = tmp_path / "no" / "m.onnx"
    run = cli("diffdenoise.export", str(causal_checkpoint), "-o", str(target))
    assert run.returncode == 2 and not target.parent.exists()
    assert (
        run.stderr.strip() == f"error: cannot write {target}: folder {target.parent} does not exist"
    )


def test_the_quiet_frames_prior_exports_and_streams_as_torch_does(tmp_path):
    """The quiet-frames history (frame powers and energies, ``inf`` before the first) is
    state the graph carries like any other: the streamed graph equals torch's offline
    model over more frames than the window holds."""
    from diffdenoise.config import loading as config
    from diffdenoise.inference.export import export
    from diffdenoise.models.factory import build_model

    cfg = config.load([config.find_config("realtime")], ["model.spectral.quiet_window_s=0.1"])
    model = build_model(cfg.model, 16000).eval()
    assert model.quiet_frames == 12
    with torch.no_grad():
        model.out.bias.copy_(torch.linspace(-1, 1, model.bins))
    export(model, 16000, tmp_path / "s.onnx", streaming=True)
    session = ort.InferenceSession(str(tmp_path / "s.onnx"))
    names = list(model.initial_state(1))
    assert "quiet_power" in names and "quiet_energy" in names
    state = {k: v.numpy() for k, v in model.initial_state(1).items()}
    x = np.random.default_rng(8).standard_normal(40 * model.hop).astype(np.float32) * 0.1
    outs = []
    for block in x.reshape(-1, 1, model.hop):
        result = session.run(None, {"samples": block, **state})
        outs.append(result[0][0])
        state = dict(zip(names, result[1:]))
    with torch.no_grad():
        want = model(torch.from_numpy(x)[None, None])[0, 0].numpy()
    got = np.concatenate(outs)[model.n_fft - model.hop :]
    np.testing.assert_allclose(got, want[: got.size], atol=1e-4)
