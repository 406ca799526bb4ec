"""A style image's salient region from SAM (transformers' ``SamModel``), for StyleAR's feature subtraction.

StyleAR subtracts from the style image's features those of its semantic content, which it finds with
SAM. SAM segments what a prompt points at; with no prompt from a person we prompt it the way its
automatic mask generator does, with a grid of single points (``grid`` x ``grid``), take each point's best
of its three masks by SAM's own predicted IoU, keep the confident ones (``iou_threshold``) whose area lies
between ``min_area`` and ``max_area`` of the image -- objects, not specks and not the background or the
whole canvas -- and return their union. A user who knows better gives the region as a mask file instead
(``--style-mask``).

Weights come from a folder (``SamModel.save_pretrained``, e.g. ``facebook/sam-vit-base`` saved on a
connected machine) or a Hub id in the Hugging Face cache; nothing is downloaded. The preprocessing is
SAM's: the longer side resized to the model's ``image_size`` (1024 for the released models), ImageNet
mean/std, zero padding to a square; masks come back at the image's own size.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..config import IMAGENET_MEAN as SAM_MEAN
from ..config import IMAGENET_STD as SAM_STD
from ..errors import ConfigError
from .common import Frozen, PathLike, load_hf_model


def select_salient(
    masks: torch.Tensor, scores: torch.Tensor, iou_threshold: float, min_area: float, max_area: float
) -> torch.Tensor:
    """The union of each prompt's best mask (by score) among those scoring at least ``iou_threshold`` whose
    area fraction lies in [``min_area``, ``max_area``]: masks (P, K, H, W) bool, scores (P, K) -> (H, W) bool."""
    best = scores.argmax(1)
    idx = torch.arange(masks.shape[0])
    chosen, conf = masks[idx, best], scores[idx, best]
    area = chosen.flatten(1).float().mean(1)
    keep = (conf >= iou_threshold) & (area >= min_area) & (area <= max_area)
    return chosen[keep].any(0) if keep.any() else torch.zeros(masks.shape[-2:], dtype=torch.bool)


class SalientRegion(Frozen):
    """``region(images)``: images (N, 3, H, W) in [0, 1] -> their salient regions (N, H, W), 0 or 1."""

    def __init__(
        self,
        model: PathLike,
        *,
        grid: int = 4,
        iou_threshold: float = 0.8,
        min_area: float = 0.01,
        max_area: float = 0.5,
    ):
        super().__init__()
        if grid < 1 or not 0 <= min_area <= max_area <= 1:
            raise ConfigError("grid must be >= 1 and 0 <= min_area <= max_area <= 1")
        self.sam = load_hf_model(
            model,
            kinds={"sam": "SamModel"},
            what="SAM",
            save_hint="on a connected machine save one there "
            "(SamModel.from_pretrained('facebook/sam-vit-base').save_pretrained(folder))",
            local_files_only=True,  # never downloaded at run time
        ).float()
        self.grid, self.iou_threshold, self.min_area, self.max_area = grid, iou_threshold, min_area, max_area
        size = self.sam.config.vision_config.image_size
        self.size = int(size[0] if isinstance(size, (list, tuple)) else size)
        self._freeze()

    def _prepare(self, img: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """One image (3, H, W) in [0, 1] -> SAM's input (1, 3, S, S) and the resized image's (h, w)."""
        H, W = img.shape[-2:]
        s = self.size / max(H, W)
        h, w = max(1, round(H * s)), max(1, round(W * s))
        x = F.interpolate(
            img[None].float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True
        )
        x = (x - x.new_tensor(SAM_MEAN).view(1, 3, 1, 1)) / x.new_tensor(SAM_STD).view(1, 3, 1, 1)
        return F.pad(x, (0, self.size - w, 0, self.size - h)), h, w

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim == 3:
            images = images[None]
        dev = next(self.sam.parameters()).device
        out = []
        for img in images:
            x, h, w = self._prepare(img.to(dev))
            g = self.grid
            c = (torch.arange(g, device=dev, dtype=torch.float32) + 0.5) / g
            pts = torch.stack(torch.meshgrid(c * w, c * h, indexing="xy"), -1).reshape(1, g * g, 1, 2)
            labels = torch.ones(1, g * g, 1, dtype=torch.long, device=dev)
            res = self.sam(pixel_values=x, input_points=pts, input_labels=labels, multimask_output=True)
            low = res.pred_masks[0].float()  # (P, K, S/4, S/4) logits over the padded square
            P, K = low.shape[:2]
            up = F.interpolate(low.flatten(0, 1)[:, None], size=(self.size, self.size), mode="bilinear")
            up = up[:, :, :h, :w]  # drop the padding, back to the image's own size
            full = F.interpolate(up, size=tuple(img.shape[-2:]), mode="bilinear").view(P, K, *img.shape[-2:])
            region = select_salient(
                full > 0, res.iou_scores[0].float(), self.iou_threshold, self.min_area, self.max_area
            )
            out.append(region.float())
        return torch.stack(out)
