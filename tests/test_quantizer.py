"""Multi-scale VQ-VAE tokenizer: phi choice, tokenisation, teacher input, conditions, training pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import smooth_images, tiny_models
from stylevar.models import phi_indices


def test_phi_choice_of_the_release_with_its_ties():
    assert phi_indices(10, 4) == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]


@pytest.mark.parametrize("sn,k", [(4, 4), (6, 3), (13, 5), (10, 2), (7, 7), (1, 4)])
def test_phi_choice_follows_vars_nearest_tick_rule(sn, k):
    ticks = np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k) if k == 4 else np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)
    want = [int(np.argmin(np.abs(ticks - si / max(sn - 1, 1)))) for si in range(sn)]
    assert phi_indices(sn, k) == want
    assert phi_indices(sn, 1) == [0] * sn


@pytest.fixture(scope="module")
def tok():
    model, vae = tiny_models(tag="quant", patch_nums=(1, 2, 3, 5))
    return vae


@torch.no_grad()
def test_tokenise_shapes_and_reconstruction_improves_with_scales(tok):
    img = smooth_images(2, tok.config.resolution, 0)
    f = tok.encode_f(img)
    assert f.shape == (2, 4, 5, 5)
    idx = tok.quantize.f_to_idx(f)
    assert [t.shape for t in idx] == [(2, 1), (2, 4), (2, 9), (2, 25)]
    assert all(t.dtype == torch.int64 and 0 <= t.min() and t.max() < tok.config.vocab_size for t in idx)
    fhats = tok.quantize.f_to_fhat(f)
    errs = [(fh - f).pow(2).mean().item() for fh in fhats]
    assert errs[-1] < errs[0]
    # tokens -> f_hat is the same map as the tokeniser's own cumulative reconstruction
    assert torch.allclose(tok.quantize.idx_to_fhat(idx), fhats[-1], atol=1e-5)
    rec = tok.idx_to_img(idx)
    assert rec.shape == img.shape and rec.min() >= -1 and rec.max() <= 1


@torch.no_grad()
def test_teacher_input_and_conditions_are_the_pooled_cumulative_reconstructions(tok):
    import torch.nn.functional as F

    q = tok.quantize
    idx = q.f_to_idx(tok.encode_f(smooth_images(1, tok.config.resolution, 1)))
    fhats = q.f_to_fhat(tok.encode_f(smooth_images(1, tok.config.resolution, 1)))
    pns = q.patch_nums
    teacher = q.idx_to_teacher_input(idx)
    cond = q.idx_to_condition(idx)
    assert teacher.shape == (1, sum(p * p for p in pns) - 1, 4) and cond.shape == (
        1,
        sum(p * p for p in pns),
        4,
    )
    start = 0
    for si, pn in enumerate(pns):
        want_c = fhats[si] if si == len(pns) - 1 else F.interpolate(fhats[si], size=(pn, pn), mode="area")
        assert torch.allclose(cond[:, start : start + pn * pn], want_c.flatten(2).transpose(1, 2), atol=1e-5)
        if si > 0:  # teacher block si = reconstruction through si-1, pooled to scale si
            want_t = F.interpolate(fhats[si - 1], size=(pn, pn), mode="area")
            assert torch.allclose(
                teacher[:, start - 1 : start - 1 + pn * pn], want_t.flatten(2).transpose(1, 2), atol=1e-5
            )
        start += pn * pn


def test_training_pass_has_straight_through_gradients(tok):
    vae = tok.train()
    try:
        img = smooth_images(2, vae.config.resolution, 2).requires_grad_(False)
        rec, vq_loss, hits = vae(img)
        loss = (rec - img).pow(2).mean() + vq_loss
        loss.backward()
        assert vae.encoder.conv_in.weight.grad is not None and vae.encoder.conv_in.weight.grad.abs().sum() > 0
        assert (
            vae.quantize.embedding.weight.grad is not None
            and vae.quantize.embedding.weight.grad.abs().sum() > 0
        )
        assert hits.sum().item() == sum(2 * p * p for p in vae.patch_nums)
    finally:
        vae.zero_grad(set_to_none=True)
        vae.eval()
