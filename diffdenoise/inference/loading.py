"""A checkpoint back into a model: ``best.pt``'s weights into the model its config builds,
and the inference-only shares of a spectral model's learned correction."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from diffdenoise.config import loading as config
from diffdenoise.models.factory import model_for
from diffdenoise.training.checkpoint import CheckpointError, load_best

# Inference-only settings of a spectral model (model.spectral.*): the share of its learned
# correction it applies, both ways and where the correction lowers the gain.
SHARES = ("correction_scale", "suppress_scale")


def set_shares(model: torch.nn.Module, path: str | Path, shares: dict) -> None:
    """Apply the given :data:`SHARES` (``None`` values are left as trained) to ``model``."""
    given = {k: v for k, v in shares.items() if v is not None}
    if not given:
        return
    if not hasattr(model, "correction_scale"):
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in given)
        raise CheckpointError(f"{path}: {flags} applies to spectral models, not a U-Net")
    for key, value in given.items():
        if key not in SHARES or not 0 <= value <= 1:
            raise ValueError(f"{key} must be one of {SHARES} between 0 and 1, got {value!r}")
        setattr(model, key, float(value))


def share(text: str) -> float:
    """argparse type of a share: a number from 0 to 1."""
    value = float(text)  # argparse reports a ValueError as "invalid share value"
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def add_share_args(parser: argparse.ArgumentParser) -> None:
    """``--correction-scale`` and ``--suppress-scale`` for a command that loads checkpoints."""
    parser.add_argument(
        "--correction-scale", type=share, metavar="S",
        help="share of a spectral model's learned correction applied, 0 to 1 "
        "(default: the checkpoint's model.spectral.correction_scale)",
    )  # fmt: skip
    parser.add_argument(
        "--suppress-scale", type=share, metavar="S",
        help="the share where the correction lowers the gain "
        "(default: the checkpoint's model.spectral.suppress_scale)",
    )  # fmt: skip


def shares_of(args: argparse.Namespace) -> dict:
    return {key: getattr(args, key) for key in SHARES}


def model_from_checkpoint(path: str | Path, ema: bool = True) -> tuple[torch.nn.Module, object]:
    """The model of ``best.pt`` (its EMA weights unless ``ema`` is false) and its config."""
    payload = load_best(path)
    try:
        cfg = config.from_plain(payload["config"])
    except (KeyError, config.ConfigError) as err:
        raise CheckpointError(f"{path}: checkpoint config is unusable ({err})") from None
    model = model_for(cfg)
    try:
        model.load_state_dict(payload["ema_model" if ema else "model"])
    except (KeyError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0][:160]
        raise CheckpointError(f"{path}: weights do not fit its model config ({first})") from None
    return model, cfg
