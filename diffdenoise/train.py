"""The training loop, written out: ``train(cfg)`` calls ``train_step``, ``evaluate``, saves.

    accelerate launch launch/train.py configs/default.yaml train.batch_size=16
    python launch/train.py configs/tiny.yaml            # one process: GPU if any, else CPU

Distributed concerns live in :mod:`diffdenoise.distrib`; everything else is here.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch_ema import ExponentialMovingAverage
from tqdm import tqdm

from diffdenoise import __version__, checkpoint, config, data, distrib
from diffdenoise.losses import build_loss
from diffdenoise.metrics import score
from diffdenoise.model import build_model
from diffdenoise.schedule import build_scheduler

PREEMPTED_EXIT = 75  # EX_TEMPFAIL: state saved, run again with train.resume=auto
WARMUP_PROBE_STEPS = 5  # steps timed to size a wall-clock-budgeted schedule


class TrainingError(RuntimeError):
    """Training cannot go on; phrased for the user in one line."""


@dataclass
class TrainState:
    """Progress saved with every training state (registered for checkpointing)."""

    step: int = 0
    total_steps: int = 0
    best_val: float = math.inf
    bad_in_row: int = 0
    bad_total: int = 0
    bad_samples: int = 0
    validations: int = 0
    wandb_id: str = ""
    elapsed: float = 0.0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def build_data(cfg, rank: int, world: int):
    """Turn the config into the training-stream factory, validation factory and sizes."""
    urls = data.expand_urls(cfg.data.train_shards)
    stats = data.manifest_stats(urls)
    if stats["sample_rates"] != [cfg.data.sample_rate]:
        raise data.DataError(
            f"{cfg.data.train_shards}: shards are {stats['sample_rates']} Hz but "
            f"data.sample_rate is {cfg.data.sample_rate}; reshard or change the config"
        )
    val_urls = data.expand_urls(cfg.data.val_shards)
    stats["val_samples"] = data.manifest_stats(val_urls)["samples"]
    noise_urls = data.expand_urls(cfg.data.noise_shards) if cfg.data.noise_shards else None
    if noise_urls:
        data.manifest_stats(noise_urls)  # the cheap size check against the manifest
    if cfg.noise.weights.get("corpus", 0) > 0 and not noise_urls:
        raise data.DataError("noise.weights.corpus is set but data.noise_shards is empty")
    mixer_kwargs = dict(OmegaConf.to_container(cfg.noise))
    per_epoch = data.batches_per_epoch(stats["samples"], cfg.train.batch_size, world)

    def train_batches(start_batch: int):
        """Batches from global batch index ``start_batch`` on, across epochs, forever."""
        epoch, skip = divmod(start_batch, per_epoch)
        while True:
            stream = data.TrainStream(
                urls,
                segment=cfg.data.segment,
                sample_rate=cfg.data.sample_rate,
                batch_size=cfg.train.batch_size,
                batches=per_epoch,
                mixer=data.Mixer(**mixer_kwargs),
                seed=cfg.train.seed,
                rank=rank,
                world_size=world,
                epoch=epoch,
                skip_batches=skip,
                shuffle_buffer=cfg.data.shuffle_buffer,
                noise_urls=noise_urls,
            )
            yield from data.train_loader(stream, cfg.data.num_workers)
            epoch, skip = epoch + 1, 0

    def val_batches():
        bank = data.NoiseBank(noise_urls, 0, stream=False) if noise_urls else None
        return data.val_batches(
            val_urls,
            segment=cfg.data.val_segment or cfg.data.segment,
            sample_rate=cfg.data.sample_rate,
            batch_size=cfg.train.batch_size,
            mixer=data.Mixer(**mixer_kwargs, bank=bank),
            rank=rank,
            world_size=world,
            max_samples=cfg.data.val_max_samples,
        )

    return train_batches, val_batches, per_epoch, stats


def planned_steps(cfg, per_epoch: int) -> int:
    """Optimizer steps the schedule spans: max_steps, else max_epochs; 0 = time budget."""
    if cfg.train.max_steps:
        return cfg.train.max_steps
    if cfg.train.max_epochs:
        return max(1, cfg.train.max_epochs * per_epoch // cfg.train.grad_accum)
    if cfg.train.max_minutes:
        return 0
    raise config.ConfigError("set one of train.max_steps, train.max_epochs, train.max_minutes")


def train_step(model, loss_fn, optimizer, batches, acc, max_grad_norm: float):
    """One optimizer step over ``len(batches)`` accumulated micro-batches.

    Returns ``(loss parts averaged over micro-batches, grad norm, stepped)``. The grad
    norm is computed after DDP's all-reduce, so every rank agrees on skipping a
    non-finite step and none waits on another.
    """
    parts_sum: dict[str, float] = {}
    for i, batch in enumerate(batches):
        noisy, clean, t = (batch[k].to(acc.device) for k in ("noisy", "clean", "t"))
        sync = acc.no_sync(model) if i < len(batches) - 1 else distrib.nullcontext()
        with sync, acc.autocast():
            total, parts = loss_fn(model(noisy, t), clean)
            acc.backward(total / len(batches))
        for k, v in parts.items():
            parts_sum[k] = parts_sum.get(k, 0.0) + v.item() / len(batches)
    grad_norm = acc.clip_grad_norm_(model.parameters(), max_grad_norm or math.inf)
    grad_norm = float(grad_norm)
    stepped = math.isfinite(grad_norm) and math.isfinite(parts_sum["total"])
    if stepped:
        optimizer.step()
        stepped = not acc.optimizer_step_was_skipped  # fp16 loss scaler may skip
    optimizer.zero_grad(set_to_none=True)
    return parts_sum, grad_norm, stepped


@torch.no_grad()
def evaluate(model, loss_fn, batches, acc, metrics=(), rate: int = 16000) -> dict[str, float]:
    """Exact validation: per-sample sums all-reduced over ranks, then divided by the count.

    ``metrics`` (``si_sdr``, ``pesq``, ``stoi``) are averaged over the samples where they
    are defined: PESQ refuses silent crops, and those are left out of its mean.
    """
    model.eval()
    # the names are fixed by the loss, so a rank with no samples still joins the reduce
    _, probe = loss_fn(
        torch.zeros(1, 1, 64, device=acc.device), torch.zeros(1, 1, 64, device=acc.device)
    )
    names = sorted([*probe, *metrics])
    sums = torch.zeros(len(names), dtype=torch.float64)
    counts = torch.zeros(len(names), dtype=torch.float64)
    for batch in batches:
        noisy, clean, t = (batch[k].to(acc.device) for k in ("noisy", "clean", "t"))
        with acc.autocast():
            estimate = model(noisy, t).float()
        for i in range(estimate.shape[0]):
            _, parts = loss_fn(estimate[i : i + 1], clean[i : i + 1])
            values = {k: v.item() for k, v in parts.items()}
            if metrics:
                est, ref = estimate[i, 0].cpu().numpy(), clean[i, 0].cpu().numpy()
                values.update(score(est, ref, rate, metrics))
            for j, name in enumerate(names):
                if math.isfinite(values[name]) or name in parts:
                    sums[j] += values[name]
                    counts[j] += 1
    model.train()
    totals = acc.reduce(torch.cat([sums, counts]).to(acc.device), reduction="sum").cpu()
    sums, counts = totals[: len(names)], totals[len(names) :]
    result = {
        k: sums[j].item() / counts[j].item() if counts[j] else float("nan")
        for j, k in enumerate(names)
    }
    result["samples"] = counts[names.index("total")].item()
    return result


def best_payload(cfg, model, ema, optimizer, scheduler, state, epoch, val) -> dict:
    raw = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ema_weights = raw
    if ema is not None:
        with ema.average_parameters():
            ema_weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {
        "model": raw,
        "ema_model": ema_weights,
        "ema": ema.state_dict() if ema is not None else {},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "step": state.step,
        "val_loss": val["total"],
        "val": val,
        "config": config.to_plain(cfg),
        "version": __version__,
    }


def train(cfg, run_dir: Path, resume_from: Path | None) -> int:
    """Train until a limit or a preemption; returns the process exit code."""
    acc, tracker = distrib.setup(cfg, run_dir)
    rank, world = acc.process_index, acc.num_processes
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = build_model(cfg.model, cfg.data.sample_rate)
    loss_fn = build_loss(cfg.loss).to(acc.device)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=cfg.optim.lr,
        betas=(cfg.optim.beta1, cfg.optim.beta2),
        weight_decay=cfg.optim.weight_decay,
    )
    train_batches, val_batches, per_epoch, stats = build_data(cfg, rank, world)
    expected_val = stats["val_samples"]
    if cfg.data.val_max_samples:
        expected_val = min(expected_val, cfg.data.val_max_samples)
    state = TrainState(total_steps=planned_steps(cfg, per_epoch))
    scheduler = build_scheduler(optimizer, state.total_steps or 10**6, **cfg.schedule)
    model, optimizer = acc.prepare(model, optimizer)
    net = acc.unwrap_model(model)
    ema = None
    if cfg.optim.ema:
        ema = ExponentialMovingAverage(net.parameters(), decay=cfg.optim.ema_decay)
        acc.register_for_checkpointing(ema)
    acc.register_for_checkpointing(scheduler, state)
    if cfg.train.compile:
        model = torch.compile(model)
    if cfg.train.resume == "auto":
        resume_from = distrib.load_newest_intact(acc, run_dir)
    elif resume_from is not None:
        distrib.load_state(acc, resume_from, run_dir)
    if resume_from is not None:
        distrib.say(acc, f"resumed from {resume_from} at step {state.step}")
        state.total_steps = planned_steps(cfg, per_epoch) or state.total_steps  # config wins
    scheduler.lr_lambdas[0].total = max(state.total_steps, 1)
    tracker.start(state, config.to_plain(cfg))
    signals = distrib.PreemptionFlag()
    audio_per_batch = cfg.train.batch_size * cfg.data.segment / cfg.data.sample_rate * world
    ga = cfg.train.grad_accum
    batches = train_batches(state.step * ga)
    bar = tqdm(
        total=state.total_steps or None,
        initial=state.step,
        disable=not distrib.show_bar(acc),
        desc=run_dir.name,
        dynamic_ncols=True,
    )
    start, window_start, window_steps, window, window_bad = time.time(), time.time(), 0, {}, 0
    base_elapsed, step_times = state.elapsed, []
    exit_code = 0
    model.train()
    while True:
        t0 = time.time()
        micro = [next(batches) for _ in range(ga)]
        window_bad += sum(b.get("bad_samples", 0) for b in micro)
        parts, grad_norm, stepped = train_step(
            model, loss_fn, optimizer, micro, acc, cfg.optim.max_grad_norm
        )
        state.step += 1
        state.elapsed = base_elapsed + time.time() - start
        if stepped:
            state.bad_in_row = 0
            if ema is not None:
                ema.update()
        else:
            state.bad_in_row += 1
            state.bad_total += 1
            distrib.say(acc, f"step {state.step}: non-finite loss or gradient, step skipped")
            if state.bad_in_row >= cfg.train.max_bad_steps:
                raise TrainingError(
                    f"{state.bad_in_row} non-finite steps in a row (train.max_bad_steps); "
                    "lower optim.lr or check the data"
                )
        scheduler.step()
        step_times.append(time.time() - t0)
        if not state.total_steps and len(step_times) == WARMUP_PROBE_STEPS + 1:
            state.total_steps = distrib.budget_steps(
                acc, cfg.train.max_minutes, state, step_times[1:]
            )
            scheduler.lr_lambdas[0].total = state.total_steps
            bar.total = state.total_steps
        for k, v in parts.items():
            window[k] = window.get(k, 0.0) + v
        window_steps += 1
        bar.update()
        if state.step % cfg.log.every == 0:  # the same step on every rank: a collective is safe
            state.bad_samples += distrib.sum_over_ranks(acc, window_bad)
            window_bad = 0
            dt = max(time.time() - window_start, 1e-9)
            metrics = {f"train/{k}": v / window_steps for k, v in window.items()}
            metrics.update(
                {
                    "train/lr": scheduler.get_last_lr()[0],
                    "train/grad_norm": grad_norm,
                    "train/skipped_steps": state.bad_total,
                    "train/bad_samples": state.bad_samples,
                    "train/samples_per_s": window_steps * ga * cfg.train.batch_size * world / dt,
                    "train/audio_s_per_s": window_steps * ga * audio_per_batch / dt,
                    "epoch": state.step * ga / per_epoch,
                }
            )
            tracker.log(metrics, state.step)
            bar.set_postfix(
                loss=f"{metrics['train/total']:.3f}",
                lr=f"{metrics['train/lr']:.2e}",
                audio_s=f"{metrics['train/audio_s_per_s']:.0f}/s",
            )
            window_start, window_steps, window = time.time(), 0, {}
        time_up = bool(cfg.train.max_minutes) and state.elapsed >= cfg.train.max_minutes * 60
        done = (state.total_steps and state.step >= state.total_steps) or time_up
        preempted, done = distrib.any_rank(acc, signals.raised, bool(done))
        if state.step % cfg.train.val_every == 0 or done or preempted:
            run_validation(
                cfg,
                acc,
                net,
                ema,
                loss_fn,
                optimizer,
                scheduler,
                state,
                val_batches,
                tracker,
                run_dir,
                state.step * ga // per_epoch,
                expected_val,
            )
        if state.step % cfg.checkpoint.every == 0 or done or preempted:
            distrib.save_state(acc, run_dir, state.step, cfg.checkpoint.keep_last)
        if preempted:
            distrib.say(
                acc, f"preempted at step {state.step}: state saved; resume with train.resume=auto"
            )
            distrib.mark_preempted(acc, run_dir, state.step)
            exit_code = PREEMPTED_EXIT
            break
        if done:
            break
    bar.close()
    distrib.check_in_sync(acc, net)
    acc.wait_for_everyone()
    distrib.say(
        acc,
        f"finished at step {state.step} in {time.time() - start:.0f} s; best validation loss "
        f"{state.best_val:.4f}; outputs in {run_dir}",
    )
    tracker.finish()  # may end the process group: nothing collective after this
    return exit_code


def run_validation(
    cfg,
    acc,
    net,
    ema,
    loss_fn,
    optimizer,
    scheduler,
    state,
    val_batches,
    tracker,
    run_dir,
    epoch,
    expected_samples: int,
) -> None:
    """Validate (EMA weights when on), log, and let rank 0 keep the best model."""

    def ctx():
        return ema.average_parameters() if ema is not None else distrib.nullcontext()

    with ctx():
        val = evaluate(
            net, loss_fn, val_batches(), acc, tuple(cfg.train.val_metrics), cfg.data.sample_rate
        )
    state.validations += 1
    tracker.log({f"val/{k}": v for k, v in val.items()}, state.step)
    if state.validations % cfg.log.media_every == 1 or cfg.log.media_every == 1:
        with ctx():
            tracker.log_media(net, val_batches(), cfg, state.step)
    distrib.say(
        acc,
        f"step {state.step}: validation loss {val['total']:.4f} ({int(val['samples'])} samples)",
    )
    if int(val["samples"]) != expected_samples and acc.is_main_process:
        print(
            f"warning: validation read {int(val['samples'])} of the {expected_samples} samples "
            f"the manifest lists for {cfg.data.val_shards}: a val shard is damaged or changed",
            file=sys.stderr,
        )
    if val["total"] < state.best_val:
        state.best_val = val["total"]
        if acc.is_main_process:
            payload = best_payload(cfg, net, ema, optimizer, scheduler, state, epoch, val)
            checkpoint.save_best(run_dir, payload, cfg.checkpoint.keep_best_copies)
    acc.wait_for_everyone()


def main(argv: list[str] | None = None) -> int:
    """``launch/train.py [--print-run-dir] CONFIG.yaml [CONFIG.yaml ...] [key=value ...]``.

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
            print(distrib.run_dir_for(cfg, files, overrides))
            return 0
        run_dir = distrib.prepare_run_dir(cfg, files, overrides)
        resume_from = checkpoint.resolve_resume(run_dir, cfg.train.resume)
        with distrib.one_line_rank_failure(run_dir, argv):
            return train(cfg, run_dir, resume_from)
    except (
        config.ConfigError,
        data.DataError,
        checkpoint.CheckpointError,
        TrainingError,
        distrib.RunDirError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
