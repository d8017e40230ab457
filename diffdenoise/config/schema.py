"""The configuration schema: every key, its type and default, and the values it may take.

:class:`Config` is the tree of groups that ``config.load`` fills in layers; ``CHOICES``,
``NOISE_TYPES`` and ``RANGES`` are what its validation holds each value to. A key added
here is a key every YAML file and override may set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union


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
    manifest: str = ""
    cache_dir: str = ""
    fetch_retries: int = 5
    fetch_timeout_s: float = 30.0
    fetch_max_wait_s: float = 120.0
    read_ahead_mb: float = 256.0


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
    speed_perturb: float = 0.0
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
    quiet_window_s: float = 0.0
    prior: bool = True
    local_channels: int = 0
    correction_scale: float = 1.0
    suppress_scale: Optional[float] = None  # noqa: UP045 (None: correction_scale)
    prior_floor: float = 0.0
    prior_tracking: float = 0.0
    anchor_weight: float = 0.0
    bidirectional: bool = False
    deep_filter_taps: int = 0
    input_bands: int = 0


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
    compressed_weight: float = 0.0
    compress_power: float = 0.3


@dataclass
class OptimConfig:
    lr: float = 3e-4
    weight_decay: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.999
    max_grad_norm: float = 1.0
    ema: bool = True
    ema_decay: float = 0.999
    lr_reference_batch: int = 0


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
    init_from: str = ""
    run_name: str = ""
    runs_dir: str = "runs"
    max_bad_steps: int = 20
    sync_every: int = 10
    val_metrics: list[str] = field(default_factory=list)
    auto_batch: bool = False
    memory_share: float = 0.8


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
METRICS = ("si_sdr", "pesq", "stoi")  # what train.val_metrics and evaluate may score
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
    **dict.fromkeys(["data.val_segment", "data.val_max_samples", "data.fetch_retries"], AT_LEAST_0),
    **dict.fromkeys(
        ["data.fetch_timeout_s", "data.fetch_max_wait_s", "data.read_ahead_mb"], POSITIVE
    ),
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
    "noise.speed_perturb": (0, 0.5, True, True),  # up to half again as fast, or half as fast
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
    "model.spectral.quiet_window_s": AT_LEAST_0,
    "model.spectral.local_channels": AT_LEAST_0,
    "model.spectral.deep_filter_taps": AT_LEAST_0,
    "model.spectral.input_bands": AT_LEAST_0,
    **dict.fromkeys(["model.spectral.correction_scale", "model.spectral.suppress_scale"], SHARE),
    "model.spectral.prior_floor": (0, 0.5, True, True),  # a gain, up to -6 dB
    "model.spectral.prior_tracking": (0, 1, True, True),  # share of minimum statistics
    "model.spectral.anchor_weight": AT_LEAST_0,
    "model.lookahead_ms": AT_LEAST_0,
    **dict.fromkeys(
        [f"loss.{k}_weight" for k in ("stft", "l1", "sc", "mag", "phase", "sisdr", "compressed")],
        AT_LEAST_0,
    ),
    "loss.compress_power": (0, 1, False, True),
    "optim.lr": POSITIVE,
    "optim.lr_reference_batch": (0, None, True, True),
    "train.memory_share": (0, 1, False, True),
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
