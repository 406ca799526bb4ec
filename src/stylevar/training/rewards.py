"""GRPO rewards (docs/upstream.md §6.3) as plain functions of the generated images and a :class:`RewardBatch`.

A reward is any ``RewardFn = Callable[[images, RewardBatch], Tensor]``:

* ``images``: the generated images, (N, 3, H, W) float in **[0, 1]**;
* the batch's ``target`` / ``content`` / ``style``: (N, 3, H, W) in **[0, 1]**, rows aligned with the
  images (already repeated for the G rollouts of a group: :meth:`RewardBatch.repeat`);
* result: (N,) float32, **higher is better**. Rewards are differentiable with respect to ``images``.

Terms (each compares with a default reference image, overridable with ``ref=``):

==========  =============================  ==========  ==================================
name        value                          default ref optional package / weights
==========  =============================  ==========  ==================================
dreamsim    −DreamSim distance             target      dreamsim + DreamSim weights
clip        +CLIP cosine similarity        target      transformers + CLIP weights
lpips       −LPIPS                         target      lpips + torchvision VGG-16/AlexNet
ssim        +SSIM (perceptual.ssim)        target      none
pixel       −mean |x − ref|                target      none
mse         −mean (x − ref)²               target      none
gram        −Gram style loss (VGG-19)      style       torchvision VGG-19 weights
tv          −(mean |Δh| + mean |Δw|)       —           none
==========  =============================  ==========  ==================================

:func:`build_reward` parses the CLI spec ``name[@ref][:weight],...`` into a :class:`WeightedReward`:
the paper's reward is ``"dreamsim:5"`` (R = −5·DreamSim, :data:`PAPER_REWARD`); upstream's legacy
unpaired reward is ``"lpips@content:1,gram:1,tv:0.01,ssim@content:0.5"`` (:data:`LEGACY_UNPAIRED_REWARD`;
upstream used LPIPS-alex there: ``lpips_net="alex"``).
"""

from __future__ import annotations

import functools
import inspect
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch

from ..errors import ConfigError
from ..perceptual.metrics import ssim as _ssim

__all__ = [
    "DEFAULT_REFS",
    "LEGACY_UNPAIRED_REWARD",
    "PAPER_REWARD",
    "REFS",
    "ClipReward",
    "DreamSimReward",
    "GramStyleReward",
    "LPIPSReward",
    "RewardBatch",
    "RewardFn",
    "RewardTerm",
    "WeightedReward",
    "build_reward",
    "parse_reward_spec",
    "pixel_reward",
    "requires_target",
    "reward_refs",
    "ssim_reward",
    "tv_reward",
]

REFS = ("target", "content", "style")
PAPER_REWARD = "dreamsim:5"
LEGACY_UNPAIRED_REWARD = "lpips@content:1,gram:1,tv:0.01,ssim@content:0.5"
#: reward names and the reference image each compares with by default (None: no reference)
DEFAULT_REFS: dict[str, str | None] = {
    "dreamsim": "target",
    "clip": "target",
    "lpips": "target",
    "ssim": "target",
    "pixel": "target",
    "mse": "target",
    "gram": "style",
    "tv": None,
}


@dataclass
class RewardBatch:
    """The conditioning/reference images of a batch of rollouts, each (N, 3, H, W) in [0, 1] or None
    (unpaired data has no ``target``); rows aligned with the generated images."""

    target: torch.Tensor | None = None
    content: torch.Tensor | None = None
    style: torch.Tensor | None = None

    def get(self, ref: str) -> torch.Tensor:
        """The ``ref`` images ('target', 'content' or 'style'); a clear error when the batch has none."""
        if ref not in REFS:
            raise ConfigError(f"unknown reference image {ref!r}; valid: {', '.join(REFS)}")
        x = getattr(self, ref)
        if x is None:
            hint = " (unpaired data has no target: compare with @content instead)" if ref == "target" else ""
            raise ConfigError(f"this reward compares with the {ref} image, but the batch has none{hint}")
        return x

    def repeat(self, groups: int) -> RewardBatch:
        """Each image repeated for ``groups`` rollouts, g-major (row g·B + b is image b), the layout of the
        published GRPO code's rollouts (docs/upstream.md §6.2; our trainer uses :meth:`repeat_interleave`)."""
        return RewardBatch(
            **{
                f.name: None
                if getattr(self, f.name) is None
                else getattr(self, f.name).repeat(groups, 1, 1, 1)
                for f in fields(self)
            }
        )

    def repeat_interleave(self, n: int) -> RewardBatch:
        """Each image repeated ``n`` times in a row, condition-major (row b·n + g is image b): the layout of
        :class:`~stylevar.models.stylevar.Conditioning.repeat_interleave`, which GRPO's rollouts use."""
        return RewardBatch(
            **{
                f.name: None
                if getattr(self, f.name) is None
                else getattr(self, f.name).repeat_interleave(n, dim=0)
                for f in fields(self)
            }
        )

    def to(self, device: str | torch.device) -> RewardBatch:
        return RewardBatch(
            **{
                f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                for f in fields(self)
            }
        )


RewardFn = Callable[[torch.Tensor, RewardBatch], torch.Tensor]


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"generated images: expected (N, 3, H, W) in [0, 1], got {shape}")
    return images


def _reference(images: torch.Tensor, batch: RewardBatch, ref: str, *, same_size: bool = True) -> torch.Tensor:
    """``batch``'s ``ref`` images on the images' device, checked to have one row per generated image."""
    _check_images(images)
    x = batch.get(ref)
    if x.ndim != 4 or x.shape[0] != images.shape[0] or (same_size and x.shape != images.shape):
        raise ValueError(
            f"the {ref} images {tuple(x.shape)} do not line up with the generated images "
            f"{tuple(images.shape)}: one row per rollout is needed (RewardBatch.repeat(G) for the G rollouts)"
        )
    return x.to(device=images.device, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------
# Weight-free rewards (no optional dependency)


def ssim_reward(images: torch.Tensor, batch: RewardBatch, *, ref: str = "target") -> torch.Tensor:
    """+SSIM of each generated image with its ``ref`` image (docs/upstream.md §7.2), (N,), 1 when identical."""
    return _ssim(images.float(), _reference(images, batch, ref)).float()


def pixel_reward(
    images: torch.Tensor, batch: RewardBatch, *, ref: str = "target", mse: bool = False
) -> torch.Tensor:
    """−mean |x − ref| (or −mean (x − ref)² with ``mse``) over pixels and channels, (N,), 0 when identical."""
    d = images.float() - _reference(images, batch, ref)
    d = d.pow(2) if mse else d.abs()
    return -d.flatten(1).mean(1)


def tv_reward(images: torch.Tensor, batch: RewardBatch | None = None) -> torch.Tensor:
    """−total variation, −(mean |Δh| + mean |Δw|) per image, (N,); needs no reference image."""
    x = _check_images(images).float()
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().flatten(1).mean(1)
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().flatten(1).mean(1)
    return -(dh + dw)


# ---------------------------------------------------------------------------------------------------
# Model-based rewards (optional packages / pretrained weights; built lazily)


class _ModelReward:
    """A reward around a frozen perceptual model; ``refs`` tells which batch images it reads."""

    name = "model"
    default_ref = "target"

    def __init__(self, model, ref: str | None):
        ref = self.default_ref if ref is None else ref
        if ref not in REFS:
            raise ConfigError(f"unknown reference image {ref!r} for {self.name}; valid: {', '.join(REFS)}")
        self.model = model
        self.ref = ref

    @property
    def refs(self) -> frozenset[str]:
        return frozenset({self.ref})

    def to(self, device: str | torch.device):
        self.model.to(device)
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ref={self.ref!r})"


class DreamSimReward(_ModelReward):
    """−DreamSim distance to the ``ref`` image (default target), (N,): the paper's GRPO reward
    (weighted 5: ``build_reward('dreamsim:5')``). ``model``: a :class:`~stylevar.perceptual.DreamSimDistance`
    (or any callable (a, b) -> (N,) distance); None builds one from ``weights_dir``."""

    name = "dreamsim"

    def __init__(
        self,
        model=None,
        *,
        ref: str | None = None,
        weights_dir=None,
        device: str | torch.device = "cpu",
        download: bool = False,
    ):
        if model is None:
            from ..perceptual import DreamSimDistance

            model = DreamSimDistance(weights_dir, device=device, download=download)
        super().__init__(model, ref)

    def __call__(self, images: torch.Tensor, batch: RewardBatch) -> torch.Tensor:
        ref = _reference(images, batch, self.ref, same_size=False)
        return -self.model(images, ref).float()


class ClipReward(_ModelReward):
    """+CLIP image-embedding cosine with the ``ref`` image (default target), (N,). ``model``: a
    :class:`~stylevar.perceptual.ClipSimilarity` (or any (a, b) -> (N,) similarity)."""

    name = "clip"

    def __init__(
        self,
        model=None,
        *,
        ref: str | None = None,
        model_dir_or_name=None,
        device: str | torch.device = "cpu",
        cache_dir=None,
        local_files_only: bool | None = None,
    ):
        if model is None:
            from ..perceptual import DEFAULT_CLIP_MODEL, ClipSimilarity

            model = ClipSimilarity(
                model_dir_or_name or DEFAULT_CLIP_MODEL,
                device=device,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
            )
        super().__init__(model, ref)

    def __call__(self, images: torch.Tensor, batch: RewardBatch) -> torch.Tensor:
        ref = _reference(images, batch, self.ref, same_size=False)
        return self.model(images, ref).float()


class LPIPSReward(_ModelReward):
    """−LPIPS to the ``ref`` image (default target), (N,). ``model``: an
    :class:`~stylevar.perceptual.LPIPSDistance` (or any (a, b) -> (N,) distance)."""

    name = "lpips"

    def __init__(
        self,
        model=None,
        *,
        ref: str | None = None,
        net: str = "vgg",
        backbone_weights=None,
        device: str | torch.device = "cpu",
        download: bool = False,
    ):
        if model is None:
            from ..perceptual import LPIPSDistance

            model = LPIPSDistance(net, device=device, backbone_weights=backbone_weights, download=download)
        super().__init__(model, ref)

    def __call__(self, images: torch.Tensor, batch: RewardBatch) -> torch.Tensor:
        return -self.model(images, _reference(images, batch, self.ref)).float()


class GramStyleReward(_ModelReward):
    """−Gram style loss (VGG-19 conv1_1…conv5_1, docs/upstream.md §6.3) to the ``ref`` image (default
    **style**), (N,). ``model``: a :class:`~stylevar.perceptual.VGGFeatures`; None builds one from
    ``weights`` (torchvision's ``vgg19-dcbb9e9d.pth``, or torch hub's cache)."""

    name = "gram"
    default_ref = "style"

    def __init__(
        self,
        model=None,
        *,
        ref: str | None = None,
        weights=None,
        device: str | torch.device = "cpu",
        download: bool = False,
    ):
        if model is None:
            from ..perceptual import VGGFeatures

            model = VGGFeatures(weights, device=device, download=download)
        super().__init__(model, ref)

    def __call__(self, images: torch.Tensor, batch: RewardBatch) -> torch.Tensor:
        from ..perceptual import VGGFeatures, gram_style_loss

        layers = VGGFeatures.STYLE_LAYERS
        ref = _reference(images, batch, self.ref, same_size=False)
        return -gram_style_loss(self.model(images, layers), self.model(ref, layers), layers).float()


# ---------------------------------------------------------------------------------------------------
# Which reference images a reward reads


def reward_refs(reward) -> frozenset[str]:
    """The batch images (``'target'``, ``'content'``, ``'style'``) that ``reward`` compares with.

    Read from a ``refs`` attribute (the reward classes, :class:`WeightedReward`), a ``functools.partial``'s
    ``ref=`` keyword, or the default of a ``ref`` parameter (the plain functions); empty otherwise.
    """
    refs = getattr(reward, "refs", None)
    if refs is not None:
        return frozenset(refs)
    if isinstance(reward, functools.partial):
        if "ref" in reward.keywords:
            return frozenset({reward.keywords["ref"]})
        return reward_refs(reward.func)
    try:
        param = inspect.signature(reward).parameters.get("ref")
    except (TypeError, ValueError):
        return frozenset()
    if param is not None and isinstance(param.default, str):
        return frozenset({param.default})
    return frozenset()


def requires_target(reward) -> bool:
    """True when ``reward`` compares with the ground-truth target, so it needs paired data."""
    return "target" in reward_refs(reward)


def _default_name(fn) -> str:
    name = getattr(fn, "name", None)
    base = fn.func if isinstance(fn, functools.partial) else fn
    if not isinstance(name, str):
        name = getattr(base, "__name__", type(base).__name__)
        name = name.removesuffix("_reward")
    if isinstance(fn, functools.partial) and fn.keywords.get("mse"):
        name = "mse"
    refs = reward_refs(fn)
    default = DEFAULT_REFS.get(name)
    if len(refs) == 1 and default is not None and next(iter(refs)) != default:
        name += "@" + next(iter(refs))
    return name


# ---------------------------------------------------------------------------------------------------
# Weighted sums


class RewardTerm(NamedTuple):
    name: str
    weight: float
    fn: RewardFn


class WeightedReward:
    """R = Σ weight_i · term_i(images, batch), (N,) float32, higher is better.

    ``terms``: ``(weight, fn)`` or ``(name, weight, fn)`` entries (names default to the reward's name,
    with ``@ref`` when it is not the default; repeated names get ``#2``, ``#3``...). After each call,
    :attr:`last_terms` maps every term's name to its **unweighted** per-image values (detached), for
    logging; :meth:`term_means` gives their batch means as floats.
    """

    def __init__(self, terms: Iterable[tuple]):
        self.terms: list[RewardTerm] = []
        seen: dict[str, int] = {}
        for entry in terms:
            if len(entry) == 3 and isinstance(entry[0], str):
                name, weight, fn = entry
            elif len(entry) == 2:
                (weight, fn), name = entry, None
            else:
                raise ConfigError(f"a reward term is (weight, fn) or (name, weight, fn), got {entry!r}")
            if not callable(fn):
                raise ConfigError(f"reward term {name or entry!r} is not callable")
            weight = float(weight)
            if not math.isfinite(weight):
                raise ConfigError(f"reward weight must be finite, got {weight}")
            name = name or _default_name(fn)
            seen[name] = seen.get(name, 0) + 1
            if seen[name] > 1:
                name = f"{name}#{seen[name]}"
            self.terms.append(RewardTerm(name, weight, fn))
        if not self.terms:
            raise ConfigError("a reward needs at least one term")
        self.last_terms: dict[str, torch.Tensor] = {}

    def __call__(self, images: torch.Tensor, batch: RewardBatch) -> torch.Tensor:
        _check_images(images)
        n = images.shape[0]
        total = None
        values: dict[str, torch.Tensor] = {}
        for term in self.terms:
            v = term.fn(images, batch)
            if v.shape != (n,):
                raise ValueError(
                    f"reward term {term.name!r} returned shape {tuple(v.shape)}, expected ({n},)"
                )
            v = v.float()
            values[term.name] = v.detach()
            total = term.weight * v if total is None else total + term.weight * v
        self.last_terms = values
        return total

    def term_means(self) -> dict[str, float]:
        """Batch means of the last call's unweighted terms, ``{name: float}``."""
        return {k: float(v.mean()) for k, v in self.last_terms.items()}

    @property
    def weights(self) -> dict[str, float]:
        return {t.name: t.weight for t in self.terms}

    @property
    def refs(self) -> frozenset[str]:
        out: set[str] = set()
        for t in self.terms:
            out |= reward_refs(t.fn)
        return frozenset(out)

    @property
    def requires_target(self) -> bool:
        return "target" in self.refs

    def to(self, device: str | torch.device) -> WeightedReward:
        for t in self.terms:
            if hasattr(t.fn, "to"):
                t.fn.to(device)
        return self

    def __repr__(self) -> str:
        return "WeightedReward(" + " + ".join(f"{t.weight:g}*{t.name}" for t in self.terms) + ")"


# ---------------------------------------------------------------------------------------------------
# Spec parser

_ITEM = re.compile(r"^(?P<name>[A-Za-z_]\w*)(?:@(?P<ref>[A-Za-z_]\w*))?(?::(?P<weight>.+))?$")


class _SpecTerm(NamedTuple):
    name: str
    ref: str | None
    weight: float


def parse_reward_spec(spec: str) -> list[_SpecTerm]:
    """``"name[@ref][:weight],..."`` → ``[(name, ref or None, weight)]`` (weight defaults to 1; a
    negative weight flips a term's sign). Names and refs are checked; :class:`ConfigError` lists the
    valid ones."""
    valid = f"valid names: {', '.join(DEFAULT_REFS)}; refs: {', '.join(REFS)}"
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"empty reward spec; expected 'name[@ref][:weight],...' ({valid})")
    out = []
    for raw in spec.split(","):
        item = raw.strip()
        m = _ITEM.match(item)
        if not m:
            raise ConfigError(
                f"bad reward term {item!r} in {spec!r}; expected 'name[@ref][:weight]' ({valid})"
            )
        name, ref, w = m.group("name").lower(), m.group("ref"), m.group("weight")
        if name not in DEFAULT_REFS:
            raise ConfigError(f"unknown reward {name!r} in {spec!r}; {valid}")
        if ref is not None:
            ref = ref.lower()
            if DEFAULT_REFS[name] is None:
                raise ConfigError(f"reward {name!r} takes no reference image (got @{ref})")
            if ref not in REFS:
                raise ConfigError(
                    f"unknown reference image {ref!r} in {item!r}; valid refs: {', '.join(REFS)}"
                )
        try:
            weight = 1.0 if w is None else float(w)
        except ValueError:
            raise ConfigError(f"bad weight {w!r} in reward term {item!r}; expected a number") from None
        if not math.isfinite(weight):
            raise ConfigError(f"bad weight {w!r} in reward term {item!r}; expected a finite number")
        out.append(_SpecTerm(name, ref, weight))
    return out


def build_reward(
    spec: str,
    *,
    device: str | torch.device = "cpu",
    dreamsim_dir=None,
    clip_model=None,
    lpips_net: str = "vgg",
    lpips_backbone=None,
    vgg_weights=None,
    download: bool = False,
    hf_cache_dir=None,
    local_files_only: bool | None = None,
    models: Mapping[str, object] | None = None,
) -> WeightedReward:
    """A :class:`WeightedReward` from a spec ``"name[@ref][:weight],..."`` (see :func:`parse_reward_spec`).

    Examples: ``"dreamsim:5"`` (the paper: R = −5·DreamSim vs target), ``"ssim"``, ``"pixel:-1"``
    (sign-flipped), ``"lpips@content:1,gram:1,tv:0.01,ssim@content:0.5"`` (upstream's legacy unpaired
    reward). Perceptual models are built once per kind and shared between terms; ssim/pixel/mse/tv need
    no optional package.

    Args:
        dreamsim_dir: DreamSim weights folder (default ``$STYLEVAR_CACHE/dreamsim``).
        clip_model: CLIP folder or Hub id (default ``openai/clip-vit-base-patch32``); ``hf_cache_dir`` and
            ``local_files_only`` go to its loader.
        lpips_net: ``'vgg'`` (the paper's metric) or ``'alex'`` (upstream's legacy reward);
            ``lpips_backbone``: its torchvision trunk weights.
        vgg_weights: torchvision VGG-19 weights for ``gram``.
        download: allow downloading missing DreamSim/LPIPS/VGG weights.
        models: prebuilt models to use instead, by kind: ``'dreamsim'``, ``'clip'``, ``'lpips'``, ``'vgg'``.
    """
    built: dict[str, object] = dict(models or {})

    def model(kind: str):
        if kind not in built:
            from .. import perceptual as P

            if kind == "dreamsim":
                built[kind] = P.DreamSimDistance(dreamsim_dir, device=device, download=download)
            elif kind == "clip":
                built[kind] = P.ClipSimilarity(
                    clip_model or P.DEFAULT_CLIP_MODEL,
                    device=device,
                    cache_dir=hf_cache_dir,
                    local_files_only=local_files_only,
                )
            elif kind == "lpips":
                built[kind] = P.LPIPSDistance(
                    lpips_net, device=device, backbone_weights=lpips_backbone, download=download
                )
            elif kind == "vgg":
                built[kind] = P.VGGFeatures(vgg_weights, device=device, download=download)
        return built[kind]

    terms = []
    for name, ref, weight in parse_reward_spec(spec):
        if name == "ssim":
            fn = functools.partial(ssim_reward, ref=ref or "target")
        elif name in ("pixel", "mse"):
            fn = functools.partial(pixel_reward, ref=ref or "target", mse=name == "mse")
        elif name == "tv":
            fn = tv_reward
        elif name == "dreamsim":
            fn = DreamSimReward(model("dreamsim"), ref=ref)
        elif name == "clip":
            fn = ClipReward(model("clip"), ref=ref)
        elif name == "lpips":
            fn = LPIPSReward(model("lpips"), ref=ref)
        else:  # gram
            fn = GramStyleReward(model("vgg"), ref=ref)
        label = name if ref is None or ref == DEFAULT_REFS[name] else f"{name}@{ref}"
        terms.append((label, weight, fn))
    return WeightedReward(terms)
