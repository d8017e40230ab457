"""Typed configuration: schema defaults, then YAML files, then dotted CLI overrides.

``load(["configs/tiny.yaml"], ["model.channels=32"])`` returns a read-only OmegaConf
object whose keys are exactly those of :class:`Config`. Unknown keys and values of the
wrong type are rejected with a one-line :class:`ConfigError` that names the key, where it
came from, and the valid keys of its group.
"""

from __future__ import annotations

import sys
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from diffdenoise.config.schema import AT_LEAST_1, CHOICES, METRICS, NOISE_TYPES, RANGES, Config

SHARE_DIR = Path(sys.prefix) / "share" / "diffdenoise" / "configs"


class ConfigError(ValueError):
    """A configuration problem, phrased for the user in one line."""


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
    if value is None:  # an optional key left unset
        return
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
    elif cfg.model.family == "spectral" and cfg.model.spectral.quiet_window_s:
        raise ConfigError(
            "'model.spectral.quiet_window_s' is for the causal model (the offline prior already "
            "takes the quietest frames of the whole input); set it to 0 without model.causal"
        )
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
    for key in ("deep_filter_taps", "input_bands"):
        if model.spectral[key]:
            raise ConfigError(
                f"'model.spectral.{key}' is built for the offline model only; set it to 0 "
                "with model.causal"
            )
    if model.spectral.bidirectional:
        raise ConfigError(
            "'model.spectral.bidirectional' reads the whole segment; set it to false with "
            "model.causal"
        )
    if model.spectral.prior_tracking:
        raise ConfigError(
            "'model.spectral.prior_tracking' is for the offline model (the causal prior already "
            "follows the noise over a trailing window); set it to 0 with model.causal"
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
    return [Path(__file__).resolve().parents[2] / "configs", SHARE_DIR]


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
    if not isinstance(layer, DictConfig):
        kind = "a list" if isinstance(layer, ListConfig) else f"a {type(layer).__name__}"
        raise ConfigError(f"{path}: must be a mapping of sections (data:, model:, ...), not {kind}")
    if not layer:  # an empty file, or comments only: a config that says nothing was not meant
        raise ConfigError(f"{path}: empty config (no keys); name a shipped config or add keys")
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
