"""The StyleVAR transformer: teacher-forced forward and scale-by-scale generation.

Likelihood: P(x | style, content) = prod_k P(r_k | r_<k, s_k, c_k), where r_k are the target's
tokens of scale k and s_k, c_k the style/content images' cumulative VQ features at scale k.

* The content image's ResNet-18 feature (through ``feat_emb``) is the start token.
* The style image's ResNet-18 feature (through the same ``feat_emb``) conditions AdaLN in every
  block and in the head. With ``style_encoder="clip_resampler"`` (not in the published model) the
  style image becomes M tokens (:mod:`stylevar.models.style_encoders`) that every block attends to
  and whose mean conditions AdaLN.
* In every block, style and content tokens of scale k query the target's own history (keys and
  values of scales <= k) and the two results are blended with alpha_k.

State-dict keys and shapes are upstream's (``StyleVAR_SFT.pth`` / ``StyleVAR-GRPO.pth``). The
VQ-VAE is not a submodule (as upstream): pass it to the methods that need it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..config import PLAIN, Sampling, StyleVARConfig
from ..errors import ConfigError
from .blocks import AdaLNBeforeHead, BlendedBlock, KVCache, StyleKV
from .encoders import ResNetEncoder
from .graphs import StaticRunner
from .ops import Linear, autocast_to, linear, no_autocast, parse_dtype, stored_input
from .sampling import Seed, make_generators, sample_tokens
from .style_encoders import build_style_encoder
from .vqvae import VQVAE

AlphaLike = Sequence[float] | torch.Tensor | None
#: the content end of alpha: where ``style_strength`` clamps and where a black mask moves a token
ALPHA_CONTENT_END = 0.01
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Conditioning:
    """Everything the transformer needs from a batch of (style, content) image pairs.

    Computing it costs two VQ-VAE encodes and two ResNet-18s per pair; it is independent of the
    sampled tokens, so compute it once and reuse it (several samples, many seeds, GRPO groups).
    """

    #: (B, C) ``feat_emb(ResNet(style))``, the AdaLN condition; or, for a ``clip_resampler`` model, the
    #: style tokens (B, M, C) -- (B, M + L, C) with ``style_vq_tokens`` --, which the blocks attend to and
    #: whose mean is the AdaLN condition
    style_feat: torch.Tensor
    content_feat: torch.Tensor  #: (B, C) ``feat_emb(ResNet(content))``: start token
    style_cvae: torch.Tensor  #: (B, L, Cvae) cumulative VQ features of the style image per scale
    content_cvae: torch.Tensor  #: (B, L, Cvae) same for the content image

    @property
    def batch_size(self) -> int:
        return self.style_feat.shape[0]

    def index_select(self, index: torch.Tensor | Sequence[int]) -> Conditioning:
        """Rows ``index`` of every field (e.g. pick pairs, or repeat them for several samples)."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.style_feat.device)
        return Conditioning(*(t.index_select(0, idx) for t in self._fields()))

    def repeat_interleave(self, n: int) -> Conditioning:
        """Each pair repeated ``n`` times in a row: (B * n) rows."""
        return Conditioning(*(t.repeat_interleave(n, dim=0) for t in self._fields()))

    @staticmethod
    def combine(
        style: tuple[torch.Tensor, torch.Tensor], content: tuple[torch.Tensor, torch.Tensor]
    ) -> Conditioning:
        """Build from ``StyleVAR.encode_style`` / ``encode_content`` outputs of equal batch size."""
        return Conditioning(style[0], content[0], style[1], content[1])

    def _fields(self) -> tuple[torch.Tensor, ...]:
        return (self.style_feat, self.content_feat, self.style_cvae, self.content_cvae)


@dataclass
class StyleRegions:
    """Other styles for parts of the image (regional style): ``R`` extra styles, each with its weight on
    every token. A token's style queries and AdaLN parameters are the weighted sum over the main style
    (weight ``1 - sum of the region weights``, at least 0) and the regions: a token inside region ``r``
    (weight 1) is conditioned on style ``r`` alone, soft edges blend. Build one with
    :meth:`StyleVAR.style_regions`.
    """

    style_feat: torch.Tensor  #: (B, R, C) ``feat_emb(ResNet(style_r))`` (or (B, R, M, C) style tokens)
    style_cvae: torch.Tensor  #: (B, R, L, Cvae) the region styles' cumulative VQ features
    weights: torch.Tensor  #: (B, L, R) each region's weight per token, in [0, 1], summing to at most 1

    def index_select(self, index: torch.Tensor | Sequence[int]) -> StyleRegions:
        idx = torch.as_tensor(index, dtype=torch.long, device=self.style_feat.device)
        return StyleRegions(
            *(t.index_select(0, idx) for t in (self.style_feat, self.style_cvae, self.weights))
        )


def scale_maps(masks: torch.Tensor, patch_nums: Sequence[int]) -> torch.Tensor:
    """(B, H, W) maps in [0, 1] -> (B, L): each scale's pn x pn area average, scales concatenated in token
    order (the per-token form of a mask: regional style, per-token alpha)."""
    m = masks.float().unsqueeze(1)
    return torch.cat([F.adaptive_avg_pool2d(m, pn).flatten(1) for pn in patch_nums], dim=1)


def _mix(weights: torch.Tensor, values: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ_r weights[..., r] * values[r]; with a weight of exactly 1 on one value and 0 on the others the
    result is that value bit for bit (the identity regional style promises)."""
    out = weights[..., 0] * values[0]
    for r in range(1, len(values)):
        out = out + weights[..., r] * values[r]
    return out


@dataclass
class GenerationOutput:
    images: torch.Tensor  #: (B, 3, R, R) in [0, 1]
    tokens: list[torch.Tensor]  #: per scale (B, pn*pn) int64
    f_hat: torch.Tensor  #: (B, Cvae, side, side) the quantised latent that was decoded
    logits: list[torch.Tensor] | None = None  #: per scale (B, pn*pn, V) raw logits, if requested


class StyleVAR(nn.Module):
    #: True once :func:`stylevar.models.quantized.quantize_int8_` replaced the blocks' weights (inference only)
    int8: bool = False
    #: True once :func:`stylevar.models.quantized.to_bf16_` stored the blocks' products and the ResNets in
    #: bf16 (inference only; ``dtype`` bf16 or auto then runs them without autocast)
    bf16: bool = False

    def __init__(self, config: StyleVARConfig | None = None):
        super().__init__()
        self.config = cfg = config or StyleVARConfig()
        C, L, SN = cfg.embed_dim, cfg.seq_len, cfg.num_scales
        self.C, self.L, self.Cvae, self.V = C, L, cfg.z_channels, cfg.vocab_size
        self.patch_nums = cfg.patch_nums
        self.first_l = self.patch_nums[0] ** 2  # start tokens (1 for the release)
        self.begin_ends: list[tuple[int, int]] = []
        cur = 0
        for pn in self.patch_nums:
            self.begin_ends.append((cur, cur + pn * pn))
            cur += pn * pn
        init_std = math.sqrt(1 / C / 3)

        # 1. image encoders: content -> start token, style -> AdaLN condition (shared projection)
        self.style_encoder = build_style_encoder(cfg)
        self.content_encoder = ResNetEncoder(cfg.style_enc_dim)
        #: the style is M tokens the blocks attend to (``clip_resampler``), not one vector
        self.has_style_tokens = cfg.style_encoder != "resnet"
        self.feat_emb = nn.Linear(cfg.style_enc_dim, C)

        # 2. token and position embeddings (shared by target, style and content tokens)
        self.word_embed = nn.Linear(self.Cvae, C)
        #: the optional direct content pathway (StyleVARConfig.content_residual)
        self.content_embed = nn.Linear(self.Cvae, C) if cfg.content_residual else None
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, C))
        self.pos_1LC = nn.Parameter(torch.empty(1, L, C))
        self.lvl_embed = nn.Embedding(SN, C)
        for p in (self.pos_start, self.pos_1LC, self.lvl_embed.weight):
            nn.init.trunc_normal_(p.data, mean=0, std=init_std)

        # 3. blended cross-attention blocks
        dpr = [
            cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)
        ]  # linspace(0, rate, depth)
        self.blocks = nn.ModuleList(
            BlendedBlock(
                C,
                cfg.num_heads,
                cfg.mlp_hidden,
                cfg.norm_eps,
                dpr[i],
                cfg.attn_l2_norm,
                self.has_style_tokens,
            )
            for i in range(cfg.depth)
        )

        # 4. head
        self.head_nm = AdaLNBeforeHead(C, C, cfg.norm_eps)
        self.head = Linear(C, self.V)

        # 5. scale index of every token, block-causal mask (persistent: upstream's state dict has them)
        lvl_1L, mask = self._lvl_buffers(self.patch_nums)
        self.register_buffer("lvl_1L", lvl_1L)
        self.register_buffer("attn_bias_for_masking", mask)

        # 6. sampling runners on static buffers, per (batch size, device, dtype): see static_runner
        self._static_runners: dict[tuple, StaticRunner] = {}

    @staticmethod
    def _lvl_buffers(patch_nums: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, L) int64 scale index of each token; (1, 1, L, L) mask: 0 where level(q) >= level(k), else -inf."""
        lvl = torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(patch_nums)])
        L = lvl.numel()
        mask = torch.where(lvl.view(L, 1) >= lvl.view(1, L), 0.0, -torch.inf)
        return lvl.view(1, L).contiguous(), mask.view(1, 1, L, L).contiguous()

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_weights(
        self, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5, init_head: float = 0.02
    ) -> None:
        """VAR's initialisation of the transformer parts (for training from scratch).

        Unlike upstream (docs/upstream.md §3.3, B4) the ResNet encoders are left alone, so ImageNet
        weights loaded into them survive.
        """
        std = math.sqrt(1 / self.C / 3)
        encoders = set(self.style_encoder.modules()) | set(self.content_encoder.modules())
        for m in self.modules():
            if m in encoders:
                continue
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=std)
        for p in (self.pos_start, self.pos_1LC):
            nn.init.trunc_normal_(p, std=std)
        self.head.weight.mul_(init_head)
        self.head.bias.zero_()
        self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
        self.head_nm.ada_lin[-1].bias.zero_()
        depth = len(self.blocks)
        for b in self.blocks:
            b.attn.proj.weight.div_(math.sqrt(2 * depth))
            b.ffn.fc2.weight.div_(math.sqrt(2 * depth))
            if b.style_attn is not None:
                b.style_attn.proj.weight.div_(math.sqrt(2 * depth))
            b.ada_lin[-1].weight[2 * self.C :].mul_(init_adaln)
            b.ada_lin[-1].weight[: 2 * self.C].mul_(init_adaln_gamma)
            b.ada_lin[-1].bias.zero_()
            for p in (b.attn.q_bias_guide, b.attn.v_bias_guide, b.attn.q_bias_target, b.attn.v_bias_target):
                p.zero_()
            if hasattr(b.attn, "scale_mul_1H11"):
                b.attn.scale_mul_1H11.fill_(math.log(4.0))

    def set_encoder_input(self, encoder_input: str) -> None:
        """Record what the ResNet encoders expect (``raw`` or ``imagenet``, see :class:`StyleVARConfig`)
        after new encoder weights were loaded into them; the config is replaced, not changed."""
        self.config = dataclasses.replace(self.config, encoder_input=encoder_input)

    # ------------------------------------------------------------------ conditioning
    def _image_feat(self, encoder: nn.Module, img: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> projected ResNet feature (B, C), fp32, with the config's encoder input."""
        x = img.float()
        if self.config.encoder_input == "imagenet":
            mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
            std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
            x = (x + 1).mul_(0.5).sub_(mean).div_(std)
        # an encoder stored in bf16 runs in bf16 (channels-last); its feature is fp32
        with no_autocast(img.device):
            return self.feat_emb(encoder(stored_input(x, encoder[0].weight)).float())

    def _style_feat(self, img: torch.Tensor) -> torch.Tensor:
        """Style images in [-1, 1] -> :attr:`Conditioning.style_feat` ((B, C), or (B, M, C) tokens), fp32."""
        if not self.has_style_tokens:
            return self._image_feat(self.style_encoder, img)
        with no_autocast(img.device):
            return self.style_encoder(img.float())

    @staticmethod
    def style_condition(style_feat: torch.Tensor) -> torch.Tensor:
        """The AdaLN condition (B, C) of :attr:`Conditioning.style_feat`: itself, or its style tokens' mean."""
        return style_feat.mean(-2) if style_feat.ndim == 3 else style_feat

    def _style_kv(self, block: nn.Module, style_feat: torch.Tensor) -> StyleKV | None:
        return block.style_attn.keys_values(style_feat) if self.has_style_tokens else None

    def encode_style(self, vae: VQVAE, style_img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Style images [-1, 1] (B, 3, R, R) -> (AdaLN feature (B, C) or style tokens (B, M, C),
        VQ features (B, L, Cvae))."""
        with torch.no_grad():
            cvae = vae.quantize.idx_to_condition(vae.img_to_idx(style_img))
        return self._with_vq_tokens(self._style_feat(style_img), cvae), cvae

    def _with_vq_tokens(self, feat: torch.Tensor, cvae: torch.Tensor) -> torch.Tensor:
        """Style tokens (B, M, C) and the style's VQ features (B, L, Cvae) -> the tokens the blocks attend to:
        (B, M + L, C) with ``style_vq_tokens`` (each VQ feature embedded as a target token at its scale and
        place), else ``feat`` unchanged."""
        if not self.config.style_vq_tokens:
            return feat
        return torch.cat((feat, self.word_embed(cvae.float()) + self._lvl_pos()), dim=1)

    def encode_content(self, vae: VQVAE, content_img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Content images [-1, 1] (B, 3, R, R) -> (start-token feature (B, C), VQ features (B, L, Cvae))."""
        return self.encode_content_tokens(vae, content_img)[:2]

    def encode_content_tokens(
        self, vae: VQVAE, content_img: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """:meth:`encode_content` and the content's VQ tokens per scale ((B, pn*pn) each): what changed
        between two video frames, scale by scale."""
        with torch.no_grad():
            idx = vae.img_to_idx(content_img)
            cvae = vae.quantize.idx_to_condition(idx)
        return self._image_feat(self.content_encoder, content_img), cvae, idx

    def conditioning(self, vae: VQVAE, style_img: torch.Tensor, content_img: torch.Tensor) -> Conditioning:
        """Style and content images in [-1, 1], (B, 3, R, R) each -> :class:`Conditioning`."""
        return Conditioning.combine(self.encode_style(vae, style_img), self.encode_content(vae, content_img))

    def conditioning_from_features(
        self,
        style_img: torch.Tensor,
        content_img: torch.Tensor,
        style_cvae: torch.Tensor,
        content_cvae: torch.Tensor,
    ) -> Conditioning:
        """:class:`Conditioning` from images [-1, 1] and already computed VQ features (B, L, Cvae)."""
        return Conditioning(
            self._with_vq_tokens(self._style_feat(style_img), style_cvae),
            self._image_feat(self.content_encoder, content_img),
            style_cvae.float(),
            content_cvae.float(),
        )

    # ------------------------------------------------------------------ regional style
    def style_regions(
        self, vae: VQVAE, styles: torch.Tensor, masks: torch.Tensor, batch_size: int | None = None
    ) -> StyleRegions:
        """:class:`StyleRegions` from ``R`` style images in [-1, 1] (R, 3, R, R) and their masks (R, H, W) in
        [0, 1] over the output (area-averaged to every scale's token grid), for a batch of ``batch_size``.
        Where masks overlap beyond a total weight of 1 their weights are scaled to sum 1."""
        if styles.shape[0] != masks.shape[0]:
            raise ValueError(f"{styles.shape[0]} region styles for {masks.shape[0]} masks")
        feat, cvae = self.encode_style(vae, styles)
        return self.regions_from_features(feat, cvae, masks, batch_size)

    def regions_from_features(
        self, feat: torch.Tensor, cvae: torch.Tensor, masks: torch.Tensor, batch_size: int | None = None
    ) -> StyleRegions:
        """:meth:`style_regions` from already encoded region styles: ``feat`` (R, C), ``cvae`` (R, L, Cvae)."""
        w = scale_maps(masks.to(feat.device), self.patch_nums).t()  # (L, R)
        total = w.sum(-1, keepdim=True)
        w = torch.where(total > 1, w / total.clamp_min(1e-12), w)
        B = batch_size or 1
        return StyleRegions(
            feat.float().unsqueeze(0).expand(B, *feat.shape),
            cvae.float().unsqueeze(0).expand(B, -1, -1, -1),
            w.unsqueeze(0).expand(B, -1, -1),
        )

    def _region_weights(self, regions: StyleRegions) -> torch.Tensor:
        """(B, L, 1 + R): the main style's weight, then each region's."""
        w = regions.weights.float()
        main = (1 - w.sum(-1, keepdim=True)).clamp_min(0)
        return torch.cat((main, w), dim=-1)

    # ------------------------------------------------------------------ alpha
    def resolve_alpha(
        self, alpha: AlphaLike = None, style_strength: float = 0.0, batch_size: int = 1
    ) -> torch.Tensor:
        """Per-sample, per-scale alpha as a float32 tensor (B, SN).

        ``alpha``: None (the config's), one value per scale, or a (B, SN) tensor. ``style_strength``
        s != 0 shifts every value by 0.5 * s and clamps to [0.01, 0.99] (upstream's mapping).
        """
        SN = len(self.patch_nums)
        if alpha is None:
            alpha = self.config.alpha
        a = torch.as_tensor(alpha, dtype=torch.float32, device=self.lvl_1L.device)
        if a.ndim == 1:
            a = a.unsqueeze(0)
        if a.shape[-1] != SN or a.ndim != 2 or a.shape[0] not in (1, batch_size):
            raise ValueError(
                f"alpha must have {SN} values per scale (optionally per sample), got shape {tuple(a.shape)}"
            )
        if style_strength != 0:
            a = (a + 0.5 * style_strength).clamp(ALPHA_CONTENT_END, 1 - ALPHA_CONTENT_END)
        return a.expand(batch_size, SN)

    # ------------------------------------------------------------------ transformer core
    def _lvl_pos(self) -> torch.Tensor:
        return self.lvl_embed(self.lvl_1L) + self.pos_1LC  # (1, L, C)

    def content_input(self, cond: Conditioning) -> torch.Tensor | None:
        """What the direct content pathway adds to the target tokens (B, L, C), or None without one."""
        if self.content_embed is None:
            return None
        return self.content_embed(cond.content_cvae)

    def _guides_ln(self, style_BlC: torch.Tensor, content_BlC: torch.Tensor) -> torch.Tensor:
        """LayerNorm (no affine: the same for every block) of style and content tokens, concatenated."""
        eps = self.config.norm_eps
        return torch.cat(
            (F.layer_norm(style_BlC, (self.C,), eps=eps), F.layer_norm(content_BlC, (self.C,), eps=eps)),
            dim=1,
        )

    # ------------------------------------------------------------------ cached sampling runners
    def static_runner(
        self, batch_size: int, device: torch.device | str, dtype: torch.dtype | None = None
    ) -> StaticRunner:
        """The (cached) :class:`~stylevar.models.graphs.StaticRunner` for this batch size, device and dtype."""
        key = (batch_size, torch.device(device), dtype)
        if key not in self._static_runners:
            self._static_runners[key] = StaticRunner(self, batch_size, torch.device(device), dtype)
        return self._static_runners[key]

    def refresh_static_runners(self) -> None:
        """Copy changed weights into the cached runners' reduced-precision block copies (after an
        optimizer step or a LoRA merge); their captured graphs stay valid."""
        for runner in self._static_runners.values():
            runner.refresh_weights()

    def drop_static_runners(self) -> None:
        """Forget the cached runners (after the module structure changed, e.g. LoRA applied or removed)."""
        self._static_runners.clear()

    def __getstate__(self) -> dict:
        # copies and pickles of the model start without runners (they hold graphs and block copies)
        return {**self.__dict__, "_static_runners": {}}

    def _logits(
        self, x_BLC: torch.Tensor, cond_BD: torch.Tensor, ada: torch.Tensor | None = None
    ) -> torch.Tensor:
        # fp32 whatever the surrounding autocast or the weights' dtype: logits feed sampling and log-probs
        with no_autocast(x_BLC.device):
            h = self.head_nm(x_BLC.float(), cond_BD.float(), None if ada is None else ada.float())
            w, b = self.head.weight, self.head.bias
            return linear(h, w.float(), None if b is None else b.float())

    def forward(
        self, x_BLCv_wo_first_l: torch.Tensor, cond: Conditioning, alpha: AlphaLike = None
    ) -> torch.Tensor:
        """Teacher-forced logits (B, L, V), float32.

        Args:
            x_BLCv_wo_first_l: teacher input (B, L - pn_0^2, Cvae) from ``vae.quantize.idx_to_teacher_input``.
            cond: :class:`Conditioning` of the batch.
            alpha: per-scale alpha (SN,), per-sample (B, SN) or per-token (B, L) values; None = config.
        """
        B = x_BLCv_wo_first_l.shape[0]
        lvl_pos = self._lvl_pos()
        sos = cond.content_feat.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start
        x = torch.cat((sos, self.word_embed(x_BLCv_wo_first_l.float())), dim=1) + lvl_pos
        content_in = self.content_input(cond)
        if content_in is not None:
            x = x + content_in
        guides_ln = self._guides_ln(
            self.word_embed(cond.style_cvae) + lvl_pos, self.word_embed(cond.content_cvae) + lvl_pos
        )
        if alpha is not None and torch.is_tensor(alpha) and alpha.ndim == 2 and alpha.shape[1] == self.L:
            alpha_tok = alpha.to(x.dtype).unsqueeze(-1)
        else:
            alpha_tok = self.resolve_alpha(alpha, batch_size=B)[:, self.lvl_1L[0]].unsqueeze(-1)
        mask = torch.cat((self.attn_bias_for_masking, self.attn_bias_for_masking), dim=2).to(x.dtype)
        cond_BD = self.style_condition(cond.style_feat)
        tokens = cond.style_feat if self.has_style_tokens else None
        for (
            block
        ) in self.blocks:  # (the block projects the style tokens itself: FSDP gathers its weights there)
            x = block(x, guides_ln, cond_BD, alpha_tok, attn_bias=mask, style_tokens=tokens)
        return self._logits(x, cond_BD)

    @torch.no_grad()
    def _autocast_dtype(self, dtype: str, device: torch.device) -> torch.dtype | None:
        """The autocast dtype of a :class:`~stylevar.config.Sampling` dtype for this model (None: none).

        ``auto`` needs no conversion here: on a GPU that computes bf16 it is bf16 autocast; elsewhere the
        weights run as they are stored (fp32, bf16 or int8), without autocast -- the pipeline resolves
        ``auto`` per device and converts a CPU model's weights first (``StyleVARPipeline.prepare_dtype``). A
        model whose weights are bf16 (:func:`~stylevar.models.quantized.to_bf16_`) runs bf16 without
        autocast and refuses fp32/fp16/int8: its fp32 weights are gone."""
        if dtype == "auto":
            if self.bf16 or self.int8 or device.type != "cuda" or not torch.cuda.is_bf16_supported():
                return None
            return torch.bfloat16
        if self.bf16:
            if dtype != "bf16":
                raise ConfigError(
                    f"this model's weights are stored in bf16 now (an earlier bf16 run converted them in "
                    f"place): dtype {dtype} needs its fp32 weights, so load the model again; "
                    "use dtype bf16 or auto with this one"
                )
            return None
        if dtype == "int8":
            if not self.int8:
                raise ConfigError(
                    "dtype int8 needs the transformer quantized first: stylevar.models.quantized.quantize_int8_"
                    "(model) (the pipeline does it)"
                )
            return None
        out = parse_dtype(dtype)
        if self.int8 and out is not None:
            raise ConfigError(
                "this model's transformer is int8 now: its other layers run in fp32; use dtype int8"
            )
        return out

    def generate(
        self,
        vae: VQVAE,
        cond: Conditioning,
        sampling: Sampling = PLAIN,
        *,
        seed: Seed = None,
        alpha: AlphaLike = None,
        return_logits: bool = False,
        decode: bool = True,
        prefix: Sequence[torch.Tensor] | None = None,
        num_scales: int | None = None,
        regions: StyleRegions | None = None,
        token_hook: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
        decode_dtype: torch.dtype | None = None,
    ) -> GenerationOutput:
        """Sample target tokens scale by scale and decode them.

        Args:
            vae: the VQ-VAE (next-scale inputs and decoding).
            cond: :class:`Conditioning` of B pairs (repeat rows for several samples per pair).
            sampling: :class:`stylevar.config.Sampling`: the filters (``top_k``, ``top_p``: 0 = off),
                ``temperature``, ``alpha`` and ``style_strength`` (see :meth:`resolve_alpha`), ``dtype``
                (``bf16``/``fp16`` run the transformer's products and attention, and the VQ-VAE decoder,
                under autocast in that dtype, or -- a model whose weights
                :func:`~stylevar.models.quantized.to_bf16_` stored in bf16 -- in bf16 without autocast;
                the residual stream, normalisations, the logits, sampling and the quantizer stay fp32;
                ``int8``: a model quantized by :func:`~stylevar.models.quantized.quantize_int8_`;
                ``auto``: see :meth:`_autocast_dtype`), ``cuda_graphs`` (each scale's
                transformer pass from static buffers, captured as a CUDA graph on the first call for
                this batch size and dtype and replayed afterwards, :mod:`stylevar.models.graphs`; on
                other devices the same static path runs eagerly; after changing the weights with a
                reduced dtype, call ``static_runner(...).refresh_weights()``) and ``legacy_kv_cache``
                (reproduce the published sampler's duplicated KV cache token for token,
                docs/upstream.md §3.6; off: the cache matches the teacher-forced model exactly). Its
                ``seed`` is not used here. Default: :data:`~stylevar.stylize.settings.PLAIN`, unfiltered.
            seed: see :func:`stylevar.models.sampling.make_generators`: an int seeds one
                generator for the batch (upstream's ``g_seed``), a list seeds each sample.
            alpha: an alpha computed by the caller instead of ``sampling.alpha`` (still shifted by
                ``sampling.style_strength``): per sample (B, S), or per token (B, L) (a mask's alpha,
                :func:`scale_maps`), used as given.
            return_logits: also return each scale's raw logits (before temperature and filters).
            decode: decode f_hat to images (False: ``images`` is an empty tensor).
            prefix: tokens of the first ``len(prefix)`` scales, each (B, pn*pn) int64, taken as
                given instead of sampled (continuations of a prefix: GRPO's middle-return value
                estimate). They draw nothing from the generators.
            num_scales: stop after this many scales (a prefix only); ``images`` is then empty and
                ``f_hat`` holds the partial sum.
            regions: :class:`StyleRegions`: other styles for parts of the image (eager path only).
            token_hook: ``hook(scale index, sampled tokens (B, pn*pn)) -> tokens`` after each scale's
                sampling (not for ``prefix`` scales), e.g. to keep a previous video frame's tokens.
            decode_dtype: autocast dtype of the VQ-VAE decoding alone (default: ``dtype``); int8 runs
                decode in bf16 where the CPU has AMX (:func:`stylevar.devices.decode_dtype`). A decoder
                stored in bf16 computes in bf16 either way.

        Returns:
            :class:`GenerationOutput` with images in [0, 1].
        """
        B = cond.batch_size
        device = cond.style_feat.device
        top_k, top_p, temperature = sampling.filters
        style_strength, legacy_kv_cache, cuda_graphs = (
            sampling.style_strength,
            sampling.legacy_kv_cache,
            sampling.cuda_graphs,
        )
        if alpha is None:
            alpha = sampling.alpha
        dtype = self._autocast_dtype(sampling.dtype, device)
        per_token = torch.is_tensor(alpha) and alpha.ndim == 2 and alpha.shape[1] == self.L
        if per_token:
            alphas = alpha.to(device=device, dtype=torch.float32).expand(B, self.L)
        else:
            alphas = self.resolve_alpha(alpha, style_strength, B)
        gens = make_generators(seed, B, device)
        amp = autocast_to(device, dtype)
        W = None if regions is None else self._region_weights(regions).to(device)  # (B, L, 1 + R)
        with amp:
            lvl_pos = self._lvl_pos()
            cond_BD = self.style_condition(cond.style_feat)
            if W is None:
                style_BLC = self.word_embed(cond.style_cvae) + lvl_pos
            else:  # each token's style tokens: the weighted sum of the styles' (main first)
                cvaes = [cond.style_cvae, *regions.style_cvae.to(device).unbind(1)]
                style_BLC = _mix(W.unsqueeze(-2), [self.word_embed(c) + lvl_pos for c in cvaes])
            content_BLC = self.word_embed(cond.content_cvae) + lvl_pos
            content_in = self.content_input(cond)
            if content_in is not None:  # the direct content pathway joins the target tokens' positions
                lvl_pos = lvl_pos + content_in
        if cuda_graphs:
            if per_token or regions is not None:
                raise ValueError("per-token alpha (a mask) and regional styles run eagerly: drop cuda_graphs")
            runner = self.static_runner(B, device, dtype)
            runner.bind(
                cond_BD, style_BLC, content_BLC, alphas, cond.style_feat if self.has_style_tokens else None
            )
            step = runner.step
        else:
            caches = [KVCache(self.L, legacy=legacy_kv_cache) for _ in self.blocks]
            styles = (
                [cond.style_feat]
                if W is None
                else [cond.style_feat, *regions.style_feat.to(device).unbind(1)]
            )
            feats = [self.style_condition(f) for f in styles]
            with (
                amp
            ):  # the condition is fixed: AdaLN parameters (and style keys) once per call, not per scale
                adas = [[block.adaln(f) for f in feats] for block in self.blocks]
                kvs = [[self._style_kv(block, f) for f in styles] for block in self.blocks]
            head_adas = [self.head_nm.adaln(f.float()) for f in feats]

            def step(si: int, x: torch.Tensor) -> torch.Tensor:
                bg, ed = self.begin_ends[si]
                a = alphas[:, bg:ed].unsqueeze(-1) if per_token else alphas[:, si].view(B, 1, 1)
                guides_ln = self._guides_ln(style_BLC[:, bg:ed], content_BLC[:, bg:ed])
                style_w = None
                if W is None:
                    block_adas, head_ada = [ada[0] for ada in adas], head_adas[0]
                    block_kvs = [kv[0] for kv in kvs]
                else:  # per-token AdaLN: (B, l, k, C), each token's weighted sum over the styles
                    w = W[:, bg:ed, None, None, :]
                    block_adas = [_mix(w, [r.to(w.dtype) for r in ada]) for ada in adas]
                    head_ada = _mix(w, head_adas)
                    block_kvs, style_w = kvs, W[:, bg:ed]
                for block, cache, ada, kv in zip(self.blocks, caches, block_adas, block_kvs):
                    x = block(
                        x,
                        guides_ln,
                        cond_BD,
                        a,
                        attn_bias=None,
                        cache=cache,
                        ada=ada,
                        style_kv=kv,
                        style_w=style_w,
                    )
                return self._logits(x, cond_BD, head_ada)

        side = self.patch_nums[-1]
        f_hat = torch.zeros(B, self.Cvae, side, side, device=device, dtype=torch.float32)
        x = (
            cond.content_feat.unsqueeze(1).expand(B, self.first_l, -1)
            + self.pos_start
            + lvl_pos[:, : self.first_l]
        )
        tokens: list[torch.Tensor] = []
        all_logits: list[torch.Tensor] = []
        SN = len(self.patch_nums) if num_scales is None else int(num_scales)
        prefix = list(prefix or [])
        if not 1 <= SN <= len(self.patch_nums) or len(prefix) > SN:
            raise ValueError(
                f"num_scales must lie in [1, {len(self.patch_nums)}] and cover the prefix "
                f"({len(prefix)} scales), got {SN}"
            )
        for si, t in enumerate(prefix):
            n = self.patch_nums[si] ** 2
            if tuple(t.shape) != (B, n):
                raise ValueError(f"prefix scale {si} must have shape ({B}, {n}), got {tuple(t.shape)}")
        # one autocast region for the whole loop, so autocast casts each weight once per call
        with amp:
            for si, pn in enumerate(self.patch_nums[:SN]):
                logits = step(si, x)  # fp32 whatever the autocast
                if return_logits:
                    all_logits.append(logits.clone())
                with no_autocast(device):  # sampling and the quantizer in fp32
                    if si < len(prefix):
                        idx_Bl = prefix[si].to(device=device, dtype=torch.long)
                    else:
                        idx_Bl = sample_tokens(
                            logits, top_k=top_k, top_p=top_p, temperature=temperature, generator=gens
                        )
                        if token_hook is not None:
                            idx_Bl = token_hook(si, idx_Bl)
                    tokens.append(idx_Bl)
                    f_hat, next_map = vae.quantize.next_input(si, f_hat, vae.quantize.idx_to_h(idx_Bl, pn))
                if si != SN - 1:
                    nb, ne = self.begin_ends[si + 1]
                    next_BlC = next_map.reshape(B, self.Cvae, -1).transpose(1, 2)
                    x = self.word_embed(next_BlC) + lvl_pos[:, nb:ne]
        step = caches = adas = kvs = None  # release the KV caches (139 MB per d20 sample) before decoding
        if decode and SN == len(self.patch_nums):
            with amp if decode_dtype is None else autocast_to(device, decode_dtype):
                images = vae.fhat_to_img(f_hat).float().add_(1).mul_(0.5)
        else:
            images = f_hat.new_empty(0)
        return GenerationOutput(
            images=images, tokens=tokens, f_hat=f_hat, logits=all_logits if return_logits else None
        )
