"""GPU figures for ``python -m diffdenoise.bench --gpu``: the real pipeline on one GPU.

It builds its own shards (the demo corpus, 48 kHz pcm16), then follows :data:`PLAN`:
``default.yaml`` at batch 8, 32, 128 and 512, eager and compiled, ``large.yaml`` eager and
compiled, and ``gpu.yaml`` (its auto-sized batch), each through ``python -m
diffdenoise.train`` with its real loader for :data:`STEPS` steps (figures from the
windows after the first 30). From each run's ``metrics.jsonl``: audio-s/s, the share of
step time spent waiting for data, model FLOP utilisation against the GPU's dense bf16
peak, peak memory, and audio-hours of training per GPU-hour. Then inference: real-time
factor, and batched overlap-add against segment-by-segment.

The whole plan has a time budget (8 minutes by default): a run still going when it runs
out is stopped, the runs after it are listed as not run, and the rows measured so far are
written after every run, so a bench cut short still leaves its table.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffdenoise.bench import demo_data
from diffdenoise.bench.common import quiet, row
from diffdenoise.config import loading as config
from diffdenoise.data import sharding as shard
from diffdenoise.inference.denoiser import Denoiser
from diffdenoise.models.factory import build_model, gflops_per_second, model_for

# Dense bf16 peak TFLOP/s from the vendors' data sheets.
PEAKS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}
# (config, compiled, batch; 0 = the config's own) in the order they run: the cheapest and
# most telling first, so a bench cut short still has them.
PLAN = [
    ("default", False, 8), ("default", False, 128), ("default", True, 128),
    ("large", False, 0), ("large", True, 0), ("gpu", False, 0),
    ("default", False, 32), ("default", False, 512), ("default", True, 8),
]  # fmt: skip
STEPS = 330  # 300 logged after the first 30, which hold the warm-up and compilation
WARMUP_WINDOWS = 3  # log windows of 10 steps left out


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAKS.items() if k in name), None)


def build_shards(work: Path, minutes: float = 10, rate: int = 48000) -> Path:
    src = work / "gt_audio"
    demo_data.generate(src, minutes, seed=0, rate=rate, workers=os.cpu_count() or 1)
    args = [str(src), "--name", "gpu", "--out", str(work), "--sample-rate", str(rate)]
    args += ["--format", "pcm16", "--val-fraction", "0.05", "--workers", str(os.cpu_count())]
    quiet(shard.main, args)
    return work / "gpu"


def last_error_line(stderr: str) -> str:
    """The line that names a failure, not torch.compile's hint about verbose logs after it."""
    lines = [x for x in stderr.splitlines() if x.strip() and not x.startswith("Set TORCHDYNAMO")]
    return (lines or ["?"])[-1][:300]


def train_run(work, shards, name, compiled, steps, extra=(), timeout=None) -> dict:
    """Train one config for ``steps`` steps; its throughput figures after warm-up (an
    ``error`` instead when it fails or ``timeout`` seconds run out)."""
    cfg_file = config.find_config(name)
    runs = work / f"runs-{name}-{int(compiled)}"
    args = [
        str(cfg_file), f"data.train_shards={shards}/train-*.tar",
        f"data.val_shards={shards}/val-*.tar", "train.max_epochs=0", f"train.max_steps={steps}",
        "train.val_every=100000", "checkpoint.every=100000", "log.every=10",
        "log.wandb_mode=disabled", "data.val_max_samples=1", f"train.compile={compiled}",
        f"train.runs_dir={runs}", *extra,
    ]  # fmt: skip
    env = dict(os.environ, WANDB_SILENT="true")
    started = time.time()
    try:
        proc = subprocess.run([sys.executable, "-m", "diffdenoise.train", *args], env=env,
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": "cut short: the bench's time budget ran out during this run"}
    if proc.returncode != 0:
        return {"error": last_error_line(proc.stderr)}
    lines = (next(runs.iterdir()) / "metrics.jsonl").read_text().splitlines()
    windows = [json.loads(x) for x in lines if "train/audio_s_per_s" in x]
    windows = windows[WARMUP_WINDOWS:] or windows[-1:]  # warmed up
    speed = statistics.median(w["train/audio_s_per_s"] for w in windows)
    cfg = config.load([cfg_file], list(extra))
    gflops = gflops_per_second(model_for(cfg), cfg.data.sample_rate)
    achieved = 3 * gflops * speed / 1e3  # forward + backward: about 3x the forward
    peak = peak_tflops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
    return {
        "audio_s_per_s": round(speed, 1),
        "data_wait": round(statistics.median(w["train/data_wait"] for w in windows), 3),
        "audio_h_per_gpu_h": round(speed, 1),  # audio-s per s = audio-h per h
        "achieved_tflops": round(achieved, 2),
        "mfu": round(achieved / peak, 4) if peak else None,
        "peak_memory_gb": round(max(w.get("train/peak_memory_gb", 0) for w in windows), 2),
        "wall_s": round(time.time() - started),
    }


def inference_figures(device: str, seconds: int = 120) -> dict:
    """RTF of the default 48 kHz model, batched overlap-add vs one segment per call."""
    cfg = config.load([config.find_config("default")])
    model = build_model(cfg.model, cfg.data.sample_rate)
    audio = np.random.default_rng(0).standard_normal(48000 * seconds).astype(np.float32) * 0.1
    rtf = {}
    for batch in (1, 32):
        denoiser = Denoiser(model, 48000, device=device, batch_size=batch)
        denoiser(audio[:48000], 48000)  # warm-up
        start = time.perf_counter()
        denoiser(audio, 48000)
        rtf[batch] = (time.perf_counter() - start) / seconds
    return {"rtf": round(rtf[32], 5), "batched_speedup": round(rtf[1] / rtf[32], 2)}


def run_plan(work, shards, device_name, plan=PLAN, steps=STEPS, minutes=8.0, extra=(),
             on_row=None) -> list[dict]:  # fmt: skip
    """G1 rows of ``plan``, within ``minutes``; ``on_row(rows)`` after every run."""
    deadline, rows = time.time() + minutes * 60, []
    for cfg_name, compiled, batch in plan:
        label = f"{cfg_name}.yaml{f' batch {batch}' if batch else ''}, bf16" + (
            " + compile" if compiled else ""
        )
        left = deadline - time.time()
        if left <= 0:
            figures = {"error": "not run: the bench's time budget ran out before it"}
        else:
            more = [f"train.batch_size={batch}"] if batch else []
            figures = train_run(work, shards, cfg_name, compiled, steps, [*extra, *more], left)
        print(f"G1 {label}: {figures}", flush=True)
        wait = figures.get("data_wait")
        rows.append(
            row("G1", f"train {label}, real loader, on {device_name}",
                figures.get("audio_s_per_s"), "data wait <= 5 %",
                None if wait is None else wait <= 0.05, **figures)
        )  # fmt: skip
        if on_row is not None:
            on_row(rows)
    return rows


def launch_rows(device_name: str) -> list[dict]:
    """G3: kernels per training step of ``default.yaml`` on the GPU, eager and compiled,
    by the CUDA profiler, against B18's target (a quarter of the CPU baseline count)."""
    from diffdenoise.bench.launches import BASELINE, step_launches

    rows = []
    for compiled in (False, True):
        try:
            counted = step_launches("default", device="cuda", compiled=compiled)
        except Exception as exc:  # a bench row, not a crash: the other rows still count
            counted = {"launches": None, "error": f"{type(exc).__name__}: {exc}"[:300]}
        value = counted.pop("launches")
        label = "compiled" if compiled else "eager"
        print(f"G3 default.yaml {label}: {value} {counted}", flush=True)
        rows.append(
            row("G3", f"kernels per training step, default.yaml, bf16, {label}, on {device_name}",
                value, f"<= {BASELINE // 4} (a quarter of B18's baseline)",
                None if value is None else value <= BASELINE // 4, **counted)
        )  # fmt: skip
    return rows


def run_gpu(work: Path, device: str = "cuda", minutes: float = 8.0, on_row=None) -> list:
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --gpu needs a CUDA GPU; none is visible here")
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    shards = build_shards(work)
    rows = run_plan(work, shards, name, minutes=minutes, on_row=on_row)
    rows += launch_rows(name)
    inference = inference_figures(device)
    rows.append(
        row("G2", f"inference RTF, default 48 kHz model, batch 32, on {name}", inference["rtf"],
            "batched >= 2x faster than sequential", inference["batched_speedup"] >= 2,
            batched_speedup=inference["batched_speedup"])
    )  # fmt: skip
    return rows
