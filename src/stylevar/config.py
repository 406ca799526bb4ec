"""Configuration dataclasses, their one (de)serialisation, and presets.

Every model rebuilds itself from its config: the config is stored beside the weights
(``config.json``) and can be inferred from an upstream state dict (:mod:`stylevar.io.state`). The
model configs are frozen: a model is built from its config once, so changing the config afterwards
could only make the record disagree with the model (use ``dataclasses.replace`` for a variant).
Every config dataclass of the project (models, sampling, LoRA, the trainers) derives from
:class:`Serialisable`, so ``to_dict``/``from_dict`` behave the same everywhere; fields declared with
:func:`option` carry their help text (and choices), from which the command line makes its flags.

This module imports nothing heavier than the standard library (the command line reads it to build
``--help`` without importing torch).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import re
import reprlib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

#: torchvision's ImageNet normalisation ([0, 1] RGB images), used by every ImageNet-trained network
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def option(default: Any, help: str, *, choices: Sequence[Any] | None = None, flag: bool = True) -> Any:
    """A dataclass field with its help text (``metadata["help"]``) and optional ``choices``.

    ``flag=False`` keeps the field off the command line (set by other flags or by code).
    """
    meta = {"help": help, "choices": None if choices is None else tuple(choices), "flag": flag}
    return dataclasses.field(default=default, metadata=meta)


def parse_numbers(text: str, kind: type = float) -> list:
    """``"0.1, 0.2 0.3"`` -> ``[0.1, 0.2, 0.3]``: numbers separated by commas and/or spaces (flags, form
    fields). Raises ``ValueError`` for anything else."""
    return [kind(v) for v in re.split(r"[,\s]+", text.strip()) if v]


class Serialisable:
    """``to_dict`` / ``from_dict`` for config dataclasses: JSON-ready values (tuples become lists), and
    on the way back (a ``config.json``, a training checkpoint, a job file) a one-line
    :class:`ConfigError` for unknown fields and for values of the wrong type."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        """The config of the fields in ``d`` (a JSON object), each value checked against its field's
        annotation first (:func:`check_field_types`), then by the class's own ``__post_init__``."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"{cls.__name__}: expected an object of fields (a dict), got {_show(d)}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown field(s) {sorted(map(str, unknown))}")
        check_field_types(cls, d)
        return cls(**d)


# ------------------------------------------------------------------------ type checks of from_dict
@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """The evaluated annotations of ``cls``'s fields (``from __future__ import annotations`` makes them
    strings); empty when they cannot be evaluated (a name imported only for type checkers): no checks."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an unresolvable annotation must not make a config unloadable
        return {}


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _matches(value: Any, tp: Any) -> bool:
    """Whether a JSON-like ``value`` fits the annotation ``tp``: an int fits a float, a bool fits neither
    an int nor a float, numbers must be finite (ints within int64), a list or tuple fits a tuple (element
    by element)."""
    if tp is Any:
        return True
    if tp is None or tp is type(None):
        return value is None
    if _is_union(tp):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:  # within int64: JSON allows any size, no config needs more
        return isinstance(value, numbers.Integral) and not isinstance(value, bool) and abs(value) < 2**63
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        try:
            return math.isfinite(value)
        except OverflowError:  # an int beyond a float's range
            return False
    origin, args = typing.get_origin(tp) or tp, typing.get_args(tp)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
        return not args or all(_matches(v, args[0]) for v in value)
    if origin is dict:
        if not isinstance(value, Mapping):
            return False
        return not args or all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    return not isinstance(origin, type) or isinstance(value, origin)


_WORDS = {
    bool: "true or false",
    int: "an integer",
    float: "a finite number",
    str: "a string",
    dict: "an object",
}
_PLURAL = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def _describe(tp: Any) -> str:
    """``tuple[float, ...] | str`` -> ``a list of numbers or a string``."""
    if _is_union(tp):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is None or tp is type(None):
        return "null"
    origin, args = typing.get_origin(tp) or tp, typing.get_args(tp)
    if origin in (tuple, list):
        if not args:
            return "a list"
        if args[-1] is Ellipsis or origin is list:
            return f"a list of {_PLURAL.get(args[0], str(args[0]))}"
        if len(set(args)) == 1:
            return f"a list of {len(args)} {_PLURAL.get(args[0], str(args[0]))}"
        return "a list [" + ", ".join(_describe(a) for a in args) + "]"
    if origin is dict:
        return "an object"
    return _WORDS.get(tp, getattr(tp, "__name__", str(tp)))


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) and not typing.get_args(tp) else str(tp).replace("typing.", "")


def _show(value: Any, limit: int = 40) -> str:
    """A short repr (bounded in length and depth: the value may be a huge or deeply nested JSON list)."""
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict, short.maxstring, short.maxother = 3, 4, 3, limit, limit
    text = short.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_field_types(cls: type, values: Mapping[str, Any]) -> None:
    """Raise a one-line :class:`ConfigError` naming the first field of ``values`` whose value does not fit
    its annotation in ``cls``: ``StyleVARConfig.alpha must be a list of numbers or a string (tuple[float,
    ...] | str), got ['x']``. Fields without an evaluable annotation pass unchecked."""
    hints = _field_types(cls)
    for name, value in values.items():
        tp = hints.get(name)
        if tp is not None and not _matches(value, tp):
            raise ConfigError(
                f"{cls.__name__}.{name} must be {_describe(tp)} ({_type_name(tp)}), got {_show(value)}"
            )


_Serialisable = Serialisable  # the former private name


#: The ten scales of VAR / StyleVAR at 256x256 (latent side 16).
DEFAULT_PATCH_NUMS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)

#: Per-scale blend weights alpha_k (style share of the blended cross-attention).
#: ``paper``: upstream's builder default, used by every upstream consumer (GRPO rollouts, the
#:   evaluation behind the paper's tables, the inference scripts). The GRPO stage was trained
#:   with it, so it is what the released GRPO weights were optimised for.
#: ``sft``: what the released SFT run was trained with (``run_train_v2.sh``, centre of a
#:   +-0.15 jitter); upstream never stored it (docs/upstream.md B1, §8).
#: ``varhf``: the default of upstream's (unused) ``VARHF`` wrapper; kept for completeness.
ALPHA_PRESETS: dict[str, tuple[float, ...]] = {
    "paper": (0.2, 0.3, 0.4, 0.4, 0.5, 0.5, 0.6, 0.6, 0.7, 0.8),
    "sft": (0.1, 0.2, 0.25, 0.3, 0.3, 0.35, 0.4, 0.4, 0.5, 0.5),
    "varhf": (0.3, 0.4, 0.5, 0.5, 0.5, 0.5, 0.5, 0.4, 0.3, 0.2),
}

#: Which alpha preset a released variant gets when its checkpoint carries none.
VARIANT_ALPHA: dict[str, str] = {"grpo": "paper", "sft": "sft"}


def alpha_for_scales(preset: str | Sequence[float], num_scales: int) -> tuple[float, ...]:
    """Return a per-scale alpha tuple of length ``num_scales``.

    ``preset`` is a name from :data:`ALPHA_PRESETS` or explicit values. A named ten-scale preset
    is resampled (linear interpolation over the relative scale position) for other scale counts.
    """
    if isinstance(preset, str):
        if preset not in ALPHA_PRESETS:
            raise ConfigError(f"unknown alpha preset {preset!r}; choose one of {sorted(ALPHA_PRESETS)}")
        values = ALPHA_PRESETS[preset]
        if len(values) == num_scales:
            return tuple(values)
        if num_scales == 1:
            return (values[0],)
        out = []
        for i in range(num_scales):
            pos = i * (len(values) - 1) / (num_scales - 1)
            lo = int(math.floor(pos))
            hi = min(lo + 1, len(values) - 1)
            w = pos - lo
            out.append(round(values[lo] * (1 - w) + values[hi] * w, 6))
        return tuple(out)
    values = tuple(float(a) for a in preset)
    if len(values) != num_scales:
        raise ConfigError(
            f"alpha needs one value per scale ({num_scales} for this model), got {len(values)}, "
            f"or a preset name: {', '.join(sorted(ALPHA_PRESETS))}"
        )
    return values


def _set(cfg: Any, name: str, value: Any) -> None:
    """Normalise a field of a frozen config while it is being made (``__post_init__`` only)."""
    object.__setattr__(cfg, name, value)


def _check_patch_nums(patch_nums: Sequence[int]) -> tuple[int, ...]:
    pn = tuple(int(p) for p in patch_nums)
    if not pn or any(p <= 0 for p in pn) or list(pn) != sorted(set(pn)):
        raise ConfigError(f"patch_nums must be strictly increasing positive integers, got {list(pn)}")
    return pn


@dataclass(frozen=True)
class VQVAEConfig(Serialisable):
    """VAR's multi-scale VQ-VAE (docs/upstream.md §2). Defaults: the released ``vae_ch160v4096z32``."""

    vocab_size: int = option(4096, "codebook size V")
    z_channels: int = option(32, "latent / codebook dimension Cvae")
    ch: int = option(160, "base channels of encoder and decoder, a multiple of --norm-groups")
    ch_mult: tuple[int, ...] = option(
        (1, 1, 2, 2, 4), "channel multiplier per level; downsampling 2^(levels-1)"
    )
    num_res_blocks: int = option(2, "ResNet blocks per encoder level (decoder: +1)")
    dropout: float = 0.0
    beta: float = 0.25  #: commitment weight (tokenizer training only)
    using_znorm: bool = False  #: cosine instead of Euclidean nearest neighbour
    quant_conv_ks: int = 3  #: kernel of quant_conv / post_quant_conv
    quant_resi: float = 0.5  #: phi(h) = (1-r) h + r conv(h); |r| < 1e-6 means identity
    share_quant_resi: int = 4  #: K phi convs shared over scales (0: one per scale, 1: one in all)
    default_qresi_counts: int = 0  #: number of phi convs when share_quant_resi == 0 (0: one per scale)
    patch_nums: tuple[int, ...] = option(DEFAULT_PATCH_NUMS, "square token-map sides, coarse to fine")
    in_channels: int = 3
    using_sa: bool = True  #: self-attention at the lowest resolution level
    using_mid_sa: bool = True  #: self-attention in the middle block
    #: GroupNorm groups of encoder and decoder (VAR: 32). Each group is normalised per image, so a
    #: group of one channel (32 groups of 32-channel layers) erases that channel's per-image mean:
    #: narrow tokenizers lose the images' colours that way; give them fewer groups
    norm_groups: int = option(32, "GroupNorm groups in encoder and decoder (VAR: 32; narrow models: fewer)")

    def __post_init__(self) -> None:
        _set(self, "patch_nums", _check_patch_nums(self.patch_nums))
        _set(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        g = self.norm_groups
        if g < 1 or self.ch % g or any((self.ch * m) % g for m in self.ch_mult):
            raise ConfigError(
                f"VQ-VAE channels (ch={self.ch} x ch_mult) must be multiples of norm_groups={g} (GroupNorm); "
                "choose --norm-groups dividing --ch (e.g. 1, 8 or 32)"
            )
        if self.vocab_size < 2 or self.z_channels < 1:
            raise ConfigError("VQ-VAE needs vocab_size >= 2 and z_channels >= 1")
        if self.share_quant_resi < 0:
            raise ConfigError("share_quant_resi must be >= 0")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def resolution(self) -> int:
        """Image side in pixels that the last scale covers (latent side x downsampling)."""
        return self.patch_nums[-1] * self.downsample


ENCODER_INPUTS = ("raw", "imagenet")
#: the style image's encoders (:attr:`StyleVARConfig.style_encoder`)
STYLE_ENCODERS = ("resnet", "clip_resampler")


@dataclass(frozen=True)
class StyleVARConfig(Serialisable):
    """The StyleVAR transformer (docs/upstream.md §3). Defaults: the released d20 model."""

    depth: int = 20  #: number of blended cross-attention blocks
    embed_dim: int = 0  #: width C; 0 means 64 * depth (upstream's rule)
    num_heads: int = 0  #: attention heads; 0 means depth (upstream's rule)
    mlp_ratio: float = 4.0  #: FFN hidden size = round(mlp_ratio * C)
    norm_eps: float = 1e-6  #: LayerNorm epsilon
    attn_l2_norm: bool = True  #: L2-normalised q/k with a learned per-head scale (VAR)
    drop_path_rate: float = -1.0  #: stochastic depth (training); < 0 means 0.1 * depth / 24
    #: output width of the ResNet-18 encoders: 512 is torchvision's ResNet-18 (the released
    #: models); other multiples of 8 scale every stage's channels (small models from scratch)
    style_enc_dim: int = 512
    vocab_size: int = 4096  #: must match the VQ-VAE
    z_channels: int = 32  #: Cvae, must match the VQ-VAE
    patch_nums: tuple[int, ...] = DEFAULT_PATCH_NUMS  #: must match the VQ-VAE
    #: per-scale alpha_k, the style branch's weight in the blended cross-attention: one value per
    #: scale, or a preset name of :data:`ALPHA_PRESETS` (resampled for other scale counts)
    alpha: tuple[float, ...] | str = "paper"
    #: what the ResNet-18 encoders see: ``raw`` = the model's [-1, 1] images (the released
    #: checkpoints were trained so); ``imagenet`` = [0, 1] images normalised with ImageNet's
    #: mean/std (set when the encoders start from torchvision's ImageNet weights)
    encoder_input: str = "raw"
    #: a direct content pathway (not in the published model, off for the released weights): each
    #: content token's VQ feature, projected by ``content_embed``, is added to the target token at the
    #: same place and scale, so the content's layout reaches every block's residual stream, not only
    #: the attention queries and the start token (docs/architecture.md, "The content pathway")
    content_residual: bool = False
    #: the style image's encoder: ``resnet`` (ResNet-18 -> one vector for AdaLN; the released models) or
    #: ``clip_resampler`` (StyleAR's: a CLIP ViT's patch features -> a perceiver resampler -> ``style_tokens``
    #: tokens that every block attends to and whose mean feeds AdaLN; docs/architecture.md, "Style encoders")
    style_encoder: str = "resnet"
    #: ``clip_resampler``: the CLIP vision tower's sizes (fields of transformers' ``CLIPVisionConfig``:
    #: hidden_size, num_hidden_layers, image_size, patch_size, ...); empty: its defaults (ViT-B/32, 224 px)
    clip_vision: dict | None = None
    clip_layer: int = -2  #: ``clip_resampler``: which hidden state feeds the resampler (-2: the penultimate)
    style_tokens: int = 16  #: ``clip_resampler``: M, the resampler's output tokens
    resampler_depth: int = 4  #: ``clip_resampler``: perceiver layers
    resampler_dim: int = 0  #: ``clip_resampler``: the resampler's width; 0 means embed_dim
    #: ``clip_resampler``: the style image's own per-scale VQ features, embedded like target tokens
    #: (``word_embed`` + the level and position embeddings), join the M resampler tokens: the blocks attend
    #: to M + L style tokens and AdaLN takes the mean of all. A direct path for the style's colours, as
    #: ``content_residual`` is for the content's layout (docs/architecture.md, "The style's own tokens")
    style_vq_tokens: bool = False

    def __post_init__(self) -> None:
        _set(self, "patch_nums", _check_patch_nums(self.patch_nums))
        if self.style_encoder not in STYLE_ENCODERS:
            raise ConfigError(f"style_encoder must be one of {STYLE_ENCODERS}, not {self.style_encoder!r}")
        if self.style_encoder == "clip_resampler":
            _set(self, "clip_vision", dict(self.clip_vision or {}))
            if self.style_tokens < 1 or self.resampler_depth < 1:
                raise ConfigError("style_tokens and resampler_depth must be >= 1")
        elif self.style_vq_tokens:
            raise ConfigError(
                "style_vq_tokens needs style_encoder='clip_resampler' (the blocks' style attention)"
            )
        if self.encoder_input not in ENCODER_INPUTS:
            raise ConfigError(f"encoder_input must be one of {ENCODER_INPUTS}, not {self.encoder_input!r}")
        if self.depth < 1:
            raise ConfigError("depth must be >= 1")
        if self.style_enc_dim < 8 or self.style_enc_dim % 8:
            raise ConfigError(f"style_enc_dim must be a positive multiple of 8, got {self.style_enc_dim}")
        if self.embed_dim <= 0:
            _set(self, "embed_dim", 64 * self.depth)
        if self.num_heads <= 0:
            _set(self, "num_heads", self.depth)
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.drop_path_rate < 0:
            _set(self, "drop_path_rate", 0.1 * self.depth / 24)
        if self.resampler_dim <= 0:
            _set(self, "resampler_dim", self.embed_dim)
        _set(self, "alpha", alpha_for_scales(self.alpha, len(self.patch_nums)))
        if any(not 0.0 <= a <= 1.0 for a in self.alpha):
            raise ConfigError(f"alpha values must lie in [0, 1], got {list(self.alpha)}")

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def seq_len(self) -> int:
        return sum(p * p for p in self.patch_nums)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return round(self.embed_dim * self.mlp_ratio)

    def check_vqvae(self, vae: VQVAEConfig) -> None:
        """Raise :class:`ConfigError` unless ``vae`` tokenises for this transformer."""
        mism = [
            f"{name}: transformer {a} vs VQ-VAE {b}"
            for name, a, b in (
                ("vocab_size", self.vocab_size, vae.vocab_size),
                ("z_channels", self.z_channels, vae.z_channels),
                ("patch_nums", list(self.patch_nums), list(vae.patch_nums)),
            )
            if a != b
        ]
        if mism:
            raise ConfigError("the VQ-VAE does not match the transformer (" + "; ".join(mism) + ")")


# ------------------------------------------------------------------------ images and outputs
#: how an input becomes the model's square: centre crop or squash (:mod:`stylevar.images`)
FITS = ("crop", "squash")
#: colour preservation modes (:func:`stylevar.stylize.controls.preserve_colour`)
COLOUR_MODES = ("none", "luminance", "stats")
#: upsamplers back to the content's size (:mod:`stylevar.stylize.controls`)
UPSAMPLERS = ("lanczos", "guided")


# ------------------------------------------------------------------------ sampling
#: the arithmetic of a run, and the spellings each name accepts; ``auto`` is resolved per device by the
#: pipeline (:func:`stylevar.devices.resolve_dtype`: bf16 where the device computes it natively, else fp32)
DTYPES = ("fp32", "bf16", "fp16", "int8", "auto")
DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "qint8": "int8"}
#: seeds are unsigned 63-bit integers (torch.Generator takes 64 bits; image k's seed is base + k)
MAX_SEED = 2**63 - 1
#: the sampling fields a checkpoint stores as its defaults (``dtype``: fp32 unless it was saved with another,
#: e.g. ``auto``; checkpoints written before it was stored read as fp32)
STORED_SAMPLING = ("top_k", "top_p", "temperature", "style_strength", "dtype")


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int (a whole float such as ``3.0`` too, never a bool), inside [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"{name} must be {'in ' if high is not None else ''}{span}, got {value}")
    return int(value)


def check_float(name: str, value: Any, *, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a finite float (an int too, never a bool), inside [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}")
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ConfigError(f"{name} must lie in [{lo}, {hi}], got {value:g}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def normalise_dtype(value: Any) -> str:
    """``fp32``/``bf16``/``fp16``/``int8``/``auto`` of any accepted spelling (a ``torch.dtype`` too; None: fp32)."""
    if value is None:
        return "fp32"
    key = str(value).lower().removeprefix("torch.")
    key = DTYPE_ALIASES.get(key, key)
    if key not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {value!r}")
    return key


@dataclass(frozen=True)
class Sampling(Serialisable):
    """How the target's tokens are drawn (frozen, validated once). Defaults: the paper's evaluation
    (top-k 900, top-p 0.96). A checkpoint stores its own defaults of the first four fields
    (:attr:`stylevar.io.Checkpoint.sampling`, :meth:`stored`); :mod:`stylevar.stylize.settings` makes it the
    sampling part of a stylization's settings; ``StyleVAR.generate`` takes it."""

    top_k: int = option(900, "keep the k most likely tokens at each position (0: off)")
    top_p: float = option(0.96, "nucleus sampling: keep the smallest set of tokens with this mass (0: off)")
    temperature: float = option(1.0, "divide the logits by this before filtering (> 0)")
    style_strength: float = option(
        0.0, "shift every scale's alpha by 0.5*s, clamped to [0.01, 0.99] (-2..2; 0: the model's alpha)"
    )
    #: explicit per-scale alpha (one value in [0, 1] per scale), instead of the model's; the command
    #: line sets it with --alpha (a preset name or values), which also accepts presets
    alpha: tuple[float, ...] | None = option(None, "per-scale alpha overriding the model's", flag=False)
    #: None: a random base, reported with the results
    seed: int | None = option(None, "base seed: image k of a run gets seed+k")
    dtype: str = option(
        "fp32",
        "arithmetic: fp32 (exact); bf16: the transformer's products and attention and the VQ-VAE decoder in "
        "bf16 (on a CPU the encoders too, the weights stored in bf16 once; on a GPU under autocast; logits, "
        "sampling and the quantizer stay fp32); fp16 (autocast); int8 weights for the transformer (CPU); auto: "
        "bf16 where the device computes it natively (CPUs with AMX or AVX512-BF16, CUDA since Ampere), else fp32",
        choices=DTYPES,
    )
    cuda_graphs: bool = option(
        False, "replay each scale's transformer pass as a CUDA graph (GPU; captured once per batch size)"
    )
    legacy_kv_cache: bool = option(
        False, "reproduce the published sampler's duplicated KV cache token for token"
    )

    def __post_init__(self) -> None:
        _set(self, "top_k", check_int("top_k", self.top_k, low=0))
        _set(self, "top_p", check_float("top_p", self.top_p, low=0.0, high=1.0))
        _set(self, "temperature", check_float("temperature", self.temperature))
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature:g}")
        _set(self, "style_strength", check_float("style_strength", self.style_strength, low=-2.0, high=2.0))
        if self.alpha is not None:
            if isinstance(self.alpha, (str, bytes)) or not isinstance(self.alpha, Sequence):
                raise ConfigError(f"alpha must be a list of per-scale values in [0, 1], got {self.alpha!r}")
            values = tuple(check_float("alpha", a, low=0.0, high=1.0) for a in self.alpha)
            if not values:
                raise ConfigError("alpha must hold one value per scale, got none")
            _set(self, "alpha", values)
        if self.seed is not None:
            _set(self, "seed", check_int("seed", self.seed, low=0, high=MAX_SEED))
        _set(self, "dtype", normalise_dtype(self.dtype))
        check_bool("cuda_graphs", self.cuda_graphs)
        check_bool("legacy_kv_cache", self.legacy_kv_cache)
        if self.cuda_graphs and self.legacy_kv_cache:
            raise ConfigError("cuda_graphs runs the correct KV cache only: drop legacy_kv_cache")

    @classmethod
    def plain(cls, **changes: Any) -> Sampling:
        """Unfiltered sampling (top-k and top-p off) with ``changes``: the published model's own default."""
        return cls(**{"top_k": 0, "top_p": 0.0, **changes})

    def stored(self) -> dict[str, Any]:
        """The fields a checkpoint keeps as its sampling defaults (``config.json``'s ``sampling``)."""
        return {k: getattr(self, k) for k in STORED_SAMPLING}

    @property
    def filters(self) -> tuple[int, float, float]:
        """(top_k, top_p, temperature): what one ``generate`` call's rows must share."""
        return self.top_k, self.top_p, self.temperature


#: unfiltered sampling: the published model's own ``generate`` default (top-k and top-p off)
PLAIN = Sampling.plain()


def d20_configs() -> tuple[StyleVARConfig, VQVAEConfig]:
    """The release configuration: StyleVAR d20 (721M parameters) and vae_ch160v4096z32."""
    return StyleVARConfig(), VQVAEConfig()
