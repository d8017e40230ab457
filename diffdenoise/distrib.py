"""Every distributed and rank-0 concern of training in one place.

The Accelerator, precision fallback, cross-rank agreement, saving and loading the full
training state, the run directory, preemption signals, and the one gate for rank-0 side
effects (W&B, ``metrics.jsonl``, media).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator
from omegaconf import OmegaConf

from diffdenoise import checkpoint

nullcontext = contextlib.nullcontext
RUN_NAME_SKIP = ("train.resume", "train.run_name", "train.runs_dir")
PREEMPTED_MARKER = "PREEMPTED"


class RunDirError(ValueError):
    """A run directory that cannot be used, phrased for the user in one line."""


def say(acc: Accelerator, message: str) -> None:
    """A run-wide status line, printed once: by the global main process, not once per node
    as ``acc.print`` would (it prints on every node's local main process)."""
    if acc.is_main_process:
        print(message, flush=True)


def resolve_precision(requested: str) -> tuple[str, str | None]:
    """The closest precision this machine supports, and a one-line note if it differs."""
    if requested == "no":
        return "no", None
    if not torch.cuda.is_available():
        return "no", f"train.mixed_precision={requested} needs a GPU here; training in fp32"
    if requested == "bf16" and not torch.cuda.is_bf16_supported():
        return "fp16", "train.mixed_precision=bf16 is not supported by this GPU; using fp16"
    return requested, None


def setup(cfg, run_dir: Path) -> tuple[Accelerator, Tracker]:
    precision, note = resolve_precision(cfg.train.mixed_precision)
    acc = Accelerator(
        cpu=not torch.cuda.is_available(),  # else `--multi_gpu` on CPU silently runs 1 rank
        mixed_precision=precision,
        log_with="wandb" if cfg.log.wandb_mode != "disabled" else None,
        project_dir=str(run_dir),
    )
    if note:
        acc.print(note)
    if acc.is_main_process:
        OmegaConf.save(cfg, run_dir / "config.yaml")
        (run_dir / PREEMPTED_MARKER).unlink(missing_ok=True)
    acc.print(
        f"run {run_dir}: {acc.num_processes} process(es) on {acc.device}, precision {precision}"
    )
    return acc, Tracker(acc, cfg, run_dir)


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
    has_run = (run_dir / "best.pt").exists() or bool(checkpoint.state_dirs(run_dir))
    if has_run and not cfg.train.resume:
        raise RunDirError(
            f"{run_dir} already holds a run; continue it with train.resume=auto or start "
            "another with train.run_name=NAME"
        )
    if has_run and cfg.train.resume == "auto" and not checkpoint.state_dirs(run_dir):
        raise RunDirError(f"{run_dir} has a best.pt but no training state to resume from")
    return run_dir


@contextlib.contextmanager
def one_line_rank_failure(run_dir: Path, argv: list[str]):
    """In a multi-process run, turn a crash into one line naming this rank and the cause.

    torch-elastic and gloo otherwise bury the cause under about 80 lines of tracebacks from
    every rank. The rank that failed says what it hit (its traceback goes to
    ``run_dir/error-rank<R>.log``); the ranks that merely lost it say so, and every line
    carries the command that resumes.
    """
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        yield
    except Exception as err:
        if world == 1:
            raise
        import traceback

        log = run_dir / f"error-rank{rank}.log"
        log.write_text(traceback.format_exc())
        text = _first_line(err)
        resume = " ".join(["accelerate launch ...", "launch/train.py", *argv, "train.resume=auto"])
        if _is_peer_loss(err):
            cause = f"stopped: another rank failed or was killed first ({text})"
        else:
            cause = f"failed first: {type(err).__name__}: {text} (traceback in {log})"
        print(f"error: rank {rank} of {world} {cause}; resume with: {resume}", file=sys.stderr)
        sys.exit(1)


def _is_peer_loss(err: Exception) -> bool:
    """A failure caused by another rank: a broken collective, or the launcher's SIGTERM
    (sent to every rank and its data workers once one rank has died)."""
    text = str(err).lower()
    lost = ("connection closed", "connection reset", "broken pipe", "timed out", "gloo")
    return (
        PreemptionFlag.received
        or isinstance(err, dist.DistBackendError)
        or any(w in text for w in lost)
    )


def any_rank(acc: Accelerator, *flags: bool) -> tuple[bool, ...]:
    """Each flag true on every rank if it is true on any rank (one tiny all-reduce)."""
    if acc.num_processes == 1:
        return tuple(bool(f) for f in flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=acc.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def sum_over_ranks(acc: Accelerator, value: float) -> float:
    """``value`` summed over every rank (no collective with one process)."""
    if acc.num_processes == 1:
        return value
    t = torch.tensor([float(value)], device=acc.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item()


def budget_steps(acc: Accelerator, minutes: float, state, step_times: list[float]) -> int:
    """Total steps that fit a wall-clock budget, from step times measured after warm-up.

    Ranks agree on the slowest rank's median; 10 % is held back for validation and saving.
    """
    t = torch.tensor([statistics.median(step_times)], device=acc.device)
    if acc.num_processes > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    remaining = minutes * 60 - state.elapsed
    return state.step + max(1, int(0.9 * remaining / max(t.item(), 1e-6)))


def save_state(acc: Accelerator, run_dir: Path, step: int, keep_last: int) -> None:
    """All ranks write the full state into a temp folder; rank 0 then publishes it."""
    tmp, final = checkpoint.state_dir_for(run_dir, step)
    acc.save_state(str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        checkpoint.finish_state(tmp, final, keep_last)
    acc.wait_for_everyone()


def load_state(acc: Accelerator, path: Path, run_dir: Path) -> None:
    try:
        acc.load_state(str(path))
    except (RuntimeError, KeyError, ValueError) as err:
        raise checkpoint.CheckpointError(
            f"{path}: saved state does not fit this model/config ({_first_line(err)})"
        ) from None
    except Exception as err:  # truncated or empty files raise whatever their reader raises
        raise checkpoint.CheckpointError(
            f"{path}: saved state is damaged ({type(err).__name__}: {_first_line(err)})"
        ) from None


def load_newest_intact(acc: Accelerator, run_dir: Path) -> Path | None:
    """``train.resume=auto``: load the newest saved state that loads, skipping damaged ones.

    Each skipped state gets one line saying why; if none loads, one clear error.
    """
    states = checkpoint.state_dirs(run_dir)
    reasons = []
    for path in reversed(states):
        try:
            load_state(acc, path, run_dir)
            return path
        except checkpoint.CheckpointError as err:
            say(acc, f"warning: skipping {err}")
            reasons.append(str(err).split(": ", 1)[1])
    if states:
        raise checkpoint.CheckpointError(
            f"{run_dir / checkpoint.STATE_DIR}: no intact training state to resume from: "
            + "; ".join(f"{p.name}: {r}" for p, r in zip(reversed(states), reasons))
        )
    return None


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def check_in_sync(acc: Accelerator, model: torch.nn.Module) -> None:
    """Every rank must hold the same weights; say so, or fail loudly."""
    total = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
    sums = acc.gather(total.reshape(1).to(acc.device)).tolist()
    if len(set(sums)) != 1:
        raise RuntimeError(f"parameters diverged across ranks: {sums}")
    say(acc, f"parameters identical across {acc.num_processes} rank(s)")


def mark_preempted(acc: Accelerator, run_dir: Path, step: int) -> None:
    if acc.is_main_process:
        (run_dir / PREEMPTED_MARKER).write_text(json.dumps({"step": step, "time": time.time()}))


def show_bar(acc: Accelerator) -> bool:
    return acc.is_main_process and sys.stderr.isatty()


class PreemptionFlag:
    """SIGTERM / SIGUSR1 only set a flag; the loop acts on it at a step boundary."""

    received = False  # any instance was signalled: a crash after it is not this rank's fault

    def __init__(self):
        self.raised = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.raised = True
        PreemptionFlag.received = True


class Tracker:
    """Rank-0 logging: W&B through Accelerate's trackers, plus ``metrics.jsonl``."""

    def __init__(self, acc: Accelerator, cfg, run_dir: Path):
        self.acc, self.cfg, self.run_dir = acc, cfg, run_dir
        self.enabled = cfg.log.wandb_mode != "disabled"
        self.jsonl = run_dir / "metrics.jsonl"

    def start(self, state, plain_cfg: dict) -> None:
        if not self.acc.is_main_process:
            return
        id_file = self.run_dir / "wandb_id"
        if not state.wandb_id:
            state.wandb_id = id_file.read_text().strip() if id_file.exists() else _new_id()
        id_file.write_text(state.wandb_id)
        self._truncate(state.step)
        if self.enabled:
            init = {
                "mode": self.cfg.log.wandb_mode,
                "dir": str(self.run_dir),
                "id": state.wandb_id,
                "resume": "allow",
                "name": self.run_dir.name,
            }
            if self.cfg.log.entity:
                init["entity"] = self.cfg.log.entity
            self.acc.init_trackers(
                self.cfg.log.project, config=plain_cfg, init_kwargs={"wandb": init}
            )

    def _truncate(self, step: int) -> None:
        """Drop lines past the resumed step, so the log matches an uninterrupted run."""
        if not self.jsonl.exists():
            return
        lines = [ln for ln in self.jsonl.read_text().splitlines() if ln.strip()]
        kept = [ln for ln in lines if json.loads(ln)["step"] <= step]
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

    def log_media(self, model, batches, cfg, step: int) -> None:
        """Audio (noisy, denoised, clean) and a spectrogram image for a few val samples."""
        if not (self.enabled and self.acc.is_main_process):
            return
        import wandb

        from diffdenoise.plots import spectrogram_figure

        batch = next(iter(batches), None)
        if batch is None:
            return
        n = min(cfg.log.media_samples, batch["noisy"].shape[0])
        model.eval()
        with torch.no_grad():
            out = model(batch["noisy"][:n].to(self.acc.device), batch["t"][:n].to(self.acc.device))
        model.train()
        rate, media = cfg.data.sample_rate, {}
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


def _new_id() -> str:
    return hashlib.sha1(f"{time.time_ns()}-{os.getpid()}".encode()).hexdigest()[:8]
