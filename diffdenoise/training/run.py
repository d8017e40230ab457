"""The run folder and what rank 0 writes into it: its name, W&B, ``metrics.jsonl``, media.

Distribution itself (the Accelerator, agreement across ranks, saved states) lives in
:mod:`diffdenoise.distrib`; this module only decides where a run lives and logs it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import socket
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from diffdenoise.models.objectives import Predictive
from diffdenoise.training import checkpoint

RUN_NAME_SKIP = ("train.resume", "train.run_name", "train.runs_dir")

MODEL_INPUTS = ("noisy", "clean", "t", "state")  # what an objective reads from a batch


class RunDirError(ValueError):
    """A run directory that cannot be used, phrased for the user in one line."""


def tracker_for(acc: Accelerator, cfg, run_dir: Path) -> Tracker:
    """The one place a config turns into a tracker."""
    return Tracker(
        acc,
        run_dir,
        wandb_mode=cfg.log.wandb_mode,
        project=cfg.log.project,
        entity=cfg.log.entity,
        sample_rate=cfg.data.sample_rate,
        media_samples=cfg.log.media_samples,
    )


def derive_run_name(files: list[str], overrides: list[str]) -> str:
    """Stable name from config names and overrides, so a rerun finds the same folder."""
    stem = "+".join(Path(f).stem for f in files)
    kept = [o for o in overrides if o.split("=")[0] not in RUN_NAME_SKIP]
    name = ",".join([stem, *kept])
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)
    if len(name) > 100:
        name = f"{stem}-{hashlib.sha1(name.encode()).hexdigest()[:10]}"
    return name


def run_dir_for(cfg, files: list[str], overrides: list[str]) -> Path:
    return Path(cfg.train.runs_dir) / (cfg.train.run_name or derive_run_name(files, overrides))


def prepare_run_dir(cfg, files: list[str], overrides: list[str]) -> Path:
    """Create ``runs/<run>``; a fresh run must not land on an earlier run's outputs."""
    run_dir = run_dir_for(cfg, files, overrides)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"{run_dir}: cannot create the run directory ({err.strerror})") from None
    if not os.access(run_dir, os.W_OK):
        raise RunDirError(f"{run_dir}: run directory is not writable")
    if int(os.environ.get("RANK", "0")) == 0:  # one holder per run; the others follow it
        lock_run_dir(run_dir)
    has_run = (run_dir / "best.pt").exists() or bool(checkpoint.state_dirs(run_dir))
    if has_run and not cfg.train.resume:
        raise RunDirError(
            f"{run_dir} already holds a run; continue it with train.resume=auto or start "
            "another with train.run_name=NAME"
        )
    if has_run and cfg.train.resume == "auto" and not checkpoint.state_dirs(run_dir):
        raise RunDirError(f"{run_dir} has a best.pt but no training state to resume from")
    return run_dir


LOCK = "LOCK"
_HELD: list[int] = []  # descriptors of the locks this process holds, open until it exits


def lock_run_dir(run_dir: Path) -> None:
    """Hold an exclusive lock on ``run_dir/LOCK`` for the life of this process.

    An OS lock (``flock``), not a marker file: a crashed or killed run releases it by
    itself, so a SLURM requeue or ``train.resume=auto`` after a kill is never blocked,
    while a second training started into the same folder stops at once.
    """
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunDirError(
            f"{run_dir} is in use by another training ({holder}); wait for it to end or "
            "choose another train.run_name"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    _HELD.append(fd)


def unlock_run_dirs() -> None:
    """Release the locks this process holds (at exit the OS does it anyway)."""
    while _HELD:
        os.close(_HELD.pop())


class Tracker:
    """Rank-0 logging: W&B through Accelerate's trackers, plus ``metrics.jsonl``."""

    def __init__(
        self,
        acc: Accelerator,
        run_dir: Path,
        *,
        wandb_mode: str,
        project: str,
        entity: str = "",
        sample_rate: int,
        media_samples: int = 2,
    ):
        self.acc, self.run_dir = acc, run_dir
        self.wandb_mode, self.project, self.entity = wandb_mode, project, entity
        self.sample_rate, self.media_samples = sample_rate, media_samples
        self.enabled = wandb_mode != "disabled"
        self.jsonl = run_dir / "metrics.jsonl"

    def start(self, state, plain_cfg: dict) -> None:
        if not self.acc.is_main_process:
            return
        id_file = self.run_dir / "wandb_id"
        if not state.wandb_id:
            saved = id_file.read_text(errors="replace").strip() if id_file.exists() else ""
            state.wandb_id = saved if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", saved) else _new_id()
        id_file.write_text(state.wandb_id)
        self._truncate(state.step)
        if self.enabled:
            init = {
                "mode": self.wandb_mode,
                "dir": str(self.run_dir),
                "id": state.wandb_id,
                "resume": "allow",
                "name": self.run_dir.name,
            }
            if self.entity:
                init["entity"] = self.entity
            self.acc.init_trackers(self.project, config=plain_cfg, init_kwargs={"wandb": init})

    def _truncate(self, step: int) -> None:
        """Drop lines past the resumed step, so the log matches an uninterrupted run."""
        if not self.jsonl.exists():
            return
        lines = [ln for ln in self.jsonl.read_text(errors="replace").splitlines() if ln.strip()]
        steps = [_step_of(ln) for ln in lines]
        kept = [ln for ln, at in zip(lines, steps) if at is not None and at <= step]
        unreadable = steps.count(None)
        if unreadable:  # a line cut short by a kill, or a file edited by hand
            print(f"warning: {self.jsonl}: dropped {unreadable} unreadable line(s)", flush=True)
        self.jsonl.write_text("".join(f"{ln}\n" for ln in kept))

    def log(self, metrics: dict, step: int) -> None:
        if not self.acc.is_main_process:
            return
        if self.enabled:
            self.acc.log(metrics, step=step)
        with open(self.jsonl, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if not sys.stderr.isatty():
            shown = ", ".join(
                f"{k.split('/')[-1]}={v:.4g}"
                for k, v in metrics.items()
                if k in ("train/total", "train/lr", "train/audio_s_per_s")
            )
            if shown:
                print(f"step {step}: {shown}", flush=True)

    def log_media(self, model, batches, step: int, objective=None) -> None:
        """Audio (noisy, denoised, clean) and a spectrogram image for a few val samples."""
        if not (self.enabled and self.acc.is_main_process):
            return
        import wandb

        from diffdenoise.common.plots import spectrogram_figure

        batch = next(iter(batches), None)
        if batch is None:
            return
        n = min(self.media_samples, batch["noisy"].shape[0])
        model.eval()
        with torch.no_grad():
            first = {k: v[:n].to(self.acc.device) for k, v in batch.items() if k in MODEL_INPUTS}
            out = (objective or Predictive()).predict(model, first)
        model.train()
        rate, media = self.sample_rate, {}
        for i in range(n):
            trio = {
                "noisy": batch["noisy"][i, 0],
                "denoised": out[i, 0].float().cpu(),
                "clean": batch["clean"][i, 0],
            }
            for name, wave in trio.items():
                media[f"media/{i}/{name}"] = wandb.Audio(wave.numpy(), sample_rate=rate)
            fig = spectrogram_figure({k: v.numpy() for k, v in trio.items()}, rate)
            media[f"media/{i}/spectrogram"] = wandb.Image(fig)
            import matplotlib.pyplot as plt

            plt.close(fig)
        self.acc.log(media, step=step)

    def finish(self) -> None:
        # also destroys the process group: gloo aborts at exit (SIGABRT) if it is left alive
        self.acc.end_training()


def _step_of(line: str) -> int | None:
    """The ``step`` of a ``metrics.jsonl`` line, or None if the line is not one of ours."""
    try:
        step = json.loads(line).get("step")
    except (ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None


def _new_id() -> str:
    return hashlib.sha1(f"{time.time_ns()}-{os.getpid()}".encode()).hexdigest()[:8]
