"""What a quality run's training left behind, read from its ``metrics.jsonl``: the loss
curves for the report's figure, and how long and how steadily it trained."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def curves(run: Path) -> dict:
    """``{"train": [(step, loss)], "val": [(step, loss)]}``."""
    rows = metrics(run)
    train = [(r["step"], r["train/total"]) for r in rows if "train/total" in r]
    val = [(r["step"], r["val/total"]) for r in rows if "val/total" in r]
    return {"train": train, "val": val}


def run_info(run: Path, model) -> dict:
    """Steps, parameters, and how steady training was (gradient norms, skipped steps)."""
    rows = metrics(run)
    norms = [r["train/grad_norm"] for r in rows if "train/grad_norm" in r]
    steps = [r["step"] for r in rows if "train/total" in r]
    params = sum(v.numel() for v in model.parameters())
    return {
        "steps": steps[-1] if steps else 0,
        "params": f"{params / 1e6:.2f} M",
        "grad_norm_median": round(float(np.median(norms)), 3) if norms else None,
        "grad_norm_max": round(float(np.max(norms)), 3) if norms else None,
        "skipped_steps": max((r.get("train/skipped_steps", 0) for r in rows), default=0),
    }
