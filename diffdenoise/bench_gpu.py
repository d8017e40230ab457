"""GPU figures for ``python -m diffdenoise.bench --gpu`` (default config, one GPU).

Train steps/s and audio-seconds/s in fp32, bf16 and bf16 + ``torch.compile``; model FLOP
utilisation against the GPU's dense peak; peak memory; inference real-time factor.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from diffdenoise import config
from diffdenoise.denoiser import Denoiser
from diffdenoise.losses import build_loss
from diffdenoise.model import build_model, gflops_per_second

# Dense peak TFLOP/s (bf16 tensor cores, fp32 without TF32) from the vendors' data sheets.
PEAKS = {"H200": (989.0, 67.0), "H100": (989.0, 67.0), "A100": (312.0, 19.5), "L40S": (362.0, 91.6)}


def peak_tflops(name: str, precision: str) -> float | None:
    for key, (bf16, fp32) in PEAKS.items():
        if key in name:
            return bf16 if precision == "bf16" else fp32
    return None


def train_speed(cfg, precision: str, compiled: bool, steps: int = 30) -> dict:
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data.sample_rate).cuda()
    loss_fn = build_loss(cfg.loss).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, fused=True)
    net = torch.compile(model) if compiled else model
    batch, segment = cfg.train.batch_size, cfg.data.segment
    noisy = torch.randn(batch, 1, segment, device="cuda") * 0.1
    clean = noisy * 0.5
    t = torch.randint(0, 1000, (batch,), device="cuda")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    losses = []

    def step():
        with torch.autocast("cuda", dtype=dtype, enabled=precision == "bf16"):
            total, _ = loss_fn(net(noisy, t).float(), clean)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        losses.append(step())
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    audio_s = batch * segment / cfg.data.sample_rate / seconds
    achieved = (
        3
        * gflops_per_second(build_model(cfg.model, cfg.data.sample_rate), cfg.data.sample_rate)
        * audio_s
        / 1e3
    )
    peak = peak_tflops(torch.cuda.get_device_name(), precision)
    return {
        "steps_per_s": round(1 / seconds, 2),
        "audio_s_per_s": round(audio_s, 1),
        "achieved_tflops": round(achieved, 2),
        "mfu": round(achieved / peak, 4) if peak else None,
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "loss_first_last": [round(losses[0].item(), 4), round(losses[-1].item(), 4)],
    }


def inference_rtf(cfg, seconds: int = 120) -> float:
    model = build_model(cfg.model, cfg.data.sample_rate)
    denoiser = Denoiser(model, cfg.data.sample_rate, device="cuda", batch_size=64)
    audio = np.random.default_rng(0).standard_normal(cfg.data.sample_rate * seconds) * 0.1
    denoiser(audio[: cfg.data.sample_rate].astype(np.float32), cfg.data.sample_rate)
    start = time.perf_counter()
    denoiser(audio.astype(np.float32), cfg.data.sample_rate)
    return (time.perf_counter() - start) / seconds


def run_gpu(work: Path) -> list[dict]:
    if not torch.cuda.is_available():
        raise SystemExit("error: --gpu needs a CUDA GPU; none is visible here")
    cfg = config.load([config.find_config("default")])
    name = torch.cuda.get_device_name()
    rows = []
    for precision, compiled in (("fp32", False), ("bf16", False), ("bf16", True)):
        label = f"{precision}{' + compile' if compiled else ''}"
        try:
            figures = train_speed(cfg, precision, compiled)
        except Exception as err:  # one failing mode (e.g. compile) must not lose the others
            figures = {"audio_s_per_s": None, "error": f"{type(err).__name__}: {err}"[:300]}
        print(f"G1 {label}: {figures}", flush=True)
        rows.append(
            {"id": "G1", "figure": f"train, default config, {label} on {name}", "value":
             figures["audio_s_per_s"], "target": "reported", "pass": None, **figures}
        )  # fmt: skip
    rtf = inference_rtf(cfg)
    rows.append(
        {"id": "G2", "figure": f"inference RTF, default 48 kHz model on {name}",
         "value": round(rtf, 5), "target": "reported", "pass": None}
    )  # fmt: skip
    return rows
