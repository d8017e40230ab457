"""Checkpoints: the exported best model (rank 0) and the full training state (all ranks).

``best.pt`` holds plain data only (tensors, numbers, strings, dicts), so it loads with
``torch.load(path, weights_only=True)``: a checkpoint never runs code. Every write goes
to a temp name first and is renamed into place, so a crash never leaves half a file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import time
from pathlib import Path

import torch

from diffdenoise.common.files import atomic_path

STATE_DIR = "state"
STATE_RE = re.compile(r"^step-(\d{9})$")
FORMAT = "diffdenoise.best/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, phrased for the user in one line."""


class SaveError(RuntimeError):
    """A checkpoint or state that could not be written (full disk, read-only folder)."""


@contextlib.contextmanager
def saving(folder: Path, what: str):
    """Turn a failed write of ``what`` into one :class:`SaveError` naming ``folder``.

    ``torch.save`` to a path reports a full disk as ``RuntimeError: ... unexpected pos``
    (from its zip writer), so that counts as a failed write too.
    """
    try:
        yield
    except (OSError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and "unexpected pos" not in str(err):
            raise
        full = getattr(err, "errno", None) == errno.ENOSPC or _nearly_full(folder)
        cause = "no space left on the device" if full else getattr(err, "strerror", None) or err
        raise SaveError(
            f"{folder}: {cause} while writing {what}; what was saved before is intact"
        ) from None


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def atomic_torch_save(payload: dict, path: Path) -> None:
    with atomic_path(path, fsync=True) as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)  # a file object: a full disk raises ENOSPC, not "unexpected pos"


def save_best(run_dir: Path, payload: dict, keep_copies: int) -> Path:
    """Write ``best.pt`` and a ``best_model_YYYYMMDD_HHMMSS.pth`` copy; prune old copies."""
    payload = {"format": FORMAT, **payload}
    best = run_dir / "best.pt"
    stamp = time.strftime("%Y%m%d_%H%M%S")
    copy = run_dir / f"best_model_{stamp}.pth"
    with saving(run_dir, "best.pt"):
        atomic_torch_save(payload, best)
        with atomic_path(copy) as tmp:
            shutil.copyfile(best, tmp)
    if keep_copies > 0:
        for old in sorted(run_dir.glob("best_model_*.pth"))[:-keep_copies]:
            old.unlink()
    return best


def load_best(path: str | Path) -> dict:
    """Load an exported model safely, with one-line errors for every way it can be wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(
            f"{path}: not a readable checkpoint (not a PyTorch file, truncated, or holding "
            f"objects that weights_only refuses: {first[:160]})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a diffdenoise checkpoint (no '{FORMAT}' marker)")
    return payload


def state_dirs(run_dir: Path) -> list[Path]:
    """Complete training states in ``run_dir``, oldest first."""
    root = run_dir / STATE_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and STATE_RE.match(p.name))


def state_dir_for(run_dir: Path, step: int) -> tuple[Path, Path]:
    """``(temporary, final)`` folder for the state at ``step``."""
    root = run_dir / STATE_DIR
    return root / f".tmp-step-{step:09d}", root / f"step-{step:09d}"


def finish_state(tmp: Path, final: Path, keep_last: int) -> None:
    """Rank 0, after every rank has written into ``tmp``: publish it, prune old states."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep_last > 0:
        for old in state_dirs(final.parent.parent)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)


def resolve_resume(run_dir: Path, resume: str) -> Path | None:
    """The state folder to resume from: ``auto`` = latest in ``run_dir`` (or none)."""
    if not resume:
        return None
    if resume == "auto":
        states = state_dirs(run_dir)
        return states[-1] if states else None
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"train.resume={resume}: no saved training state there")
    return path
