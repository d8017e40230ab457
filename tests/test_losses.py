import pytest
import torch

from diffdenoise.models.losses import STFT, DenoiseLoss, MultiResolutionSTFTLoss, STFTLoss

RES = [(256, 64, 256), (512, 128, 512)]


def speechlike(batch=2, n=8000):
    t = torch.arange(n) / 16000
    x = torch.sin(2 * torch.pi * 220 * t) * torch.sin(2 * torch.pi * 3 * t)
    return (x + 0.3 * torch.sin(2 * torch.pi * 1330 * t)).expand(batch, 1, n).clone()


def test_stft_shape_and_short_input():
    spec = STFT(512, 128)(torch.randn(3, 1, 1000))
    assert spec.shape == (3, 257, 1000 // 128 + 1) and spec.is_complex()
    assert STFT(512, 128)(torch.randn(2, 1, 10)).shape[-1] == 1  # shorter than n_fft: padded


def test_zero_on_identical():
    loss = DenoiseLoss(RES)
    x = speechlike()
    total, parts = loss(x, x)
    assert total.item() == pytest.approx(0.0, abs=1e-4)
    for name in ("stft_sc", "stft_mag", "stft_phase", "stft", "l1", "total"):
        assert parts[name].item() == pytest.approx(0.0, abs=1e-4), name


def test_grows_with_noise():
    torch.manual_seed(0)
    loss = DenoiseLoss(RES)
    x = speechlike()
    noise = torch.randn_like(x)
    values = [loss(x + s * noise, x)[0].item() for s in (0.01, 0.1, 0.5)]
    assert 0 < values[0] < values[1] < values[2]


def test_phase_term_zero_for_matching_phase_and_positive_for_shift():
    loss = STFTLoss(512, 128)
    x = speechlike()
    _, same_phase = loss(2.0 * x, x)  # louder, same phase
    assert same_phase["phase"].item() == pytest.approx(0.0, abs=1e-4)
    assert same_phase["sc"].item() > 0.5
    _, flipped = loss(-x, x)  # opposite phase everywhere: 1 - cos(pi) = 2
    assert flipped["phase"].item() == pytest.approx(2.0, rel=1e-3)


def test_phase_ignores_near_silent_bins():
    loss = STFTLoss(256, 64)
    x = speechlike(1, 4000)
    whisper = 1e-6 * torch.randn_like(x)
    _, parts = loss(x + whisper, x)
    assert parts["phase"].item() < 1e-3


def test_finite_gradients_at_silence():
    loss = DenoiseLoss(RES)
    est = torch.zeros(2, 1, 4000, requires_grad=True)
    total, _ = loss(est, torch.zeros(2, 1, 4000))
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(est.grad).all()


def test_batch_items_are_independent_of_batching():
    torch.manual_seed(0)
    loss = MultiResolutionSTFTLoss(RES)
    x = speechlike(3)
    est = x + 0.1 * torch.randn_like(x)
    per_item = torch.stack([loss(est[i : i + 1], x[i : i + 1])[1]["phase"] for i in range(3)])
    _, batched = loss(est, x)
    assert batched["phase"].item() == pytest.approx(per_item.mean().item(), rel=0.05)


def test_shorter_than_largest_fft_is_padded_not_an_error():
    loss = DenoiseLoss([(2048, 512, 2048)])
    x = torch.randn(2, 1, 300)
    total, _ = loss(x + 0.1, x)
    assert torch.isfinite(total) and total > 0


def test_shape_mismatch_is_clear():
    with pytest.raises(ValueError, match="shape mismatch"):
        DenoiseLoss(RES)(torch.zeros(1, 1, 100), torch.zeros(1, 1, 99))


def test_sisdr_term_is_capped_and_only_present_when_weighted():
    import torch

    from diffdenoise.models.losses import DenoiseLoss, si_sdr

    torch.manual_seed(0)
    clean = torch.randn(2, 1, 4000)
    noisy = clean + 0.3 * torch.randn(2, 1, 4000)
    assert float(si_sdr(clean, clean).max()) == pytest.approx(30.0, abs=0.01)  # capped
    assert float(si_sdr(noisy, clean, max_db=200).mean()) == pytest.approx(10.5, abs=0.5)
    plain = DenoiseLoss([(256, 64, 256)])
    weighted = DenoiseLoss([(256, 64, 256)], sisdr_weight=0.1)
    total, parts = weighted(noisy, clean)
    base, base_parts = plain(noisy, clean)
    assert "neg_sisdr" not in base_parts and "neg_sisdr" in parts
    assert float(total) == pytest.approx(float(base) + 0.1 * float(parts["neg_sisdr"]), rel=1e-5)


def test_a_term_weighted_zero_is_not_computed_and_the_total_is_unchanged():
    torch.manual_seed(0)
    x = speechlike()
    est = x + 0.1 * torch.randn_like(x)
    full = DenoiseLoss(RES, sc_weight=1.0, mag_weight=1.0, phase_weight=1.0)
    no_mag = DenoiseLoss(RES, sc_weight=1.0, mag_weight=0.0, phase_weight=1.0)
    total, parts = full(est, x)
    total_no_mag, parts_no_mag = no_mag(est, x)
    assert "stft_mag" in parts and "stft_mag" not in parts_no_mag
    expected = (parts["stft_sc"] + parts["stft_phase"]) + 1.0 * parts["l1"]
    assert total_no_mag.item() == pytest.approx(expected.item(), rel=1e-6)
    assert total_no_mag.item() < total.item()


def test_value_and_gradient_are_those_of_the_real_and_imaginary_parts():
    """The loss reads a spectrum's parts as unbound views of ``view_as_real`` (their
    gradients meet in one stack, not a zero-fill and copy per use): the value and the
    gradient must be exactly those of the formula written with ``.real`` and ``.imag``."""
    from diffdenoise.models.losses import POWER_EPS

    torch.manual_seed(0)
    x = speechlike()
    est = (x + 0.1 * torch.randn_like(x)).requires_grad_()
    loss = STFTLoss(512, 128, 512, mag_weight=0.0)  # default.yaml's terms
    total, _ = loss(est, x)
    (grad,) = torch.autograd.grad(total, est)

    X, Y = loss.stft(est), loss.stft(x)
    px, py = X.real.square() + X.imag.square(), Y.real.square() + Y.imag.square()
    mx, my = torch.sqrt(px + POWER_EPS), torch.sqrt(py + POWER_EPS)
    sc = torch.linalg.vector_norm(my - mx) / torch.linalg.vector_norm(my).clamp_min(1e-6)
    weight = mx * my
    phase = (weight - (X.real * Y.real + X.imag * Y.imag)).sum() / weight.sum().clamp_min(1e-6)
    (expected_grad,) = torch.autograd.grad(sc + phase, est)
    assert torch.equal(total, sc + phase)
    assert torch.equal(grad, expected_grad)


def test_compressed_term_is_scale_invariant_zero_on_identical_and_added_at_its_weight():
    torch.manual_seed(0)
    x = speechlike()
    est = x + 0.1 * torch.randn_like(x)
    plain = DenoiseLoss(RES)
    weighted = DenoiseLoss(RES, compressed_weight=2.0)
    base, base_parts = plain(est, x)
    total, parts = weighted(est, x)
    assert "stft_compressed" not in base_parts
    compressed = float(parts["stft_compressed"])
    assert compressed > 0.01
    assert float(total) == pytest.approx(float(base) + 2.0 * compressed, rel=1e-5)
    assert float(weighted(x, x)[1]["stft_compressed"]) == pytest.approx(0.0, abs=1e-6)
    # Each example is scaled to unit power first: a louder copy scores the same.
    louder = float(weighted(30 * est, 30 * x)[1]["stft_compressed"])
    assert louder == pytest.approx(compressed, rel=1e-4)
    # It weighs faint errors more than spectral convergence does: against it, white noise
    # 30 dB under the speech costs it twice as much as noise at 0 dB.
    noise = torch.randn_like(x) * x.std() / x.std(-1, keepdim=True).mean()

    def ratio(snr_db):
        p = weighted(x + noise * 10 ** (-snr_db / 20), x)[1]
        return float(p["stft_compressed"]) / float(p["stft_sc"])

    assert ratio(30) > 2 * ratio(0)


def test_compressed_term_has_finite_gradients_at_digital_silence():
    target = speechlike()
    est = torch.zeros_like(target).requires_grad_()
    total, _ = DenoiseLoss(RES, compressed_weight=1.0)(est, target)
    (grad,) = torch.autograd.grad(total, est)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_compressed_term_equals_the_two_compressed_spectra_formed_apart():
    """The term is written through the phase term's products (a third of the launches);
    it must equal 0.7 * |.|^c magnitude MSE + 0.3 * compressed complex MSE, per example
    scaled to unit power, as the A/B that chose it computed them."""
    torch.manual_seed(0)
    x = speechlike(batch=3) * torch.tensor([0.1, 1.0, 7.0]).reshape(3, 1, 1)
    est = x + 0.2 * x.std(-1, keepdim=True) * torch.randn_like(x)
    c = 0.3
    X, Y = STFT(512, 128)(est), STFT(512, 128)(x)
    scale = Y.abs().square().mean((1, 2), keepdim=True)
    Xs, Ys = X / scale.sqrt(), Y / scale.sqrt()
    ax, ay = Xs.abs().clamp_min(1e-9), Ys.abs().clamp_min(1e-9)  # no 0 ** (c - 1)
    magnitude = (ax**c - ay**c).square().mean()
    compressed_complex = (Xs * ax ** (c - 1) - Ys * ay ** (c - 1)).abs().square()
    expected = 0.7 * magnitude + 0.3 * compressed_complex.mean()
    loss = STFTLoss(512, 128, compressed_weight=1.0, compress_power=c)
    assert float(loss(est, x)[1]["compressed"]) == pytest.approx(float(expected), rel=1e-3)
