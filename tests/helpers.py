"""Small real corpora on disk for the tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from diffdenoise.bench import demo_data
from diffdenoise.data import sharding as shard


def write_speech(path: Path, seconds: float, rate: int = 16000, seed: int = 0, channels=1):
    rng = np.random.default_rng(seed)
    mono = demo_data.utterance(rng, seconds, rate)
    data = np.stack([mono, 0.5 * mono], axis=1) if channels == 2 else mono
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, rate)
    return path


def make_corpus(root: Path, n: int = 6, seconds: float = 2.0, rate: int = 16000) -> Path:
    for i in range(n):
        write_speech(root / f"d{i % 2}" / f"utt{i}.wav", seconds + 0.25 * i, rate, seed=i)
    return root


def make_shards(tmp: Path, name="c", n=8, shard_mb=0.1, extra=(), **kw) -> Path:
    src = make_corpus(tmp / f"{name}_src", n=n, **kw)
    args = [str(src), "--name", name, "--out", str(tmp / "shards"), "--shard-mb", str(shard_mb)]
    assert shard.main([*args, "--val-fraction", "0.25", *extra]) == 0
    return tmp / "shards" / name


def wandb_records(path: Path):
    """Records of a W&B offline ``run-*.wandb`` file (LevelDB-style log of protobufs)."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = Path(path).read_bytes()
    assert raw[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(raw):
        room = block - pos % block
        if room < 7:  # block trailer padding
            pos += room
            continue
        length = int.from_bytes(raw[pos + 4 : pos + 6], "little")
        kind = raw[pos + 6]
        payload = raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def wandb_history_keys(path: Path) -> set[str]:
    keys = set()
    for record in wandb_records(path):
        if record.WhichOneof("record_type") == "history":
            keys |= {item.key or "/".join(item.nested_key) for item in record.history.item}
    return keys


# Bounded fetching for the remote-shard tests: a failure shows in seconds, not minutes.
FAST_FETCH = ["data.fetch_retries=2", "data.fetch_timeout_s=5", "data.fetch_max_wait_s=10"]


def run_args(train: str, val: str, runs: Path, *extra: str) -> list[str]:
    """launch/train.py arguments of a small tiny.yaml run on the given shard URLs."""
    return [
        "configs/tiny.yaml", f"data.train_shards={train}", f"data.val_shards={val}",
        f"train.runs_dir={runs}", "data.segment=4000", "train.batch_size=4",
        "data.num_workers=1", "log.every=1", "log.wandb_mode=disabled", *FAST_FETCH, *extra,
    ]  # fmt: skip


def run_rows(runs: Path) -> list[dict]:
    """The ``metrics.jsonl`` rows of the one run folder under ``runs``, in order."""
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def run_metric(runs: Path, key: str) -> list:
    """``key``'s values in the one run folder under ``runs``, in order."""
    return [r[key] for r in run_rows(runs) if key in r]


def run_losses(runs: Path) -> dict[int, float]:
    """Step -> training loss of the one run folder under ``runs``."""
    return {r["step"]: r["train/total"] for r in run_rows(runs) if "train/total" in r}
