import pytest
import torch

from diffdenoise.models.blocks import sinusoidal_embedding
from diffdenoise.models.factory import count_parameters, gflops_per_second
from diffdenoise.models.unet import AudioDiffusionModel

SMALL = dict(depth=3, channels=8, kernel_size=8, stride=4, time_dim=16)


def test_sinusoidal_embedding_values():
    emb = sinusoidal_embedding(torch.tensor([0, 5]), 8)
    assert emb.shape == (2, 8)
    assert torch.allclose(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))  # sin 0, cos 0
    assert torch.allclose(emb[1, 0], torch.sin(torch.tensor(5.0)))
    assert not torch.allclose(emb[0], emb[1])


@pytest.mark.parametrize("length", [1, 2, 7, 97, 257, 1009, 4097])
@pytest.mark.parametrize("variant", ["unet", "plain", "concat", "mask"])
def test_any_length_returns_same_length(length, variant):
    kw = dict(SMALL)
    if variant == "plain":
        kw.update(skips=False, output="direct", normalize=False, kernel_size=15, stride=2)
    elif variant == "concat":
        kw.update(skip_mode="concat")
    elif variant == "mask":
        kw.update(output="mask")
    model = AudioDiffusionModel(**kw)
    for batch in (1, 3):
        y = model(torch.randn(batch, 1, length), torch.randint(0, 1000, (batch,)))
        assert y.shape == (batch, 1, length)
        assert torch.isfinite(y).all()


def test_valid_length_is_exact_for_strides():
    model = AudioDiffusionModel(**SMALL)
    for n in (1, 100, 8000):
        v = model.valid_length(n)
        assert v >= n and model.valid_length(v) == v


def test_residual_model_starts_as_identity():
    """An untrained residual network passes audio through: it does no harm at step 0."""
    model = AudioDiffusionModel(**SMALL, output="residual")
    x = torch.randn(2, 1, 3000)
    assert torch.allclose(model(x), x, atol=1e-5)


def test_timestep_changes_output_once_trained_weights_are_nonzero():
    torch.manual_seed(1)
    model = AudioDiffusionModel(**SMALL, output="direct")
    for p in model.parameters():  # FiLM starts at zero; give it weights to condition with
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(1, 1, 512)
    y0 = model(x, torch.tensor([0]))
    y1 = model(x, torch.tensor([500]))
    assert not torch.allclose(y0, y1)


def test_plain_model_has_no_skip_modules_and_dropout_present():
    plain = AudioDiffusionModel(**SMALL, skips=False, dropout=0.1)
    assert len(plain.enc_film) == 0 and len(plain.dec_film) == 0
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.1 for m in plain.modules())
    assert any(isinstance(m, torch.nn.ConvTranspose1d) for m in plain.modules())


def test_gradients_flow_and_are_finite():
    model = AudioDiffusionModel(**SMALL, output="direct")
    y = model(torch.randn(2, 1, 1000), torch.tensor([3, 7]))
    y.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_cost_helpers():
    model = AudioDiffusionModel(**SMALL)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    g16, g48 = gflops_per_second(model, 16000), gflops_per_second(model, 48000)
    assert 0 < g16 < g48
    assert g48 == pytest.approx(3 * g16, rel=0.1)  # convolution cost scales with rate


def test_bad_shapes_are_rejected():
    model = AudioDiffusionModel(**SMALL)
    with pytest.raises(ValueError, match=r"\(batch, 1, time\)"):
        model(torch.randn(2, 100))
    with pytest.raises(ValueError, match="smaller than its stride"):
        AudioDiffusionModel(depth=1, kernel_size=2, stride=4)
