"""StyleAR's style encoder: a CLIP ViT's patch features -> a perceiver resampler -> M style tokens.

The released StyleVAR encodes the style image with a ResNet-18 into one vector that conditions
AdaLN (:mod:`stylevar.models.encoders`). StyleAR (arXiv 2505.19874) encodes it with a CLIP image
encoder and a perceiver resampler into a few tokens the generator attends to: a set of tokens can
keep "which colours, which strokes" apart from "which objects where" better than one pooled
vector, and the subtraction and noise of its leakage remedies act on them. With
``StyleVARConfig(style_encoder="clip_resampler")`` every block gets a cross-attention to the M
tokens (:class:`~stylevar.models.blocks.StyleTokenAttention`) and AdaLN gets their mean
(docs/architecture.md, "Style encoders").

The CLIP tower is transformers' ``CLIPVisionModel`` built from the config's sizes (random weights);
:func:`load_clip_vision` copies a real CLIP's vision weights into it (training code finds them on
disk; nothing is downloaded here). The resampler is Flamingo's perceiver resampler as IP-Adapter
Plus uses it: learned latents attend to [image features; latents], then a feed-forward layer, a
few times, then a projection to the transformer's width and a LayerNorm.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError

#: OpenAI CLIP's input normalisation
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: the CLIPVisionConfig fields a StyleVAR config records (what fixes the tower's parameter shapes and function)
CLIP_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "image_size",
    "patch_size",
    "hidden_act",
    "layer_norm_eps",
)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:  # pragma: no cover - the dev extra installs it
        raise ConfigError(
            "style_encoder='clip_resampler' needs transformers: pip install 'stylevar[rewards]'"
        ) from None
    return transformers


def clip_fields(config: Any) -> dict[str, Any]:
    """The :data:`CLIP_FIELDS` of a transformers CLIP(Vision)Config (a full CLIPConfig: its vision part)."""
    config = getattr(config, "vision_config", config)
    return {k: getattr(config, k) for k in CLIP_FIELDS}


class _PerceiverAttention(nn.Module):
    """Latents (B, M, D) attend to [features (B, N, D); latents]."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"resampler width {dim} is not divisible by its {heads} heads")
        self.heads = heads
        self.norm_x = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        B, M, D = latents.shape
        H, d = self.heads, D // self.heads
        lat = self.norm_latents(latents)
        src = torch.cat((self.norm_x(x), lat), dim=1)
        q = self.q(lat).view(B, M, H, d).transpose(1, 2)
        k, v = self.kv(src).view(B, src.shape[1], 2, H, d).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.out(o.transpose(1, 2).reshape(B, M, D))


class _ResamplerLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ff_mult: int = 4):
        super().__init__()
        self.attn = _PerceiverAttention(dim, heads)
        self.ff = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, ff_mult * dim, bias=False),
            nn.GELU(),
            nn.Linear(ff_mult * dim, dim, bias=False),
        )

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        latents = latents + self.attn(x, latents)
        return latents + self.ff(latents)


class PerceiverResampler(nn.Module):
    """(B, N, in_dim) features -> (B, num_tokens, out_dim) tokens."""

    def __init__(self, in_dim: int, dim: int, out_dim: int, num_tokens: int, depth: int, heads: int):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_tokens, dim) * dim**-0.5)
        self.proj_in = nn.Linear(in_dim, dim)
        self.layers = nn.ModuleList(_ResamplerLayer(dim, heads) for _ in range(depth))
        self.proj_out = nn.Linear(dim, out_dim)
        self.norm_out = nn.LayerNorm(out_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(feats)
        latents = self.latents.expand(feats.shape[0], -1, -1)
        for layer in self.layers:
            latents = layer(x, latents)
        return self.norm_out(self.proj_out(latents))


class CLIPResamplerEncoder(nn.Module):
    """Style images in [-1, 1] (B, 3, R, R) -> style tokens (B, M, out_dim).

    The images are resized to the tower's ``image_size`` (bicubic, antialiased) when they differ and
    normalised with CLIP's mean/std; hidden state ``layer`` (all patch tokens and the class token) feeds
    the resampler. When no parameter of the tower requires a gradient (a frozen pretrained CLIP, as
    StyleAR trains it) the tower runs without autograd.

    Only the part of the tower below that hidden state is built: the layers above it and the final
    LayerNorm would never reach the output (no compute, no gradient; DDP needs no unused-parameter
    search). ``clip_config`` still describes the whole tower, so a pretrained CLIP's weights fit, and the
    keys of the missing part are dropped when a whole tower's weights are loaded (a CLIP, or a checkpoint
    written before the tower was cut: docs/architecture.md, "Style encoders").
    """

    def __init__(
        self,
        clip_vision: Mapping[str, Any] | None,
        out_dim: int,
        *,
        num_tokens: int = 16,
        depth: int = 4,
        dim: int = 0,
        layer: int = -2,
    ):
        super().__init__()
        tf = _transformers()
        config = tf.CLIPVisionConfig(**dict(clip_vision or {}))
        if not -config.num_hidden_layers - 1 <= layer <= config.num_hidden_layers:
            raise ConfigError(
                f"clip_layer {layer} does not exist in a {config.num_hidden_layers}-layer CLIP tower"
            )
        #: how many of the tower's layers the hidden state ``layer`` has passed (hidden state 0: the embeddings)
        self.used_layers = layer % (config.num_hidden_layers + 1)
        cut = copy.deepcopy(config)
        cut.num_hidden_layers = self.used_layers
        tower = tf.CLIPVisionModel(cut)
        #: the vision transformer itself (transformers 4 wraps it as ``.vision_model``, 5 does not): its
        #: state-dict keys (``embeddings.*``, ``encoder.layers.*``, ...) are the same in both
        self.clip = getattr(tower, "vision_model", tower)
        # its output is the last kept layer's; the LayerNorm after it only makes the pooled class token
        self.clip.post_layernorm = nn.Identity()
        self.clip_config = config
        self._register_load_state_dict_pre_hook(self.drop_unbuilt)
        self.image_size = int(config.image_size)
        dim = dim or out_dim
        self.resampler = PerceiverResampler(
            config.hidden_size, dim, out_dim, num_tokens, depth, heads=max(1, dim // 64)
        )

    def unbuilt_key(self, key: str) -> bool:
        """Whether ``key`` (relative to the tower) belongs to the part of a whole tower that is not built."""
        if key.startswith("post_layernorm."):
            return True
        if key.startswith("encoder.layers."):
            return int(key.split(".")[2]) >= self.used_layers
        return False

    def drop_unbuilt(self, state_dict: dict, prefix: str = "", *args) -> None:
        """Delete from ``state_dict`` the keys of the unbuilt part (this module's keys under ``prefix``); a
        load-state-dict pre-hook, and called by :func:`stylevar.io.state.build_stylevar` before its key check."""
        for key in [k for k in state_dict if k.startswith(prefix + "clip.")]:
            if self.unbuilt_key(key[len(prefix) + 5 :]):
                del state_dict[key]

    def materialize_buffers_(self) -> None:
        """Make the tower's non-persistent buffers real after a build on the meta device (a checkpoint
        supplies the parameters, not these): CLIP's ``position_ids`` are ``arange``."""
        for name, buf in list(self.clip.named_buffers()):
            if not buf.is_meta:
                continue
            *path, leaf = name.split(".")
            if leaf != "position_ids":
                raise RuntimeError(f"cannot rebuild the CLIP tower's buffer {name} after a meta-device build")
            owner = self.clip.get_submodule(".".join(path))
            owner.register_buffer(leaf, torch.arange(buf.shape[-1]).expand(buf.shape), persistent=False)

    def features(self, img: torch.Tensor) -> torch.Tensor:
        """CLIP hidden state ``layer`` (B, 1 + patches, hidden_size) of images in [-1, 1]."""
        x = img.float().add(1).mul(0.5)
        size = self.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        x = (x - x.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)) / x.new_tensor(CLIP_STD).view(1, 3, 1, 1)
        frozen = not any(p.requires_grad for p in self.clip.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            return self.clip(pixel_values=x).last_hidden_state

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.resampler(self.features(img))


def build_style_encoder(cfg: Any) -> nn.Module:
    """The style encoder a :class:`~stylevar.config.StyleVARConfig` asks for."""
    from .encoders import ResNetEncoder

    if cfg.style_encoder == "resnet":
        return ResNetEncoder(cfg.style_enc_dim)
    return CLIPResamplerEncoder(
        cfg.clip_vision,
        cfg.embed_dim,
        num_tokens=cfg.style_tokens,
        depth=cfg.resampler_depth,
        dim=cfg.resampler_dim,
        layer=cfg.clip_layer,
    )


@torch.no_grad()
def load_clip_vision(model: nn.Module, clip: nn.Module) -> int:
    """Copy a transformers CLIP model's vision tower (``CLIPModel``, ``CLIPVisionModel`` or
    ``CLIPVisionModelWithProjection``, transformers 4 or 5) into ``model``'s CLIP resampler encoder; returns the tensors copied.
    Their sizes must be the model's (build the model with ``clip_vision=clip_fields(clip.config)``)."""
    enc = model.style_encoder
    if not isinstance(enc, CLIPResamplerEncoder):
        raise ConfigError("CLIP weights need a model with style_encoder='clip_resampler'")
    mine, theirs = clip_fields(enc.clip_config), clip_fields(clip.config)
    if mine != theirs:
        diff = {k: (mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]}
        raise ConfigError(f"the CLIP weights do not fit the model's CLIP tower (model, weights): {diff}")
    sd = {k: v for k, v in getattr(clip, "vision_model", clip).state_dict().items() if not enc.unbuilt_key(k)}
    enc.clip.load_state_dict(sd, strict=True)
    return len(sd)
