"""StyleVAR transformer: release layout, the fused block against upstream's math, the KV cache, sampling."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.nn import functional as F

from helpers import REPO_ROOT, smooth_images, tiny_models
from stylevar.config import Sampling, StyleVARConfig, VQVAEConfig, d20_configs
from stylevar.models import VQVAE, StyleVAR, filter_logits_, sample_tokens


def _state_dict_manifest():
    return json.loads((REPO_ROOT / "tests" / "fixtures" / "state_dicts_d20.json").read_text())


def test_d20_release_layout_matches_released_checkpoints():
    ref = _state_dict_manifest()
    scfg, vcfg = d20_configs()
    with torch.device("meta"):
        model, vae = StyleVAR(scfg), VQVAE(vcfg)
    for name, module in (("stylevar_d20", model), ("vqvae_ch160v4096z32", vae)):
        got = {k: list(t.shape) for k, t in module.state_dict().items()}
        want = ref[name]
        assert set(got) == set(want), (name, sorted(set(got) ^ set(want))[:5])
        assert got == want, [k for k in got if got[k] != want[k]][:5]
    assert sum(p.numel() for p in model.parameters()) == 721_000_720
    assert model.lvl_1L.dtype == torch.int64 and model.attn_bias_for_masking.dtype == torch.float32


# ------------------------------------------------------------------------------ upstream math, written plainly
def _upstream_block(block, x, style, content, cond, alpha, mask):
    """Upstream's block: full QKV of both streams, attention called twice, two output projections."""
    C, a = block.C, block.attn
    H, hd = a.num_heads, a.head_dim
    g1, g2, s1, s2, sh1, sh2 = block.ada_lin(cond).view(-1, 1, 6, C).unbind(2)
    ln = block.ln_wo_grad

    def mod(t):
        return ln(t) * (1 + s1) + sh1

    def attn(guide, target):
        B, L, _ = guide.shape
        qkv_g = F.linear(
            guide, a.mat_qkv_guide.weight, torch.cat([a.q_bias_guide, a.zero_k_bias_guide, a.v_bias_guide])
        )
        qkv_t = F.linear(
            target,
            a.mat_qkv_target.weight,
            torch.cat([a.q_bias_target, a.zero_k_bias_target, a.v_bias_target]),
        )
        q = qkv_g.view(B, L, 3, H, hd).permute(2, 0, 3, 1, 4)[0]
        _, k, v = qkv_t.view(B, L, 3, H, hd).permute(2, 0, 3, 1, 4).unbind(0)
        if a.l2_norm:
            q = F.normalize(q, dim=-1) * a.scale_mul_1H11.clamp_max(math.log(100)).exp()
            k = F.normalize(k, dim=-1)
            scale = 1.0
        else:
            scale = 0.25 / math.sqrt(hd)
        w = (q @ k.transpose(-1, -2)) * scale + mask
        return a.proj((w.softmax(-1) @ v).transpose(1, 2).reshape(B, L, C))

    xn = mod(x)
    x = x + alpha * (attn(mod(style), xn) * g1) + (1 - alpha) * (attn(mod(content), xn) * g1)
    return x + block.ffn(ln(x) * (1 + s2) + sh2) * g2


def _upstream_inputs(m, x_wo_first, cond):
    """Target, style and content token sequences as the upstream forward builds them."""
    lvl_pos = m.lvl_embed(m.lvl_1L) + m.pos_1LC
    start = cond.content_feat.unsqueeze(1).expand(-1, m.first_l, -1) + m.pos_start
    x = torch.cat((start, m.word_embed(x_wo_first)), 1) + lvl_pos
    return x, m.word_embed(cond.style_cvae) + lvl_pos, m.word_embed(cond.content_cvae) + lvl_pos


def _upstream_forward(m, x_wo_first, cond, alpha_values):
    x, style, content = _upstream_inputs(m, x_wo_first, cond)
    alpha = torch.tensor(alpha_values)[m.lvl_1L[0]].view(1, -1, 1)
    for b in m.blocks:
        x = _upstream_block(b, x, style, content, cond.style_feat, alpha, m.attn_bias_for_masking)
    return m.head(m.head_nm(x, cond.style_feat))


CONFIGS = [
    dict(patch_nums=(1, 2, 3, 4), depth=2, num_heads=2),
    dict(patch_nums=(1, 2, 4), depth=1, num_heads=1, embed_dim=32),
    dict(patch_nums=(1, 3, 5, 8), depth=3, num_heads=4, embed_dim=64, attn_l2_norm=False),
    dict(patch_nums=(2, 3, 4), depth=2, num_heads=2, vocab=32, z=8, share=1, alpha=(0.9, 0.1, 0.5)),
    dict(patch_nums=(1, 2, 3, 5), depth=2, num_heads=2, share=0, mlp_ratio=2.5),
]


@pytest.fixture(scope="module", params=range(len(CONFIGS)), ids=[str(c["patch_nums"]) for c in CONFIGS])
def random_model(request):
    cfg = CONFIGS[request.param]
    model, vae = tiny_models(tag=f"cfg{request.param}", **cfg)
    res = vae.config.resolution
    B = 1 + request.param % 3
    cond = model.conditioning(vae, smooth_images(B, res, 1), smooth_images(B, res, 2))
    return model, vae, cond


@torch.no_grad()
def test_fused_forward_equals_upstream_math(random_model):
    model, vae, cond = random_model
    B = cond.batch_size
    tokens = [
        torch.randint(0, model.V, (B, pn * pn), generator=torch.Generator().manual_seed(pn))
        for pn in model.patch_nums
    ]
    x = vae.quantize.idx_to_teacher_input(tokens)
    ours = model(x, cond)
    ref = _upstream_forward(model, x, cond, model.config.alpha)
    assert (ours - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize(
    "kw",
    [
        dict(seed=0),
        dict(seed="one per sample", top_k=5, top_p=0.8),
        dict(seed=7, temperature=1.7, style_strength=-0.4),
        dict(seed=1, top_p=0.5, alpha=None),
    ],
    ids=["plain", "topk-topp", "temperature-strength", "topp"],
)
@torch.no_grad()
def test_generate_logits_equal_teacher_forced_logits(random_model, kw):
    model, vae, cond = random_model
    kw = dict(kw)
    if kw["seed"] == "one per sample":
        kw["seed"] = [3 + i for i in range(cond.batch_size)]
    seed = kw.pop("seed")
    alpha = kw.pop("alpha", None)
    out = model.generate(vae, cond, Sampling.plain(**kw), seed=seed, alpha=alpha, return_logits=True)
    alpha = model.resolve_alpha(None, kw.get("style_strength", 0.0), cond.batch_size)
    teacher = model(vae.quantize.idx_to_teacher_input(out.tokens), cond, alpha=alpha)
    for si, (bg, ed) in enumerate(model.begin_ends):
        err = (out.logits[si] - teacher[:, bg:ed]).abs().max().item()
        assert err < 1e-4, f"scale {si}: {err:.2e}"
    assert out.images.shape == (cond.batch_size, 3, vae.config.resolution, vae.config.resolution)
    assert 0 <= out.images.min() and out.images.max() <= 1


@torch.no_grad()
def test_per_sample_alpha_matches_single_alpha(tiny):
    model, vae = tiny
    cond = model.conditioning(vae, smooth_images(2, 64, 3), smooth_images(2, 64, 4))
    a = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.9, 0.8, 0.7, 0.6]])
    out = model.generate(vae, cond, seed=[1, 2], alpha=a, return_logits=True)
    solo = model.generate(vae, cond.index_select([1]), seed=[2], alpha=a[1], return_logits=True)
    for s in range(len(model.patch_nums)):
        assert torch.equal(out.tokens[s][1:], solo.tokens[s])
        assert (out.logits[s][1:] - solo.logits[s]).abs().max() < 1e-5


@torch.no_grad()
def test_legacy_cache_is_the_duplicated_cache(tiny):
    """Legacy = style branch sees earlier scales' keys twice: a +ln 2 bias on them (docs/upstream.md §3.6)."""
    model, vae = tiny
    cond = model.conditioning(vae, smooth_images(1, 64, 5), smooth_images(1, 64, 6))
    legacy = model.generate(vae, cond, Sampling.plain(legacy_kv_cache=True), seed=0, return_logits=True)
    teacher = model(vae.quantize.idx_to_teacher_input(legacy.tokens), cond)
    assert (legacy.logits[0] - teacher[:, :1]).abs().max() < 1e-5  # scale 0: nothing earlier to duplicate
    # rebuild the legacy scale-1 logits with an explicit +ln2 bias on scale-0 keys in the style branch
    bias = torch.zeros_like(model.attn_bias_for_masking)
    lvl = model.lvl_1L[0]
    bias[..., lvl.view(-1, 1) > lvl.view(1, -1)] = math.log(2)
    biased = _forward_with_style_bias(model, vae.quantize.idx_to_teacher_input(legacy.tokens), cond, bias)
    for si, (bg, ed) in enumerate(model.begin_ends):
        assert (legacy.logits[si] - biased[:, bg:ed]).abs().max() < 1e-4, si
    assert (
        max((legacy.logits[s] - teacher[:, bg:ed]).abs().max() for s, (bg, ed) in enumerate(model.begin_ends))
        > 1e-3
    )


def _forward_with_style_bias(m, x_wo_first, cond, style_bias):
    """Teacher forcing where the style branch's mask gets ``style_bias`` added (content branch unchanged)."""
    x, style, content = _upstream_inputs(m, x_wo_first, cond)
    alpha = torch.tensor(m.config.alpha)[m.lvl_1L[0]].view(1, -1, 1)
    mask = m.attn_bias_for_masking
    for b in m.blocks:
        x = _blend_block(b, x, style, content, cond.style_feat, alpha, mask + style_bias, mask)
    return m.head(m.head_nm(x, cond.style_feat))


def _blend_block(block, x, style, content, cond, alpha, mask_s, mask_c):
    C, a = block.C, block.attn
    g1, g2, s1, s2, sh1, sh2 = block.ada_lin(cond).view(-1, 1, 6, C).unbind(2)
    ln = block.ln_wo_grad

    def attn(guide, target, mask):
        B, L, _ = guide.shape
        q = a.queries(ln(guide) * (1 + s1) + sh1)
        k, v = a.keys_values(ln(target) * (1 + s1) + sh1)
        w = (q @ k.transpose(-1, -2)) * a.scale + mask
        return a.proj((w.softmax(-1) @ v).transpose(1, 2).reshape(B, L, C))

    x = x + alpha * (attn(style, x, mask_s) * g1) + (1 - alpha) * (attn(content, x, mask_c) * g1)
    return x + block.ffn(ln(x) * (1 + s2) + sh2) * g2


# ------------------------------------------------------------------------------ sampling and seeds
def test_top_k_keeps_ties_and_top_p_keeps_the_nucleus():
    logits = torch.tensor([[[3.0, 2.0, 2.0, 1.0, 0.0]]])
    out = filter_logits_(logits.clone(), top_k=2)
    assert torch.isfinite(out).tolist() == [[[True, True, True, False, False]]]  # tie with the 2nd kept
    p = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().view(1, 1, 4)
    out = filter_logits_(p.clone(), top_p=0.7)  # ascending cumsum .05 .20 .50 1: remove <= 0.3
    assert torch.isfinite(out).tolist() == [[[True, True, False, False]]]
    out = filter_logits_(p.clone(), top_p=0.01)  # the largest always survives
    assert torch.isfinite(out).sum() == 1 and torch.isfinite(out[0, 0, 0])


def test_sampling_respects_filters_and_seed():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 50, 30, generator=g)
    top = logits.topk(3, dim=-1).indices
    idx = sample_tokens(logits.clone(), top_k=3, generator=torch.Generator().manual_seed(1))
    assert (idx.unsqueeze(-1) == top).any(-1).all()
    a = sample_tokens(logits.clone(), generator=torch.Generator().manual_seed(5))
    b = sample_tokens(logits.clone(), generator=torch.Generator().manual_seed(5))
    c = sample_tokens(logits.clone(), generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # near-zero temperature is argmax
    cold = sample_tokens(logits.clone(), temperature=1e-4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(cold, logits.argmax(-1))


@torch.no_grad()
def test_seeds_per_sample_do_not_depend_on_the_batch(tiny):
    model, vae = tiny
    cond = model.conditioning(vae, smooth_images(3, 64, 7), smooth_images(3, 64, 8))
    batch = model.generate(vae, cond, Sampling.plain(top_k=20), seed=[10, 11, 12], decode=False)
    alone = model.generate(vae, cond.index_select([2]), Sampling.plain(top_k=20), seed=[12], decode=False)
    assert all(torch.equal(t[2:], u) for t, u in zip(batch.tokens, alone.tokens))
    as_int = model.generate(vae, cond.index_select([2]), Sampling.plain(top_k=20), seed=12, decode=False)
    assert all(
        torch.equal(t, u) for t, u in zip(as_int.tokens, alone.tokens)
    )  # B=1: int seed == upstream g_seed
    other = model.generate(vae, cond.index_select([2]), Sampling.plain(top_k=20), seed=13, decode=False)
    assert any(not torch.equal(t, u) for t, u in zip(other.tokens, alone.tokens))


def test_style_strength_uses_the_published_mapping(tiny):
    model, _ = tiny
    a = model.resolve_alpha([0.0, 0.5, 0.9, 0.2], style_strength=0.4)
    assert torch.allclose(a, torch.tensor([[0.2, 0.7, 0.99, 0.4]]))
    assert torch.allclose(model.resolve_alpha([0.3] * 4, style_strength=-1.0), torch.full((1, 4), 0.01))
    assert torch.equal(
        model.resolve_alpha([0.0, 1.0, 0.5, 0.5]), torch.tensor([[0.0, 1.0, 0.5, 0.5]])
    )  # s = 0: untouched
    with pytest.raises(ValueError):
        model.resolve_alpha([0.1, 0.2])


@torch.no_grad()
def test_alpha_and_strength_change_the_output(tiny):
    model, vae = tiny
    cond = model.conditioning(vae, smooth_images(1, 64, 9), smooth_images(1, 64, 10))
    base = model.generate(vae, cond, seed=3, return_logits=True, decode=False)
    strong = model.generate(
        vae, cond, Sampling.plain(style_strength=0.8), seed=3, return_logits=True, decode=False
    )
    assert (base.logits[-1] - strong.logits[-1]).abs().max() > 1e-3


def test_config_validation():
    from stylevar.errors import ConfigError

    with pytest.raises(ConfigError):
        StyleVARConfig(depth=2, embed_dim=30, num_heads=4)
    with pytest.raises(ConfigError):
        StyleVARConfig(patch_nums=(1, 3, 2))
    with pytest.raises(ConfigError):
        StyleVARConfig(patch_nums=(1, 2), alpha=(0.1, 0.2, 0.3))
    with pytest.raises(ConfigError):
        VQVAEConfig(ch=40)
    with pytest.raises(ConfigError, match="multiple of 8"):
        StyleVARConfig(style_enc_dim=100)
    cfg = StyleVARConfig(patch_nums=(1, 2, 4, 8))  # a ten-scale preset resampled to four scales
    assert len(cfg.alpha) == 4 and cfg.alpha[0] == 0.2 and cfg.alpha[-1] == 0.8


@torch.no_grad()
def test_narrow_encoders_are_resnet18_scaled():
    """The narrow builder at width 64 is torchvision's ResNet-18 (same keys, shapes and function);
    narrower ones keep the keys with every stage scaled, and the model loads them from a state dict."""
    from torchvision.models import resnet18

    from stylevar.models.encoders import ResNetEncoder, _narrow_resnet18

    full = ResNetEncoder().eval()
    same = _narrow_resnet18(64).eval()
    assert {k: v.shape for k, v in same.state_dict().items()} == {
        k: v.shape for k, v in full.state_dict().items()
    }
    tv = resnet18(weights=None).eval()
    same.load_state_dict(dict(zip(same.state_dict(), tv.state_dict().values())))  # torchvision order
    x = smooth_images(2, 64, 0)
    tv.fc = torch.nn.Identity()
    torch.testing.assert_close(same(x).flatten(1), tv(x))
    narrow = ResNetEncoder(32)
    shapes = {k: v.shape for k, v in narrow.state_dict().items()}
    assert shapes.keys() == full.state_dict().keys()
    assert shapes["0.weight"] == (4, 3, 7, 7) and shapes["7.1.conv2.weight"] == (32, 32, 3, 3)
    assert narrow(x).shape == (2, 32)
    model, _ = tiny_models(style_enc_dim=32)
    assert model.config.style_enc_dim == 32 and model.feat_emb.in_features == 32
    assert sum(p.numel() for p in model.style_encoder.parameters()) < 50_000


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@torch.no_grad()
def test_cuda_generation_matches_teacher_forcing_and_reproduces(tiny):
    import copy

    model, vae = (copy.deepcopy(m).cuda() for m in tiny)
    cond = model.conditioning(vae, smooth_images(2, 64, 11).cuda(), smooth_images(2, 64, 12).cuda())
    out = model.generate(vae, cond, Sampling.plain(top_k=30, top_p=0.9), seed=[3, 4], return_logits=True)
    teacher = model(vae.quantize.idx_to_teacher_input(out.tokens), cond)
    for si, (bg, ed) in enumerate(model.begin_ends):
        assert (out.logits[si] - teacher[:, bg:ed]).abs().max().item() < 1e-4, si
    again = model.generate(vae, cond, Sampling.plain(top_k=30, top_p=0.9), seed=[3, 4])
    assert all(torch.equal(a, b) for a, b in zip(out.tokens, again.tokens)) and torch.equal(
        out.images, again.images
    )
    other = model.generate(vae, cond, Sampling.plain(top_k=30, top_p=0.9), seed=[5, 6])
    assert any(not torch.equal(a, b) for a, b in zip(out.tokens, other.tokens))
    legacy = model.generate(vae, cond, Sampling.plain(legacy_kv_cache=True), seed=7)
    assert legacy.images.is_cuda and legacy.images.shape == (2, 3, 64, 64)


@torch.no_grad()
def test_content_residual_pathway(tmp_path):
    """content_residual=True: sampling still reproduces teacher forcing, the published-style reference
    sampler agrees, the content's tokens reach the logits at every scale, and the option survives
    saving and is recognised from a bare state dict (the released layout has no such key)."""
    from stylevar.io import load_pretrained, save_pretrained
    from stylevar.io.state import infer_stylevar_config
    from stylevar.models.reference import reference_generate

    model, vae = tiny_models(tag="content-residual", content_residual=True)
    assert model.content_embed is not None and "content_embed.weight" in model.state_dict()
    cond = model.conditioning(vae, smooth_images(2, 64, 1), smooth_images(2, 64, 2))
    out = model.generate(vae, cond, seed=[1, 2], return_logits=True)
    teacher = model(vae.quantize.idx_to_teacher_input(out.tokens), cond)
    for si, (bg, ed) in enumerate(model.begin_ends):
        assert (out.logits[si] - teacher[:, bg:ed]).abs().max().item() < 1e-4
    ref = reference_generate(model, vae, cond, seed=[1, 2], return_logits=True, legacy_kv_cache=False)
    assert all(torch.equal(a, b) for a, b in zip(ref.tokens, out.tokens))
    assert all((a - b).abs().max() < 1e-4 for a, b in zip(ref.logits, out.logits))
    # without the pathway the same weights give other logits: the content tokens are really added
    other = model.content_input(cond)
    model.content_embed.weight.zero_(), model.content_embed.bias.zero_()
    assert other.abs().max() > 0
    assert (model(vae.quantize.idx_to_teacher_input(out.tokens), cond) - teacher).abs().max() > 1e-3
    assert infer_stylevar_config(model.state_dict()).content_residual
    plain, _ = tiny_models(tag="plain")
    assert not infer_stylevar_config(plain.state_dict()).content_residual and plain.content_embed is None
    save_pretrained(tmp_path / "m", model, vae)
    back = load_pretrained(tmp_path / "m").model
    assert back.config.content_residual and torch.equal(back.content_embed.weight, model.content_embed.weight)
