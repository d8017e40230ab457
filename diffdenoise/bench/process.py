"""``make bench`` figures that need their own processes: B3 (CPU scaling of real
``accelerate launch`` runs) and B5 (peak memory of a fresh inference process)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from diffdenoise.bench.common import row
from diffdenoise.config import loading as config
from diffdenoise.data import audio
from diffdenoise.models.factory import build_model
from diffdenoise.training.checkpoint import save_best

# --- B3: CPU scaling ---------------------------------------------------------------------


def bench_scaling(work: Path, shards16: Path) -> dict:
    """Global audio-s/s of real training runs: 2 gloo processes x 1 thread vs 1 x 1."""
    args = [
        str(config.find_config("default")), f"data.train_shards={shards16}/train-*.tar",
        f"data.val_shards={shards16}/val-*.tar", "data.sample_rate=16000", "data.segment=16000",
        "data.num_workers=0", "train.batch_size=8", "train.max_epochs=0", "train.max_steps=36",
        "train.val_every=100000", "checkpoint.every=100000", "log.every=4",
        "log.wandb_mode=disabled", "train.mixed_precision=no", "data.val_max_samples=1",
    ]  # fmt: skip
    speeds = {}
    for procs in (1, 2, 1, 2):
        runs = work / f"scaling{procs}-{len(speeds.get(procs, []))}"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(procs)]
        if procs > 1:
            cmd += ["--multi_gpu", "--num_machines", "1", "--main_process_port", "29731"]
        cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "-m", "diffdenoise.train"]
        cmd += args
        env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1", WANDB_SILENT="true")
        subprocess.run(
            [*cmd, f"train.runs_dir={runs}"], env=env, check=True,
            capture_output=True, text=True,
        )  # fmt: skip
        lines = (next(runs.iterdir()) / "metrics.jsonl").read_text().splitlines()
        rates = [json.loads(x)["train/audio_s_per_s"] for x in lines if "audio_s_per_s" in x]
        speeds.setdefault(procs, []).append(statistics.median(rates[2:]))  # after warm-up
    one, two = max(speeds[1]), max(speeds[2])
    return row(
        "B3", "CPU scaling: 2 processes x 1 thread (gloo DDP) vs 1 x 1, global audio-s/s",
        f"{two / one:.2f}x", ">= 1.6x", two / one >= 1.6,
        audio_s_per_s_1proc=round(one, 1), audio_s_per_s_2proc=round(two, 1),
    )  # fmt: skip


# --- B5: streaming memory ----------------------------------------------------------------

PEAK_SCRIPT = """
import sys
from diffdenoise.inference import infer
code = infer.main(sys.argv[1:])
# VmHWM: this process's own peak (ru_maxrss would include the parent's RSS at fork time)
hwm = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
print("PEAK_KB", hwm, "EXIT", code)
"""


def write_long_file(path: Path, seconds: int, rate: int = 48000) -> None:
    """Noisy tones in 10 s blocks, so writing the file needs no memory either."""
    rng = np.random.default_rng(0)
    with audio.open_writer(path, rate, 1, "WAV", "PCM_16") as f:
        for start in range(0, seconds, 10):
            n = min(10, seconds - start) * rate
            t = (np.arange(n) + start * rate) / rate
            block = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(n)
            f.write(block.astype(np.float32))


def peak_rss_mb(ckpt: Path, src: Path) -> float:
    cmd = [sys.executable, "-c", PEAK_SCRIPT, str(src), "-c", str(ckpt), "--device", "cpu"]
    cmd += ["-o", str(src.with_name(src.stem + "_out.wav"))]
    env = dict(os.environ, OMP_NUM_THREADS="2")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return int(out.split("PEAK_KB")[1].split()[0]) / 1024


def bench_memory(work: Path) -> dict:
    cfg = config.load([config.find_config("default")])
    weights = build_model(cfg.model, cfg.data.sample_rate).state_dict()
    payload = {"model": weights, "ema_model": weights, "config": config.to_plain(cfg)}
    ckpt = save_best(work, payload, keep_copies=1)
    minute, hour = work / "minute.wav", work / "hour.wav"
    write_long_file(minute, 60)
    write_long_file(hour, 3600)
    small, big = peak_rss_mb(ckpt, minute), peak_rss_mb(ckpt, hour)
    hour.unlink()
    growth = big / small - 1
    return row(
        "B5", "memory: peak RSS denoising a 1-hour 48 kHz file by streaming (MB)",
        round(big), "< 1 GB, and within 20 % of the 1-minute file's peak",
        big < 1024 and growth <= 0.20, peak_mb_1_minute=round(small),
        growth=f"{growth * 100:+.1f} %",
    )  # fmt: skip
