"""Inception-v3 pool features for a Fréchet distance (FID). Conventions: :mod:`stylevar.perceptual.common`."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from ..io.safe import load_strict
from .common import Frozen, PathLike, check_images, torchvision_state_dict


class InceptionFeatures(Frozen):
    """torchvision Inception-v3 (IMAGENET1K_V1, ``inception_v3_google-0cc3c7bd.pth``): the 2048-d
    average-pooled ``Mixed_7c`` features, (N, 2048) float32, of [0, 1] images; feed two sets of them to
    :func:`stylevar.perceptual.metrics.frechet_distance` for a Fréchet Inception Distance.

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
        sd = torchvision_state_dict(enum, weights, download=download, what="Inception-v3 features (FID)")
        sd = {k: v for k, v in sd.items() if not k.startswith(("fc.", "AuxLogits."))}
        with torch.device("meta"):  # skip the (truncated-normal) random init
            model = inception_v3(weights=None, aux_logits=False, transform_input=False, init_weights=False)
        model.fc = nn.Identity()  # the pooled features, not the 1000 logits
        model = model.to_empty(device="cpu")
        load_strict(model, sd, "the Inception-v3 weights do not fit torchvision's Inception3")
        self.model = model
        self._freeze()
        self.to(device)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, 299, 299) network input in [-1, 1] from [0, 1] images."""
        x = check_images(images).to(next(self.model.parameters()).device)
        if x.shape[-2:] != (self.SIZE, self.SIZE):
            x = F.interpolate(
                x, size=(self.SIZE, self.SIZE), mode="bilinear", align_corners=False, antialias=False
            )
        return x * 2 - 1

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 2048) float32 pool features (after ``avgpool``, before dropout and ``fc``)."""
        return self.model(self.preprocess(images)).float()
