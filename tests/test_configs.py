"""Every file in configs/ loads, validates, and builds its model and loss."""

from pathlib import Path

import pytest
import torch

from diffdenoise.config import loading as config
from diffdenoise.models.factory import build_model
from diffdenoise.models.losses import build_loss

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_configs_exist():
    assert {p.name for p in CONFIGS} >= {"default.yaml", "seed.yaml", "tiny.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_builds(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("#")
    assert "Run:" in path.read_text().split("\n\n")[0] or "Run:" in path.read_text()[:600]
    cfg = config.load([path])
    model = build_model(cfg.model, cfg.data.sample_rate)
    loss = build_loss(cfg.loss)
    x = torch.randn(1, 1, 2000)
    with torch.no_grad():
        y = model(x, torch.zeros(1))
        total, parts = loss(y, x)
    assert y.shape == x.shape and torch.isfinite(total) and "l1" in parts


def test_seed_matches_original_recipe():
    cfg = config.load([Path(__file__).parents[1] / "configs/seed.yaml"])
    assert (cfg.data.sample_rate, cfg.data.segment, cfg.train.batch_size) == (48000, 48000, 32)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.train.max_epochs) == (1e-4, 1e-2, 1000)
    assert (cfg.schedule.warmup_pct, cfg.schedule.pct_start) == (0.05, 0.3)
    assert cfg.schedule.final_div_factor == 1000
    assert not cfg.model.skips and cfg.model.output == "direct"
    assert len(cfg.loss.resolutions) == 1 and cfg.loss.stft_weight == cfg.loss.l1_weight == 1
    assert cfg.noise.timestep == "random" and cfg.noise.infer_timestep == 0
    assert list(cfg.noise.weights) == ["gaussian"]


def test_default_is_the_recommended_setup():
    cfg = config.load([Path(__file__).parents[1] / "configs/default.yaml"])
    assert cfg.model.family == "spectral" and cfg.model.spectral.prior
    assert cfg.noise.clean_prob > 0 and cfg.noise.eq_db > 0 and cfg.noise.snr_min <= -5
    assert cfg.model.skips and cfg.model.output == "residual" and cfg.model.normalize
    assert len(cfg.loss.resolutions) >= 3 and cfg.optim.ema
    assert cfg.train.mixed_precision == "bf16"
