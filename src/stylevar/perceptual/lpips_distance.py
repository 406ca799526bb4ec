"""LPIPS (``lpips`` package) with torchvision trunk weights from a path or torch hub's cache.
Conventions: :mod:`stylevar.perceptual.common`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch

from ..errors import CheckpointError, ConfigError
from ..io.safe import why
from .common import Frozen, PathLike, features_state, image_pair, require, torchvision_state_dict

_LPIPS_BACKBONES = {"vgg": ("VGG16_Weights", "VGG-16"), "alex": ("AlexNet_Weights", "AlexNet")}


class LPIPSDistance(Frozen):
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
        lpips = require("lpips", "LPIPS")
        import torchvision.models as tvm

        enum_name, arch = _LPIPS_BACKBONES[net]
        enum = getattr(tvm, enum_name).IMAGENET1K_V1
        sd = features_state(
            torchvision_state_dict(enum, backbone_weights, download=download, what=f"LPIPS-{net}"), arch
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
            msg = why(e)
            raise CheckpointError(f"the {arch} weights do not fit LPIPS-{net} ({msg})") from None
        self.net_name = net
        self.model = model
        self._freeze()
        self.to(device)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = image_pair(a, b, same_size=True)
        return self.model(a * 2 - 1, b * 2 - 1).reshape(a.shape[0]).float()
