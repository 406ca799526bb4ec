"""AdaIN baseline (eval/adain.py): naoto0804's released layout (vgg_normalised + decoder), loaded from
random weights the test saves as .pth files; encoder checked against a by-hand computation."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from helpers import one_thread, rand_images  # noqa: F401  (one_thread: an autouse module fixture)
from stylevar.errors import CheckpointError, ConfigError, MissingWeightsError
from stylevar.eval import adain as A

# the released vgg_normalised: a 1x1 conv, then reflection-padded 3x3 convs; pools after these indices
ENC_CONVS = (0, 2, 5, 9, 12, 16, 19, 22, 25, 29, 32, 35, 38, 42, 45, 48, 51)
ENC_POOLS = (7, 14, 27, 40)
DEC_CONVS = (1, 5, 8, 11, 14, 18, 21, 25, 28)
DEC_UPS = (3, 16, 23)


@pytest.fixture(scope="module")
def weights(adain_dir):
    """A folder with vgg_normalised.pth (all 53 layers, as released) and decoder.pth (conftest)."""
    load = functools.partial(torch.load, weights_only=True)
    return adain_dir, load(adain_dir / A.ENCODER_FILE), load(adain_dir / A.DECODER_FILE)


@pytest.fixture(scope="module")
def model(weights):
    return A.AdaIN(weights[0])


def test_released_layout():
    enc, dec = A.vgg_normalised(), A.adain_decoder()
    assert len(enc) == 53 and len(dec) == 29
    assert [i for i, m in enumerate(enc) if isinstance(m, nn.Conv2d)] == list(ENC_CONVS)
    assert [i for i, m in enumerate(enc) if isinstance(m, nn.MaxPool2d)] == list(ENC_POOLS)
    assert all(enc[i].ceil_mode for i in ENC_POOLS)
    assert enc[0].kernel_size == (1, 1) and (enc[0].in_channels, enc[0].out_channels) == (3, 3)
    assert all(isinstance(enc[i - 1], nn.ReflectionPad2d) for i in ENC_CONVS[1:])
    assert all(enc[i].padding == (0, 0) for i in ENC_CONVS)
    assert isinstance(enc[A.RELU4_1], nn.ReLU) and enc[A.RELU4_1 - 1].out_channels == 512
    assert [i for i, m in enumerate(dec) if isinstance(m, nn.Conv2d)] == list(DEC_CONVS)
    assert [i for i, m in enumerate(dec) if isinstance(m, nn.Upsample)] == list(DEC_UPS)
    assert dec[1].in_channels == 512 and dec[28].out_channels == 3 and isinstance(dec[27], nn.ReflectionPad2d)
    assert {k.split(".")[0] for k in enc.state_dict()} == {str(i) for i in ENC_CONVS}


def test_loads_the_full_released_state_dict(model, weights):
    _, enc_sd, dec_sd = weights
    assert len(model.encoder) == A.RELU4_1 + 1
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, enc_sd[k])
    for k, v in model.decoder.state_dict().items():
        assert torch.equal(v, dec_sd[k])
    assert all(not p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training and not model.encoder.training
    # state dicts instead of files; an encoder truncated after relu4_1 is enough
    head = {k: v for k, v in enc_sd.items() if int(k.split(".")[0]) <= A.RELU4_1}
    x = rand_images(1, 3, 16, 16, seed=1)
    assert torch.equal(A.AdaIN(encoder=head, decoder=dec_sd)(x, x), model(x, x))


def test_bad_state_dicts(weights):
    d, enc_sd, dec_sd = weights
    with pytest.raises(CheckpointError) as e:
        A.AdaIN(encoder={k: v for k, v in enc_sd.items() if k != "29.weight"}, decoder=dec_sd)
    assert "\n" not in str(e.value) and "missing: 29.weight" in str(e.value)
    with pytest.raises(CheckpointError) as e:
        A.AdaIN(encoder={**enc_sd, "53.weight": torch.zeros(1)}, decoder=dec_sd)
    assert "53.weight" in str(e.value)
    with pytest.raises(CheckpointError) as e:  # a later layer of the wrong shape is not silently ignored
        A.AdaIN(encoder={**enc_sd, "51.weight": torch.zeros(3, 3, 3, 3)}, decoder=dec_sd)
    assert "51.weight" in str(e.value)
    with pytest.raises(CheckpointError) as e:
        A.AdaIN(d, decoder={**dec_sd, "28.weight": torch.zeros(3, 64, 1, 1)})
    assert "\n" not in str(e.value) and "28.weight" in str(e.value) and "decoder" in str(e.value)


def test_encoder_equals_a_hand_computation(model, weights):
    """relu4_1 by hand: 1x1 conv, then per conv: reflect pad 1, 3x3 conv, ReLU; ceil-mode 2x2 pools."""
    _, sd, _ = weights
    x = rand_images(2, 3, 27, 21, seed=2)  # not multiples of 8: the ceil-mode pools matter
    h = F.conv2d(x, sd["0.weight"], sd["0.bias"])
    first = F.relu(F.conv2d(F.pad(h, (1, 1, 1, 1), mode="reflect"), sd["2.weight"], sd["2.bias"]))
    assert torch.allclose(model.encoder[:4](x), first, atol=1e-5)
    for i in ENC_CONVS[1:]:
        if i > A.RELU4_1:
            break
        if i - 2 in ENC_POOLS:
            h = F.max_pool2d(h, 2, 2, ceil_mode=True)
        h = F.relu(F.conv2d(F.pad(h, (1, 1, 1, 1), mode="reflect"), sd[f"{i}.weight"], sd[f"{i}.bias"]))
    out = model.encode(x)
    assert out.shape == (2, 512, 4, 3)  # ceil(27/8), ceil(21/8)
    assert torch.allclose(out, h, rtol=1e-4, atol=1e-4 * h.abs().max().item())


def test_adain_transfers_channel_statistics():
    g = torch.Generator().manual_seed(3)
    cf = torch.randn(2, 16, 6, 5, generator=g) * 3 + 1
    sf = torch.randn(2, 16, 9, 7, generator=g) * 0.5 - 2  # another size
    t = A.adaptive_instance_norm(cf, sf)
    n = t.flatten(2)
    # naoto0804's calc_mean_std: torch's default (unbiased) .var + 1e-5
    s_mean, s_std = sf.flatten(2).mean(2), (sf.flatten(2).var(dim=2) + 1e-5).sqrt()
    assert torch.allclose(n.mean(2), s_mean, atol=1e-5)
    assert torch.allclose(n.var(dim=2).sqrt(), s_std, rtol=1e-4)
    biased = A.adaptive_instance_norm(cf, sf, unbiased=False).flatten(2)
    assert torch.allclose(
        biased.var(dim=2, correction=0).sqrt(), (sf.flatten(2).var(2, correction=0) + 1e-5).sqrt(), rtol=1e-4
    )
    assert not torch.allclose(biased, n)
    # a style batch of 1 broadcasts
    one = A.adaptive_instance_norm(cf, sf[:1])
    assert torch.allclose(one[1], A.adaptive_instance_norm(cf[1:], sf[:1])[0])
    with pytest.raises(ValueError):
        A.adaptive_instance_norm(cf, sf[:, :8])


def test_alpha_blends_features(model):
    c, s = rand_images(2, 3, 16, 16, seed=4), rand_images(1, 3, 24, 24, seed=5)
    cf = model.encode(c)
    t = A.adaptive_instance_norm(cf, model.encode(s))
    full, none = model(c, s), model(c, s, alpha=0.0)
    assert torch.allclose(none, model.decode(cf).clamp(0, 1), atol=1e-6)  # alpha 0: decoder(content feats)
    assert torch.allclose(full, model.decode(t).clamp(0, 1), atol=1e-6)
    assert torch.allclose(model(c, s, alpha=0.25), model.decode(0.25 * t + 0.75 * cf).clamp(0, 1), atol=1e-6)
    assert not torch.allclose(full, none, atol=1e-3)
    with pytest.raises(ConfigError):
        model(c, s, alpha=1.5)


def test_coral_matches_mean_and_covariance():
    src = rand_images(2, 3, 20, 30, seed=6) ** 2  # correlated-ish, different statistics from the target
    tgt = rand_images(2, 3, 16, 16, seed=7) * torch.tensor([0.3, 0.8, 0.5]).view(1, 3, 1, 1)
    tgt[:, 1] += 0.2 * tgt[:, 0]
    out = A.coral(src, tgt)
    assert out.shape == src.shape and out.dtype == src.dtype
    for i in range(2):
        o, t = out[i].double().flatten(1), tgt[i].double().flatten(1)
        assert torch.allclose(o.mean(1), t.mean(1), atol=1e-6)
        assert torch.allclose(torch.cov(o), torch.cov(t), atol=1e-5)
    # a batch-1 target broadcasts; a flat source maps to the target's mean colour
    assert torch.allclose(A.coral(src, tgt[:1])[1], A.coral(src[1:], tgt[:1])[0])
    flat = A.coral(torch.full((1, 3, 8, 8), 0.3), tgt[:1])
    assert torch.allclose(flat, tgt[:1].mean(dim=(2, 3), keepdim=True).expand_as(flat), atol=1e-6)


def test_preserve_color_uses_coral_on_the_style(model):
    c, s = rand_images(2, 3, 16, 16, seed=8), rand_images(1, 3, 16, 16, seed=9) * 0.5
    kept = model(c, s, preserve_color=True)
    assert torch.allclose(kept, model(c, A.coral(s.expand(2, -1, -1, -1), c)), atol=1e-6)
    assert not torch.allclose(kept, model(c, s), atol=1e-4)


def test_output_shape_and_range(model):
    s = rand_images(1, 3, 16, 16, seed=11)
    for h, w in ((16, 24), (17, 12), (9, 17)):  # multiples of 8 and not
        out = model(rand_images(1, 3, h, w, seed=h), s)
        assert out.shape == (1, 3, h, w) and out.dtype == torch.float32
        assert out.min() >= 0 and out.max() <= 1
    c = rand_images(3, 3, 16, 16, seed=10).requires_grad_(True)
    out = model(c, s)  # a style batch of 1 broadcasts
    # fp32 rounding: a batch of 1 and a batch of 3 take different conv kernels on some CPUs (AMD EPYC: > 1e-6)
    assert torch.allclose(out, model(c, s.expand(3, -1, -1, -1)), atol=1e-5)
    (g,) = torch.autograd.grad(out.sum(), c)  # differentiable w.r.t. the images
    assert torch.isfinite(g).all()
    with pytest.raises(ValueError, match="at least 9x9"):
        model(rand_images(1, 3, 8, 16), s)
    with pytest.raises(ValueError):
        model(c, rand_images(2, 3, 16, 16))


def test_missing_weights(weights, tmp_path, monkeypatch):
    d, _, dec_sd = weights
    empty = tmp_path / "empty"
    with pytest.raises(MissingWeightsError) as e:
        A.AdaIN(empty)
    msg = str(e.value)
    assert "\n" not in msg
    for needle in (A.ENCODER_FILE, A.DECODER_FILE, A.ENCODER_URL, A.DECODER_URL, str(empty)):
        assert needle in msg
    assert (
        A.ENCODER_URL
        == "https://github.com/naoto0804/pytorch-AdaIN/releases/download/v0.0.0/vgg_normalised.pth"
    )
    assert A.DECODER_URL == "https://github.com/naoto0804/pytorch-AdaIN/releases/download/v0.0.0/decoder.pth"
    assert not empty.exists()  # nothing created, nothing downloaded
    # one part missing: that path is named; an override folder is searched for the file
    with pytest.raises(MissingWeightsError) as e:
        A.AdaIN(d, decoder=tmp_path)
    assert (
        str(tmp_path / A.DECODER_FILE) in str(e.value)
        and str(d / A.ENCODER_FILE) not in str(e.value).split("not found:")[1]
    )
    assert isinstance(A.AdaIN(empty, encoder=d, decoder=dec_sd), A.AdaIN)
    # the default folder: resolve_cache_dir('adain')
    monkeypatch.setenv("STYLEVAR_CACHE", str(tmp_path / "cache"))
    with pytest.raises(MissingWeightsError) as e:
        A.AdaIN()
    assert str(tmp_path / "cache" / "adain") in str(e.value)
