"""ResNet-18 image encoders for the style (AdaLN condition) and content (start token) images.

Torchvision's architecture with the classifier removed, as an ``nn.Sequential`` of its children
[conv1, bn1, relu, maxpool, layer1..4, avgpool] so that the state-dict keys are upstream's
(``0.weight``, ``1.running_mean``, ``4.0.conv1.weight``, ...). No weights are downloaded at
construction; :func:`load_imagenet_weights` fetches torchvision's ImageNet weights on request.
"""

from __future__ import annotations

import torch
from torch import nn


class ResNetEncoder(nn.Sequential):
    """(B, 3, H, W) images -> (B, out_dim) pooled features.

    ``out_dim=512`` is torchvision's ResNet-18 exactly (the released checkpoints). Other widths
    (multiples of 8) scale every stage's channels by ``out_dim / 512`` and keep the layout and the
    state-dict keys: a narrow encoder for small models trained from scratch, whose two full-width
    ResNet-18s (22 M parameters) would otherwise outweigh a small transformer many times over.

    The released StyleVAR feeds images in [-1, 1] without ImageNet normalisation (docs/upstream.md
    §3.1); the weights were trained that way, so we keep it.
    """

    def __init__(self, out_dim: int = 512) -> None:
        from torchvision.models import resnet18

        if out_dim < 8 or out_dim % 8:
            raise ValueError(f"the encoder width must be a positive multiple of 8, got {out_dim}")
        if out_dim == 512:
            trunk = resnet18(weights=None)
        else:
            trunk = _narrow_resnet18(out_dim // 8)
        super().__init__(*list(trunk.children())[:-1])

    def forward(self, img: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(img).flatten(1)


def _narrow_resnet18(width: int) -> nn.Sequential:
    """Torchvision's ResNet-18 layout with stage widths (w, 2w, 4w, 8w) instead of (64, ..., 512).

    Children in torchvision's order (conv1, bn1, relu, maxpool, layer1..4, avgpool) with its blocks
    and initialisation, so the keys match those of the full-width encoder.
    """
    from torchvision.models.resnet import BasicBlock, conv1x1

    def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or cin != cout:
            down = nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
        return nn.Sequential(BasicBlock(cin, cout, stride, down), BasicBlock(cout, cout))

    trunk = nn.Sequential(
        nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        stage(width, width, 1),
        stage(width, 2 * width, 2),
        stage(2 * width, 4 * width, 2),
        stage(4 * width, 8 * width, 2),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Identity(),  # where torchvision has its classifier (dropped by the caller)
    )
    for m in trunk.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return trunk


def load_encoder_weights(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load ImageNet ResNet-18 weights (classifier removed) into both encoders of a StyleVAR.

    Records ``encoder_input="imagenet"`` in the model's config, since such weights expect
    ImageNet-normalised [0, 1] images. Raises :class:`~stylevar.errors.ConfigError` when the
    model's encoders are not full width.
    """
    from ..errors import ConfigError

    dim = model.config.style_enc_dim
    if model.config.style_encoder != "resnet":
        raise ConfigError("ImageNet ResNet-18 weights need the ResNet style encoder (style_encoder='resnet')")
    if dim != 512:
        raise ConfigError(
            f"ImageNet ResNet-18 weights need full-width encoders (style_enc_dim 512), this model has {dim}; "
            "drop the ResNet weights or build the model with the default encoder width"
        )
    for enc in (model.style_encoder, model.content_encoder):
        enc.load_state_dict(state_dict, strict=True)
    model.set_encoder_input("imagenet")
