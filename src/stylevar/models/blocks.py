"""Blended cross-attention block, FFN, AdaLN head and the KV cache (docs/upstream.md §3.2, §3.6).

Upstream's block runs one attention module twice (style queries, then content queries), each
time projecting full q/k/v for both the guide and the target and applying the output
projection. The math needs far less, and this module does only that:

* one key/value projection of the target stream ``x`` (the k/v rows of ``mat_qkv_target``);
* one query projection of the guides (the q rows of ``mat_qkv_guide``) for style and content
  together, in a single attention call over the concatenated queries;
* one output projection of the blend, since ``alpha*proj(a) + (1-alpha)*proj(b) =
  proj(alpha*a + (1-alpha)*b)`` for an affine ``proj``;
* the parameter-free LayerNorm of style/content is taken once per forward, not once per block.

Parameter names and shapes stay upstream's, so released checkpoints load with ``strict=True``;
the dead upstream parameters (``q_bias_target``, ``v_bias_guide``, the k/v rows of the guide
projection, the q rows of the target projection) are kept for that reason only.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .ops import Linear, gelu_tanh_, linear


class DropPath(nn.Module):
    """Stochastic depth per sample (timm's semantics, scale by keep)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class FFN(nn.Module):
    def __init__(self, C: int, hidden: int):
        super().__init__()
        self.fc1 = Linear(C, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = Linear(hidden, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if not torch.is_grad_enabled() and h.device.type == "cpu":
            h = gelu_tanh_(h)  # same function, half the time of aten's tanh GELU on the CPU
        else:
            h = self.act(h)
        return self.fc2(h)


class KVCache:
    """Keys/values of the target stream of one block, filled scale by scale during sampling.

    The correct cache holds every key once, so queries of scale k see exactly the keys the
    block-causal training mask allows: sampling reproduces the teacher-forced logits.

    ``legacy=True`` reproduces the published sampler (docs/upstream.md §3.6): upstream appends the
    same keys twice per scale (once per guide call), so its style branch sees earlier scales'
    keys twice and the current scale's once, and its content branch sees every key twice.
    """

    def __init__(self, capacity: int, legacy: bool = False):
        self.capacity = capacity
        self.legacy = legacy
        self.length = 0
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._scales: list[tuple[torch.Tensor, torch.Tensor]] = []

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, H, l, d) keys/values; return all keys/values so far (B, H, length, d)."""
        if self._k is None:
            B, H, _, d = k.shape
            self._k = k.new_empty(B, H, self.capacity, d)
            self._v = v.new_empty(B, H, self.capacity, d)
        assert self._v is not None
        end = self.length + k.shape[2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} > {self.capacity}")
        self._k[:, :, self.length : end] = k
        self._v[:, :, self.length : end] = v
        self.length = end
        return self._k[:, :, :end], self._v[:, :, :end]

    def append_legacy(
        self, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """Upstream's duplicated cache: returns ((k, v) for the style call, (k, v) for the content call)."""
        doubled_k = [t for kk, _ in self._scales for t in (kk, kk)]
        doubled_v = [t for _, vv in self._scales for t in (vv, vv)]
        style = (torch.cat(doubled_k + [k], dim=2), torch.cat(doubled_v + [v], dim=2))
        content = (torch.cat(doubled_k + [k, k], dim=2), torch.cat(doubled_v + [v, v], dim=2))
        self._scales.append((k, v))
        return style, content


class BlendedCrossAttention(nn.Module):
    """Queries from a guide (style or content tokens), keys/values from the target's own tokens."""

    #: int8 copies of the query and key/value weights (:mod:`stylevar.models.quantized`), or None
    q_int8: Any = None
    kv_int8: Any = None

    def __init__(self, C: int, num_heads: int, l2_norm: bool = True):
        super().__init__()
        self.C, self.num_heads, self.head_dim = C, num_heads, C // num_heads
        self.l2_norm = l2_norm
        self.mat_qkv_guide = nn.Linear(C, 3 * C, bias=False)
        self.mat_qkv_target = nn.Linear(C, 3 * C, bias=False)
        self.q_bias_guide = nn.Parameter(torch.zeros(C))
        self.v_bias_guide = nn.Parameter(torch.zeros(C))  # unused upstream too (dead parameter)
        self.q_bias_target = nn.Parameter(torch.zeros(C))  # unused upstream too (dead parameter)
        self.v_bias_target = nn.Parameter(torch.zeros(C))
        self.register_buffer("zero_k_bias_guide", torch.zeros(C))
        self.register_buffer("zero_k_bias_target", torch.zeros(C))
        if l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.proj = Linear(C, C)

    def keys_values(self, x_n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Modulated target tokens (B, L, C) -> keys, values (B, H, L, head_dim)."""
        B, L, C = x_n.shape
        weight = self.kv_int8 if self.kv_int8 is not None else self.mat_qkv_target.weight[C:]
        bias = torch.cat((self.zero_k_bias_target, self.v_bias_target))
        k, v = linear(x_n, weight, bias).view(B, L, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.l2_norm:
            k = F.normalize(k, dim=-1)
        return k, v

    def queries(self, g_n: torch.Tensor) -> torch.Tensor:
        """Modulated guide tokens (B, G, C) -> queries (B, H, G, head_dim), normalised and scaled."""
        B, G, C = g_n.shape
        w = self.q_int8 if self.q_int8 is not None else self.mat_qkv_guide.weight[:C]
        q = linear(g_n, w, self.q_bias_guide)
        q = q.view(B, G, self.num_heads, self.head_dim).transpose(1, 2)
        if self.l2_norm:
            q = F.normalize(q, dim=-1).mul(self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp())
        return q

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """softmax(q k^T * scale + mask) v, heads merged: (B, G, C). In the keys' dtype (bf16 when the
        weights are stored in bf16: the queries' fp32 scaling is cast, as autocast would)."""
        if mask is not None and mask.is_floating_point():
            mask = mask.to(k.dtype)
        o = F.scaled_dot_product_attention(q.to(k.dtype), k, v, attn_mask=mask, scale=self.scale)
        B, _, G, _ = o.shape
        return o.transpose(1, 2).reshape(B, G, self.C)


class StyleTokenAttention(nn.Module):
    """Target tokens attend to the style tokens of a ``clip_resampler`` model (StyleAR's style cross-attention).

    Keys and values come from the LayerNorm'ed style tokens and depend on the style image only, so
    sampling computes them once per call (:meth:`keys_values`); queries from the block's normalised target
    stream. Only models with ``style_encoder="clip_resampler"`` have it (the released state dicts do not).
    """

    def __init__(self, C: int, num_heads: int):
        super().__init__()
        self.C, self.num_heads, self.head_dim = C, num_heads, C // num_heads
        self.q = Linear(C, C)
        self.kv = Linear(C, 2 * C)
        self.proj = Linear(C, C)

    def keys_values(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Style tokens (B, M, C) -> keys, values (B, H, M, head_dim)."""
        B, M, C = tokens.shape
        t = F.layer_norm(tokens, (C,))
        k, v = self.kv(t).view(B, M, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x_n: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Normalised target tokens (B, l, C) and :meth:`keys_values` -> the attention's output (B, l, C)."""
        B, n, C = x_n.shape
        q = self.q(x_n).view(B, n, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = kv
        o = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype))
        return self.proj(o.transpose(1, 2).reshape(B, n, C))


StyleKV = tuple[torch.Tensor, torch.Tensor]


class BlendedBlock(nn.Module):
    """x <- x + alpha * Attn(style, x) + (1 - alpha) * Attn(content, x), then an FFN; AdaLN on the style feature."""

    def __init__(
        self,
        C: int,
        num_heads: int,
        mlp_hidden: int,
        norm_eps: float,
        drop_path: float,
        l2_norm: bool,
        style_tokens: bool = False,
    ):
        super().__init__()
        self.C = C
        self.attn = BlendedCrossAttention(C, num_heads, l2_norm)
        #: cross-attention to the style tokens (``clip_resampler`` models only)
        self.style_attn = StyleTokenAttention(C, num_heads) if style_tokens else None
        self.ffn = FFN(C, mlp_hidden)
        self.ln_wo_grad = nn.LayerNorm(C, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), Linear(C, 6 * C))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def adaln(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """AdaLN parameters (B, 1, 6, C): gamma1, gamma2, scale1, scale2, shift1, shift2 (``forward`` also
        takes per-token ones, (B, l, 6, C))."""
        return self.ada_lin(cond_BD).view(-1, 1, 6, self.C)

    def guide_queries(self, guides_ln: torch.Tensor, ada: torch.Tensor) -> torch.Tensor:
        """Queries (B, H, G, head_dim) of LayerNorm'ed guide tokens (B, G, C), AdaLN-modulated.

        They depend on the style/content images only, never on the target tokens.
        """
        _, _, scale1, _, shift1, _ = ada.unbind(2)
        if scale1.shape[1] > 1 and scale1.shape[1] != guides_ln.shape[1]:
            # per-token AdaLN (regional style): a position's style and content guides share its parameters
            scale1, shift1 = scale1.repeat(1, 2, 1), shift1.repeat(1, 2, 1)
        return self.attn.queries(guides_ln.mul(scale1.add(1)).add_(shift1))

    def forward(
        self,
        x_BLC: torch.Tensor,
        guides_ln: torch.Tensor,
        cond_BD: torch.Tensor,
        alpha: torch.Tensor | float,
        attn_bias: torch.Tensor | None = None,
        cache: KVCache | None = None,
        ada: torch.Tensor | None = None,
        style_kv: StyleKV | list[StyleKV] | None = None,
        style_w: torch.Tensor | None = None,
        style_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One block.

        Args:
            x_BLC: target tokens (B, l, C).
            guides_ln: LayerNorm'ed style tokens then content tokens, concatenated (B, 2l, C).
            cond_BD: style feature (B, C) for AdaLN.
            alpha: style weight, broadcastable to (B, l, 1).
            attn_bias: (1, 1, 2l, L) additive mask for teacher forcing, ``None`` with a cache.
            cache: the block's :class:`KVCache` during sampling.
            ada: ``self.adaln(cond_BD)`` when already computed (sampling computes it once, not per scale).
            style_kv: ``style_attn.keys_values(style tokens)`` (``clip_resampler`` models); with regional
                styles a list (main style first) and ``style_w`` (B, l, 1 + R), each token's weights.
            style_tokens: the style tokens (B, M, C) themselves, projected here (teacher forcing).
        """
        n = x_BLC.shape[1]
        ada = self.adaln(cond_BD) if ada is None else ada
        g1, g2, scale1, scale2, shift1, shift2 = ada.unbind(2)
        x_n = self.ln_wo_grad(x_BLC).mul(scale1.add(1)).add_(shift1)
        k, v = self.attn.keys_values(x_n)
        q = self.guide_queries(guides_ln, ada)
        if cache is not None and cache.legacy:
            (ks, vs), (kc, vc) = cache.append_legacy(k, v)
            o_s = self.attn.attend(q[:, :, :n], ks, vs, None)
            o_c = self.attn.attend(q[:, :, n:], kc, vc, None)
        else:
            if cache is not None:
                k, v = cache.append(k, v)
            o = self.attn.attend(q, k, v, attn_bias)
            o_s, o_c = o[:, :n], o[:, n:]
        blended = o_s * alpha + o_c * (1 - alpha)
        x_BLC = x_BLC + self.drop_path(self.attn.proj(blended).mul_(g1))
        if self.style_attn is not None:
            if style_kv is None and style_tokens is not None:
                style_kv = self.style_attn.keys_values(style_tokens)
            if style_kv is None:
                raise ValueError("this block attends to style tokens: pass style_kv")
            t_n = self.ln_wo_grad(x_BLC)
            if isinstance(style_kv, list):  # regional styles: each token's weighted sum over the styles
                assert style_w is not None
                s = style_w[..., 0:1] * self.style_attn(t_n, style_kv[0])
                for r in range(1, len(style_kv)):
                    s = s + style_w[..., r : r + 1] * self.style_attn(t_n, style_kv[r])
            else:
                s = self.style_attn(t_n, style_kv)
            x_BLC = x_BLC + self.drop_path(s)
        h = self.ffn(self.ln_wo_grad(x_BLC).mul(scale2.add(1)).add_(shift2))
        return x_BLC + self.drop_path(h.mul(g2))


class AdaLNBeforeHead(nn.Module):
    def __init__(self, C: int, D: int, norm_eps: float):
        super().__init__()
        self.C = C
        self.ln_wo_grad = nn.LayerNorm(C, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), Linear(D, 2 * C))

    def adaln(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """AdaLN parameters (B, 1, 2, C): scale, shift."""
        return self.ada_lin(cond_BD).view(-1, 1, 2, self.C)

    def forward(
        self, x_BLC: torch.Tensor, cond_BD: torch.Tensor, ada: torch.Tensor | None = None
    ) -> torch.Tensor:
        scale, shift = (self.adaln(cond_BD) if ada is None else ada).unbind(2)
        return self.ln_wo_grad(x_BLC).mul(scale.add(1)).add_(shift)
