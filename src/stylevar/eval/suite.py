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
lpips_alex      LPIPS v0.1, AlexNet trunk (ArtFID's content distance)   lower     content image
cfsd            StyleID's content feature structural distance          lower     content image
leakage         edge-map correlation with the style image (StyleAR)   lower     style image
structure       edge-map correlation with the content image            higher    content image
==============  =====================================================  ========  ==================

Per set (outputs vs their style images, one style image per output):

* ``fid``: FID with pytorch-fid's FID Inception (the published FID network; ``MetricWeights.fid_inception
  = "torchvision"`` takes torchvision's ImageNet Inception instead, comparable only with itself);
* ``fid_art``: FID with ArtFID's ``art_inception`` (the "FID" of StyleID-style tables);
* ``artfid`` = (1 + mean ``lpips_alex``) · (1 + ``fid_art``), ArtFID as Wright & Ommer 2022 define it.

"target | content": the ground truth on paired benchmarks, the content image on unpaired ones
(docs/upstream.md §7.1). FID over a few hundred images is biased upwards (docs/evaluation.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .. import perceptual as P
from ..errors import ConfigError
from ..metric_names import METRIC_GROUPS, METRIC_NAMES
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
    "lpips_alex": MetricInfo("LPIPS-Alex", "lower", "content"),
    "cfsd": MetricInfo("CFSD", "lower", "content"),
    "leakage": MetricInfo("Leakage", "lower", "style"),
    "structure": MetricInfo("Structure", "higher", "content"),
    "fid": MetricInfo("FID", "lower", "style set", per_image=False),
    "fid_art": MetricInfo("FID (art)", "lower", "style set", per_image=False),
    "artfid": MetricInfo("ArtFID", "lower", "content + style set", per_image=False),
}
ART_MIN_SIDE = 75  #: the smallest input of Inception-v3 without a resize
#: set metrics computed from Inception features, and the network each needs
SET_FEATURES = {"fid": "fid", "fid_art": "art", "artfid": "art"}
#: the registry's names, in its order: :data:`stylevar.metric_names.METRIC_NAMES`, which the command line
#: reads without importing torch (tests/test_cli.py checks that the two agree)
ALL_METRICS = METRIC_NAMES


def parse_metrics(text: str | Sequence[str]) -> tuple[str, ...]:
    """``paper``, ``all``, ``torchvision`` or a comma list of names -> names in table order."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        group = METRIC_GROUPS.get(item)
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
    #: the FID network: pt_inception-2015-12-05-6726825d.pth (pytorch-fid) or, with fid_inception
    #: "torchvision", inception_v3_google-0cc3c7bd.pth
    inception: PathLike | None = None
    fid_inception: str = "pytorch-fid"  #: "pytorch-fid" (the published FID) or "torchvision"
    art_inception: PathLike | None = None  #: art_inception.pth (ArtFID)
    alexnet: PathLike | None = None  #: alexnet-owt-7be5be79.pth (ArtFID's LPIPS-Alex trunk)
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
        self.lpips_alex = (
            P.LPIPSDistance("alex", device=self.device, backbone_weights=w.alexnet, download=dl)
            if has("lpips_alex") or has("artfid")
            else None
        )
        self.cfsd = P.CFSD(w.vgg, device=self.device, download=dl) if has("cfsd") else None
        #: Inception networks by role: "fid" (the FID network), "art" (ArtFID's)
        self.inceptions: dict[str, torch.nn.Module] = {}
        if has("fid"):
            if w.fid_inception == "pytorch-fid":
                self.inceptions["fid"] = P.FIDInceptionFeatures(w.inception, device=self.device, download=dl)
            elif w.fid_inception == "torchvision":
                self.inceptions["fid"] = P.InceptionFeatures(w.inception, device=self.device, download=dl)
            else:
                raise ConfigError(
                    f"fid_inception must be pytorch-fid or torchvision, got {w.fid_inception!r}"
                )
        if has("fid_art") or has("artfid"):
            self.inceptions["art"] = P.ArtInceptionFeatures(w.art_inception, device=self.device, download=dl)
        self.fid_inception = w.fid_inception

    @property
    def needs_set_features(self) -> bool:
        return bool(self.inceptions)

    @torch.no_grad()
    def per_image(
        self, out: torch.Tensor, content: torch.Tensor, style: torch.Tensor, target: torch.Tensor | None
    ) -> dict[str, list[float]]:
        """Per-image values of the selected per-image metrics (``lpips_alex`` feeds ArtFID)."""
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
            r["lpips"] = self.lpips(out, ref)
        if self.lpips_alex is not None:
            r["lpips_alex"] = self.lpips_alex(out, content)
        if self.cfsd is not None:
            r["cfsd"] = self.cfsd(out, content)
        if has("ssim"):
            r["ssim"] = M.ssim(out, ref)
        if self.dreamsim is not None:
            r["dreamsim"] = self.dreamsim(out, ref)
        if self.clip is not None:
            r["clip"] = self.clip(out, ref)
        if has("histogram"):
            r["histogram"] = M.colour_histogram_distance(out, style)
        if has("leakage"):
            r["leakage"] = M.edge_correlation(out, style)
        if has("structure"):
            r["structure"] = M.edge_correlation(out, content)
        return {k: [float(x) for x in v.detach().float().cpu()] for k, v in r.items()}

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 32) -> dict[str, torch.Tensor]:
        """Pool features (N, 2048) of [0, 1] images for each Inception in use (``fid``, ``art``), in batches,
        on the CPU in float64. ArtFID's network takes the images as they are (the ``art-fid`` package's
        preprocessing), except that images under 75 px (its smallest input) are upsampled to 75."""
        out = {}
        for role, net in self.inceptions.items():
            feats = []
            for i in range(0, images.shape[0], batch_size):
                x = images[i : i + batch_size].to(self.device).float()
                if role == "art" and min(x.shape[-2:]) < ART_MIN_SIDE:
                    x = F.interpolate(x, size=(ART_MIN_SIDE, ART_MIN_SIDE), mode="bilinear", antialias=False)
                feats.append(net(x).double().cpu())
            out[role] = torch.cat(feats)
        return out

    def set_metrics(
        self,
        out_feats: dict[str, torch.Tensor],
        style_feats: dict[str, torch.Tensor],
        lpips_alex: Sequence[float] | None,
    ) -> dict[str, float | None]:
        """``fid``, ``fid_art`` and ``artfid`` of one (benchmark, method) from :meth:`features` of the outputs
        and of their style images; None where fewer than 2 images exist."""
        fids: dict[str, float | None] = {}
        for role in out_feats:
            a, b = out_feats[role], style_feats[role]
            fids[role] = float(M.frechet_distance(a, b)) if min(a.shape[0], b.shape[0]) >= 2 else None
        res: dict[str, float | None] = {}
        if "fid" in self.names:
            res["fid"] = fids.get("fid")
        if "fid_art" in self.names:
            res["fid_art"] = fids.get("art")
        if "artfid" in self.names:
            res["artfid"] = artfid(fids.get("art"), lpips_alex)
        return res


def artfid(fid: float | None, lpips: Sequence[float] | None) -> float | None:
    """ArtFID = (1 + mean LPIPS) · (1 + FID) (Wright & Ommer 2022); None without both parts."""
    if fid is None or not lpips:
        return None
    return (1 + sum(lpips) / len(lpips)) * (1 + fid)
