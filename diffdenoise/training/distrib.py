"""Every distributed concern of training in one place.

The Accelerator, precision fallback, cross-rank agreement, saving and loading the full
training state, preemption signals, and one-line failure reports. Where a run lives and
what rank 0 logs there is :mod:`diffdenoise.run`.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import signal
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator
from omegaconf import OmegaConf

from diffdenoise.common.cli import INTERRUPTED_EXIT
from diffdenoise.training import checkpoint

PREEMPTED_MARKER = "PREEMPTED"


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


def setup(cfg, run_dir: Path) -> Accelerator:
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
    if acc.num_processes > 1:  # who runs where, so a survivor can name a rank that vanished
        PEERS[:] = [None] * acc.num_processes
        dist.all_gather_object(PEERS, (socket.gethostname(), os.getpid()))
    return acc


PEERS: list = []  # (host, pid) of every rank, by rank; filled by setup()


def vanished_ranks(me: int) -> list[int]:
    """Ranks on this host whose process is gone (or a zombie): killed without a word."""
    host, gone = socket.gethostname(), []
    for rank, peer in enumerate(PEERS):
        if rank == me or peer is None or peer[0] != host:
            continue
        try:
            state = Path(f"/proc/{peer[1]}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            state = "gone"
        if state in ("gone", "Z", "X"):
            gone.append(rank)
    return gone


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
        # The launcher now SIGTERMs this rank's loader workers too; the DataLoader's SIGCHLD
        # handler would raise in the middle of this report and lose its one line.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        import traceback

        log = run_dir / f"error-rank{rank}.log"
        log.write_text(traceback.format_exc())
        text = _first_line(err)
        resume = " ".join(["accelerate launch ...", "launch/train.py", *argv, "train.resume=auto"])
        gone = vanished_ranks(rank)
        if gone:
            cause = (
                f"stopped: rank {gone[0]} failed first, killed by a signal (its process "
                f"vanished; SIGKILL is often the out-of-memory killer) ({text})"
            )
        elif _is_peer_loss(err):
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


def min_over_ranks(acc: Accelerator, value: int) -> int:
    """The smallest ``value`` of any rank (no collective with one process)."""
    if acc.num_processes == 1:
        return value
    t = torch.tensor([float(value)], device=acc.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def budget_steps(acc: Accelerator, minutes: float, state, step_times: list[float]) -> int:
    """Total steps that fit a wall-clock budget, from step times measured after warm-up.

    Ranks agree on the slowest rank's median; 10 % is held back for validation and saving.
    """
    t = torch.tensor([statistics.median(step_times)], device=acc.device)
    if acc.num_processes > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    remaining = minutes * 60 - state.elapsed
    return state.step + max(1, int(0.9 * remaining / max(t.item(), 1e-6)))


def save_state(acc: Accelerator, run_dir: Path, step: int, keep_last: int, extras: dict) -> None:
    """All ranks write the full state into a temp folder; rank 0 then publishes it.

    ``extras`` (``{"ema": ..., "schedule": ..., "progress": ...}``, objects with
    ``state_dict``) are written by rank 0 as ``<name>.pt``. They are not registered with
    Accelerate, which would load them with ``weights_only=False``: a state could run code.
    """
    tmp, final = checkpoint.state_dir_for(run_dir, step)
    # torch.save, not safetensors: on CUDA a GRU's weights are views of one cuDNN buffer, and
    # safetensors keeps only one of them (accelerate #3101), so a resumed GPU run lost the rest.
    try:
        with checkpoint.saving(run_dir, f"the state of step {step}"):
            acc.save_state(str(tmp), safe_serialization=False)
            if acc.is_main_process:
                for name, obj in extras.items():
                    checkpoint.atomic_torch_save(obj.state_dict(), tmp / f"{name}.pt")
    except checkpoint.SaveError:
        shutil.rmtree(tmp, ignore_errors=True)  # the half-written state, not the earlier ones
        raise
    acc.wait_for_everyone()
    if acc.is_main_process:
        checkpoint.finish_state(tmp, final, keep_last)
    acc.wait_for_everyone()


RNG_KEYS = ("random_state", "numpy_random_seed", "torch_manual_seed")


def safe_load(path: Path):
    """``torch.load`` with ``weights_only=True`` (plus the numpy RNG types Accelerate's
    loader also allows): tensors, numbers, strings and containers, never an object that
    runs code. A file that needs more raises :class:`CheckpointError` naming it."""
    from accelerate.utils import load

    try:
        return load(path, map_location="cpu")
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise checkpoint.CheckpointError(
                f"{path.parent}: saved state refused: {path.name} holds pickled objects that "
                "could run code (not loaded)"
            ) from None
        raise


def _check_rng(acc: Accelerator, path: Path) -> None:
    """This rank's RNG file must be whole (Accelerate skips a bad one without a word, and
    the resumed run would silently stop being exact)."""
    rng = path / f"random_states_{acc.process_index}.pkl"
    if not rng.is_file():
        print(f"warning: {rng} missing (saved by fewer processes?): this rank's random "
              "numbers will not continue exactly", flush=True)  # fmt: skip
        return
    states = safe_load(rng)
    if not isinstance(states, dict) or any(k not in states for k in RNG_KEYS):
        raise checkpoint.CheckpointError(f"{path}: saved state is damaged ({rng.name} lacks "
                                         "the random number states)")  # fmt: skip


def load_state(acc: Accelerator, path: Path, run_dir: Path, extras: dict) -> None:
    """Load a saved state without unpickling anything but plain data (:func:`safe_load`
    for the files read here; Accelerate reads the weights with ``weights_only=True``)."""
    if any(path.glob("custom_checkpoint_*.pkl")):  # written before states were plain data
        raise checkpoint.CheckpointError(
            f"{path}: saved state refused: it was written by an older diffdenoise whose "
            "custom_checkpoint_*.pkl files can only be read by unpickling objects; its "
            "run's best.pt still loads"
        )
    try:
        _check_rng(acc, path)
        for name, obj in extras.items():
            obj.load_state_dict(safe_load(path / f"{name}.pt"))
        acc.load_state(str(path))
    except checkpoint.CheckpointError:
        raise
    except pickle.UnpicklingError as err:  # the weights: find which file was refused
        for file in sorted(path.iterdir()):
            safe_load(file)
        raise checkpoint.CheckpointError(
            f"{path}: saved state is damaged ({_first_line(err)})"
        ) from None
    except RuntimeError as err:
        # torch.load reports a truncated file as a RuntimeError, like a shape mismatch
        damaged = "PytorchStreamReader" in str(err)
        raise checkpoint.CheckpointError(
            f"{path}: saved state "
            + ("is damaged" if damaged else "does not fit this model/config")
            + f" ({_first_line(err)})"
        ) from None
    except (KeyError, ValueError) as err:
        raise checkpoint.CheckpointError(
            f"{path}: saved state does not fit this model/config ({_first_line(err)})"
        ) from None
    except Exception as err:  # truncated or empty files raise whatever their reader raises
        raise checkpoint.CheckpointError(
            f"{path}: saved state is damaged ({type(err).__name__}: {_first_line(err)})"
        ) from None


def load_newest_intact(acc: Accelerator, run_dir: Path, extras: dict) -> Path | None:
    """``train.resume=auto``: load the newest saved state that loads, skipping damaged ones.

    Each skipped state gets one line saying why; if none loads, one clear error.
    """
    states = checkpoint.state_dirs(run_dir)
    reasons = []
    for path in reversed(states):
        try:
            load_state(acc, path, run_dir, extras)
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
    """SIGTERM / SIGUSR1 (the scheduler) and a first SIGINT (Ctrl-C) only set a flag; the
    loop acts on it at a step boundary. A second SIGINT exits at once, saving nothing.

    Loader workers are forked after this is installed, so they inherit it: a Ctrl-C that
    reaches the whole process group does not kill them in the middle of a batch.
    """

    received = False  # any instance was signalled: a crash after it is not this rank's fault

    def __init__(self):
        self.raised = False
        self.interrupted = False  # by SIGINT: a person, so no requeue marker
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)
        signal.signal(signal.SIGINT, self._interrupt)

    def _handle(self, signum, frame) -> None:
        self.raised = True
        PreemptionFlag.received = True

    def _interrupt(self, signum, frame) -> None:
        if self.interrupted:
            os.write(2, b"interrupted again: exiting at once, nothing more saved\n")
            os._exit(INTERRUPTED_EXIT)
        self.interrupted = True
        self._handle(signum, frame)
