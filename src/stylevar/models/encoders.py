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
    """(B, 3, H, W) images -> (B, 512) pooled features.

    The released StyleVAR feeds images in [-1, 1] without ImageNet normalisation (upstream-spec
    §2.5); the weights were trained that way, so we keep it.
    """

    def __init__(self) -> None:
        from torchvision.models import resnet18

        trunk = resnet18(weights=None)
        super().__init__(*list(trunk.children())[:-1])

    def forward(self, img: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(img).flatten(1)


def load_imagenet_weights(encoder: ResNetEncoder) -> None:
    """Copy torchvision's ResNet-18 IMAGENET1K_V1 weights into ``encoder`` (downloads on first use)."""
    from torchvision.models import ResNet18_Weights, resnet18

    trunk = resnet18(weights=ResNet18_Weights.IMAGENET1K_V1)
    src = nn.Sequential(*list(trunk.children())[:-1]).state_dict()
    encoder.load_state_dict(src, strict=True)
