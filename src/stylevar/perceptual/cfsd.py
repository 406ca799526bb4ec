"""CFSD, the content feature structural distance of StyleID (Chung et al., CVPR 2024).
Conventions: :mod:`stylevar.perceptual.common`.

For an image, take VGG-19's ``relu3_1`` features F (ImageNet-normalised input at the image's own size,
hw positions x c channels), the patch-similarity matrix S = (F/c)(F/c)ᵀ (hw x hw) and its row-wise
softmax. CFSD between a stylized image o and its content image x is

    CFSD = Σ_rows KL( softmax(S_x)_row || softmax(S_o)_row )

summed over all hw rows (StyleID's ``F.kl_div(log_softmax(S_o), softmax(S_x), reduction='batchmean')``
on the flattened rows divides by the batch size only), averaged over the image pairs. It grows with the
number of positions, so it is comparable only at one image size: StyleID's numbers are at 512x512
(128x128 positions). The hw x hw matrices are formed a block of rows at a time here (StyleID forms them
whole: 1 GiB per image at 512 px); the result is the same.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.nn import functional as F

from .common import Frozen, PathLike, image_pair
from .vgg import VGGFeatures


def patch_similarity_kl(
    content_feats: torch.Tensor, output_feats: torch.Tensor, *, rows: int = 1024
) -> torch.Tensor:
    """Σ over rows of KL(softmax(S_content) || softmax(S_output)) per image, (N,) float64, for (N, C, H, W)
    feature maps of one shape (S = F Fᵀ / C², rows of ``rows`` positions at a time)."""
    if content_feats.shape != output_feats.shape or content_feats.ndim != 4:
        raise ValueError(
            f"expected two (N, C, H, W) feature maps of one shape, got {tuple(content_feats.shape)} and "
            f"{tuple(output_feats.shape)}"
        )
    n, c = content_feats.shape[:2]
    fx = content_feats.float().flatten(2).transpose(1, 2) / c  # (N, hw, C)
    fo = output_feats.float().flatten(2).transpose(1, 2) / c
    total = torch.zeros(n, dtype=torch.float64, device=fx.device)
    for r in range(0, fx.shape[1], rows):
        log_p = F.log_softmax(fx[:, r : r + rows] @ fx.transpose(1, 2), dim=-1)
        log_q = F.log_softmax(fo[:, r : r + rows] @ fo.transpose(1, 2), dim=-1)
        total += (log_p.exp() * (log_p - log_q)).sum((1, 2)).double()
    return total


class CFSD(Frozen):
    """CFSD (module doc) of stylized images against their content images, (N,) float32; lower keeps more
    of the content's structure. Both batches must have one size (StyleID's: 512x512).

    Args:
        weights: torchvision's VGG-19 (``vgg19-dcbb9e9d.pth``: a file, a folder holding it, a state dict, or
            None for torch hub's cache), as for the style loss.
        download: fetch it into torch hub's cache when missing.
        rows: similarity-matrix rows per block (memory: ``rows`` x hw floats per image and matrix).
    """

    def __init__(
        self,
        weights: PathLike | Mapping[str, torch.Tensor] | None = None,
        *,
        device: str | torch.device = "cpu",
        download: bool = False,
        rows: int = 1024,
    ):
        super().__init__()
        self.vgg = VGGFeatures(weights, device=device, download=download)
        self.rows = rows
        self._freeze()

    def relu3_1(self, images: torch.Tensor) -> torch.Tensor:
        return F.relu(self.vgg(images, ["conv3_1"])["conv3_1"])

    def forward(self, output: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        output, content = image_pair(output, content, same_size=True)
        kl = patch_similarity_kl(self.relu3_1(content), self.relu3_1(output), rows=self.rows)
        return kl.float()
