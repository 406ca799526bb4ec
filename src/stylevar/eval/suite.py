"""The metrics of the paper's Table 2 and the style-transfer extras, as one suite.

Per image (all on [0, 1] images at the model resolution; the generated image is the 8-bit one saved):

==============  =====================================================  ========  ==================
name            what                                                   better    against
==============  =====================================================  ========  ==================
style_loss      VGG-19 Gram loss, conv1_1..conv5_1, /(C·H·W)           lower     style image
content_loss    VGG-19 conv4_2 (pre-ReLU) MSE                          lower     content image
lpips           LPIPS v0.1, VGG trunk                                  lower     target | content
ssim            Gaussian 11x11, σ 1.5 (the paper's zero-padded form)   higher    target | content
dreamsim        DreamSim dino_vitb16                                   lower     target | content
clip            CLIP ViT-B/32 image-embedding cosine                   higher    target | content
histogram       RGB colour-histogram Hellinger distance (8³ bins)      lower     style image
==============  =====================================================  ========  ==================

Per set: ``fid`` (Fréchet distance of Inception-v3 pool features, outputs vs their style images) and
``artfid`` = (1 + mean LPIPS to the content) · (1 + FID) (Wright & Ommer 2022). "target | content": the
ground truth on paired benchmarks, the content image on unpaired ones (docs/upstream.md §7.1).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .. import perceptual as P
from ..errors import ConfigError
from ..perceptual import metrics as M

PathLike = str | os.PathLike


@dataclass(frozen=True)
class MetricInfo:
    label: str
    better: str  # "lower" | "higher"
    against: str  # "style" | "content" | "reference" | "style set"
    per_image: bool = True


METRICS: dict[str, MetricInfo] = {
    "style_loss": MetricInfo("Style loss", "lower", "style"),
    "content_loss": MetricInfo("Content loss", "lower", "content"),
    "lpips": MetricInfo("LPIPS", "lower", "reference"),
    "ssim": MetricInfo("SSIM", "higher", "reference"),
    "dreamsim": MetricInfo("DreamSim", "lower", "reference"),
    "clip": MetricInfo("CLIP", "higher", "reference"),
    "histogram": MetricInfo("Colour hist.", "lower", "style"),
    "fid": MetricInfo("FID", "lower", "style set", per_image=False),
    "artfid": MetricInfo("ArtFID", "lower", "content + style set", per_image=False),
}
PAPER_METRICS = ("style_loss", "content_loss", "lpips", "ssim", "dreamsim", "clip")
ALL_METRICS = tuple(METRICS)
#: the metrics that need no optional package (``stylevar[rewards]``): VGG-19 and Inception are torchvision
TORCHVISION_METRICS = ("style_loss", "content_loss", "ssim", "histogram", "fid")


def parse_metrics(text: str | Sequence[str]) -> tuple[str, ...]:
    """``paper``, ``all``, ``torchvision`` or a comma list of names -> names in table order."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        group = {"paper": PAPER_METRICS, "all": ALL_METRICS, "torchvision": TORCHVISION_METRICS}.get(item)
        if group is not None:
            out.extend(group)
        elif item in METRICS:
            out.append(item)
        else:
            raise ConfigError(
                f"unknown metric {item!r}; valid: {', '.join(METRICS)} (or the groups paper, all, torchvision)"
            )
    if not out:
        raise ConfigError("no metrics selected")
    return tuple(m for m in METRICS if m in out)


@dataclass
class MetricWeights:
    """Where each metric's pretrained weights come from (None: the standard cache; see perceptual.py)."""

    vgg: PathLike | None = None  #: vgg19-dcbb9e9d.pth (file or folder)
    lpips_backbone: PathLike | None = None  #: vgg16-397923af.pth (LPIPS-VGG trunk)
    lpips_net: str = "vgg"
    dreamsim_dir: PathLike | None = None  #: dreamsim cache folder
    clip_model: PathLike = P.DEFAULT_CLIP_MODEL
    inception: PathLike | None = None  #: inception_v3_google-0cc3c7bd.pth
    download: bool = False


class MetricSuite:
    """The selected metrics' models, built once (a missing weight file fails here, before any generation)."""

    def __init__(self, names: Sequence[str], weights: MetricWeights | None = None, device="cpu"):
        self.names = tuple(names)
        w = weights or MetricWeights()
        self.device = torch.device(device)
        dl = w.download
        has = set(self.names).__contains__
        self.vgg = (
            P.StyleContentLoss(weights=w.vgg, device=self.device, download=dl)
            if has("style_loss") or has("content_loss")
            else None
        )
        self.lpips = (
            P.LPIPSDistance(w.lpips_net, device=self.device, backbone_weights=w.lpips_backbone, download=dl)
            if has("lpips") or has("artfid")
            else None
        )
        self.dreamsim = (
            P.DreamSimDistance(w.dreamsim_dir, device=self.device, download=dl) if has("dreamsim") else None
        )
        self.clip = (
            P.ClipSimilarity(w.clip_model, device=self.device, local_files_only=None if dl else True)
            if has("clip")
            else None
        )
        self.inception = (
            P.InceptionFeatures(w.inception, device=self.device, download=dl)
            if has("fid") or has("artfid")
            else None
        )

    @property
    def needs_set_features(self) -> bool:
        return self.inception is not None

    @torch.no_grad()
    def per_image(
        self, out: torch.Tensor, content: torch.Tensor, style: torch.Tensor, target: torch.Tensor | None
    ) -> dict[str, list[float]]:
        """Per-image values of the selected per-image metrics (plus ``lpips_content`` for ArtFID)."""
        dev = self.device
        out, content, style = out.to(dev).float(), content.to(dev).float(), style.to(dev).float()
        ref = target.to(dev).float() if target is not None else content
        has = set(self.names).__contains__
        r: dict[str, torch.Tensor] = {}
        if self.vgg is not None:
            s, c = self.vgg(out, content, style)
            if has("style_loss"):
                r["style_loss"] = s
            if has("content_loss"):
                r["content_loss"] = c
        if self.lpips is not None:
            lp_ref = self.lpips(out, ref)
            if has("lpips"):
                r["lpips"] = lp_ref
            if has("artfid"):
                r["lpips_content"] = lp_ref if target is None else self.lpips(out, content)
        if has("ssim"):
            r["ssim"] = M.ssim(out, ref)
        if self.dreamsim is not None:
            r["dreamsim"] = self.dreamsim(out, ref)
        if self.clip is not None:
            r["clip"] = self.clip(out, ref)
        if has("histogram"):
            r["histogram"] = M.colour_histogram_distance(out, style)
        return {k: [float(x) for x in v.detach().float().cpu()] for k, v in r.items()}

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Inception pool features (N, 2048) of [0, 1] images, in batches, on the CPU in float64."""
        assert self.inception is not None
        feats = [
            self.inception(images[i : i + batch_size].to(self.device).float()).double().cpu()
            for i in range(0, images.shape[0], batch_size)
        ]
        return torch.cat(feats)

    def set_metrics(
        self, out_feats: torch.Tensor, style_feats: torch.Tensor, lpips_content: Sequence[float] | None
    ) -> dict[str, float | None]:
        """``fid`` and ``artfid`` of one (benchmark, method); None where fewer than 2 images exist."""
        res: dict[str, float | None] = {}
        fid = None
        if out_feats.shape[0] >= 2 and style_feats.shape[0] >= 2:
            fid = float(M.frechet_distance(out_feats, style_feats))
        if "fid" in self.names:
            res["fid"] = fid
        if "artfid" in self.names:
            if fid is None or not lpips_content:
                res["artfid"] = None
            else:
                lp = sum(lpips_content) / len(lpips_content)
                res["artfid"] = (1 + lp) * (1 + fid)
        return res
