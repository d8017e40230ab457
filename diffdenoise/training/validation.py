"""Validation: exact losses over every rank, extra metrics, and keeping the best model.

``run_validation`` is what the loop calls every ``train.val_every`` steps; ``evaluate``
is the exact, world-size-independent measurement under it.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING

import torch

from diffdenoise.common.version import VERSION
from diffdenoise.models.metrics import score
from diffdenoise.models.objectives import Predictive
from diffdenoise.training import checkpoint, distrib

if TYPE_CHECKING:
    from diffdenoise.training.state import Run


@torch.no_grad()
def evaluate(
    model, loss_fn, batches, acc, metrics=(), rate: int = 16000, objective=None
) -> dict[str, float]:
    """Exact validation: per-sample sums all-reduced over ranks, then divided by the count.

    ``metrics`` (``si_sdr``, ``pesq``, ``stoi``) are averaged over the samples where they
    are defined: PESQ refuses silent crops, and those are left out of its mean.
    """
    model.eval()
    # the names are fixed by the loss, so a rank with no samples still joins the reduce
    _, probe = loss_fn(
        torch.zeros(1, 1, 64, device=acc.device), torch.zeros(1, 1, 64, device=acc.device)
    )
    names = sorted([*probe, *metrics])
    sums = torch.zeros(len(names), dtype=torch.float64)
    counts = torch.zeros(len(names), dtype=torch.float64)
    for batch in batches:
        batch = {k: batch[k].to(acc.device) for k in ("noisy", "clean", "t", "state") if k in batch}
        clean = batch["clean"]
        with acc.autocast():
            estimate = (objective or Predictive()).predict(model, batch).float()
        for i in range(estimate.shape[0]):
            _, parts = loss_fn(estimate[i : i + 1], clean[i : i + 1])
            values = {k: v.item() for k, v in parts.items()}
            if metrics:
                est, ref = estimate[i, 0].cpu().numpy(), clean[i, 0].cpu().numpy()
                values.update(score(est, ref, rate, metrics))
            for j, name in enumerate(names):
                if math.isfinite(values[name]) or name in parts:
                    sums[j] += values[name]
                    counts[j] += 1
    model.train()
    totals = acc.reduce(torch.cat([sums, counts]).to(acc.device), reduction="sum").cpu()
    sums, counts = totals[: len(names)], totals[len(names) :]
    result = {
        k: sums[j].item() / counts[j].item() if counts[j] else float("nan")
        for j, k in enumerate(names)
    }
    result["samples"] = counts[names.index("total")].item()
    return result


def best_payload(run: Run, epoch: int, val: dict) -> dict:
    """What ``best.pt`` holds: plain data only, so it loads with ``weights_only=True``."""
    raw = {k: v.detach().cpu() for k, v in run.net.state_dict().items()}
    ema_weights = raw
    if run.ema is not None:
        with run.ema.average_parameters():
            ema_weights = {k: v.detach().cpu().clone() for k, v in run.net.state_dict().items()}
    return {
        "model": raw,
        "ema_model": ema_weights,
        "ema": run.ema.state_dict() if run.ema is not None else {},
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "epoch": epoch,
        "step": run.state.step,
        "val_loss": val["total"],
        "val": val,
        "config": run.plain_cfg,
        "version": VERSION,
    }


def run_validation(
    run: Run,
    val_batches,
    *,
    epoch: int,
    expected: int | None,
    metrics: tuple = (),
    media_every: int = 5,
    keep_best_copies: int = 3,
) -> None:
    """Validate (EMA weights when on), log, and let rank 0 keep the best model."""
    acc, state = run.acc, run.state
    with run.ema_weights():
        val = evaluate(
            run.net, run.loss_fn, val_batches(), acc, metrics, run.tracker.sample_rate,
            run.objective,
        )  # fmt: skip
    state.validations += 1
    run.tracker.log({f"val/{k}": v for k, v in val.items()}, state.step)
    if state.validations % media_every == 1 or media_every == 1:
        with run.ema_weights():
            run.tracker.log_media(run.net, val_batches(), state.step, run.objective)
    samples = int(val["samples"])
    distrib.say(acc, f"step {state.step}: validation loss {val['total']:.4f} ({samples} samples)")
    if expected is not None and samples != expected and acc.is_main_process:
        print(
            f"warning: validation read {samples} of the {expected} samples the manifest "
            "lists: a val shard is damaged or changed",
            file=sys.stderr,
        )
    if val["total"] < state.best_val:
        state.best_val = val["total"]
        if acc.is_main_process:
            payload = best_payload(run, epoch, val)
            checkpoint.save_best(run.run_dir, payload, keep_best_copies)
    acc.wait_for_everyone()
