"""The demos' settings: sizes, budgets and precisions of the stages (:class:`ModelBudget`), and the
synthetic demo's data (:class:`DemoConfig`); the real-photo demo's data is :class:`~.real.RealDemoConfig`.

A field's comment says what it does; what the values give (times, scores, the levers tried) is measured in
docs/demo.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import Serialisable
from ..errors import ConfigError


@dataclass
class ModelBudget(Serialisable):
    """What both demos train and how: the tokenizer, the StyleVAR, SFT, the held-out sampling, the
    precisions and seeds (docs/demo.md: what the synthetic demo's defaults take and score on a 2-core CPU)."""

    size: int = 32  #: image side (pixels)
    # tokenizer
    vocab_size: int = 256  #: codebook size (docs/demo.md, "What limits the demo": why 256)
    z_channels: int = 8
    patch_nums: tuple[int, ...] = (1, 2, 4, 8)  #: token-map sides, coarse to fine (85 tokens in all)
    #: GroupNorm groups of the tokenizer: one group, so that the narrow tokenizer keeps each image's colours
    #: (VAR's 32 would normalise every channel on its own; docs/demo.md)
    norm_groups: int = 1
    tokenizer_ch: int = 16  #: the tokenizer's base width (VQVAEConfig.ch, channels at full resolution)
    tokenizer_steps: int = 2400  #: tokenizer training steps (docs/demo.md: what fewer give)
    tokenizer_batch: int = 16
    tokenizer_lr: float = 2e-3
    # transformer
    depth: int = 4
    embed_dim: int = 128
    num_heads: int = 4
    mlp_ratio: float = 4.0  #: the blocks' FFN width over embed_dim (StyleVARConfig.mlp_ratio)
    style_enc_dim: int = 64  #: narrow ResNet-18 encoders (full width: 22 M parameters for 32 px images)
    content_residual: bool = True  #: the direct content pathway (StyleVARConfig.content_residual)
    #: the style encoder (StyleVARConfig.style_encoder): StyleAR's ``clip_resampler``, here a small CLIP ViT
    #: trained from scratch with the rest (``demo_clip``; needs transformers), or the released models'
    #: ``resnet`` (docs/demo.md, "Two style encoders", compares them)
    style_encoder: str = "clip_resampler"
    demo_clip: dict = field(
        default_factory=lambda: dict(
            hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, patch_size=4
        )
    )
    style_tokens: int = 16  #: clip_resampler: the resampler's tokens
    resampler_depth: int = 2  #: clip_resampler: perceiver layers
    resampler_dim: int = 64  #: clip_resampler: the resampler's width
    #: clip_resampler: the style's VQ features join its tokens (StyleVARConfig.style_vq_tokens; docs/demo.md)
    style_vq_tokens: bool = True
    sft_steps: int = 1000
    sft_batch: int = 32
    #: SFT processes on the CPU (DDP over gloo, each with its share of the threads and of every batch); 0 =
    #: auto: two on a CPU with two or more threads, one elsewhere (docs/demo.md measures the choice)
    sft_processes: int = 0
    sft_lr: float = 1e-3  #: SFT learning rate, the CLIP resampler's best (the ResNet's: 3e-3; docs/demo.md)
    #: per-token SFT loss weight (h*w)^-p per scale (SFTConfig.scale_weight_power; 0 = plain mean)
    sft_scale_weight_power: float = 0.0
    #: std of Gaussian noise on the style tokens' VQ features in SFT (SFTConfig.style_noise, StyleAR's
    #: remedy for content leakage; docs/demo.md gives the features' own spread to compare with)
    sft_style_noise: float = 0.0
    # sampling of the held-out pairs: the most likely token at every scale (top-k 1; docs/demo.md says
    # what plain sampling scores on this small model)
    top_k: int = 1
    top_p: float = 0.0
    temperature: float = 1.0
    #: precision of each trainer: ``auto`` is bf16 autocast where the device computes bf16 natively
    #: (CUDA since Ampere, CPUs with AMX or AVX512-BF16: :func:`stylevar.devices.has_fast_bf16`), else
    #: fp32. SFT defaults to fp32: the small transformer's step does not gain from autocast (docs/demo.md)
    tokenizer_precision: str = "auto"
    sft_precision: str = "fp32"
    seed: int = 0
    #: seed of StyleVAR's initialisation and the SFT batch order (None: ``seed``). Not a data or tokenizer
    #: field, so SFT runs with other seeds can reuse one tokenizer (``--reuse-tokenizer``) to measure the
    #: run-to-run spread of the held-out scores
    sft_seed: int | None = None

    def __post_init__(self) -> None:
        self.patch_nums = tuple(self.patch_nums)
        if self.size % self.patch_nums[-1]:
            raise ConfigError(f"size {self.size} is not a multiple of the last scale {self.patch_nums[-1]}")
        down = self.size // self.patch_nums[-1]
        if down < 2 or down & (down - 1):
            raise ConfigError(f"size / patch_nums[-1] must be a power of two >= 2, got {down}")
        if self.sft_processes < 0 or (self.sft_processes and self.sft_batch % self.sft_processes):
            raise ConfigError(f"sft_processes must be 0 (auto) or divide sft_batch {self.sft_batch}")
        if self.style_encoder not in ("resnet", "clip_resampler"):
            raise ConfigError(f"style_encoder must be resnet or clip_resampler, got {self.style_encoder!r}")
        for name in ("tokenizer_precision", "sft_precision"):
            if getattr(self, name) not in ("auto", "fp32", "bf16"):
                raise ConfigError(f"{name} must be auto, fp32 or bf16, got {getattr(self, name)!r}")


@dataclass
class DemoConfig(ModelBudget):
    """The synthetic demo (``stylevar demo``): its data (procedural triplets) and :class:`ModelBudget`'s
    sizes and budgets."""

    period: int = 8  #: texture period of the synthetic styles (pixels)
    num_contents: int = 300
    num_styles: int = 300
    num_triplets: int = 3000  #: training triplets
    num_heldout: int = 64  #: held-out pairs (new contents and new styles)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_heldout < 2:
            raise ConfigError("num_heldout must be >= 2 (the swapped controls need another pair)")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``precision`` with ``auto`` made concrete for ``device`` (bf16 where it is native, else fp32)."""
    from ..devices import has_fast_bf16

    if precision != "auto":
        return precision
    return "bf16" if has_fast_bf16(device) else "fp32"


#: the DemoConfig fields that decide the data and the tokenizer (a reused tokenizer must share them); the
#: precision is compared as resolved (``auto`` that became fp32 is fp32 asked for by name)
TOKENIZER_FIELDS = (
    "size",
    "period",
    "num_contents",
    "num_styles",
    "num_triplets",
    "num_heldout",
    "vocab_size",
    "z_channels",
    "patch_nums",
    "norm_groups",
    "tokenizer_ch",
    "tokenizer_steps",
    "tokenizer_batch",
    "tokenizer_lr",
    "seed",
)
#: tokenizer fields added after demos were first written: their value in a metrics.json without them
ADDED_LATER = {"tokenizer_ch": 32}


def sft_processes(cfg: ModelBudget, device: torch.device) -> int:
    """How many processes the demo's SFT runs in (``cfg.sft_processes``, 0 = auto)."""
    if cfg.sft_processes:
        return cfg.sft_processes
    auto = 2 if torch.device(device).type == "cpu" and torch.get_num_threads() >= 2 else 1
    return auto if cfg.sft_batch % auto == 0 else 1
