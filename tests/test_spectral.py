"""The spectral-mask model: shapes, its classical starting point, bounded gains."""

import numpy as np
import pytest
import torch

from diffdenoise.bench import demo_data
from diffdenoise.config import loading as config
from diffdenoise.models.factory import build_model
from diffdenoise.models.metrics import si_sdr
from diffdenoise.models.spectral import (
    GAIN_EPS,
    SpectralMaskModel,
    corrected_gain,
    noise_psd,
    wiener_gain,
)


def small(**kw):
    torch.manual_seed(0)
    return SpectralMaskModel(16000, hidden=32, layers=1, time_dim=8, **kw).eval()


@pytest.mark.parametrize("length", [1, 7, 100, 511, 8000, 16001])
def test_any_length_in_is_that_length_out(length):
    x = torch.randn(2, 1, length)
    with torch.no_grad():
        assert small()(x).shape == (2, 1, length)


def test_stft_is_sized_for_the_sample_rate():
    assert (small().n_fft, small().hop) == (512, 128)
    model = SpectralMaskModel(48000, hidden=8, layers=1, time_dim=8)
    assert (model.n_fft, model.hop, model.bins) == (1536, 384, 769)


def test_minimum_statistics_finds_the_level_of_stationary_noise():
    model = small()
    power = model.stft(torch.randn(4, 32000) * 0.1).abs().square()
    estimate, _ = noise_psd(power, model.window_frames)
    assert (estimate.mean() / power.mean()).item() == pytest.approx(1.0, rel=0.2)


def test_untrained_model_is_the_classical_wiener_filter():
    model, x = small(), torch.randn(1, 1, 16000)
    spec = model.stft(x[:, 0])
    classical, _ = wiener_gain(spec.abs().square(), model.window_frames)
    expected = torch.istft(
        spec * classical.clamp(GAIN_EPS, 1 - GAIN_EPS), 512, 128, window=model.window, length=16000
    )
    with torch.no_grad():
        np.testing.assert_allclose(model(x)[:, 0].numpy(), expected.numpy(), atol=1e-5)


def test_gain_stays_between_zero_and_one_whatever_the_weights():
    model = small(prior=False)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 3)
        spec = model.stft(torch.randn(2, 8000))
        gain = model.gain(spec, torch.randint(0, 1000, (2,)))
    assert gain.min() >= 0 and gain.max() <= 1 and gain.std() > 0.1


def test_untrained_model_leaves_speech_alone_and_removes_stationary_noise():
    rng = np.random.default_rng(0)
    clean = demo_data.utterance(rng, 3.0, 16000).astype(np.float32)
    noisy = clean + 0.3 * np.sqrt(np.mean(clean**2)) * rng.standard_normal(clean.size)
    model = small()
    with torch.no_grad():
        run = lambda a: model(torch.from_numpy(a.astype(np.float32))[None, None])[0, 0].numpy()  # noqa: E731
        assert si_sdr(run(clean), clean) > 20
        assert si_sdr(run(noisy), clean) > si_sdr(noisy, clean) + 3


def test_default_config_builds_the_spectral_family_and_old_configs_the_unet():
    cfg = config.load(["configs/default.yaml"], ["data.sample_rate=16000"])
    assert isinstance(build_model(cfg.model, 16000), SpectralMaskModel)
    plain = config.load([], [])  # a checkpoint config from before model.family existed
    assert type(build_model(plain.model, 16000)).__name__ == "AudioDiffusionModel"
    with pytest.raises(config.ConfigError, match="model.family"):
        config.load([], ["model.family=transformer"])


def test_local_head_starts_at_zero_and_keeps_shapes():
    torch.manual_seed(0)
    plain = SpectralMaskModel(16000, hidden=16, layers=1, time_dim=8).eval()
    torch.manual_seed(0)
    local = SpectralMaskModel(16000, hidden=16, layers=1, time_dim=8, local_channels=4).eval()
    x = torch.randn(2, 1, 4000)
    with torch.no_grad():
        np.testing.assert_allclose(local(x).numpy(), plain(x).numpy(), atol=1e-6)
        for p in local.local.parameters():
            p.normal_(0, 0.5)
        assert not torch.allclose(local(x), plain(x)) and local(x).shape == x.shape


def first_frame_of_gru_output(model, late_frames_changed: bool) -> torch.Tensor:
    """The GRU's output at frame 0 for one input, with its input's frames from 10 on
    replaced by noise when ``late_frames_changed`` (everything before them kept)."""
    seen = {}

    def swap_late(module, args):
        h = args[0].clone()
        if late_frames_changed:
            h[:, 10:] = torch.randn_like(h[:, 10:], generator=torch.Generator().manual_seed(1))
        return (h,)

    model.rnn.register_forward_pre_hook(swap_late)
    model.rnn.register_forward_hook(lambda m, args, out: seen.update(h=out[0][:, 0]))
    with torch.no_grad():
        model(torch.randn(1, 1, 8000, generator=torch.Generator().manual_seed(0)))
    return seen["h"]


def test_a_bidirectional_gru_starts_as_the_prior_and_reads_later_frames():
    x = torch.randn(2, 1, 4000)
    with torch.no_grad():
        np.testing.assert_allclose(small(bidirectional=True)(x).numpy(), small()(x).numpy(),
                                   atol=1e-6)  # fmt: skip
    for bidirectional, reads_ahead in ((False, False), (True, True)):
        early = [
            first_frame_of_gru_output(small(bidirectional=bidirectional), changed)
            for changed in (False, True)
        ]
        assert (not torch.allclose(*early)) == reads_ahead
    assert small(bidirectional=True).out.in_features == 64  # both directions reach the head
    cfg = config.load(["configs/default.yaml"], ["model.spectral.bidirectional=true"])
    assert build_model(cfg.model, 16000).rnn.bidirectional


def test_correction_scale_applies_a_share_of_the_correction_at_inference_only():
    model = small(correction_scale=0.5)
    with torch.no_grad():
        model.out.bias.fill_(2.0)  # a learned correction of +2 logits in every bin
    x = torch.randn(1, 1, 8000) * 0.1
    spec = model.stft(x[:, 0])
    t = torch.zeros(1)
    classical, _ = wiener_gain(spec.abs().square(), model.window_frames)
    base = torch.logit(classical.clamp(GAIN_EPS, 1 - GAIN_EPS))
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model.gain(spec, t), torch.sigmoid(base + 1.0))
        model.train()  # training sees the whole correction
        torch.testing.assert_close(model.gain(spec, t), torch.sigmoid(base + 2.0))
    cfg = config.load([config.find_config("default")])
    assert build_model(cfg.model, 16000).correction_scale == 0.25


@pytest.mark.parametrize("name", ["default", "realtime"])
def test_suppress_scale_applies_its_own_share_where_the_correction_lowers_the_gain(name):
    cfg = config.load([config.find_config(name)], ["model.spectral.suppress_scale=0.5"])
    model = build_model(cfg.model, 16000)  # the offline and the causal model
    assert model.suppress_scale == 0.5
    model.correction_scale, model.prior = 0.25, False  # without the prior: gain = sigmoid(c)
    correction = torch.linspace(-2, 2, 9)[None, :, None]  # lowers some bins, raises others
    half = torch.full((1, 9, 1), 0.5)
    with torch.no_grad():
        model.train()
        torch.testing.assert_close(corrected_gain(model, correction, half).logit(), correction)
        model.eval()
        applied = corrected_gain(model, correction, half).logit() / correction
    lowered, raised = correction < 0, correction > 0
    torch.testing.assert_close(applied[lowered], torch.full_like(applied[lowered], 0.5))
    torch.testing.assert_close(applied[raised], torch.full_like(applied[raised], 0.25))
    model.suppress_scale = None  # unset: correction_scale both ways
    applied = corrected_gain(model, correction, half).logit() / correction
    torch.testing.assert_close(applied[lowered], torch.full_like(applied[lowered], 0.25))


def test_prior_floor_bounds_the_prior_and_not_the_correction():
    x = torch.randn(1, 1, 16000) * 0.1  # noise alone: the prior wants to remove it all
    spec = small().stft(x[:, 0])
    t = torch.zeros(1)
    classical, _ = wiener_gain(spec.abs().square(), small().window_frames)
    with torch.no_grad():
        plain, floored = small().gain(spec, t), small(prior_floor=0.1).gain(spec, t)
        assert plain.min() < 0.03 and floored.min() == pytest.approx(0.1, abs=1e-6)
        torch.testing.assert_close(floored, classical.clamp(0.1, 1 - GAIN_EPS))
        sure = small(prior_floor=0.1)
        sure.out.bias.fill_(-2.0)  # a learned correction may still suppress below the floor
        assert sure.gain(spec, t).min() < 0.1 * 0.2
    causal = config.load([config.find_config("realtime")], ["model.spectral.prior_floor=0.1"])
    assert build_model(causal.model, 16000).prior_floor == 0.1


RECIPE_PRIORS = [("default", 0.05, 0.5, 0.5), ("large", 0.05, 0.5, 0.5),
                 ("bridge", 0.0, 0.0, None), ("realtime", 0.0, None, None)]  # fmt: skip


@pytest.mark.parametrize("name,floor,tracking,suppress", RECIPE_PRIORS)
def test_each_recipe_builds_the_prior_it_was_measured_with(name, floor, tracking, suppress):
    cfg = config.load([config.find_config(name)], ["data.sample_rate=16000"])
    model = build_model(cfg.model, 16000)
    assert model.prior_floor == floor and model.suppress_scale == suppress
    assert getattr(model, "prior_tracking", None) == tracking  # causal: no such option
    old = build_model(config.load([], ["model.family=spectral"]).model, 16000)
    assert (old.prior_floor, old.prior_tracking, old.suppress_scale) == (0.0, 0.0, None)


def test_prior_tracking_follows_noise_that_grows_and_leaves_steady_noise_alone():
    torch.manual_seed(0)
    steady = torch.randn(1, 16000 * 3) * 0.1
    hum = steady * 0.1 + 0.3 * torch.sin(2 * torch.pi * 50 * torch.arange(48000) / 16000)
    growing = steady * torch.cat([torch.ones(32000), torch.full((16000,), 10.0)])
    for wave in (steady, hum, growing):
        power = small().stft(wave).abs().square()
        plain, features = wiener_gain(power, small().window_frames)
        tracked, same = wiener_gain(power, small().window_frames, tracking=0.5)
        torch.testing.assert_close(same, features)  # the network reads the same features
        loud = slice(-50, None)  # the last 0.4 s: half a noise window after the jump
        if wave is not growing:  # the quietest frames stand for noise that does not move
            assert (tracked - plain).abs().mean() < 0.01
        else:  # the quietest frames are the quiet part: the loud part passes untracked
            assert plain[..., loud].mean() > 0.5 and tracked[..., loud].mean() < 0.2
    cfg = config.load([config.find_config("default")], ["model.spectral.prior_tracking=0.5"])
    assert build_model(cfg.model, 16000).prior_tracking == 0.5
    with pytest.raises(config.ConfigError, match="prior_tracking.*model.causal"):
        config.load([config.find_config("realtime")], ["model.spectral.prior_tracking=0.5"])


def test_quiet_window_on_the_offline_model_is_one_config_error_not_dropped():
    with pytest.raises(config.ConfigError, match="quiet_window_s.*without model.causal"):
        config.load([config.find_config("default")], ["model.spectral.quiet_window_s=5"])
    realtime = config.load([config.find_config("realtime")], ["model.spectral.quiet_window_s=2"])
    assert realtime.model.spectral.quiet_window_s == 2


KERNEL_CHECK = """
import torch
from diffdenoise.models import kernels
torch.manual_seed(0)
for shape in [(2, 769, 251), (1, 3, 1), (3, 0, 5)]:
    post = torch.rand(shape) * 20
    fused = kernels.decision_directed_triton(post, 0.98)
    loop = kernels.decision_directed_torch(post, 0.98)
    assert fused.shape == loop.shape == shape, (fused.shape, shape)
    print(shape, float((fused - loop).abs().max()) if post.numel() else 0.0)
previous = torch.rand(2, 769) * 5  # a stream that continues: the state it left
fused = kernels.decision_directed_triton(post := torch.rand(2, 769, 40) * 20, 0.98, previous)
loop = kernels.decision_directed_torch(post, 0.98, previous)
assert not torch.allclose(loop, kernels.decision_directed_torch(post, 0.98))
print("previous", float((fused - loop).abs().max()))
"""


def test_fused_decision_directed_kernel_equals_the_torch_loop():
    """The Triton kernel a GPU runs, here through Triton's CPU interpreter."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")  # read when the kernel is defined
    out = subprocess.run(
        [sys.executable, "-c", KERNEL_CHECK], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert len(out) == 4
    assert all(float(line.split()[-1]) < 1e-6 for line in out), out


COMPILED_CHECK = """
import torch
from diffdenoise.models import kernels
from diffdenoise.models.spectral import SpectralMaskModel
assert kernels.INTERPRETED  # decision_directed takes the GPU's path: the Triton kernel
torch.manual_seed(0)
model = SpectralMaskModel(16000, hidden=16, layers=1, time_dim=8)
torch.nn.init.normal_(model.out.weight, std=0.1)  # a trained correction, so grads flow
x = torch.randn(2, 1, 8000) * 0.1
eager = model(x)
compiled = torch.compile(model)(x)
compiled.square().mean().backward()
assert model.inp.weight.grad.abs().sum() > 0
print(float((compiled - eager).abs().max()))
"""


@pytest.mark.slow
def test_compiled_spectral_model_runs_the_triton_kernel_between_its_graphs():
    """torch.compile around the Triton launch, as ``large.yaml`` trains on a GPU (dynamo
    once failed to trace it there), through Triton's CPU interpreter."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run(
        [sys.executable, "-c", COMPILED_CHECK], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.split()[-1]) < 1e-4


def test_decision_directed_gain_follows_the_posterior_snr():
    from diffdenoise.models.kernels import decision_directed

    post = torch.tensor([[1.0, 1.0, 100.0, 100.0, 100.0, 1.0, 1.0, 1.0]])
    gains = decision_directed(post, 0.98)
    assert gains[0, 0] == pytest.approx(0.98 / 1.98)  # the first frame's previous term is 1
    assert gains[0, 2] > gains[0, 1] and gains[0, 4] > 0.9  # speech onset opens the gain
    assert gains[0, 7] < 0.5  # and closes a frame after the speech's last


def reference_recursion(post, previous, smoothing):
    """The decision-directed recursion written without in-place writes, so autograd can
    differentiate it: the reference for the operator's own backward."""
    gains = []
    for t in range(post.shape[-1]):
        prior = smoothing * previous + (1 - smoothing) * (post[..., t] - 1).clamp_min(0)
        gains.append(prior / (1 + prior))
        previous = gains[-1].square() * post[..., t]
    return torch.stack(gains, -1)


def test_the_recursion_operator_has_the_loops_output_and_gradient():
    from diffdenoise.models import kernels

    torch.manual_seed(0)
    post = (torch.rand(2, 5, 30, dtype=torch.float64) * 4 + 0.2).requires_grad_()
    previous = (torch.rand(2, 5, dtype=torch.float64) * 3).requires_grad_()
    want = reference_recursion(post, previous, 0.9)
    weights = torch.randn_like(want)
    want_grads = torch.autograd.grad((want * weights).sum(), (post, previous))
    exact = kernels.decision_directed_backward(weights, post.detach(), previous.detach(),
                                               want.detach(), 0.9)  # fmt: skip
    for got, ref in zip(exact, want_grads):
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    post32 = post.detach().float().requires_grad_()
    prev32 = previous.detach().float().requires_grad_()
    out = kernels.decision_directed(post32, 0.9, prev32)  # the custom operator, float32
    torch.testing.assert_close(out, want.detach().float(), rtol=0, atol=1e-6)
    grads = torch.autograd.grad((out * weights.float()).sum(), (post32, prev32))
    for got, ref in zip(grads, want_grads):
        torch.testing.assert_close(got, ref.float(), rtol=0, atol=1e-5)
    torch.library.opcheck(kernels._decision_directed_op, (post32.detach(), 0.9, prev32.detach()))


@pytest.mark.slow
def test_compile_keeps_the_recursion_in_its_graph_and_equals_eager():
    """The recursion is a custom operator: dynamo no longer breaks the graph at it (only
    the GRU, a cuDNN call on a GPU, stays outside), and compiled equals eager."""
    from diffdenoise.models.spectral import SpectralMaskModel

    torch.manual_seed(0)
    model = SpectralMaskModel(16000, hidden=16, layers=1, time_dim=8)
    torch.nn.init.normal_(model.out.weight, std=0.1)  # a trained correction, so grads flow
    x = torch.randn(2, 1, 8000) * 0.1
    reasons = [str(b.reason) for b in torch._dynamo.explain(model)(x).break_reasons]
    assert not any("disable" in r or "decision_directed" in r for r in reasons), reasons
    eager = model(x)
    eager.square().mean().backward()
    eager_grad = model.inp.weight.grad.clone()
    model.zero_grad()
    compiled = torch.compile(model)(x)
    compiled.square().mean().backward()
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-4)
    torch.testing.assert_close(model.inp.weight.grad, eager_grad, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("frames", [1, 2, 7, 251, 1000])
@pytest.mark.parametrize("q", [0.0, 0.2, 0.5, 1.0])
def test_quantile_of_rows_is_torch_quantile(frames, q):
    from diffdenoise.models.spectral import quantile_of_rows

    values = torch.rand(4, frames, generator=torch.Generator().manual_seed(frames))
    expected = torch.quantile(values, q, dim=1, keepdim=True)
    assert torch.allclose(quantile_of_rows(values, q), expected, rtol=1e-6, atol=0)


def test_the_anchor_adds_the_gradient_of_its_penalty_in_training_only():
    torch.manual_seed(0)
    correction = torch.randn(2, 9, 7, requires_grad=True)
    classical = torch.rand(2, 9, 7)
    anchored, plain = SpectralMaskModel(anchor_weight=0.3), SpectralMaskModel()

    def grad(model, penalty=0.0):
        loss = corrected_gain(model, correction, classical).square().sum()
        return torch.autograd.grad(loss + penalty * correction.square().mean(), correction)[0]

    assert torch.allclose(grad(anchored), grad(plain, penalty=0.3), atol=1e-7)
    assert not torch.allclose(grad(anchored), grad(plain), atol=1e-4)
    assert torch.equal(corrected_gain(anchored, correction, classical),
                       corrected_gain(plain, correction, classical))  # fmt: skip
    anchored.eval(), plain.eval()
    assert torch.equal(grad(anchored), grad(plain))  # inference: no anchor
