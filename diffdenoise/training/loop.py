"""The training loop, written out: ``train(cfg)`` calls ``train_step``, ``evaluate``, saves.

    accelerate launch launch/train.py configs/default.yaml train.batch_size=16
    python launch/train.py configs/tiny.yaml            # one process: GPU if any, else CPU

Distributed concerns live in :mod:`diffdenoise.distrib`, the run folder and its logs in
:mod:`diffdenoise.run`; the loop and what it calls are here.
"""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm import tqdm

from diffdenoise.common.cli import entry
from diffdenoise.config import loading as config
from diffdenoise.data import pipeline as data
from diffdenoise.data import remote
from diffdenoise.training import batch_size, checkpoint, distrib
from diffdenoise.training.builders import build_data, build_run, planned_steps
from diffdenoise.training.run import RunDirError, prepare_run_dir, run_dir_for, unlock_run_dirs
from diffdenoise.training.schedule import hold_peak, set_total_steps
from diffdenoise.training.state import Run, TrainState
from diffdenoise.training.step import LateFlag, LogWindow, ema_update, train_step
from diffdenoise.training.validation import run_validation

PREEMPTED_EXIT = 75  # EX_TEMPFAIL: state saved, run again with train.resume=auto
WARMUP_PROBE_STEPS = 5  # steps timed to size a wall-clock-budgeted schedule


class TrainingError(RuntimeError):
    """Training cannot go on; phrased for the user in one line."""


def resume(run: Run, resume: str, resume_from: Path | None, planned: int) -> None:
    """Load the state to resume from (``auto``: the newest intact one), if any."""
    if resume == "auto":
        resume_from = distrib.load_newest_intact(run.acc, run.run_dir, run.extras)
    elif resume_from is not None:
        distrib.load_state(run.acc, resume_from, run.run_dir, run.extras)
    if resume_from is not None:
        distrib.say(run.acc, f"resumed from {resume_from} at step {run.state.step}")
        run.state.total_steps = planned or run.state.total_steps  # the config wins
    set_total_steps(run.scheduler, run.state.total_steps)


def count_step(run: Run, step: int, bad: bool | None, max_bad_steps: int) -> None:
    """Count ``step``'s outcome, read a step late (None: nothing to read yet); too many
    non-finite steps in a row stop the run."""
    state = run.state
    if bad is None:
        return
    if not bad:
        state.bad_in_row = 0
        return
    state.bad_in_row += 1
    state.bad_total += 1
    distrib.say(run.acc, f"step {step}: non-finite loss or gradient, step skipped")
    if state.bad_in_row >= max_bad_steps:
        raise TrainingError(
            f"{state.bad_in_row} non-finite steps in a row (train.max_bad_steps); "
            "lower optim.lr or check the data"
        )


def train(cfg, run_dir: Path, resume_from: Path | None) -> int:
    """Train until a limit or a preemption; returns the process exit code."""
    acc = distrib.setup(cfg, run_dir)
    cfg = auto_batch(cfg, acc, run_dir)
    world, ga = acc.num_processes, cfg.train.grad_accum
    train_batches, val_batches, per_epoch, stats = build_data(
        cfg, acc.process_index, world, acc.device, acc
    )
    run = build_run(cfg, acc, run_dir, per_epoch)
    state = run.state
    resume(run, cfg.train.resume, resume_from, planned_steps(cfg, per_epoch))
    run.tracker.start(state, run.plain_cfg)
    validate = partial(
        run_validation,
        run,
        val_batches,
        expected=stats["val_samples"]
        and min(stats["val_samples"], cfg.data.val_max_samples or stats["val_samples"]),
        metrics=tuple(cfg.train.val_metrics),
        media_every=cfg.log.media_every,
        keep_best_copies=cfg.checkpoint.keep_best_copies,
    )
    signals = distrib.PreemptionFlag()
    samples_per_step = cfg.train.batch_size * world * ga
    seconds_per_step = samples_per_step * cfg.data.segment / cfg.data.sample_rate
    batches = train_batches(state.step * ga)
    bar = progress_bar(acc, state, run_dir.name)
    start, base_elapsed, step_times, window = time.time(), state.elapsed, [], LogWindow()
    replan_at, plans = -1, 0  # a time budget sizes its schedule again at warm-up's end and peak
    exit_code = 0
    run.model.train()
    flags = LateFlag()
    while True:
        t0 = time.time()
        loaded = [next(batches) for _ in range(ga)]
        fatal = next((b["fatal"] for b in loaded if "fatal" in b), None)
        if fatal:  # a loader worker's shards stay unreachable: stop, in one line
            raise data.DataError(fatal)
        wait = time.time() - t0
        micro = [stats["render"](b) for b in loaded]
        parts, grad_norm = optimizer_step(run, micro, cfg, flags)
        state.elapsed = base_elapsed + time.time() - start
        step_times.append(time.time() - t0)
        planning = not state.total_steps and len(step_times) == WARMUP_PROBE_STEPS + 1
        if planning or state.step == replan_at:  # a few probe steps can meet a passing load
            replan_at = plan_budget(run, cfg.train.max_minutes, step_times[1:], bar, plans)
            plans += 1
        retries = sum(b.get("shard_retries", 0) for b in loaded)
        window.add(parts, sum(b.get("bad_samples", 0) for b in loaded), wait, retries)
        bar.update()
        if state.step % cfg.log.every == 0:  # the same step on every rank: a collective is safe
            log_window(
                run, window, grad_norm, samples_per_step, seconds_per_step, bar, per_epoch, ga
            )
            window = LogWindow()
        done, preempted, interrupted = stop_or_preempt(run, cfg, signals, flags)
        if state.step % cfg.train.val_every == 0 or done or preempted:
            validate(epoch=state.step * ga // per_epoch)
        if state.step % cfg.checkpoint.every == 0 or done or preempted:
            distrib.save_state(acc, run_dir, state.step, cfg.checkpoint.keep_last, run.extras)
        if preempted:
            how = "interrupted" if interrupted else "preempted"
            distrib.say(
                acc, f"{how} at step {state.step}: state saved; resume with train.resume=auto"
            )
            if not interrupted:  # the job script requeues on the marker; a Ctrl-C is not that
                distrib.mark_preempted(acc, run_dir, state.step)
            exit_code = distrib.INTERRUPTED_EXIT if interrupted else PREEMPTED_EXIT
            break
        if done:
            break
    bar.close()
    distrib.check_in_sync(acc, run.net)
    acc.wait_for_everyone()
    distrib.say(
        acc,
        f"finished at step {state.step} in {time.time() - start:.0f} s; best validation loss "
        f"{state.best_val:.4f}; outputs in {run_dir}",
    )
    run.tracker.finish()  # may end the process group: nothing collective after this
    return exit_code


def auto_batch(cfg, acc: Accelerator, run_dir: Path):
    """``train.auto_batch``: the config with the batch and lr the GPU's memory allows."""
    if not cfg.train.auto_batch:  # no probe model on the device unless asked for
        return cfg
    budget = 0.0
    if acc.device.type == "cuda":
        budget = cfg.train.memory_share * torch.cuda.get_device_properties(acc.device).total_memory
    peak = batch_size.cuda_peak_bytes(cfg, acc.device, acc.autocast)
    agree = partial(distrib.min_over_ranks, acc)
    cfg, note = batch_size.resolve(cfg, run_dir, peak, budget, agree, acc.is_main_process)
    if note:
        distrib.say(acc, note)
    return cfg


def optimizer_step(run: Run, micro: list[dict], cfg, flags: LateFlag):
    """One step: ``train_step``, the EMA, the schedule, and the outcome of the step before
    (read a step late, so the host never waits on the device)."""
    parts, grad_norm, bad = train_step(
        run.model, run.loss_fn, run.optimizer, micro, run.acc, cfg.optim.max_grad_norm,
        run.objective,
    )  # fmt: skip
    if run.ema is not None:
        ema_update(run.ema, run.net.parameters(), bad)
    run.state.step += 1
    count_step(run, run.state.step - 1, flags.push(bad), cfg.train.max_bad_steps)
    run.scheduler.step()
    return parts, grad_norm


def plan_budget(run: Run, minutes: float, step_times: list[float], bar, plans: int) -> int:
    """Size a wall-clock-budgeted schedule from the median of the step times so far;
    returns the step where it is sized again (-1: never). The probe steps' plan is
    redone where warm-up ends (before OneCycle starts, so its curve keeps its shape), and
    that one at the peak (:func:`hold_peak`): a load that passed during warm-up (another
    job's first minute) once cut a 25-minute budget to 18."""
    state = run.state
    state.total_steps = distrib.budget_steps(run.acc, minutes, state, step_times)
    (hold_peak if plans == 2 else set_total_steps)(run.scheduler, state.total_steps)
    bar.total = state.total_steps
    distrib.say(run.acc, f"step {state.step}: time budget planned as "
                f"{state.total_steps} steps from {len(step_times)} timed")  # fmt: skip
    curve = run.scheduler.lr_lambdas[0]
    return (curve.warmup, curve.peak_step, -1)[plans]


def stop_or_preempt(run: Run, cfg, signals: distrib.PreemptionFlag, flags: LateFlag):
    """``(done, preempted, interrupted)``, the same on every rank: interrupted is a
    preemption by Ctrl-C. The step limit needs no collective; the time budget and a signal
    are agreed on every ``train.sync_every`` steps (every step with one process, where
    agreeing costs nothing)."""
    state = run.state
    done = bool(state.total_steps) and state.step >= state.total_steps
    preempted = interrupted = False
    if done or run.acc.num_processes == 1 or state.step % cfg.train.sync_every == 0:
        time_up = bool(cfg.train.max_minutes) and state.elapsed >= cfg.train.max_minutes * 60
        preempted, time_up, interrupted = distrib.any_rank(
            run.acc, signals.raised, time_up, signals.interrupted
        )
        done = done or time_up
    if done or preempted:  # the last step's outcome, before anything is saved
        count_step(run, state.step, flags.flush(), cfg.train.max_bad_steps)
    return done, preempted, interrupted


def progress_bar(acc: Accelerator, state: TrainState, name: str) -> tqdm:
    """A step bar on a terminal (main process only); the tracker prints lines elsewhere."""
    return tqdm(
        total=state.total_steps or None,
        initial=state.step,
        disable=not distrib.show_bar(acc),
        desc=name,
        dynamic_ncols=True,
    )


def log_window(run, window, grad_norm, samples_per_step, seconds_per_step, bar, per_epoch, ga):
    """Log the window's means, lr, grad norm, counters and throughput (a collective)."""
    state = run.state
    state.bad_samples += distrib.sum_over_ranks(run.acc, window.bad)
    retried = window.retries + remote.take_retries()  # the workers' and this process's
    state.shard_retries += int(distrib.sum_over_ranks(run.acc, retried))
    metrics = window.metrics(samples_per_step, seconds_per_step)
    metrics.update(
        {
            "train/lr": run.scheduler.get_last_lr()[0],
            "train/grad_norm": float(grad_norm),
            "train/skipped_steps": state.bad_total,
            "train/bad_samples": state.bad_samples,
            "train/shard_retries": state.shard_retries,
            "epoch": state.step * ga / per_epoch,
        }
    )
    if run.acc.device.type == "cuda":
        metrics["train/peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    run.tracker.log(metrics, state.step)
    bar.set_postfix(
        loss=f"{metrics['train/total']:.3f}",
        lr=f"{metrics['train/lr']:.2e}",
        audio_s=f"{metrics['train/audio_s_per_s']:.0f}/s",
    )


@entry
def main(argv: list[str] | None = None) -> int:
    """``launch/train.py [--print-run-dir] CONFIG.yaml [CONFIG.yaml ...] [key=value ...]``
    (also ``python -m diffdenoise.train``, which needs no clone).

    ``--print-run-dir`` prints the run folder the same arguments would train in and exits,
    so job scripts can find its log and ``PREEMPTED`` marker.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    print_run_dir = "--print-run-dir" in argv
    argv = [a for a in argv if a != "--print-run-dir"]
    files = [a for a in argv if "=" not in a]
    overrides = [a for a in argv if "=" in a]
    if not files:
        print("usage: launch/train.py CONFIG.yaml [more.yaml] [key=value ...]", file=sys.stderr)
        return 2
    try:
        cfg = config.load(files, overrides)
        if print_run_dir:
            print(run_dir_for(cfg, files, overrides))
            return 0
        run_dir = prepare_run_dir(cfg, files, overrides)
        resume_from = checkpoint.resolve_resume(run_dir, cfg.train.resume)
        with distrib.one_line_rank_failure(run_dir, argv):
            return train(cfg, run_dir, resume_from)
    except (
        config.ConfigError,
        data.DataError,
        checkpoint.CheckpointError,
        checkpoint.SaveError,
        TrainingError,
        RunDirError,
    ) as err:
        if isinstance(err, checkpoint.SaveError):
            err = f"{err}: free space and resume with train.resume=auto"
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the loop's handler was installed: nothing to save
        print("error: interrupted before training started; nothing was saved", file=sys.stderr)
        return distrib.INTERRUPTED_EXIT
    finally:
        unlock_run_dirs()


if __name__ == "__main__":
    sys.exit(main())
