"""Config stops here: the one place a training config turns into the data streams, the
model, loss, optimizer, schedule and EMA of a run."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from torch_ema import ExponentialMovingAverage

from diffdenoise.config import loading as config
from diffdenoise.data import pipeline as data
from diffdenoise.data import remote
from diffdenoise.models.factory import model_for
from diffdenoise.models.losses import build_loss
from diffdenoise.models.objectives import objective_of
from diffdenoise.training import distrib
from diffdenoise.training import shard_sources as sources
from diffdenoise.training.distrib import say
from diffdenoise.training.init_from import load_initial_weights
from diffdenoise.training.run import tracker_for
from diffdenoise.training.schedule import build_scheduler
from diffdenoise.training.state import Run, TrainState


def noise_banks(cfg, mixer, urls: list[str], device, read=None, say=print) -> tuple:
    """``(mixer, corpus bank, babble bank)``: the banks the noise types need, decoded once
    onto ``device`` (None where unused), and the mixer that draws from them."""
    bank = babble = None
    if cfg.data.noise_shards:
        noise_urls = data.expand_urls(cfg.data.noise_shards)
        stats = sources.stats_of(noise_urls, cfg.data.noise_shards, read, "", say)
        remote.policy().sizes.update(stats["sizes"] if stats else {})
        bank = data.NoiseBank.from_urls(noise_urls, device)
        mixer = mixer.with_bank(bank.lengths)
    if cfg.noise.weights.get("corpus", 0) > 0 and bank is None:
        raise data.DataError("noise.weights.corpus is set but data.noise_shards is empty")
    if cfg.noise.weights.get("babble", 0) > 0:  # talkers from the training speech itself
        babble = data.NoiseBank.from_urls(urls, device, cfg.noise.babble_bank_s)
        mixer = mixer.with_babble(babble.lengths)
    return mixer, bank, babble


def shard_stats(cfg, urls: list[str], read=None, say=print) -> dict | None:
    """The training shards' manifest totals (None: no manifest reachable); their sample
    rate must be the config's."""
    stats = sources.stats_of(urls, cfg.data.train_shards, read, cfg.data.manifest, say)
    if stats is None:
        if cfg.train.max_epochs:
            raise data.DataError(f"{cfg.data.train_shards}: train.max_epochs needs the "
                                 "shards' manifest; set train.max_steps instead")  # fmt: skip
        return None
    if stats["sample_rates"] != [cfg.data.sample_rate]:
        raise data.DataError(
            f"{cfg.data.train_shards}: shards are {stats['sample_rates']} Hz but "
            f"data.sample_rate is {cfg.data.sample_rate}; reshard or change the config"
        )
    return stats


def shard_lists(cfg, read, say) -> tuple[list[str], list[str], dict]:
    """Training and validation URLs and their manifest totals (None where unknown); the
    remote shards' listed sizes go into the fetch policy."""
    urls = data.expand_urls(cfg.data.train_shards)
    stats = shard_stats(cfg, urls, read, say)
    val_urls = data.expand_urls(cfg.data.val_shards)
    val = sources.stats_of(val_urls, cfg.data.val_shards, read, cfg.data.manifest, say)
    remote.policy().sizes = {**(stats or {}).get("sizes", {}), **(val or {}).get("sizes", {})}
    stats = dict(stats or {"samples": None, "seconds": None})
    stats["val_samples"] = val["samples"] if val else None
    return urls, val_urls, stats


def build_data(cfg, rank: int, world: int, device, acc: Accelerator | None = None):
    """Turn the config into the training-stream factory, validation factory and sizes.

    Training batches come from the loader as clean crops and noise plans; the loop mixes
    them on ``device`` with ``stats["render"]``. Validation batches come mixed. Remote
    shards' manifests are read once, on the main process of ``acc``.
    """
    fetch = sources.fetch_policy(cfg)
    remote.configure(fetch)
    read = sources.main_process_reader(acc)
    say = partial(distrib.say, acc) if acc is not None else print
    urls, val_urls, stats = shard_lists(cfg, read, say)
    bridge = cfg.diffusion.objective == "bridge"
    bridge_t = (cfg.diffusion.t_min, cfg.diffusion.t_max) if bridge else None
    mixer = data.Mixer.from_config(cfg, bridge_t)
    mixer, bank, babble = noise_banks(cfg, mixer, urls, device, read, say)
    objective = objective_of(cfg.diffusion)
    per_epoch = sources.UNKNOWN_EPOCH
    if stats["samples"] is not None:
        per_epoch = data.batches_per_epoch(stats["samples"], cfg.train.batch_size, world)
    stats["render"] = partial(
        data.render, device=device, bank=bank, objective=objective, babble=babble,
        sample_rate=cfg.data.sample_rate,
    )  # fmt: skip

    pinned = torch.device(device).type == "cuda"
    common = dict(sample_rate=cfg.data.sample_rate, batch_size=cfg.train.batch_size,
                  mixer=mixer, rank=rank, world_size=world)  # fmt: skip

    def train_batches(start_batch: int):
        """Batches from global batch index ``start_batch`` on, across epochs, forever."""
        epoch, skip = divmod(start_batch, per_epoch)
        stream = data.TrainStream(
            urls,
            segment=cfg.data.segment,
            batches=per_epoch,
            seed=cfg.train.seed,
            epoch=epoch,
            **common,
            skip_batches=skip,
            shuffle_buffer=cfg.data.shuffle_buffer,
            epochs=None,
            fetch=fetch,
            shard_samples=stats.get("counts"),
        )
        return iter(data.train_loader(stream, cfg.data.num_workers, pinned))

    def val_batches():
        return data.val_batches(
            val_urls,
            segment=cfg.data.val_segment or cfg.data.segment,
            **common,
            max_samples=cfg.data.val_max_samples,
            device=device,
            bank=bank,
            objective=objective,
            babble=babble,
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


def build_run(cfg, acc: Accelerator, run_dir: Path, per_epoch: int) -> Run:
    """Model, loss, optimizer, schedule and EMA, prepared and registered for saving."""
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = model_for(cfg)
    initialised = load_initial_weights(model, cfg)
    if initialised:
        say(acc, initialised)
    loss_fn = build_loss(cfg.loss).to(acc.device)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=cfg.optim.lr,
        betas=(cfg.optim.beta1, cfg.optim.beta2),
        weight_decay=cfg.optim.weight_decay,
        fused=True,  # one kernel per step, and it can skip a non-finite step on the device
    )
    state = TrainState(total_steps=planned_steps(cfg, per_epoch))
    scheduler = build_scheduler(optimizer, state.total_steps or 10**6, **cfg.schedule)
    model, optimizer = acc.prepare(model, optimizer)
    net = acc.unwrap_model(model)
    ema = None
    if cfg.optim.ema:
        ema = ExponentialMovingAverage(net.parameters(), decay=cfg.optim.ema_decay)
    if cfg.train.compile:
        model = torch.compile(model)
    tracker = tracker_for(acc, cfg, run_dir)
    plain = config.to_plain(cfg)
    objective = objective_of(cfg.diffusion)
    return Run(
        acc, model, net, ema, optimizer, scheduler, loss_fn, tracker, run_dir, state, plain,
        objective,
    )  # fmt: skip
