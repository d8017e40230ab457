"""``train.init_from``: a new run that starts from another run's weights (fine-tuning).

The model takes the checkpoint's EMA weights (its plain weights when it kept no EMA); the
optimizer, schedule, step count and data position start fresh, as for any new run. Only a
checkpoint whose model is the one this config builds is accepted: every ``model.*`` key
and the sample rate must match, except the inference-only shares, which fine-tuning may
change. A run that resumes its own state (``train.resume``) takes that state's weights.
"""

from __future__ import annotations

import torch

from diffdenoise.config import loading as config
from diffdenoise.training.checkpoint import CheckpointError, load_best

# Keys that may differ: they change what inference applies, not the weights.
MAY_DIFFER = frozenset(
    {
        "model.spectral.correction_scale",
        "model.spectral.suppress_scale",
        "model.spectral.anchor_weight",
    }
)
COMPARED = ("model", "data.sample_rate")


def load_initial_weights(model: torch.nn.Module, cfg) -> str | None:
    """Load ``cfg.train.init_from`` into ``model``; returns the line that says so (None
    when the key is empty). Raises :class:`CheckpointError` with one line for a missing,
    unreadable or mismatched checkpoint."""
    path = cfg.train.init_from
    if not path:
        return None
    payload = load_best(path)
    theirs = flat_keys(payload.get("config") or {}, COMPARED)
    ours = flat_keys(config.to_plain(cfg), COMPARED)
    differ = [
        f"{key} {theirs.get(key)!r} there, {ours.get(key)!r} here"
        for key in sorted(set(theirs) | set(ours))
        if key not in MAY_DIFFER and theirs.get(key) != ours.get(key)
    ]
    if differ:
        more = f" (and {len(differ) - 3} more)" if len(differ) > 3 else ""
        raise CheckpointError(
            f"train.init_from={path}: its model is not this config's: {'; '.join(differ[:3])}{more}"
        )
    weights = payload.get("ema_model") or payload.get("model")
    try:
        model.load_state_dict(weights)
    except (TypeError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0][:160]
        raise CheckpointError(f"train.init_from={path}: weights do not fit ({first})") from None
    kind = "EMA weights" if payload.get("ema_model") else "weights"
    return f"initialised from {path} ({kind} of step {payload.get('step', '?')})"


def flat_keys(tree: dict, prefixes: tuple[str, ...]) -> dict:
    """``{"model": {"family": "spectral"}}`` -> ``{"model.family": "spectral"}``, only the
    keys under ``prefixes``."""
    out, stack = {}, [("", tree)]
    while stack:
        prefix, node = stack.pop()
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                stack.append((f"{name}.", value))
            elif name.startswith(prefixes):
                out[name] = value
    return out
