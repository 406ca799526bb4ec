"""The published sampler's computation, written plainly: the straightforward path.

Upstream's block (docs/upstream.md §3.2) calls one attention module twice per block, once with
style queries and once with content queries; each call projects full q/k/v of both the guide
and the target stream and applies the output projection, and in sampling each call appends the
target's keys to the KV cache (docs/upstream.md §3.6), so every key is cached twice. That is 22 C^2
multiply-adds per token and block where the math needs 13 C^2 (:mod:`stylevar.models.blocks`).

:func:`reference_generate` runs that computation with the same sampling code as
:meth:`StyleVAR.generate`. It exists to measure what the fused path saves
(``benchmarks/bench_generate.py``) and to check the fast paths against it (tests): with
``legacy_kv_cache=True`` (the published cache) it produces the published tokens; with ``False``
each key is cached once and it produces the teacher-forced model's tokens.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .blocks import BlendedBlock
from .sampling import Seed, make_generators, sample_tokens
from .stylevar import AlphaLike, Conditioning, GenerationOutput, StyleVAR
from .vqvae import VQVAE


def _full_qkv(linear_weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, H: int, hd: int):
    B, L, _ = x.shape
    return F.linear(x, linear_weight, bias).view(B, L, 3, H, hd).permute(2, 0, 3, 1, 4).unbind(0)


def reference_block_step(
    block: BlendedBlock,
    x: torch.Tensor,
    style: torch.Tensor,
    content: torch.Tensor,
    cond_BD: torch.Tensor,
    alpha: torch.Tensor,
    cache: list[tuple[torch.Tensor, torch.Tensor]],
    legacy: bool,
) -> torch.Tensor:
    """One block for one scale of sampling, as upstream computes it.

    ``x``, ``style``, ``content``: this scale's target/style/content tokens (B, n, C);
    ``cache``: this block's list of cached (k, v), appended to in place.
    """
    a = block.attn
    C, H, hd = block.C, a.num_heads, a.head_dim
    g1, g2, s1, s2, sh1, sh2 = block.ada_lin(cond_BD).view(-1, 1, 6, C).unbind(2)
    ln = block.ln_wo_grad

    def mod(t: torch.Tensor) -> torch.Tensor:
        return ln(t) * (1 + s1) + sh1

    guide_bias = torch.cat((a.q_bias_guide, a.zero_k_bias_guide, a.v_bias_guide))
    target_bias = torch.cat((a.q_bias_target, a.zero_k_bias_target, a.v_bias_target))
    scale_mul = a.scale_mul_1H11.clamp_max(a.max_scale_mul).exp() if a.l2_norm else None

    def attn(guide: torch.Tensor, target: torch.Tensor, first_call: bool) -> torch.Tensor:
        B, n, _ = guide.shape
        q, _, _ = _full_qkv(a.mat_qkv_guide.weight, guide_bias, guide, H, hd)  # guide k, v: computed, unused
        _, k, v = _full_qkv(a.mat_qkv_target.weight, target_bias, target, H, hd)  # target q: computed, unused
        if a.l2_norm:
            q, k = F.normalize(q, dim=-1) * scale_mul, F.normalize(k, dim=-1)
        if legacy or first_call:
            cache.append((k, v))
        ks = torch.cat([kk for kk, _ in cache], dim=2)
        vs = torch.cat([vv for _, vv in cache], dim=2)
        o = F.scaled_dot_product_attention(q, ks, vs, scale=a.scale)
        return a.proj(o.transpose(1, 2).reshape(B, n, C))

    xn = mod(x)
    x = x + alpha * (attn(mod(style), xn, True) * g1) + (1 - alpha) * (attn(mod(content), xn, False) * g1)
    return x + block.ffn(ln(x) * (1 + s2) + sh2) * g2


@torch.no_grad()
def reference_generate(
    model: StyleVAR,
    vae: VQVAE,
    cond: Conditioning,
    *,
    seed: Seed = None,
    top_k: int = 0,
    top_p: float = 0.0,
    temperature: float = 1.0,
    alpha: AlphaLike = None,
    style_strength: float = 0.0,
    legacy_kv_cache: bool = True,
    return_logits: bool = False,
    decode: bool = True,
) -> GenerationOutput:
    """:meth:`StyleVAR.generate` computed the published way (see the module docstring)."""
    if model.has_style_tokens:
        raise ValueError(
            "the published sampler has no style tokens: a clip_resampler model samples with generate"
        )
    B = cond.batch_size
    device = cond.style_feat.device
    alphas = model.resolve_alpha(alpha, style_strength, B)
    gens = make_generators(seed, B, device)
    lvl_pos = model.lvl_embed(model.lvl_1L) + model.pos_1LC
    cond_BD = cond.style_feat
    style_BLC = model.word_embed(cond.style_cvae) + lvl_pos
    content_BLC = model.word_embed(cond.content_cvae) + lvl_pos
    content_in = model.content_input(cond)
    if content_in is not None:
        lvl_pos = lvl_pos + content_in
    caches: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in model.blocks]
    side = model.patch_nums[-1]
    f_hat = torch.zeros(B, model.Cvae, side, side, device=device)
    x = (
        cond.content_feat.unsqueeze(1).expand(B, model.first_l, -1)
        + model.pos_start
        + lvl_pos[:, : model.first_l]
    )
    tokens, all_logits = [], []
    for si, pn in enumerate(model.patch_nums):
        bg, ed = model.begin_ends[si]
        a = alphas[:, si].view(B, 1, 1)
        for block, cache in zip(model.blocks, caches):
            x = reference_block_step(
                block, x, style_BLC[:, bg:ed], content_BLC[:, bg:ed], cond_BD, a, cache, legacy_kv_cache
            )
        logits = model.head(model.head_nm(x, cond_BD)).float()
        if return_logits:
            all_logits.append(logits.clone())  # sample_tokens filters in place
        idx_Bl = sample_tokens(logits, top_k=top_k, top_p=top_p, temperature=temperature, generator=gens)
        tokens.append(idx_Bl)
        f_hat, next_map = vae.quantize.next_input(si, f_hat, vae.quantize.idx_to_h(idx_Bl, pn))
        if si != len(model.patch_nums) - 1:
            nb, ne = model.begin_ends[si + 1]
            x = model.word_embed(next_map.reshape(B, model.Cvae, -1).transpose(1, 2)) + lvl_pos[:, nb:ne]
    images = vae.fhat_to_img(f_hat).add_(1).mul_(0.5) if decode else f_hat.new_empty(0)
    return GenerationOutput(
        images=images, tokens=tokens, f_hat=f_hat, logits=all_logits if return_logits else None
    )
