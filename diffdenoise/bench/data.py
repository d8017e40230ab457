"""``make bench`` figures of the data path: B8 (loader per worker, FLAC vs pcm16 shards, and
the FLAC-decode limit), B9 (shard bytes per audio-hour), B10 (device-side mixing) and B11
(the share of step time a real training run waits for data)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tarfile
from functools import partial
from pathlib import Path

import numpy as np
import torch

from diffdenoise.bench.common import make_corpus, quiet, row, timed
from diffdenoise.config import loading as config
from diffdenoise.data import audio
from diffdenoise.data import pipeline as data
from diffdenoise.data import sharding as shard

BATCH, CROP, RATE = 16, 96000, 48000  # default.yaml's batches: 16 two-second crops, 48 kHz


def format_shards(work: Path) -> dict[str, Path]:
    """The same 4-minute 48 kHz corpus as FLAC and as pcm16 shards."""
    src = make_corpus(work, 4.0, RATE)
    out = {}
    for fmt in ("flac", "pcm16"):
        out[fmt] = work / "formats" / fmt
        if not (out[fmt] / "manifest.json").exists():
            args = [str(src), "--name", fmt, "--out", str(out[fmt].parent), "--format", fmt]
            quiet(shard.main, [*args, "--sample-rate", str(RATE), "--max-seconds", "10"])
    return out


def loader_rate(shards: Path | str, batches: int = 40) -> float:
    """Audio-s/s of one loader in this process, one thread: read, crop, plan the noise.
    ``shards``: a folder, or a shard pattern (a URL with a brace range)."""
    weights = {"gaussian": 1.0, "pink": 1.0, "brown": 0.5}
    mixer = data.Mixer(weights, -5.0, 20.0, -10.0, 6.0, "random", 1000, 0, eq_db=6.0)
    pattern = f"{shards}/train-*.tar" if isinstance(shards, Path) else shards
    stream = data.TrainStream(
        data.expand_urls(pattern), segment=CROP, sample_rate=RATE,
        batch_size=BATCH, batches=10**6, mixer=mixer, seed=0, rank=0, world_size=1,
        shuffle_buffer=64,
    )  # fmt: skip
    it = iter(stream)
    for _ in range(3):
        next(it)  # fill the shuffle buffer
    return batches * BATCH * CROP / RATE / timed(lambda: [next(it) for _ in range(batches)])


def flac_decode_limit(shards: Path) -> float:
    """Audio-s/s of decoding whole FLAC members in one thread: no loader can beat it."""
    members = []
    for tar_path in sorted(shards.glob("train-*.tar")):
        with tarfile.open(tar_path) as tar:
            members += [tar.extractfile(m).read() for m in tar if m.name.endswith(".flac")]
    seconds = sum(audio.num_frames(m) for m in members) / RATE
    return seconds / timed(lambda: [audio.decode(m) for m in members], 3)


def bench_formats(work: Path) -> list[dict]:
    torch.set_num_threads(1)
    shards = format_shards(work)
    limit = flac_decode_limit(shards["flac"])
    rates = {fmt: statistics.median(loader_rate(p) for _ in range(3)) for fmt, p in shards.items()}
    torch.set_num_threads(2)
    share = rates["flac"] / limit
    b8 = row(
        "B8", "loader: audio-s/s per worker, pcm16 shards (48 kHz, default.yaml's 2 s crops; "
        "noise mixed on the device)", round(rates["pcm16"]),
        ">= 4000; FLAC loader >= 80 % of the FLAC-decode limit",
        rates["pcm16"] >= 4000 and share >= 0.8, flac_loader=round(rates["flac"]),
        flac_decode_limit=round(limit), flac_share_of_limit=round(share, 2),
    )  # fmt: skip
    sizes = {}
    for fmt, p in shards.items():
        m = json.loads((p / "manifest.json").read_text())
        total = sum(s["bytes"] for sp in m["splits"].values() for s in sp["shards"])
        sizes[fmt] = total / sum(sp["seconds"] for sp in m["splits"].values()) * 3600 / 1e6
    b9 = row(
        "B9", "shard size: MB per audio-hour at 48 kHz, pcm16 (FLAC beside it)",
        round(sizes["pcm16"]), "reported", None, flac=round(sizes["flac"]),
    )  # fmt: skip
    return [b8, b9]


def bench_mixing(steps: int = 10) -> dict:
    """Audio-s/s of ``data.render`` (noise made and mixed) for default-config batches here."""
    cfg = config.load([config.find_config("default")])
    mixer = data.Mixer.from_config(cfg)
    clean = np.random.default_rng(0).standard_normal(cfg.data.segment).astype(np.float32) * 0.1
    n = cfg.train.batch_size
    plans = [mixer.plan(np.random.default_rng(i), clean.shape[0]) for i in range(n)]
    batch = data.collate([(clean, None, p, str(i), "u") for i, p in enumerate(plans)])
    render = partial(data.render, batch, "cpu", sample_rate=cfg.data.sample_rate)
    render()
    seconds = timed(render, steps)
    return row(
        "B10", "device-side mixing on this CPU (2 threads): audio-s/s of one default batch",
        round(n * cfg.data.segment / cfg.data.sample_rate / seconds), "reported", None,
    )  # fmt: skip


def bench_data_wait(work: Path, shards: Path) -> dict:
    """Share of step time a real ``default.yaml`` run (48 kHz, default workers) waits for
    its loader, from ``train/data_wait`` in metrics.jsonl after the first window."""
    runs = work / "wait"
    args = [
        str(config.find_config("default")), f"data.train_shards={shards}/train-*.tar",
        f"data.val_shards={shards}/train-*.tar", "train.max_epochs=0", "train.max_steps=40",
        "train.val_every=100000", "checkpoint.every=100000", "log.every=10",
        "log.wandb_mode=disabled", "data.val_max_samples=1", f"train.runs_dir={runs}",
    ]  # fmt: skip
    env = dict(os.environ, WANDB_SILENT="true")
    cmd = [sys.executable, "-m", "diffdenoise.train", *args]
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    lines = (next(runs.iterdir()) / "metrics.jsonl").read_text().splitlines()
    waits = [json.loads(x)["train/data_wait"] for x in lines if "train/data_wait" in x]
    wait = statistics.mean(waits[1:])
    cfg = config.load([config.find_config("default")])
    return row(
        "B11", "data wait: share of step time default.yaml waits for its loader (this CPU, "
        "default workers)", f"{100 * wait:.1f} %", "<= 5 %", wait <= 0.05,
        workers=data.workers_for(cfg.data.num_workers),
    )  # fmt: skip
