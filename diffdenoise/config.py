"""Typed configuration: schema defaults, then YAML files, then dotted CLI overrides.

``load(["configs/tiny.yaml"], ["model.channels=32"])`` returns a read-only OmegaConf
object whose keys are exactly those of :class:`Config`. Unknown keys and values of the
wrong type are rejected with a one-line :class:`ConfigError` that names the key, where it
came from, and the valid keys of its group.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

SHARE_DIR = Path(sys.prefix) / "share" / "diffdenoise" / "configs"


class ConfigError(ValueError):
    """A configuration problem, phrased for the user in one line."""


@dataclass
class DataConfig:
    train_shards: str = "shards/demo/train-*.tar"
    val_shards: str = "shards/demo/val-*.tar"
    noise_shards: str = ""
    sample_rate: int = 16000
    segment: int = 16000
    num_workers: Union[int, str] = 1  # noqa: UP007 (OmegaConf reads typing.Union)
    shuffle_buffer: int = 256
    val_segment: int = 0
    val_max_samples: int = 0


@dataclass
class NoiseConfig:
    weights: dict[str, float] = field(default_factory=lambda: {"gaussian": 1.0})
    snr_min: float = 0.0
    snr_max: float = 20.0
    gain_min_db: float = 0.0
    gain_max_db: float = 0.0
    clean_prob: float = 0.0
    eq_db: float = 0.0
    second_prob: float = 0.0
    modulation_prob: float = 0.0
    modulation_db: float = 20.0
    babble_talkers: int = 5
    babble_bank_s: float = 600.0
    reverb_prob: float = 0.0
    reverb_rt60_min: float = 0.2
    reverb_rt60_max: float = 1.0
    speech_eq_db: float = 0.0
    timestep: str = "random"
    timesteps: int = 1000
    infer_timestep: int = 0


@dataclass
class SpectralConfig:
    win_ms: float = 32.0
    hop_ms: float = 8.0
    hidden: int = 256
    layers: int = 2
    context_frames: int = 3
    noise_window_s: float = 1.0
    prior: bool = True
    local_channels: int = 0
    correction_scale: float = 1.0
    prior_floor: float = 0.0


@dataclass
class ModelConfig:
    family: str = "unet"
    spectral: SpectralConfig = field(default_factory=SpectralConfig)
    depth: int = 4
    channels: int = 32
    growth: float = 2.0
    max_channels: int = 512
    kernel_size: int = 8
    stride: int = 4
    widths: list[int] = field(default_factory=list)
    kernel_sizes: list[int] = field(default_factory=list)
    strides: list[int] = field(default_factory=list)
    dropout: float = 0.0
    skips: bool = True
    skip_mode: str = "add"
    output: str = "residual"
    normalize: bool = True
    time_dim: int = 64
    spectral_norm: bool = False
    causal: bool = False
    lookahead_ms: float = 0.0


@dataclass
class DiffusionConfig:
    objective: str = "predictive"
    sigma: float = 0.1
    t_min: float = 0.0
    t_max: float = 1.0
    steps: int = 1


@dataclass
class LossConfig:
    resolutions: list[list[int]] = field(
        default_factory=lambda: [[512, 128, 512], [1024, 256, 1024], [256, 64, 256]]
    )
    stft_weight: float = 1.0
    l1_weight: float = 1.0
    sc_weight: float = 1.0
    mag_weight: float = 1.0
    phase_weight: float = 1.0
    sisdr_weight: float = 0.0


@dataclass
class OptimConfig:
    lr: float = 3e-4
    weight_decay: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.999
    max_grad_norm: float = 1.0
    ema: bool = True
    ema_decay: float = 0.999


@dataclass
class ScheduleConfig:
    warmup_pct: float = 0.05
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1000.0


@dataclass
class TrainConfig:
    batch_size: int = 16
    grad_accum: int = 1
    max_epochs: int = 0
    max_steps: int = 0
    max_minutes: float = 0.0
    val_every: int = 200
    mixed_precision: str = "no"
    compile: bool = False
    seed: int = 0
    resume: str = ""
    run_name: str = ""
    runs_dir: str = "runs"
    max_bad_steps: int = 20
    sync_every: int = 10
    val_metrics: list[str] = field(default_factory=list)


@dataclass
class LogConfig:
    wandb_mode: str = "offline"
    project: str = "diffdenoise"
    entity: str = ""
    every: int = 10
    media_every: int = 5
    media_samples: int = 2


@dataclass
class CheckpointConfig:
    every: int = 500
    keep_last: int = 2
    keep_best_copies: int = 3


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


CHOICES = {
    "noise.timestep": ("random", "zero"),
    "model.family": ("unet", "spectral"),
    "model.skip_mode": ("add", "concat"),
    "model.output": ("direct", "residual", "mask"),
    "diffusion.objective": ("predictive", "bridge"),
    "train.mixed_precision": ("no", "fp16", "bf16"),
    "log.wandb_mode": ("offline", "online", "disabled"),
}
NOISE_TYPES = ("gaussian", "pink", "brown", "corpus", "babble", "tonal", "bursts")
# Numeric ranges: key -> (low, high, low allowed itself?, high allowed itself?); None = no bound.
AT_LEAST_1 = (1, None, True, True)
AT_LEAST_0 = (0, None, True, True)
POSITIVE = (0, None, False, True)
SHARE = (0, 1, True, True)
RT60_RANGE = (0.05, 5.0)  # seconds of reverberation: a vocal booth to a cathedral
RANGES = {
    **dict.fromkeys(
        [
            "data.sample_rate",
            "data.segment",
            "data.shuffle_buffer",
            "noise.timesteps",
            "noise.babble_talkers",
        ],
        AT_LEAST_1,
    ),
    **dict.fromkeys(["data.val_segment", "data.val_max_samples"], AT_LEAST_0),
    **dict.fromkeys(
        ["noise.infer_timestep", "noise.eq_db", "noise.modulation_db", "noise.speech_eq_db"],
        AT_LEAST_0,
    ),
    **dict.fromkeys(
        [
            "noise.clean_prob",
            "noise.second_prob",
            "noise.modulation_prob",
            "noise.reverb_prob",
            "model.dropout",
        ],
        SHARE,
    ),
    **dict.fromkeys(["noise.reverb_rt60_min", "noise.reverb_rt60_max"], (*RT60_RANGE, True, True)),
    **dict.fromkeys(
        ["model.depth", "model.channels", "model.max_channels", "model.kernel_size"], AT_LEAST_1
    ),
    **dict.fromkeys(["model.stride", "model.time_dim"], AT_LEAST_1),
    "model.growth": POSITIVE,
    "noise.babble_bank_s": POSITIVE,
    **dict.fromkeys(["model.spectral.win_ms", "model.spectral.hop_ms"], POSITIVE),
    **dict.fromkeys(
        ["model.spectral.hidden", "model.spectral.layers", "model.spectral.context_frames"],
        AT_LEAST_1,
    ),
    "model.spectral.noise_window_s": POSITIVE,
    "model.spectral.local_channels": AT_LEAST_0,
    "model.spectral.correction_scale": SHARE,
    "model.spectral.prior_floor": (0, 0.5, True, True),  # a gain, up to -6 dB
    "model.lookahead_ms": AT_LEAST_0,
    **dict.fromkeys(
        [f"loss.{k}_weight" for k in ("stft", "l1", "sc", "mag", "phase", "sisdr")], AT_LEAST_0
    ),
    "optim.lr": POSITIVE,
    "diffusion.sigma": AT_LEAST_0,
    **dict.fromkeys(["diffusion.t_min", "diffusion.t_max"], SHARE),
    "diffusion.steps": AT_LEAST_1,
    "train.sync_every": AT_LEAST_1,
    **dict.fromkeys(["optim.weight_decay", "optim.max_grad_norm"], AT_LEAST_0),
    **dict.fromkeys(["optim.beta1", "optim.beta2", "schedule.warmup_pct"], (0, 1, True, False)),
    "optim.ema_decay": SHARE,
    "schedule.pct_start": (0, 1, False, False),
    **dict.fromkeys(["schedule.div_factor", "schedule.final_div_factor"], POSITIVE),
    **dict.fromkeys(["train.batch_size", "train.grad_accum", "train.val_every"], AT_LEAST_1),
    **dict.fromkeys(["train.max_epochs", "train.max_steps", "train.max_minutes"], AT_LEAST_0),
    "train.max_bad_steps": AT_LEAST_1,
    **dict.fromkeys(["log.every", "checkpoint.every", "checkpoint.keep_last"], AT_LEAST_1),
    **dict.fromkeys(
        ["log.media_every", "log.media_samples", "checkpoint.keep_best_copies"], AT_LEAST_0
    ),
}


def _check_keys(node: Any, schema: type, prefix: str, source: str) -> None:
    """Reject keys the schema does not define, naming the valid ones of that group."""
    if not isinstance(node, dict):
        return
    valid = {f.name: f for f in fields(schema)}
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if key not in valid:
            group = prefix.rstrip(".") or "top level"
            raise ConfigError(
                f"{source}: unknown key '{dotted}'; valid keys of {group}: "
                + ", ".join(sorted(valid))
            )
        sub = valid[key].default_factory  # type: ignore[misc]
        if callable(sub):
            sample = sub()
            if is_dataclass(sample):
                if not isinstance(value, dict):
                    raise ConfigError(f"{source}: '{dotted}' must be a group of keys")
                _check_keys(value, type(sample), f"{dotted}.", source)


def _merge(base: DictConfig, layer: DictConfig, source: str) -> DictConfig:
    _check_keys(OmegaConf.to_container(layer), Config, "", source)
    try:
        return OmegaConf.merge(base, layer)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "") or "?"
        msg = str(err).splitlines()[0]
        raise ConfigError(f"{source}: bad value for '{key}': {msg}") from None


def _check_range(dotted: str, value, low, high, low_ok: bool, high_ok: bool) -> None:
    below = value < low if low_ok else value <= low
    above = high is not None and (value > high if high_ok else value >= high)
    if below or above:
        need = f">= {low:g}" if low_ok else f"> {low:g}"
        if high is not None:
            need += f" and {'<=' if high_ok else '<'} {high:g}"
        raise ConfigError(f"'{dotted}' is {value!r}; it must be {need}")


def min_segment(cfg: DictConfig) -> int:
    """Shortest training crop the model can learn from: one STFT window for the spectral
    family, one latent frame (the product of the strides) for the U-Net."""
    if cfg.model.family == "spectral":
        return max(16, round(cfg.data.sample_rate * cfg.model.spectral.win_ms / 1000))
    strides = list(cfg.model.strides) or [cfg.model.stride] * cfg.model.depth
    total = 1
    for s in strides:
        total *= s
    return total


def _validate_numbers(cfg: DictConfig) -> None:
    workers = cfg.data.num_workers
    if workers != "auto" and (not isinstance(workers, int) or workers < 0):
        raise ConfigError(f"'data.num_workers' is {workers!r}; it must be >= 0 or auto")
    for dotted, bounds in RANGES.items():
        _check_range(dotted, OmegaConf.select(cfg, dotted), *bounds)
    for key in ("widths", "kernel_sizes", "strides"):
        for value in cfg.model[key]:
            _check_range(f"model.{key}", value, *AT_LEAST_1)
    for res in cfg.loss.resolutions:
        if len(res) not in (2, 3) or min(res) < 1:
            raise ConfigError(
                f"'loss.resolutions' has {list(res)}; each entry is [n_fft, hop, win] > 0"
            )
    if cfg.model.spectral.hop_ms > cfg.model.spectral.win_ms:
        raise ConfigError(
            f"'model.spectral.hop_ms' is {cfg.model.spectral.hop_ms:g}; it must not exceed "
            f"'model.spectral.win_ms' ({cfg.model.spectral.win_ms:g}): frames would skip audio"
        )
    shortest = min_segment(cfg)
    for key in ("segment", "val_segment"):
        value = cfg.data[key]
        if value and value < shortest:
            raise ConfigError(
                f"'data.{key}' is {value}; this model needs at least {shortest} samples "
                f"({shortest / cfg.data.sample_rate * 1000:.1f} ms at {cfg.data.sample_rate} Hz)"
            )


def _validate(cfg: DictConfig) -> None:
    _validate_numbers(cfg)
    for dotted, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, dotted)
        if value not in allowed:
            raise ConfigError(f"'{dotted}' is {value!r}; choose one of {', '.join(allowed)}")
    for name in cfg.noise.weights:
        if name not in NOISE_TYPES:
            raise ConfigError(
                f"'noise.weights.{name}' is not a noise type; choose from {', '.join(NOISE_TYPES)}"
            )
    from diffdenoise.metrics import METRICS  # not at import: `python -m diffdenoise.metrics`

    for name in cfg.train.val_metrics:
        if name not in METRICS:
            raise ConfigError(f"'train.val_metrics' has '{name}'; choose from {', '.join(METRICS)}")
    if cfg.noise.snr_min > cfg.noise.snr_max:
        raise ConfigError("'noise.snr_min' must not exceed 'noise.snr_max'")
    if cfg.noise.reverb_rt60_min > cfg.noise.reverb_rt60_max:
        raise ConfigError("'noise.reverb_rt60_min' must not exceed 'noise.reverb_rt60_max'")
    if cfg.diffusion.t_min > cfg.diffusion.t_max:
        raise ConfigError("'diffusion.t_min' must not exceed 'diffusion.t_max'")
    if cfg.model.causal:
        _validate_causal(cfg)
    for key in ("widths", "kernel_sizes", "strides"):
        values = cfg.model[key]
        if len(values) not in (0, cfg.model.depth):
            raise ConfigError(
                f"'model.{key}' has {len(values)} entries; it must be empty or have "
                f"model.depth={cfg.model.depth}"
            )


def _validate_causal(cfg: DictConfig) -> None:
    """``model.causal`` is the spectral family's causal form, for the predictive objective."""
    model = cfg.model
    if model.family != "spectral":
        raise ConfigError("'model.causal' needs model.family: spectral (the U-Net is not causal)")
    if cfg.diffusion.objective != "predictive":
        raise ConfigError("'model.causal' needs diffusion.objective: predictive")
    if model.spectral.local_channels:
        raise ConfigError(
            "'model.spectral.local_channels' reads frames ahead; set it to 0 with model.causal"
        )
    frames = round(model.lookahead_ms / model.spectral.hop_ms)
    if frames >= model.spectral.context_frames:
        raise ConfigError(
            f"'model.lookahead_ms' is {model.lookahead_ms:g}, {frames} frame(s); it must be fewer "
            f"frames than model.spectral.context_frames ({model.spectral.context_frames})"
        )


def config_dirs() -> list[Path]:
    """Where the shipped configs live: ``configs/`` of a clone, else where a non-editable
    install put them (``<prefix>/share/diffdenoise/configs``)."""
    return [Path(__file__).resolve().parents[1] / "configs", SHARE_DIR]


def find_config(name: str) -> Path:
    """``default`` (or ``default.yaml``) -> the shipped ``configs/default.yaml``."""
    stem = Path(name).stem
    for folder in config_dirs():
        if (folder / f"{stem}.yaml").is_file():
            return folder / f"{stem}.yaml"
    looked = ", ".join(str(d) for d in config_dirs())
    raise ConfigError(f"no shipped config named '{stem}' (looked in {looked})")


def shipped_configs() -> list[Path]:
    """Every shipped ``*.yaml`` config, from the first folder that has any."""
    for folder in config_dirs():
        found = sorted(folder.glob("*.yaml"))
        if found:
            return found
    return []


def load(files: list[str | Path] | tuple = (), overrides: list[str] | tuple = ()) -> DictConfig:
    """Build a config: schema defaults, then each YAML file in order, then dotted overrides."""
    cfg = OmegaConf.structured(Config)
    for path in files:
        cfg = _merge_file(cfg, Path(path), ())
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value, e.g. model.channels=32")
        cfg = _merge(cfg, OmegaConf.from_dotlist([_quote_choice(item)]), f"override '{item}'")
    _validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _merge_file(cfg: DictConfig, path: Path, seen: tuple) -> DictConfig:
    """Merge one YAML file, after the file its ``base:`` key names (beside it), if any."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' leads back to this file")
    try:
        layer = OmegaConf.load(path)
    except Exception as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if layer is None or not isinstance(layer, DictConfig):
        layer = OmegaConf.create({})
    if "base" in layer:
        cfg = _merge_file(cfg, path.parent / str(layer.pop("base")), (*seen, path.resolve()))
    return _merge(cfg, layer, str(path))


def _quote_choice(item: str) -> str:
    """``train.mixed_precision=no`` means the string "no", not YAML's boolean false."""
    key, value = item.split("=", 1)
    if key in CHOICES and value and value[0] not in "'\"":
        return f"{key}='{value}'"
    return item


def to_plain(cfg: DictConfig) -> dict:
    """The resolved config as plain Python data (safe for ``weights_only`` checkpoints)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def from_plain(data: dict) -> DictConfig:
    """Rebuild a validated config from :func:`to_plain` output, e.g. from a checkpoint."""
    cfg = _merge(OmegaConf.structured(Config), OmegaConf.create(data), "checkpoint config")
    _validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg
