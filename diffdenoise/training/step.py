"""One optimizer step and its bookkeeping, without waiting on the device.

On a GPU every ``.item()`` or ``float(tensor)`` stalls the host until the queue drains, so
the step keeps its numbers on the device: loss parts add up as tensors until a log line
needs them, a non-finite step is skipped by the fused optimizer itself (``found_inf``, as
a gradient scaler does it), the EMA leaves such a step out by arithmetic, and the host
reads each step's flag one step later, when it is long computed.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch

from diffdenoise.models.objectives import Predictive


def train_step(model, loss_fn, optimizer, batches, acc, max_grad_norm: float, objective=None):
    """One optimizer step over ``len(batches)`` accumulated micro-batches (already mixed);
    ``objective`` (:mod:`diffdenoise.diffusion`, default predictive) makes the estimate.

    Returns ``(loss parts averaged over micro-batches, grad norm, bad)``, all tensors on
    the device; ``bad`` is true when the loss or gradient was not finite, and then the
    update was skipped. The grad norm is taken after DDP's all-reduce, so every rank
    agrees on skipping.
    """
    objective = objective or Predictive()
    parts_sum: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(batches):
        sync = acc.no_sync(model) if i < len(batches) - 1 else nullcontext()
        with sync, acc.autocast():
            total, parts = loss_fn(objective.predict(model, batch), batch["clean"])
            acc.backward(_share(total, len(batches)))
        for k, v in parts.items():  # no 0 + v: a launch for nothing
            v = _share(v.detach().float(), len(batches))
            parts_sum[k] = parts_sum[k] + v if k in parts_sum else v
    grad_norm = acc.clip_grad_norm_(model.parameters(), max_grad_norm or float("inf"))
    grad_norm = torch.as_tensor(grad_norm, device=parts_sum["total"].device).float()
    bad = ~(torch.isfinite(grad_norm) & torch.isfinite(parts_sum["total"]))
    if acc.scaler is not None:  # fp16: the loss scaler decides, on the host
        optimizer.step()
        if acc.optimizer_step_was_skipped:
            bad = torch.ones_like(bad)
    else:
        optimizer.optimizer.found_inf = bad.float()  # the fused AdamW kernel skips the update
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return parts_sum, grad_norm, bad


def _share(x: torch.Tensor, micro_batches: int) -> torch.Tensor:
    """One micro-batch's share of a step's mean; of one, ``x`` itself (/ 1 is a launch)."""
    return x / micro_batches if micro_batches > 1 else x


def ema_update(ema, parameters, bad: torch.Tensor) -> None:
    """``ema.update()``, but a step flagged ``bad`` leaves the average as it was.

    torch-ema takes its decay as a Python number; the flag stays on the device here, so
    the weight of this update is ``(1 - decay) * (1 - bad)``, a tensor.
    """
    decay = ema.decay
    if ema.num_updates is not None:
        ema.num_updates += 1
        decay = min(decay, (1 + ema.num_updates) / (10 + ema.num_updates))
    weight = (1.0 - decay) * (~bad).float()
    shadows, params = ema.shadow_params, list(parameters)
    if len(shadows) != len(params):
        raise ValueError(f"EMA holds {len(shadows)} tensors but the model has {len(params)}")
    with torch.no_grad():  # three launches for all parameters, not three per parameter
        steps = torch._foreach_sub(shadows, params)
        torch._foreach_mul_(steps, weight)
        torch._foreach_sub_(shadows, steps)


class LateFlag:
    """A device flag read on the host one step later, when the device has long set it."""

    def __init__(self):
        self.pending = None

    def push(self, flag: torch.Tensor) -> bool | None:
        """Queue this step's flag; returns the previous step's value (None at first)."""
        event = None
        if flag.is_cuda:
            host = flag.to("cpu", non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host = flag
        previous, self.pending = self.pending, (host, event)
        return None if previous is None else self._read(previous)

    def flush(self) -> bool | None:
        previous, self.pending = self.pending, None
        return None if previous is None else self._read(previous)

    @staticmethod
    def _read(pending) -> bool:
        host, event = pending
        if event is not None:
            event.synchronize()
        return bool(host)


class LogWindow:
    """What happened since the last log line: loss parts (as tensors), steps, skipped
    samples, time, and the time spent waiting for the loader."""

    def __init__(self):
        self.parts, self.steps, self.bad, self.start = {}, 0, 0, time.time()
        self.retries = 0  # remote shard fetches retried by the loader workers
        self.wait = 0.0

    def add(self, parts: dict, bad_samples: int, wait: float, retries: int = 0) -> None:
        for k, v in parts.items():
            self.parts[k] = self.parts.get(k, 0.0) + v
        self.steps += 1
        self.bad += bad_samples
        self.retries += retries
        self.wait += wait

    def metrics(self, samples_per_step: float, seconds_per_step: float) -> dict:
        """Mean loss parts, throughput and data-wait share over the window (one sync)."""
        dt = max(time.time() - self.start, 1e-9)
        names = list(self.parts)
        means = (torch.stack([self.parts[k] for k in names]) / self.steps).tolist()
        metrics = {f"train/{k}": v for k, v in zip(names, means, strict=True)}
        metrics["train/samples_per_s"] = self.steps * samples_per_step / dt
        metrics["train/audio_s_per_s"] = self.steps * seconds_per_step / dt
        metrics["train/data_wait"] = self.wait / dt
        return metrics
