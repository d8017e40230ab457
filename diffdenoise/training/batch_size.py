"""``train.auto_batch``: the largest batch that fits a share of the GPU's memory, and the
learning rate scaled to it.

The batch doubles from ``train.batch_size`` while one real training step (forward, loss,
backward, at the run's precision) peaks within ``train.memory_share`` of the device
memory; ranks agree on the smallest. The learning rate follows the square-root rule for
Adam-type optimizers (Malladi et al., 2022, "On the SDEs and Scaling Rules for Adaptive
Gradient Algorithms"): ``lr * sqrt(batch / optim.lr_reference_batch)``. The choice is
written to ``runs/<run>/auto_batch.json`` and reused when the run resumes, so a resumed
run keeps the batch (and the data position) it started with.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch

from diffdenoise.common.files import atomic_path
from diffdenoise.config import loading as config

CHOICE = "auto_batch.json"
MAX_BATCH = 4096


def largest_batch(peak_bytes: Callable[[int], float], budget: float, start: int) -> int:
    """The largest ``start * 2**k`` whose ``peak_bytes`` stays within ``budget`` (``start``
    itself if even that does not); running out of memory counts as over budget."""
    best, batch = start, start
    while batch <= MAX_BATCH:
        try:
            within = peak_bytes(batch) <= budget
        except torch.OutOfMemoryError:
            within = False
        if not within:
            break
        best, batch = batch, batch * 2
    return best


def sqrt_scaled_lr(lr: float, batch: int, reference: int) -> float:
    """``lr`` for ``batch``, chosen at ``reference``, by the square-root rule."""
    return lr * math.sqrt(batch / reference)


def resolve(cfg, run_dir: Path, peak_bytes: Callable[[int], float] | None, budget: float,
            agree: Callable[[int], int] = int, write: bool = True):  # fmt: skip
    """``cfg`` with ``train.batch_size`` and ``optim.lr`` set by ``train.auto_batch``, and
    a line saying what was chosen (None when nothing changed). ``peak_bytes`` is None
    where there is no GPU to measure; ``agree`` makes the ranks agree (the minimum)."""
    if not cfg.train.auto_batch:
        return cfg, None
    saved = run_dir / CHOICE
    if saved.is_file():  # a resumed run keeps the batch it started with
        chosen = json.loads(saved.read_text())
        how = f"train.auto_batch: batch {chosen['batch_size']} as this run chose it ({saved})"
    elif peak_bytes is None:
        return cfg, f"train.auto_batch needs a GPU; batch {cfg.train.batch_size} as configured"
    else:
        batch = agree(largest_batch(peak_bytes, budget, cfg.train.batch_size))
        reference = cfg.optim.lr_reference_batch or cfg.train.batch_size
        chosen = {"batch_size": batch, "lr": sqrt_scaled_lr(cfg.optim.lr, batch, reference)}
        if write:  # rank 0; every rank chose the same
            with atomic_path(saved) as tmp:
                tmp.write_text(json.dumps(chosen) + "\n")
        share = f"{cfg.train.memory_share:.0%}"
        how = (f"train.auto_batch: batch {batch} fits {share} of the GPU's memory; "
               f"optim.lr {chosen['lr']:.3g} by the sqrt rule from batch {reference}")  # fmt: skip
    plain = config.to_plain(cfg)
    plain["train"]["batch_size"], plain["optim"]["lr"] = chosen["batch_size"], chosen["lr"]
    return config.from_plain(plain), how


def cuda_peak_bytes(cfg, device: torch.device, autocast) -> Callable[[int], float] | None:
    """``batch -> peak bytes`` of one forward, loss and backward on ``device`` (a CUDA
    device; None elsewhere), plus what the optimizer and EMA hold beside the weights."""
    if device.type != "cuda":
        return None
    from diffdenoise.models.factory import model_for
    from diffdenoise.models.losses import build_loss

    model, loss_fn = model_for(cfg).to(device), build_loss(cfg.loss).to(device)
    held = 3 * sum(p.numel() * 4 for p in model.parameters())  # AdamW's two moments, EMA

    def peak(batch: int) -> float:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        clean = torch.randn(batch, 1, cfg.data.segment, device=device) * 0.1
        t = torch.zeros(batch, dtype=torch.long, device=device)
        try:
            with autocast():
                total, _ = loss_fn(model(clean + 0.05 * torch.randn_like(clean), t), clean)
            total.backward()
            return torch.cuda.max_memory_allocated(device) + held
        finally:
            model.zero_grad(set_to_none=True)

    return peak
