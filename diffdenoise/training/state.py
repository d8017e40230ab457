"""What one training run holds: its progress (saved with every state) and the objects
built once for it."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch_ema import ExponentialMovingAverage

from diffdenoise.models.objectives import Bridge, Predictive
from diffdenoise.training.run import Tracker


@dataclass
class TrainState:
    """Progress saved with every training state (as ``progress.pt``)."""

    step: int = 0
    total_steps: int = 0
    best_val: float = math.inf
    bad_in_row: int = 0
    bad_total: int = 0
    bad_samples: int = 0
    shard_retries: int = 0
    validations: int = 0
    wandb_id: str = ""
    elapsed: float = 0.0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, default in asdict(TrainState()).items():  # known keys of known types only
            value = state.get(key, default)
            number = isinstance(default, (int, float)) and isinstance(value, (int, float))
            if not (number or isinstance(value, type(default))) or isinstance(value, bool):
                raise ValueError(
                    f"progress entry {key}={value!r} is not a {type(default).__name__}"
                )
            setattr(self, key, value)


@dataclass
class Run:
    """The objects one training run holds, built once by :func:`build_run`."""

    acc: Accelerator
    model: torch.nn.Module  # prepared (DDP, maybe compiled): what train steps call
    net: torch.nn.Module  # the unwrapped model: EMA, validation, export
    ema: ExponentialMovingAverage | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    loss_fn: torch.nn.Module
    tracker: Tracker
    run_dir: Path
    state: TrainState
    plain_cfg: dict  # the resolved config, as saved in best.pt
    objective: Predictive | Bridge  # how the model is called: diffusion.objective

    @property
    def extras(self) -> dict:
        """What a saved state holds beside Accelerate's model, optimizer and RNG files,
        by the name of its file (``<name>.pt``)."""
        extras = {"schedule": self.scheduler, "progress": self.state}
        return extras if self.ema is None else {"ema": self.ema, **extras}

    def ema_weights(self):
        """Context in which ``net`` holds the EMA weights (when EMA is on)."""
        return self.ema.average_parameters() if self.ema is not None else nullcontext()
