"""The bridge objective, its sampler, spectral normalisation, and old checkpoints."""

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from diffdenoise.config import loading as config
from diffdenoise.data import pipeline as data
from diffdenoise.inference.denoiser import Denoiser
from diffdenoise.models.factory import build_model, model_for
from diffdenoise.models.losses import build_loss
from diffdenoise.models.objectives import TIME_SCALE, Bridge, Predictive, objective_of
from diffdenoise.training.checkpoint import save_best
from diffdenoise.training.step import train_step


def tiny(*overrides):
    return config.load(["configs/tiny.yaml"], list(overrides))


def rendered_batch(objective, t_range=(0.0, 1.0), n=3, length=4000, seed=0):
    """A loader-shaped batch of seeded clean audio and plans, mixed as training mixes it."""
    mixer = data.Mixer({"gaussian": 1, "pink": 1}, 0, 10, 0, 0, "random", 1000, 0)
    mixer.bridge_t = t_range if objective.conditioned else None
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(n):
        clean = (0.1 * rng.standard_normal(length)).astype(np.float32)
        plan = mixer.plan(np.random.default_rng([seed, i]), length)
        examples.append((clean, None, plan, str(i), "u"))
    return data.render(data.collate(examples), "cpu", None, objective)


class Counting(torch.nn.Module):
    """A model wrapper that counts calls and the rows they carried."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls, self.rows = model, 0, 0
        self.conditioned = model.conditioned

    def forward(self, x, t=None, cond=None):
        self.calls += 1
        self.rows += x.shape[0]
        return self.model(x, t, cond=cond)


@pytest.mark.parametrize("family", ["unet", "spectral"])
def test_bridge_at_t_one_without_noise_is_the_predictive_path(family):
    cfg = tiny(f"model.family={family}", "diffusion.objective=bridge", "model.spectral.hidden=16")
    torch.manual_seed(0)
    model = model_for(cfg)
    bridge = Bridge(sigma=0.0)
    batch = rendered_batch(bridge, t_range=(1.0, 1.0))
    assert torch.equal(batch["state"], batch["noisy"]) and (batch["t"] == 1.0).all()
    loss_fn = build_loss(cfg.loss)
    with torch.no_grad():  # the one-call sampler: x_1 = y, one call at t = 1
        one_call = Bridge(0.0).sample(model, batch["noisy"], steps=1)
        expected, _ = loss_fn(one_call, batch["clean"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0, fused=True)
    acc = Accelerator(cpu=True)
    model, optimizer = acc.prepare(model, optimizer)
    parts, _, _ = train_step(model, loss_fn, optimizer, [batch], acc, 1.0, bridge)
    assert parts["total"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_bridge_state_follows_the_schedule():
    bridge = Bridge(sigma=0.5)
    clean, noisy = torch.randn(4, 1, 800), torch.randn(4, 1, 800) * 2
    z = torch.randn(4, 1, 800)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    x = bridge.corrupt(clean, noisy, t, z)
    assert torch.equal(x[0], clean[0]) and torch.allclose(x[3], noisy[3])
    rms = noisy[2].square().mean().sqrt()
    expected = 0.5 * clean[2] + 0.5 * noisy[2] + 0.5 * rms * 0.5 * z[2]
    torch.testing.assert_close(x[2], expected)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_sampler_calls_the_network_steps_times_per_segment(steps):
    cfg = tiny("diffusion.objective=bridge")
    model = Counting(model_for(cfg))
    denoiser = Denoiser(
        model, 16000, segment=0.5, batch_size=3, objective=Bridge(0.5), steps=steps
    )  # fmt: skip
    audio = np.random.default_rng(0).standard_normal(16000 * 2).astype(np.float32) * 0.1
    out = denoiser(audio, 16000)
    assert out.shape == audio.shape and np.isfinite(out).all()
    segments = model.rows // steps
    assert model.rows == steps * segments and segments >= 4
    assert model.calls == steps * -(-segments // 3)  # steps calls per batch of segments


def bridge_denoiser(sigma, **kw):
    cfg = tiny("diffusion.objective=bridge")
    torch.manual_seed(0)
    return Denoiser(model_for(cfg), 16000, segment=0.5, objective=Bridge(sigma), **kw)


def test_same_seed_same_output_for_any_batching_another_seed_differs():
    audio = np.random.default_rng(1).standard_normal((2, 16000 * 2)).astype(np.float32) * 0.1
    base = bridge_denoiser(0.5, steps=4, seed=7, batch_size=4)(audio, 16000)
    again = bridge_denoiser(0.5, steps=4, seed=7, batch_size=1)(audio, 16000)
    other = bridge_denoiser(0.5, steps=4, seed=8, batch_size=4)(audio, 16000)
    np.testing.assert_allclose(base, again, atol=1e-6)
    assert np.abs(base - other).max() > 1e-4
    quiet = [bridge_denoiser(0.0, steps=4, seed=s)(audio, 16000) for s in (7, 8)]
    np.testing.assert_allclose(quiet[0], quiet[1], atol=1e-6)  # no noise: the seed is moot


def test_predictive_models_refuse_more_than_one_step():
    cfg = tiny()
    with pytest.raises(ValueError, match="a predictive model takes exactly 1 step"):
        Denoiser(model_for(cfg), 16000, steps=2)


@pytest.mark.parametrize("family", ["unet", "spectral"])
def test_spectral_norm_keeps_each_wrapped_weight_at_unit_norm(family):
    cfg = tiny(f"model.family={family}", "model.spectral_norm=true", "model.spectral.hidden=16")
    cfg_local = tiny(f"model.family={family}", "model.spectral_norm=true")
    model = model_for(cfg if family == "unet" else cfg_local)
    wrapped = [m for m in model.modules() if hasattr(m, "parametrizations")]
    assert wrapped, "no convolution was wrapped"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(2, 1, 4000)
    for _ in range(20):  # training moves the weights; the norm follows them at every step
        model(x, torch.zeros(2)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        for module in wrapped:
            weight = module.weight
            dim = 1 if isinstance(module, torch.nn.ConvTranspose1d) else 0
            matrix = weight.movedim(dim, 0).flatten(1)
            assert torch.linalg.matrix_norm(matrix, ord=2).item() == pytest.approx(1.0, abs=1e-3)


def test_old_checkpoints_load_and_denoise_as_before(tmp_path):
    cfg = tiny("model.output=direct")
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data.sample_rate)
    plain = config.to_plain(cfg)
    del plain["diffusion"]  # a checkpoint from before the diffusion group
    del plain["model"]["spectral_norm"]
    weights = model.state_dict()
    path = save_best(tmp_path, {"model": weights, "ema_model": weights, "config": plain}, 1)
    denoiser = Denoiser.from_checkpoint(path, device="cpu", segment=0.5, overlap=0.0, context=0.0)
    assert isinstance(denoiser.objective, Predictive) and denoiser.steps == 1
    audio = np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1
    with torch.no_grad():
        direct = model.eval()(torch.from_numpy(audio)[None, None], torch.zeros(1))[0, 0].numpy()
    np.testing.assert_allclose(denoiser(audio, 16000), direct, atol=1e-6)


def test_checkpoints_record_the_objective(tmp_path):
    cfg = tiny("diffusion.objective=bridge", "diffusion.steps=3", "diffusion.sigma=0.2")
    weights = model_for(cfg).state_dict()
    plain = config.to_plain(cfg)
    path = save_best(tmp_path, {"model": weights, "ema_model": weights, "config": plain}, 1)
    denoiser = Denoiser.from_checkpoint(path, device="cpu")
    assert isinstance(denoiser.objective, Bridge) and denoiser.objective.sigma == 0.2
    assert denoiser.steps == 3
    assert isinstance(objective_of(tiny().diffusion), Predictive)


def test_bridge_models_need_the_noisy_input_and_predictive_ones_refuse_it():
    bridge, predictive = model_for(tiny("diffusion.objective=bridge")), model_for(tiny())
    x = torch.zeros(1, 1, 4000)
    with pytest.raises(ValueError, match="a bridge model needs cond"):
        bridge(x, torch.zeros(1))
    with pytest.raises(ValueError, match="built for diffusion.objective=predictive"):
        predictive(x, torch.zeros(1), cond=x)
    assert bridge(x, torch.full((1,), TIME_SCALE), cond=x).shape == x.shape
