"""``python -m diffdenoise.steptime``: where a training step's time goes, for one config.

    python -m diffdenoise.steptime configs/default.yaml data.train_shards=shards/x/train-*.tar

With the run's own shards, loader, model and device (a GPU where one is visible) it times
the loader alone (``data.num_workers`` workers, after its first batch), one optimizer step
alone on batches already loaded (mixing included), and the device-side mixing alone, then
prints the operators a few steps spent their time in (``torch.profiler``; CUDA kernel
time too on a GPU). The last line says what bounds training: the loader (more workers,
pcm16 shards) or the step (a larger batch, ``train.compile``).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from diffdenoise.common.cli import entry
from diffdenoise.config import loading as config
from diffdenoise.data import pipeline as data
from diffdenoise.training import distrib
from diffdenoise.training import loop as train
from diffdenoise.training.step import LateFlag

WARMUP_STEPS = 3  # compilation, cuDNN autotuning and the allocator settle in these


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _seconds_each(fn, count: int, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    for i in range(count):
        fn(i)
    _sync(device)
    return (time.perf_counter() - start) / count


def measure(cfg, steps: int = 10, batches: int = 20, device: str | None = None) -> dict:
    """Seconds per batch of the loader, the step and the mixing, and the profiler's table."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    train_batches, _, per_epoch, stats = train.build_data(cfg, 0, 1, device)
    stream = train_batches(0)
    next(stream)  # workers started, shuffle buffers filled
    start = time.perf_counter()
    loaded = [next(stream) for _ in range(batches)]
    loader_s = (time.perf_counter() - start) / batches
    ga = cfg.train.grad_accum
    with tempfile.TemporaryDirectory(prefix="diffdenoise-steptime-") as tmp:
        run = train.build_run(cfg, distrib.setup(cfg, Path(tmp)), Path(tmp), per_epoch)
        run.model.train()
        flags = LateFlag()

        def step(i: int) -> None:
            micro = [stats["render"](loaded[(i * ga + k) % batches]) for k in range(ga)]
            train.optimizer_step(run, micro, cfg, flags)

        _seconds_each(step, WARMUP_STEPS, device)
        step_s = _seconds_each(step, steps, device) / ga
        render_s = _seconds_each(lambda i: stats["render"](loaded[i % batches]), steps, device)
        table = _profile(step, device)
    audio_s = cfg.train.batch_size * cfg.data.segment / cfg.data.sample_rate
    return {"device": device, "audio_s_per_batch": audio_s, "loader_s": loader_s,
            "step_s": step_s, "render_s": render_s, "table": table}  # fmt: skip


def _profile(step, device: str, count: int = 3) -> str:
    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        _seconds_each(step, count, device)
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=50)


def report(figures: dict, workers: int) -> str:
    """The figures as lines, per batch and as audio-seconds per second, and the verdict."""
    audio = figures["audio_s_per_batch"]
    rows = [
        (f"loader alone, workers: {workers}", figures["loader_s"]),
        ("step alone (mixing included)", figures["step_s"]),
        ("device-side mixing alone", figures["render_s"]),
    ]
    lines = [f"{name:32s} {1e3 * s:9.2f} ms/batch {audio / s:10.1f} audio-s/s" for name, s in rows]
    if figures["loader_s"] > figures["step_s"]:
        verdict = "loader-bound: raise data.num_workers, or train from --format pcm16 shards"
    else:
        verdict = "step-bound: the loader keeps up; a larger train.batch_size or train.compile"
    return "\n".join([figures["table"], *lines, f"on {figures['device']}: {verdict}"])


@entry
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    files = [a for a in argv if "=" not in a]
    if not files or "-h" in files or "--help" in files:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: python -m diffdenoise.steptime CONFIG.yaml [key=value ...]", file=sys.stderr)
        return 0 if files else 2
    try:
        cfg = config.load(files, [a for a in argv if "=" in a] + ["log.wandb_mode=disabled"])
        figures = measure(cfg)
    except (config.ConfigError, data.DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report(figures, data.workers_for(cfg.data.num_workers)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
