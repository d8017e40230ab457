"""Learning-rate schedule: linear warmup, then OneCycle (cosine up, cosine down).

The factor is a pure function of the step, so the schedule saves and resumes exactly and a
time-budgeted run can move ``total`` once it has measured its step time.
"""

from __future__ import annotations

import math

import torch


def _cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * min(max(pct, 0.0), 1.0)) + 1.0)


class WarmupOneCycle:
    """Multiplier of the peak lr at each step (a picklable ``LambdaLR`` function).

    Warmup rises linearly from 0 to ``1/div_factor`` over ``warmup_pct`` of ``total``
    steps. OneCycle then rises to 1 over ``pct_start`` of the remaining steps and falls
    to ``1/(div_factor*final_div_factor)`` at the last step, as ``torch``'s OneCycleLR.
    """

    def __init__(
        self, total: int, warmup_pct=0.05, pct_start=0.3, div_factor=25.0, final_div_factor=1000.0
    ):
        self.total, self.warmup_pct, self.pct_start = max(int(total), 1), warmup_pct, pct_start
        self.div_factor, self.final_div_factor = div_factor, final_div_factor
        self.peak_at: int | None = None  # the ascent as run, once fixed (hold_peak)

    @property
    def warmup(self) -> int:
        return round(self.warmup_pct * self.total)

    @property
    def peak_step(self) -> int:
        if self.peak_at is not None:
            return self.peak_at
        return self.warmup + round(self.pct_start * (self.total - self.warmup)) - 1

    def __call__(self, step: int) -> float:
        initial = 1.0 / self.div_factor
        final = initial / self.final_div_factor
        if step < self.warmup:
            return initial * step / self.warmup
        rest = self.total - self.warmup
        up_end = self.pct_start * rest - 1 if self.peak_at is None else self.peak_at - self.warmup
        s = step - self.warmup
        if s <= up_end:
            return _cos(initial, 1.0, s / max(up_end, 1e-9))
        return _cos(1.0, final, (s - up_end) / max(rest - 1 - up_end, 1e-9))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_pct: float,
    pct_start: float,
    div_factor: float,
    final_div_factor: float,
):
    """``LambdaLR`` over the optimizer's peak lr; ``scheduler.lr_lambdas[0]`` is the curve."""
    curve = WarmupOneCycle(total_steps, warmup_pct, pct_start, div_factor, final_div_factor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, curve)


def set_total_steps(scheduler, total_steps: int) -> None:
    """Stretch the curve to ``total_steps`` (a time budget learns its length after a few
    steps; a resumed run takes the length its config now gives)."""
    scheduler.lr_lambdas[0].total = max(int(total_steps), 1)


def hold_peak(scheduler, total_steps: int) -> None:
    """At the peak: keep the ascent as it ran and fit the descent to ``total_steps``. The
    lr stays continuous (it is the peak lr for any length), where stretching the whole
    curve there would pull it back down the ascent."""
    curve = scheduler.lr_lambdas[0]
    curve.peak_at = curve.peak_step
    set_total_steps(scheduler, total_steps)
