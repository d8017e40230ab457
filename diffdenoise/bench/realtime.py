"""Real-time figures for ``make bench`` (B12-B17): ``configs/realtime.yaml`` at 48 kHz.

Speed is measured on one thread, frame by frame, as a live host would run it: the torch
:class:`~diffdenoise.inference.realtime.StreamingDenoiser` fed 10 ms chunks, and the exported
streaming graph in onnxruntime fed one frame per call. The weights are random (the
compute is that of a trained model); the quality row reads the recorded speech run.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from diffdenoise.bench import demo_data
from diffdenoise.config import loading as config
from diffdenoise.inference.realtime import StreamingDenoiser, stream_file

RATE, SECONDS, CHUNK_MS = 48000, 10, 10.0
QUALITY = Path(__file__).resolve().parents[2] / "bench" / "causal" / "quality.json"


def realtime_model():
    from diffdenoise.models.factory import model_for

    torch.manual_seed(0)
    model = model_for(config.load([config.find_config("realtime")])).eval()
    for p in model.out.parameters():
        torch.nn.init.normal_(p, std=0.1)  # a correction that moves the gain, as trained
    return model


def test_audio() -> np.ndarray:
    rng = np.random.default_rng(0)
    speech = demo_data.utterance(rng, SECONDS, RATE)
    return (speech + 0.03 * rng.standard_normal(speech.size)).astype(np.float32)


def bench_realtime() -> list[dict]:
    from diffdenoise.bench.common import row

    model, wave = realtime_model(), test_audio()
    live = StreamingDenoiser(model, RATE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        chunk = round(CHUNK_MS * RATE / 1000)
        stream_file(live, wave[: RATE // 2], chunk)  # warm-up
        out, seconds = stream_file(live, wave, chunk)
        with torch.no_grad():
            offline = model(torch.from_numpy(wave)[None, None])[0, 0].numpy()
        onnx = onnx_figures(model, wave)
    finally:
        torch.set_num_threads(threads)
    ms = seconds * 1000
    rtf, p99 = float(ms.sum()) / (SECONDS * 1000), float(np.percentile(ms, 99))
    difference = float(np.abs(out - offline).max())
    budget = f"<= half the {CHUNK_MS:g} ms chunk"
    rows = [
        row("B12", "algorithmic latency, realtime.yaml at 48 kHz (window + lookahead)",
            model.latency_ms, "<= 20 ms", model.latency_ms <= 20),
        row("B13", "streaming vs offline causal output, max |difference| over 10 s", difference,
            "<= 1e-5", difference <= 1e-5),
        row("B14", "one-thread RTF, torch StreamingDenoiser, 10 ms chunks", round(rtf, 4), "<= 0.1",
            rtf <= 0.1, median_chunk_ms=round(float(np.median(ms)), 3)),
        row("B15", "99th-percentile chunk compute, torch, 10 ms chunks (ms)", round(p99, 3), budget,
            p99 < CHUNK_MS / 2, worst_ms=round(float(ms.max()), 3), onnx_p99_ms=onnx.get("p99_ms")),
    ]  # fmt: skip
    if "error" in onnx:
        rows.append(row("B16", "one-thread RTF, onnxruntime streaming graph", None, "<= 0.05",
                        None, skipped=onnx["error"]))  # fmt: skip
    else:
        rtf = onnx["rtf"]
        rows.append(row("B16", "one-thread RTF, onnxruntime streaming graph", rtf, "<= 0.05",
                        rtf <= 0.05, offline_graph_rtf=onnx["offline_rtf"]))  # fmt: skip
    rows.append(quality_row())
    return rows


def onnx_figures(model, wave: np.ndarray) -> dict:
    """The exported graphs in onnxruntime on one thread: streaming frame by frame, and
    the offline graph on the whole 10 s."""
    try:
        import onnxruntime as ort

        from diffdenoise.inference.export import OnnxDenoiser, export
    except ImportError:
        return {"error": "onnxruntime missing: pip install 'diffdenoise[export]'"}
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        meta = export(model, RATE, Path(tmp) / "s.onnx", streaming=True)
        session = ort.InferenceSession(str(Path(tmp) / "s.onnx"), options)
        export(model, RATE, Path(tmp) / "o.onnx", streaming=False)
        offline = OnnxDenoiser(Path(tmp) / "o.onnx")
        start = time.perf_counter()
        offline(wave)
        offline_rtf = (time.perf_counter() - start) / SECONDS
    state = {k: v.numpy() for k, v in model.initial_state(1).items()}
    frames = wave[: wave.size // meta["hop"] * meta["hop"]].reshape(-1, 1, meta["hop"])
    seconds = []
    for block in frames:
        start = time.perf_counter()
        result = session.run(None, {"samples": block, **state})
        state = dict(zip(meta["states"], result[1:]))
        seconds.append(time.perf_counter() - start)
    ms = np.array(seconds[20:]) * 1000  # after warm-up
    hop_ms = meta["hop"] / RATE * 1000
    return {
        "rtf": round(float(ms.mean()) / hop_ms, 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "offline_rtf": round(offline_rtf, 4),
    }


def quality_row() -> dict:
    """The causal model against the non-causal default on speech at the same CPU budget,
    as ``make quality-causal`` recorded it in bench/causal/quality.json (it trains for
    half an hour: not rerun here)."""
    from diffdenoise.bench.common import row

    if not QUALITY.exists():
        return row("B17", "quality cost of causality on speech", None, "reported", None,
                   missing=f"{QUALITY.name}: run make quality-causal")  # fmt: skip
    report = json.loads(QUALITY.read_text())
    noisy, clean = report["tables"]["snr"]["all"], report["tables"]["clean"]["clean"]
    causal, default = noisy["realtime"], noisy["default"]
    return row(
        "B17", "quality cost of causality on speech: realtime minus default, mean SI-SDR (dB)",
        round(causal["si_sdr"] - default["si_sdr"], 2), "reported", None,
        pesq_difference=round(causal["pesq"] - default["pesq"], 3),
        clean_in_si_sdr={k: round(clean[k]["si_sdr"], 1) for k in ("realtime", "default")},
        steps={k: report["runs"][k]["steps"] for k in ("realtime", "default")},
    )  # fmt: skip
