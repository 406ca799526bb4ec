"""Pretrained perceptual models for the paper's metrics and the GRPO rewards (upstream-spec §5.3, §6.1).

* :class:`DreamSimDistance` (``dreamsim`` package, DINO ViT-B/16 + LoRA): 1 - cosine, lower is closer.
* :class:`ClipSimilarity` (``transformers`` CLIP): cosine of the image embeddings, higher is closer.
* :class:`LPIPSDistance` (``lpips`` package, VGG-16 or AlexNet trunk): lower is closer.
* :class:`VGGFeatures` (torchvision VGG-19) with :func:`gram_style_loss` / :func:`content_loss` and the
  convenience :class:`StyleContentLoss`: the paper's Table-2 "Style loss" and "Content loss".
* :class:`InceptionFeatures` (torchvision Inception-v3): 2048-d pool features for
  :func:`stylevar.eval.metrics.frechet_distance` (an FID; see the class for which one).

Conventions, everywhere: images are (N, 3, H, W) float tensors in **[0, 1]**; every score is per image,
(N,) float32. Each model is frozen (eval mode, ``requires_grad`` off on its parameters, ``.train()`` keeps
it in eval mode) but its call is differentiable with respect to the input images: nothing runs under
``torch.no_grad`` here, so a reward's gradient can flow into a generated image. Wrap calls in
``torch.no_grad()`` yourself when you only need values.

The optional packages (``dreamsim``, ``transformers``, ``lpips``: ``pip install "stylevar[rewards]"``) are
imported only when a model is built; a missing one raises :class:`~stylevar.errors.MissingDependencyError`.
Weights come from local files or caches. Nothing is downloaded unless asked (``download=True``;
``local_files_only=False`` for CLIP); weights that are neither on disk nor downloadable raise
:class:`~stylevar.errors.MissingWeightsError`, a one-line message naming the files, where to put them and
where to get them on a connected machine.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from unittest import mock

import torch
from torch import nn
from torch.nn import functional as F

from stylevar.errors import CheckpointError, ConfigError, MissingDependencyError, MissingWeightsError

PathLike = str | os.PathLike

EXTRA_HINT = 'pip install "stylevar[rewards]"'
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_CLIP_MODEL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ClipSimilarity",
    "DreamSimDistance",
    "InceptionFeatures",
    "LPIPSDistance",
    "StyleContentLoss",
    "VGGFeatures",
    "content_loss",
    "gram_matrix",
    "gram_style_loss",
    "resolve_cache_dir",
]


# ---------------------------------------------------------------------------------------------------
# Shared helpers


def resolve_cache_dir(name: str | None = None) -> Path:
    """stylevar's cache folder (created by nobody here): ``$STYLEVAR_CACHE``, else
    ``$XDG_CACHE_HOME/stylevar``, else ``~/.cache/stylevar``; with ``name``, that sub-folder."""
    root = os.environ.get("STYLEVAR_CACHE")
    if root:
        base = Path(root).expanduser()
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "stylevar"
    return base / name if name else base


def _require(module: str, what: str):
    """Import an optional package or raise a one-line MissingDependencyError naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"{what} needs the optional package '{module}' ({_why(e)}); install it with: {EXTRA_HINT}"
        ) from None


def _why(e: BaseException) -> str:
    """``Type: first line of the message``, for one-line errors."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _images(x: torch.Tensor, what: str = "images") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what}: expected a (N, 3, H, W) tensor in [0, 1], got {shape}")
    return x.float()


def _pair(a: torch.Tensor, b: torch.Tensor, *, same_size: bool) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _images(a, "first images"), _images(b, "second images")
    if a.shape[0] != b.shape[0] or (same_size and a.shape != b.shape):
        raise ValueError(
            f"expected two image batches of {'one shape' if same_size else 'one size N'}, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return a, b.to(a.device)


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A tensor state dict from ``.safetensors`` or a (weights-only) torch pickle; unwraps
    ``{'state_dict': ...}`` / ``{'model': ...}``."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read the weights ({_why(e)})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return dict(obj)


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _torchvision_state_dict(
    enum, weights: PathLike | Mapping[str, torch.Tensor] | None, *, download: bool, what: str
) -> dict[str, torch.Tensor]:
    """torchvision ImageNet weights ``enum`` from a path (file or folder holding the file), a state dict,
    or torch hub's checkpoint cache; downloaded there only when ``download``."""
    if isinstance(weights, Mapping):
        return dict(weights)
    url = enum.url
    fname = url.rsplit("/", 1)[-1]
    if weights is not None:
        p = Path(weights).expanduser()
        if p.is_dir():
            p = p / fname
        if not p.is_file():
            raise MissingWeightsError(
                f"{what} needs torchvision's {fname}, not found at {p}; download {url} on a connected "
                "machine and pass its path"
            )
        return _load_state_dict(p)
    cached = _hub_checkpoints() / fname
    if cached.is_file():
        return _load_state_dict(cached)
    if download:
        try:
            return enum.get_state_dict(progress=False)
        except Exception as e:
            raise MissingWeightsError(
                f"{what}: cannot download {url} ({type(e).__name__}); fetch it on a connected machine "
                f"and put it in {cached.parent} or pass its path"
            ) from None
    raise MissingWeightsError(
        f"{what} needs torchvision's {fname}, not in torch hub's cache {cached.parent}; download {url} on "
        "a connected machine and put it there or pass its path (or allow downloading: download=True)"
    )


def _features_state(sd: Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """The ``features`` part of a torchvision VGG/AlexNet state dict, keyed ``'<index>.<param>'``
    (accepts full model state dicts, ``features.*`` only, or already-stripped keys)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("features."):
            k = k[len("features.") :]
        elif "." in k and not k.split(".", 1)[0].isdigit():
            continue  # classifier.*, etc.
        out[k] = v
    if not out:
        raise CheckpointError(f"{what}: the weights hold no convolutional 'features.*' tensors")
    return out


def _load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict(sd, strict=True)`` with a one-line :class:`CheckpointError` naming the first
    missing / unexpected / mis-shaped keys (``num_batches_tracked`` may be absent, as in old files)."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    shapes = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            problems.append(f"{label}: {', '.join(keys[:3])}{more}")
    if problems:
        raise CheckpointError(f"{what}: {'; '.join(problems)}")
    full = dict(sd)
    for k, v in own.items():
        if k not in full:  # num_batches_tracked
            full[k] = torch.zeros_like(v, device="cpu")
    module.load_state_dict(full, strict=True)


class _Frozen(nn.Module):
    """A frozen pretrained model: always in eval mode, parameters without gradients (inputs keep theirs)."""

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # stays in eval mode, whatever the caller asks
        return super().train(False)


# ---------------------------------------------------------------------------------------------------
# VGG-19 Gram (style) and conv4_2 (content) losses


class VGGFeatures(_Frozen):
    """torchvision VGG-19 (IMAGENET1K_V1) on ImageNet-normalised [0, 1] images, returning **pre-ReLU**
    conv outputs by name: ``conv1_1``, ``conv2_1``, ``conv3_1``, ``conv4_1``, ``conv5_1`` (the Gram/style
    layers, features 0, 5, 10, 19, 28) and ``conv4_2`` (the content layer, feature 21).

    Args:
        weights: a torchvision VGG-19 state dict file (``vgg19-dcbb9e9d.pth``; ``.pth``/``.safetensors``,
            full model or ``features.*`` only) or a folder holding it, a state dict, or None for torch
            hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``).
        download: fetch the weights into torch hub's cache when they are not there.
    """

    LAYERS = {"conv1_1": 0, "conv2_1": 5, "conv3_1": 10, "conv4_1": 19, "conv4_2": 21, "conv5_1": 28}
    STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
    CONTENT_LAYER = "conv4_2"

    def __init__(
        self,
        weights: PathLike | Mapping[str, torch.Tensor] | None = None,
        *,
        device: str | torch.device = "cpu",
        download: bool = False,
    ):
        super().__init__()
        from torchvision.models import VGG19_Weights, vgg19

        enum = VGG19_Weights.IMAGENET1K_V1
        sd = _features_state(
            _torchvision_state_dict(enum, weights, download=download, what="the VGG-19 style/content loss"),
            "VGG-19",
        )
        last = max(self.LAYERS.values())
        with torch.device("meta"):  # skip the random init of the 140M-parameter classifier
            features = vgg19(weights=None).features[: last + 1]
        features = features.to_empty(device="cpu")
        for m in features:
            if isinstance(m, nn.ReLU):
                m.inplace = False  # an in-place ReLU would overwrite the pre-ReLU outputs we keep
        sd = {k: v for k, v in sd.items() if int(k.split(".", 1)[0]) <= last}
        try:
            features.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            msg = _why(e)
            raise CheckpointError(f"the VGG-19 weights do not fit torchvision's vgg19 ({msg})") from None
        self.features = features
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._freeze()
        self.to(device)

    def forward(self, images: torch.Tensor, layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """``{layer name: (N, C, h, w) pre-ReLU features}`` for the named layers (default: all six)."""
        names = tuple(layers) if layers is not None else tuple(self.LAYERS)
        bad = [n for n in names if n not in self.LAYERS]
        if bad:
            raise ConfigError(f"unknown VGG-19 layer(s) {bad}; valid: {', '.join(self.LAYERS)}")
        wanted = {self.LAYERS[n]: n for n in names}
        x = (_images(images) - self.mean) / self.std
        out: dict[str, torch.Tensor] = {}
        stop = max(wanted) if wanted else -1
        for i, layer in enumerate(self.features):
            if i > stop:
                break
            x = layer(x)
            if i in wanted:
                out[wanted[i]] = x
        return {n: out[n] for n in names}


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Gram matrices F Fᵀ / (C·H·W) of (N, C, H, W) features, (N, C, C)."""
    n, c, h, w = features.shape
    f = features.float().reshape(n, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


def _layer_pairs(a, b, layers: Sequence[str] | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        names = tuple(layers) if layers is not None else tuple(k for k in a if k in b)
        missing = [n for n in names if n not in a or n not in b]
        if missing:
            raise ValueError(f"features for layer(s) {missing} are missing")
        return [(a[n], b[n]) for n in names]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return [(a, b)]
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"got {len(a)} and {len(b)} feature maps")
    return list(zip(a, b))


def gram_style_loss(
    feats_a, feats_b, layers: Sequence[str] | None = VGGFeatures.STYLE_LAYERS
) -> torch.Tensor:
    """Per-image style loss, (N,): Σ over layers of the mean over C×C entries of (Gram_a − Gram_b)².

    ``feats_a``/``feats_b``: dicts from :class:`VGGFeatures` (``layers`` picks the names, default the
    five conv*_1 layers; None = every layer both hold), or matching sequences/tensors of (N, C, H, W)
    features (then every pair is used). The two sides may differ in H, W (Gram matrices are C×C) and
    ``feats_b`` may have batch size 1 (broadcast). Upstream-spec §6.1 "Style loss".
    """
    pairs = _layer_pairs(feats_a, feats_b, layers if isinstance(feats_a, Mapping) else None)
    total = None
    for fa, fb in pairs:
        term = (gram_matrix(fa) - gram_matrix(fb)).pow(2).mean(dim=(1, 2))
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no feature layers to compare")
    return total


def content_loss(feats_a, feats_b, layer: str = VGGFeatures.CONTENT_LAYER) -> torch.Tensor:
    """Per-image content loss, (N,): mean squared difference of the raw (pre-ReLU) ``layer`` features
    (default conv4_2). Accepts :class:`VGGFeatures` dicts or two feature tensors. Upstream-spec §6.1."""
    fa = feats_a[layer] if isinstance(feats_a, Mapping) else feats_a
    fb = feats_b[layer] if isinstance(feats_b, Mapping) else feats_b
    return (fa.float() - fb.float()).pow(2).flatten(1).mean(1)


class StyleContentLoss(_Frozen):
    """The paper's Table-2 "Style loss" (Gram, generated vs style) and "Content loss" (conv4_2, generated
    vs content) on one VGG-19; images in [0, 1], results (N,). Shares ``vgg`` when one is given."""

    def __init__(
        self,
        vgg: VGGFeatures | None = None,
        *,
        weights: PathLike | Mapping[str, torch.Tensor] | None = None,
        device: str | torch.device = "cpu",
        download: bool = False,
    ):
        super().__init__()
        self.vgg = vgg if vgg is not None else VGGFeatures(weights, device=device, download=download)
        self._freeze()

    def style_loss(self, images: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        layers = VGGFeatures.STYLE_LAYERS
        return gram_style_loss(self.vgg(images, layers), self.vgg(style, layers), layers)

    def content_loss(self, images: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        layer = VGGFeatures.CONTENT_LAYER
        return content_loss(self.vgg(images, (layer,)), self.vgg(content, (layer,)), layer)

    def forward(
        self, images: torch.Tensor, content: torch.Tensor, style: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(style_loss, content_loss)``, each (N,); the generated images go through VGG once."""
        feats = self.vgg(images)
        s = gram_style_loss(feats, self.vgg(style, VGGFeatures.STYLE_LAYERS))
        c = content_loss(feats, self.vgg(content, (VGGFeatures.CONTENT_LAYER,)))
        return s, c


# ---------------------------------------------------------------------------------------------------
# LPIPS


_LPIPS_BACKBONES = {"vgg": ("VGG16_Weights", "VGG-16"), "alex": ("AlexNet_Weights", "AlexNet")}


class LPIPSDistance(_Frozen):
    """LPIPS v0.1 (``lpips`` package) with a VGG-16 (``net='vgg'``, the paper's metric) or AlexNet
    (``'alex'``, upstream's legacy reward) trunk; images in [0, 1] (mapped to [-1, 1]), result (N,).

    The learned linear layers ship inside the ``lpips`` package; the trunk's torchvision ImageNet
    weights (``vgg16-397923af.pth`` / ``alexnet-owt-7be5be79.pth``) come from ``backbone_weights`` (a file,
    a folder holding it, or a state dict) or torch hub's checkpoint cache, downloaded there only with
    ``download=True``.
    """

    def __init__(
        self,
        net: str = "vgg",
        *,
        device: str | torch.device = "cpu",
        backbone_weights: PathLike | Mapping[str, torch.Tensor] | None = None,
        download: bool = False,
    ):
        super().__init__()
        if net not in _LPIPS_BACKBONES:
            raise ConfigError(f"unknown LPIPS net {net!r}; valid: {', '.join(_LPIPS_BACKBONES)}")
        lpips = _require("lpips", "LPIPS")
        import torchvision.models as tvm

        enum_name, arch = _LPIPS_BACKBONES[net]
        enum = getattr(tvm, enum_name).IMAGENET1K_V1
        sd = _features_state(
            _torchvision_state_dict(enum, backbone_weights, download=download, what=f"LPIPS-{net}"), arch
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's 'pretrained' deprecation, inside lpips
            model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)  # random trunk: no download
        # lpips splits the trunk's `features` into slices whose children keep the feature indices.
        trunk = {}
        for key in model.net.state_dict():
            _, index, param = key.split(".")
            if f"{index}.{param}" not in sd:
                raise CheckpointError(f"the {arch} weights for LPIPS lack features.{index}.{param}")
            trunk[key] = sd[f"{index}.{param}"]
        try:
            model.net.load_state_dict(trunk, strict=True)
        except RuntimeError as e:
            msg = _why(e)
            raise CheckpointError(f"the {arch} weights do not fit LPIPS-{net} ({msg})") from None
        self.net_name = net
        self.model = model
        self._freeze()
        self.to(device)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = _pair(a, b, same_size=True)
        return self.model(a * 2 - 1, b * 2 - 1).reshape(a.shape[0]).float()


# ---------------------------------------------------------------------------------------------------
# CLIP


def _hub_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _looks_like_path(src: str) -> bool:
    return src.startswith(("/", ".", "~")) or src.count("/") > 1 or "\\" in src


def _load_clip(transformers, src: str, cache_dir, local_files_only: bool | None):
    def load(source: str, **kw):
        config = transformers.AutoConfig.from_pretrained(source, **kw)
        kind = getattr(config, "model_type", "")
        if kind == "clip":
            cls = transformers.CLIPModel
        elif kind == "clip_vision_model":
            cls = transformers.CLIPVisionModelWithProjection
        else:
            raise CheckpointError(f"{source}: not a CLIP model (model_type {kind!r})")
        return cls.from_pretrained(source, **kw)

    path = Path(src).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise MissingWeightsError(f"{path}: not a Hugging Face model folder (no config.json)")
        try:
            return load(str(path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot load the CLIP model ({_why(e)})") from None
    if _looks_like_path(src):
        raise MissingWeightsError(
            f"CLIP model folder {path} does not exist; save {DEFAULT_CLIP_MODEL} there on a connected "
            "machine (CLIPModel.from_pretrained(...).save_pretrained(folder)) or give a Hub model id"
        )
    if local_files_only is None:
        attempts = [True] if _hub_offline() else [True, False]
    else:
        attempts = [bool(local_files_only)]
    for lfo in attempts:
        try:
            return load(src, cache_dir=cache_dir, local_files_only=lfo)
        except (OSError, ValueError):
            continue
    where = "not in the Hugging Face cache" + ("" if attempts == [True] else " and the Hub is unreachable")
    raise MissingWeightsError(
        f"CLIP model {src!r}: {where}; on a connected machine run `hf download {src}` (then copy the "
        "Hugging Face cache here) or save the model to a folder and pass that folder"
    )


class ClipSimilarity(_Frozen):
    """CLIP image-image cosine similarity (upstream-spec §5.3/§6.1), (N,), higher is more similar.

    Preprocessing as upstream: bilinear resize to 224×224 (no crop, no antialias) of the [0, 1] images,
    CLIP mean/std; embedding = vision ``pooler_output`` → ``visual_projection`` → L2 normalise.

    Args:
        model_dir_or_name: a local folder saved by ``save_pretrained`` (``CLIPModel`` or
            ``CLIPVisionModelWithProjection``) or a Hub model id (default ``openai/clip-vit-base-patch32``).
        cache_dir: the Hugging Face cache folder for a Hub id.
        local_files_only: True = cache only; False = may download; None = the cache first, then the Hub
            unless ``HF_HUB_OFFLINE`` is set.
    """

    SIZE = 224

    def __init__(
        self,
        model_dir_or_name: PathLike = DEFAULT_CLIP_MODEL,
        *,
        device: str | torch.device = "cpu",
        cache_dir: PathLike | None = None,
        local_files_only: bool | None = None,
    ):
        super().__init__()
        transformers = _require("transformers", "CLIP similarity")
        self.model = _load_clip(transformers, str(model_dir_or_name), cache_dir, local_files_only).float()
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self._freeze()
        self.to(device)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, 224, 224) CLIP-normalised pixels from [0, 1] images."""
        x = _images(images).to(self.mean.device)
        x = F.interpolate(x, size=(self.SIZE, self.SIZE), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings, (N, projection_dim)."""
        out = self.model.vision_model(pixel_values=self.preprocess(images))
        return F.normalize(self.model.visual_projection(out.pooler_output).float(), dim=-1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = _pair(a, b, same_size=False)
        return (self.embed(a) * self.embed(b)).sum(-1)


# ---------------------------------------------------------------------------------------------------
# DreamSim

_DREAMSIM_FILES = {  # what the dreamsim package's checkpoint zip unpacks to, per model type
    "dino_vitb16": ("dino_vitb16_pretrain.pth", "dino_vitb16_single_lora"),
    "clip_vitb32": ("clip_vitb32_pretrain.pth.tar", "clip_vitb32_single_lora"),
    "open_clip_vitb32": ("open_clip_vitb32_pretrain.pth.tar", "open_clip_vitb32_single_lora"),
    "ensemble": (
        "dino_vitb16_pretrain.pth",
        "open_clip_vitb16_pretrain.pth.tar",
        "clip_vitb16_pretrain.pth.tar",
        "ensemble_lora",
    ),
}
_DINO_BACKBONE_URL = "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"
_DINO_BACKBONE_FILE = _DINO_BACKBONE_URL.rsplit("/", 1)[-1]
_DREAMSIM_ZIP_URL = (
    "https://github.com/ssundaram21/dreamsim/releases/download/v0.2.0-checkpoints/dreamsim_{}_checkpoint.zip"
)


def _dino_backbone_path(weights_dir: Path) -> Path | None:
    """The DINO ViT-B/16 backbone that ``torch.hub.load('facebookresearch/dino:main', 'dino_vitb16')``
    would load: ``<dir>/checkpoints/`` (where dreamsim's torch.hub cache puts it), ``<dir>/``, or
    torch hub's own checkpoint cache."""
    for p in (
        weights_dir / "checkpoints" / _DINO_BACKBONE_FILE,
        weights_dir / _DINO_BACKBONE_FILE,
        _hub_checkpoints() / _DINO_BACKBONE_FILE,
    ):
        if p.is_file():
            return p
    return None


def _missing_dreamsim_files(weights_dir: Path, dreamsim_type: str) -> list[str]:
    missing = []
    for name in _DREAMSIM_FILES[dreamsim_type]:
        p = weights_dir / name
        ok = (p / "adapter_config.json").is_file() if name.endswith("_lora") else p.is_file()
        if not ok:
            missing.append(name + ("/" if name.endswith("_lora") else ""))
    return missing


def _vit_from_state_dict(sd: Mapping[str, torch.Tensor]) -> nn.Module:
    """dreamsim's DINO VisionTransformer sized from a DINO backbone state dict (ViT-B/16: 768 wide,
    12 blocks, 12 heads of 64), loaded strictly: the model ``torch.hub.load('facebookresearch/dino:main',
    'dino_vitb16')`` builds, without fetching the hub repository."""
    from functools import partial

    from dreamsim.feature_extraction.vision_transformer import VisionTransformer

    try:
        dim = sd["cls_token"].shape[-1]
        patch = sd["patch_embed.proj.weight"].shape[-1]
        depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        hidden = sd["blocks.0.mlp.fc1.weight"].shape[0]
        grid = math.isqrt(sd["pos_embed"].shape[1] - 1)
    except (KeyError, ValueError, IndexError) as e:
        raise CheckpointError(f"not a DINO ViT backbone state dict (missing {_why(e)})") from None
    vit = VisionTransformer(
        img_size=[grid * patch],
        patch_size=patch,
        embed_dim=dim,
        depth=depth,
        num_heads=max(1, dim // 64),
        mlp_ratio=hidden / dim,
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_classes=0,
    )
    try:
        vit.load_state_dict(dict(sd), strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"the DINO backbone does not fit ({_why(e)})") from None
    return vit


def _dino_head(weights_dir: Path) -> nn.Module:
    """The DINO projection head that dreamsim attaches (from ``dino_vitb16_pretrain.pth``'s student);
    unused by the CLS features but part of the module tree the LoRA adapter was saved against."""
    from dreamsim.feature_extraction.vision_transformer import DINOHead

    path = weights_dir / "dino_vitb16_pretrain.pth"
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)["student"]
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read DreamSim's DINO head ({_why(e)})") from None
    p = "module.head."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm deprecation
        head = DINOHead(
            sd[p + "mlp.0.weight"].shape[1],
            sd[p + "last_layer.weight"].shape[0],
            hidden_dim=sd[p + "mlp.0.weight"].shape[0],
            bottleneck_dim=sd[p + "mlp.4.weight"].shape[0],
        )
    with torch.no_grad():
        for i in (0, 2, 4):
            head.mlp[i].weight.copy_(sd[f"{p}mlp.{i}.weight"])
            head.mlp[i].bias.copy_(sd[f"{p}mlp.{i}.bias"])
    return head


@contextlib.contextmanager
def _local_dino_builder():
    """While active, dreamsim builds its DINO ViT-B/16 from local files (see :func:`_dino_backbone_path`)
    instead of ``torch.hub.load`` from GitHub; torch hub's folder is left as it was."""
    from dreamsim.feature_extraction import extractor

    original = extractor.ViTExtractor.create_model

    def create_model(model_type: str, load_dir: str = "./models"):
        if model_type != "dino_vitb16":
            return original(model_type, load_dir)
        folder = Path(load_dir)
        path = _dino_backbone_path(folder)
        if path is None:
            raise MissingWeightsError(f"DINO backbone {_DINO_BACKBONE_FILE} not found under {folder}")
        return _vit_from_state_dict(_load_state_dict(path)), _dino_head(folder)

    saved_hub_dir = torch.hub._hub_dir
    try:
        with mock.patch.object(extractor.ViTExtractor, "create_model", staticmethod(create_model)):
            yield
    finally:
        torch.hub._hub_dir = saved_hub_dir


def _fetch_dreamsim(weights_dir: Path, dreamsim_type: str, need_zip: bool, need_backbone: bool) -> None:
    try:
        weights_dir.mkdir(parents=True, exist_ok=True)
        if need_zip:
            from dreamsim.model import download_weights

            with contextlib.redirect_stdout(io.StringIO()):
                download_weights(cache_dir=str(weights_dir), dreamsim_type=dreamsim_type)
        if need_backbone:
            (weights_dir / "checkpoints").mkdir(exist_ok=True)
            torch.hub.download_url_to_file(
                _DINO_BACKBONE_URL, str(weights_dir / "checkpoints" / _DINO_BACKBONE_FILE), progress=False
            )
    except Exception as e:
        raise MissingWeightsError(
            f"cannot download the DreamSim weights into {weights_dir} ({_why(e)}); "
            "fetch them on a connected machine (see DreamSimDistance)"
        ) from None


class DreamSimDistance(_Frozen):
    """DreamSim perceptual distance, (N,), lower is closer (upstream-spec §5.3/§6.1).

    Upstream's use: ``dreamsim(pretrained=True, dreamsim_type='dino_vitb16')``; both images resized to
    224×224 by ``F.interpolate(bilinear, align_corners=False)`` (no antialias) when not already 224;
    the model normalises with ImageNet mean/std, takes the DINO ViT-B/16 (+LoRA) CLS token of block 12,
    centres and L2-normalises it, and returns 1 − cosine.

    ``weights_dir`` (default ``resolve_cache_dir('dreamsim')``, i.e. ``$STYLEVAR_CACHE/dreamsim`` or
    ``~/.cache/stylevar/dreamsim``) is a dreamsim ``cache_dir``; for ``dino_vitb16`` it holds

    * ``dino_vitb16_pretrain.pth`` and ``dino_vitb16_single_lora/`` — unzipped from
      https://github.com/ssundaram21/dreamsim/releases/download/v0.2.0-checkpoints/dreamsim_dino_vitb16_checkpoint.zip
    * ``checkpoints/dino_vitbase16_pretrain.pth`` — the DINO backbone,
      https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth (also found in
      ``<dir>/`` or torch hub's checkpoint cache).

    The backbone is built from that file with dreamsim's own ViT class, so no GitHub access (dreamsim's
    ``torch.hub.load('facebookresearch/dino:main')``) is needed. ``download=True`` fetches what is
    missing. The other dreamsim types (``ensemble``, ``clip_vitb32``, ``open_clip_vitb32``) load from
    their unzipped files the same way (untested here).
    """

    SIZE = 224

    def __init__(
        self,
        weights_dir: PathLike | None = None,
        *,
        device: str | torch.device = "cpu",
        dreamsim_type: str = "dino_vitb16",
        download: bool = False,
    ):
        super().__init__()
        if dreamsim_type not in _DREAMSIM_FILES:
            raise ConfigError(
                f"unsupported dreamsim_type {dreamsim_type!r}; valid: {', '.join(_DREAMSIM_FILES)}"
            )
        dreamsim = _require("dreamsim", "DreamSim")
        folder = Path(weights_dir).expanduser() if weights_dir is not None else resolve_cache_dir("dreamsim")
        missing = _missing_dreamsim_files(folder, dreamsim_type)
        needs_dino = "dino_vitb16_pretrain.pth" in _DREAMSIM_FILES[dreamsim_type]
        no_backbone = needs_dino and _dino_backbone_path(folder) is None
        if (missing or no_backbone) and download:
            _fetch_dreamsim(folder, dreamsim_type, bool(missing), no_backbone)
            missing = _missing_dreamsim_files(folder, dreamsim_type)
            no_backbone = needs_dino and _dino_backbone_path(folder) is None
        if missing or no_backbone:
            parts = []
            if missing:
                known = getattr(getattr(dreamsim, "config", None), "dreamsim_weights", {})
                zip_url = known.get(dreamsim_type) or _DREAMSIM_ZIP_URL.format(dreamsim_type)
                parts.append(f"{', '.join(missing)} (unzip {zip_url} there)")
            if no_backbone:
                parts.append(f"checkpoints/{_DINO_BACKBONE_FILE} (from {_DINO_BACKBONE_URL})")
            raise MissingWeightsError(
                f"DreamSim ({dreamsim_type}) weights missing in {folder}: {'; '.join(parts)}; download them on "
                "a connected machine and put them there (or allow downloading: download=True)"
            )
        try:
            with _local_dino_builder(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model, _ = dreamsim.dreamsim(
                    pretrained=True, device="cpu", cache_dir=str(folder), dreamsim_type=dreamsim_type
                )
        except (MissingWeightsError, CheckpointError):
            raise
        except Exception as e:
            raise CheckpointError(f"{folder}: cannot build DreamSim ({dreamsim_type}): {_why(e)}") from None
        self.dreamsim_type = dreamsim_type
        self.weights_dir = folder
        self.model = model
        self._freeze()
        self.to(device)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Upstream's resize: bilinear to 224×224 (align_corners=False, no antialias) unless already so."""
        x = _images(images)
        if x.shape[-2:] != (self.SIZE, self.SIZE):
            x = F.interpolate(x, size=(self.SIZE, self.SIZE), mode="bilinear", align_corners=False)
        return x

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = _pair(a, b, same_size=False)
        return self.model(self.preprocess(a), self.preprocess(b)).reshape(a.shape[0]).float()


# ---------------------------------------------------------------------------------------------------
# Inception-v3 pool features (for a Fréchet distance)


class InceptionFeatures(_Frozen):
    """torchvision Inception-v3 (IMAGENET1K_V1, ``inception_v3_google-0cc3c7bd.pth``): the 2048-d
    average-pooled ``Mixed_7c`` features, (N, 2048) float32, of [0, 1] images; feed two sets of them to
    :func:`stylevar.eval.metrics.frechet_distance` for a Fréchet Inception Distance.

    Preprocessing: bilinear resize to 299×299 (``align_corners=False``, no antialias; skipped when the
    images are already 299×299), then ``2x − 1``: exactly what torchvision's ``transform_input=True``
    makes of ImageNet-normalised input, the input these weights were trained on.

    Which FID: these are torchvision's ImageNet weights, so the number is **not** the TF-Inception FID of
    ``pytorch-fid`` / ``clean-fid`` (another network and other weights), nor ArtFID's FID (Wright & Ommer
    2022), which uses its own Inception checkpoint
    https://huggingface.co/matthias-wright/art_inception/resolve/main/art_inception.pth.
    Compare numbers only between runs of this class. Other Inception-v3 weights can be used by passing a
    state dict (or file) in torchvision's ``Inception3`` key layout (``Conv2d_1a_3x3.conv.weight``, …,
    ``Mixed_7c.branch_pool.bn.running_var``); this class checks only that layout, not where the weights
    came from.

    Args:
        weights: a state dict file (``.pth``/``.safetensors``) or a folder holding
            ``inception_v3_google-0cc3c7bd.pth``, a state dict, or None for torch hub's checkpoint cache.
            ``fc.*`` and ``AuxLogits.*`` keys are ignored; every other key of torchvision's Inception3 is
            required (a :class:`~stylevar.errors.CheckpointError` otherwise).
        download: fetch the torchvision weights into torch hub's cache when they are not there.
    """

    SIZE = 299
    DIM = 2048

    def __init__(
        self,
        weights: PathLike | Mapping[str, torch.Tensor] | None = None,
        *,
        device: str | torch.device = "cpu",
        download: bool = False,
    ):
        super().__init__()
        from torchvision.models import Inception_V3_Weights, inception_v3

        enum = Inception_V3_Weights.IMAGENET1K_V1
        sd = _torchvision_state_dict(enum, weights, download=download, what="Inception-v3 features (FID)")
        sd = {k: v for k, v in sd.items() if not k.startswith(("fc.", "AuxLogits."))}
        with torch.device("meta"):  # skip the (truncated-normal) random init
            model = inception_v3(weights=None, aux_logits=False, transform_input=False, init_weights=False)
        model.fc = nn.Identity()  # the pooled features, not the 1000 logits
        model = model.to_empty(device="cpu")
        _load_strict(model, sd, "the Inception-v3 weights do not fit torchvision's Inception3")
        self.model = model
        self._freeze()
        self.to(device)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, 299, 299) network input in [-1, 1] from [0, 1] images."""
        x = _images(images).to(next(self.model.parameters()).device)
        if x.shape[-2:] != (self.SIZE, self.SIZE):
            x = F.interpolate(
                x, size=(self.SIZE, self.SIZE), mode="bilinear", align_corners=False, antialias=False
            )
        return x * 2 - 1

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 2048) float32 pool features (after ``avgpool``, before dropout and ``fc``)."""
        return self.model(self.preprocess(images)).float()
