"""The pure pieces of the GRPO objective (stylevar.training.grpo_loss), checked against their formulas."""

from __future__ import annotations

import math

import pytest
import torch

from stylevar.config import DEFAULT_PATCH_NUMS
from stylevar.models.sampling import filter_logits_
from stylevar.training.grpo_loss import (
    clipped_surrogate,
    group_advantages,
    grpo_loss,
    k3_kl,
    keep_mask,
    pack_mask,
    panw_weights,
    relevance_token_weights,
    scale_mask,
    soft_value,
    token_logprobs,
    unpack_mask,
)


def test_group_advantages_zero_mean_unit_std_and_floor():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(5, 8, generator=g) * 3 + torch.arange(5).view(5, 1) * 10
    a = group_advantages(r)
    assert torch.allclose(a.mean(1), torch.zeros(5), atol=1e-6)
    assert torch.allclose(a.std(1), torch.ones(5), atol=1e-4)
    # equal rewards: no signal, and a near-constant group is not blown up past the floor
    flat = torch.full((1, 4), 2.0)
    assert torch.equal(group_advantages(flat), torch.zeros(1, 4))
    tiny = torch.tensor([[0.0, 1e-6, 0.0, -1e-6]])
    assert group_advantages(tiny).abs().max() < 1e-4  # divided by the 0.01 floor, not by ~1e-6
    # upstream's formula exactly: (R - mu) / (max(std, 0.01) + 1e-8), unbiased std
    r2 = torch.tensor([[1.0, 2.0, 4.0]])
    mu, sd = r2.mean(), r2.std(unbiased=True)
    assert torch.allclose(group_advantages(r2), (r2 - mu) / (sd + 1e-8))


def test_panw_weights_equal_table_1_of_the_paper():
    w = panw_weights(DEFAULT_PATCH_NUMS, 0.7)
    assert w.shape == (680,)
    assert math.isclose(w.sum().item(), 1.0, rel_tol=1e-6)
    per_scale, start = [], 0
    for pn in DEFAULT_PATCH_NUMS:
        block = w[start : start + pn * pn]
        assert torch.allclose(block, block[0].expand_as(block))  # one weight per scale
        per_scale.append(block[0].item())
        start += pn * pn
    table_1 = [3.37, 1.28, 0.72, 0.48, 0.35, 0.27, 0.18, 0.13, 0.09, 0.07]  # x1e-2, the paper's Table 1
    assert [round(v * 100, 2) for v in per_scale] == table_1
    spec = [0.03367, 0.01276, 0.00723, 0.00483, 0.00354, 0.00274, 0.00183, 0.00134, 0.00093, 0.00069]
    assert [round(v, 5) for v in per_scale] == spec  # docs/upstream.md §6.4, five digits
    assert math.isclose(per_scale[0] / per_scale[-1], 256**0.7, rel_tol=1e-5)  # 48.5x, not "~60x"
    assert torch.allclose(panw_weights(DEFAULT_PATCH_NUMS, 0.0), torch.full((680,), 1 / 680))


def test_k3_kl_directions_match_their_expectations_exactly():
    g = torch.Generator().manual_seed(1)
    pi = torch.randn(50, generator=g).log_softmax(0)
    ref = (torch.randn(50, generator=g) * 0.7).log_softmax(0)
    p = pi.exp()
    # E_{x~pi}[k3] computed exactly by summing over the vocabulary
    e_deepseek = (p * k3_kl(pi, ref, "ref/policy")).sum()
    kl = (p * (pi - ref)).sum()
    assert torch.allclose(e_deepseek, kl, atol=1e-6)  # unbiased KL(pi || ref)
    e_upstream = (p * k3_kl(pi, ref, "policy/ref")).sum()
    chi = (p * p / ref.exp()).sum() - 1 - kl  # what the published direction estimates (docs/upstream.md B5)
    assert torch.allclose(e_upstream, chi, atol=1e-5)
    assert not torch.allclose(e_upstream, kl, atol=1e-3)
    for d in ("ref/policy", "policy/ref"):
        v = k3_kl(pi, ref, d)
        assert (v >= 0).all()
        assert torch.equal(k3_kl(pi, pi, d), torch.zeros(50))
    # formula per token, and the clamp keeps extreme log-ratios finite
    a, b = torch.tensor([-1.0]), torch.tensor([-2.0])
    assert torch.allclose(k3_kl(a, b), torch.exp(b - a) - (b - a) - 1)
    assert torch.isfinite(k3_kl(torch.tensor([0.0]), torch.tensor([-1e4])))
    with pytest.raises(ValueError):
        k3_kl(a, b, "sideways")


def test_clipped_surrogate_values_and_gradients():
    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.0, 1.5, 0.5, 1.5])).requires_grad_(True)
    adv = torch.tensor([2.0, 1.0, -1.0, -1.0])
    loss, ratio, clipped = clipped_surrogate(logp, old, adv, clip_eps=0.2)
    # ratio 1: -A; ratio 1.5, A>0: clipped at 1.2; ratio 0.5, A<0: clipped at 0.8; ratio 1.5, A<0: unclipped
    expected = torch.tensor([-2.0, -1.2, 0.8, 1.5])
    assert torch.allclose(loss, expected, atol=1e-6)
    assert torch.allclose(ratio, torch.tensor([1.0, 1.5, 0.5, 1.5]), atol=1e-6)
    assert clipped.tolist() == [False, True, True, False]
    loss.sum().backward()
    assert logp.grad[1] == 0 and logp.grad[2] == 0  # clipped: no gradient
    assert torch.allclose(logp.grad[[0, 3]], torch.tensor([-2.0, 1.5]))  # d(-r A)/dlogp = -r A


def test_token_logprobs_full_and_sampled():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 6, 40, generator=g) * 2
    tokens = torch.randint(0, 40, (2, 6), generator=g)
    full = token_logprobs(logits, tokens)
    assert torch.allclose(full, logits.log_softmax(-1).gather(-1, tokens[..., None])[..., 0])
    keep = keep_mask(logits, top_k=10, top_p=0.9, temperature=0.7)
    # the keep set is exactly what the sampler draws from
    ref = torch.isfinite(filter_logits_(logits.clone() / 0.7, 10, 0.9))
    assert torch.equal(keep, ref)
    assert (keep.sum(-1) <= 10).all() and (keep.sum(-1) >= 1).all()
    z = (logits / 0.7).masked_fill(~keep, -torch.inf).log_softmax(-1)
    drawn = torch.multinomial(z.exp().view(-1, 40), 1, generator=g).view(2, 6)  # seeded: no global RNG
    lp = token_logprobs(logits, drawn, dist="sampled", temperature=0.7, keep=keep)
    assert torch.allclose(lp, z.gather(-1, drawn[..., None])[..., 0])
    # renormalised over a subset: never less likely than under the whole tempered softmax, token by token
    tempered = (logits / 0.7).log_softmax(-1).gather(-1, drawn[..., None])[..., 0]
    assert (lp >= tempered).all()
    # the probabilities over the kept set sum to 1
    all_v = torch.arange(40).view(1, 1, 40).expand(2, 6, 40)
    probs = torch.stack(
        [
            token_logprobs(logits, all_v[..., v], dist="sampled", temperature=0.7, keep=keep)
            for v in range(40)
        ],
        -1,
    )
    probs = torch.where(keep, probs.exp(), torch.zeros(()))
    assert torch.allclose(probs.sum(-1), torch.ones(2, 6), atol=1e-5)
    with pytest.raises(ValueError):
        token_logprobs(logits, tokens, dist="sampled")


@pytest.mark.parametrize("V", [64, 37])
def test_pack_mask_round_trip(V):
    g = torch.Generator().manual_seed(V)
    m = torch.rand(3, 5, V, generator=g) > 0.6
    packed = pack_mask(m)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 5, (V + 7) // 8)
    assert torch.equal(unpack_mask(packed, V), m)


def test_grpo_loss_drops_a_spiking_rollout_alone():
    g = torch.Generator().manual_seed(3)
    N, L = 4, 14
    w = panw_weights((1, 2, 3), 0.7)
    old = torch.randn(N, L, generator=g).clamp_max(-0.1)
    ref = old + 0.05 * torch.randn(N, L, generator=g)
    ref[2] = old[2] - 8.0  # rollout 2 has drifted far from the reference
    adv = torch.tensor([1.0, -0.5, 2.0, -1.5])

    def run(rows, spike):
        lp = old.clone().requires_grad_(True)
        out = grpo_loss(lp[rows], old[rows], ref[rows], adv[rows], w, beta=0.1, kl_spike=spike, normaliser=N)
        out.loss.backward()
        return out, lp.grad

    out, grad = run([0, 1, 2, 3], 5.0)
    assert out.kept.tolist() == [True, True, False, True]
    assert out.kl_raw[2] > 5.0 and (out.kl_raw[[0, 1, 3]] < 5.0).all()
    _, grad_without = run([0, 1, 3], 5.0)
    assert torch.equal(grad[2], torch.zeros(L))
    assert torch.allclose(
        grad[[0, 1, 3]], grad_without[[0, 1, 3]] if grad_without.shape[0] == N else grad_without
    )
    # upstream (docs/upstream.md B6) would have zeroed rollouts 0 and 1 too; here they still train
    assert grad[0].abs().sum() > 0 and grad[1].abs().sum() > 0
    # with the guard off every rollout counts
    out_all, _ = run([0, 1, 2, 3], 0.0)
    assert out_all.kept.all()
    # a non-finite rollout is dropped without poisoning the rest
    lp = old.clone()
    lp[1, 3] = float("nan")
    lp.requires_grad_(True)
    out_nan = grpo_loss(lp, old, ref, adv, w, kl_spike=0.0)
    out_nan.loss.backward()
    assert out_nan.kept.tolist() == [True, False, True, True]
    assert torch.isfinite(out_nan.loss) and torch.isfinite(lp.grad[[0, 2, 3]]).all()


def test_grpo_loss_is_the_weighted_sum_of_its_terms():
    g = torch.Generator().manual_seed(4)
    N, L = 3, 5
    w = torch.softmax(torch.randn(L, generator=g), 0)
    old = -torch.rand(N, L, generator=g)
    lp = old + 0.1 * torch.randn(N, L, generator=g)
    ref = old + 0.1 * torch.randn(N, L, generator=g)
    adv = torch.randn(N, generator=g)
    out = grpo_loss(lp, old, ref, adv, w, beta=0.3, clip_eps=0.2, kl_spike=0.0)
    ratio = torch.exp(lp - old)
    pg = -torch.minimum(ratio * adv[:, None], ratio.clamp(0.8, 1.2) * adv[:, None])
    d = ref - lp
    kl = torch.exp(d) - d - 1
    expected = ((pg + 0.3 * kl) * w).sum(1).mean()
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert math.isclose(out.kl, (0.3 * (kl * w).sum(1)).mean().item(), rel_tol=1e-5)
    # at the first pass (new == old) the ratio is 1 and nothing is clipped
    first = grpo_loss(old, old, ref, adv, w)
    assert first.clip_frac == 0 and first.ratio_mean == pytest.approx(1.0)


def test_relevance_token_weights_follow_the_map_within_each_scale():
    pns = (1, 2, 4)
    rel = torch.zeros(2, 16, 16)
    rel[0, :8, :8] = 1.0  # image 0: only its top-left quadrant matters
    rel[1] = 1.0  # image 1: uniform
    m = relevance_token_weights(rel, pns, mix=1.0)
    assert m.shape == (2, 21)
    assert torch.allclose(m[1], torch.ones(21))
    start = 0
    for pn in pns:
        block = m[0, start : start + pn * pn].view(pn, pn)
        assert torch.allclose(block.mean(), torch.tensor(1.0))  # a scale keeps its total weight
        start += pn * pn
    b2 = m[0, 1:5].view(2, 2)
    assert b2[0, 0] == pytest.approx(4.0) and b2[1, 1] == 0
    half = relevance_token_weights(rel, pns, mix=0.5)
    assert torch.allclose(half, 0.5 + 0.5 * m)
    assert torch.allclose(relevance_token_weights(torch.zeros(1, 8, 8), pns), torch.ones(1, 21))


def test_scale_mask_and_soft_value():
    mask = scale_mask((1, 2, 3), range(1))
    assert mask.tolist() == [1.0] + [0.0] * 13
    r = torch.tensor([[0.0, 1.0, 2.0, 5.0]])
    assert soft_value(r).item() == pytest.approx(2.0)
    assert soft_value(r, tau=1e3).item() == pytest.approx(2.0, abs=1e-2)
    assert soft_value(r, tau=1e-3).item() == pytest.approx(5.0 - 1e-3 * math.log(4), abs=1e-3)
    assert soft_value(r, 1.0).item() > 2.0
