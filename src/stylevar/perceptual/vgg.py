"""VGG networks: the paper's Gram "style loss" and conv4_2 "content loss" (VGG-19), and the tokenizer's
LPIPS-style perceptual loss (VGG16). Conventions: :mod:`stylevar.perceptual.common`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..errors import CheckpointError, ConfigError
from ..io import extract_state_dict, read_file
from ..io.safe import why
from .common import Frozen, PathLike, check_images, features_state, torchvision_state_dict

VGG16_FILENAME = "vgg16-397923af.pth"
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILENAME}"


class VGGFeatures(Frozen):
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
        sd = features_state(
            torchvision_state_dict(enum, weights, download=download, what="the VGG-19 style/content loss"),
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
            msg = why(e)
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
        x = (check_images(images) - self.mean) / self.std
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
    ``feats_b`` may have batch size 1 (broadcast). docs/upstream.md §7.1 ("Style loss").
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
    (default conv4_2). Accepts :class:`VGGFeatures` dicts or two feature tensors. docs/upstream.md §7.1."""
    fa = feats_a[layer] if isinstance(feats_a, Mapping) else feats_a
    fb = feats_b[layer] if isinstance(feats_b, Mapping) else feats_b
    return (fa.float() - fb.float()).pow(2).flatten(1).mean(1)


class StyleContentLoss(Frozen):
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
# VGG16 LPIPS-style loss (tokenizer training)


class VGGPerceptualLoss(nn.Module):
    """LPIPS-style distance on torchvision's VGG16 features (no learned linear layers).

    Inputs are images in [-1, 1] (B, 3, H, W); they are mapped to [0, 1] and normalised with the
    ImageNet mean/std that torchvision's VGG16 was trained with. At relu1_2, relu2_2, relu3_3,
    relu4_3 and relu5_3 the features are unit-normalised over channels, and the squared
    difference is summed over channels and averaged over positions; the layers are summed.
    Returns the batch mean (a scalar). The network is frozen.

    ``weights``: a torchvision VGG16 state dict file (``vgg16-397923af.pth``, loaded with
    ``weights_only=True``); only its ``features.*`` tensors are used.
    """

    TAPS = (3, 8, 15, 22, 29)  # indices in vgg16().features of relu1_2 ... relu5_3

    def __init__(self, weights: str | os.PathLike):
        super().__init__()
        from torchvision.models import vgg16

        p = Path(weights).expanduser()
        if not p.is_file():
            raise CheckpointError(
                f"VGG16 weights not found: {p}; download torchvision's {VGG16_FILENAME} ({VGG16_URL}) and pass its path"
            )
        sd = extract_state_dict(read_file(p), p)
        with torch.device("meta"):  # no wasted initialisation; the file supplies every tensor
            net = vgg16(weights=None).features[: self.TAPS[-1] + 1]
        feats = {k[len("features.") :]: v for k, v in sd.items() if k.startswith("features.")}
        own = net.state_dict()
        bad = [k for k in own if k not in feats or tuple(feats[k].shape) != tuple(own[k].shape)]
        if bad:
            raise CheckpointError(
                f"{p} is not a torchvision VGG16 state dict (features.{bad[0]} missing or of another shape); "
                f"download {VGG16_FILENAME} ({VGG16_URL})"
            )
        net.load_state_dict({k: feats[k].float() for k in own}, strict=True, assign=True)
        self.net = net.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> VGGPerceptualLoss:  # always eval (no dropout/BN anyway)
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, y]).add(1).mul(0.5).sub(self.mean).div(self.std)  # [-1,1] -> [0,1] -> ImageNet
        B = x.shape[0]
        d = h.new_zeros(B, dtype=torch.float32)
        for i, layer in enumerate(self.net):
            h = layer(h)
            if i in self.TAPS:
                a, b = h.float().split(B)
                a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
                b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
                d = d + (a - b).square().sum(1).mean((1, 2))
        return d.mean()
