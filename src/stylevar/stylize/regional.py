"""Regional style for the pipeline: a call's style-strength mask and region styles, read once, turned into
the per-token alpha and the :class:`~stylevar.models.StyleRegions` of each batch (see
:meth:`stylevar.stylize.pipeline.StyleVARPipeline.iter_batches`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError
from ..images import to_mask, to_model_input
from ..models import ALPHA_CONTENT_END, StyleRegions, StyleVAR, scale_maps
from .settings import Regions
from .stream import read_input


@dataclass
class Regional:
    """A call's regional style: the style-strength mask (R, R) and the region (mask (R, R), style (3, R, R)
    in [-1, 1]) inputs at the model's resolution; the region styles' encodings by encoder batch size."""

    mask: torch.Tensor | None
    inputs: list[tuple[torch.Tensor, torch.Tensor]]
    encoded: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    #: StyleAR's answer to content leakage (:meth:`edit_styles`): the style image's salient region (R, R)
    style_mask: torch.Tensor | None = None
    subtract: float = 1.0  #: alpha: 1 keeps the style as it is, 0 subtracts its salient region's features
    style_noise: float = 0.0  #: gamma: std of the noise on the style's VQ condition features
    resolution: int = 256
    fit: str = "crop"
    salient: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    #: finds each style image's salient region where no ``style_mask`` is given: images (N, 3, R, R) in
    #: [0, 1] -> (N, R, R), e.g. :class:`stylevar.perceptual.SalientRegion` (SAM)
    segmenter: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def has_region(self) -> bool:
        return self.style_mask is not None or self.segmenter is not None

    @property
    def edits_style(self) -> bool:
        return (self.has_region and self.subtract != 1.0) or self.style_noise > 0

    def edit_styles(
        self,
        feat: torch.Tensor,
        cvae: torch.Tensor,
        styles: Sequence[Any],
        seeds: Sequence[int],
        encode: Callable[[torch.Tensor, str], tuple[torch.Tensor, torch.Tensor]],
        rows: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's style features with StyleAR's subtraction and noise: s' = a*F + (1-a)*(F - F_S) + g*n
        = F - (1-a)*F_S + g*n, with F each pathway's encoding of the style image (the ResNet AdaLN vector
        and the VQ condition features) and F_S what its salient region adds: E(region on mid grey) -
        E(mid grey), so an empty region subtracts exactly nothing (docs/evaluate.md, "Content leakage"). The noise n
        (seeded by each image's seed) goes on the VQ features, where SFT's ``style_noise`` puts it, and on the
        style tokens of a ``clip_resampler`` model (StyleAR's place for it)."""
        from .pairs import Blend

        feat, cvae = feat.clone(), cvae.clone()
        for i, (style, seed) in enumerate(zip(styles, seeds)):
            if self.has_region and self.subtract != 1.0:
                if isinstance(style, Blend):
                    raise ConfigError(
                        "subtracting a style's salient region works on one style image, not a blend"
                    )
                key = (id(style), str(style)) if not isinstance(style, (str, bytes)) else ("path", style)
                if key not in self.salient:
                    x = to_model_input(read_input(style, "style"), self.resolution, self.fit)
                    if self.style_mask is not None:
                        m = self.style_mask.to(x.device)
                    else:  # this style image's own salient region, from the segmentation model
                        m = self.segmenter(x.add(1).mul(0.5)[None])[0].to(x.device, x.dtype)
                    only = x * m  # the salient region on mid grey (0 in [-1, 1]), and mid grey alone
                    f, c = encode(
                        torch.stack((only, torch.zeros_like(only))).repeat_interleave(rows, 0), "style"
                    )
                    self.salient[key] = (f[0] - f[rows], c[0] - c[rows])  # what the region adds to grey
                f_s, c_s = self.salient[key]
                feat[i] = feat[i] - (1 - self.subtract) * f_s.to(feat.dtype)
                cvae[i] = cvae[i] - (1 - self.subtract) * c_s.to(cvae.dtype)
            if self.style_noise > 0:
                g = torch.Generator(device="cpu").manual_seed(int(seed) + 7_777_777)
                n = torch.randn(cvae[i].shape, generator=g).to(cvae.device, cvae.dtype)
                cvae[i] = cvae[i] + self.style_noise * n
                # a clip_resampler model's style tokens: StyleAR's s + gamma * n on them too
                if feat.ndim == 3:
                    n = torch.randn(feat[i].shape, generator=g).to(feat.device, feat.dtype)
                    feat[i] = feat[i] + self.style_noise * n
        return feat, cvae

    def alpha(self, model: StyleVAR, alpha: Any, style_strength: float, batch_size: int) -> tuple[Any, float]:
        """(alpha, style_strength) for ``generate``: with a mask, a per-token (B, L) alpha (white keeps the
        model's alpha, black moves it to the content end) and no further shift."""
        if self.mask is None:
            return alpha, style_strength
        per_scale = model.resolve_alpha(alpha, style_strength, batch_size)
        tok = per_scale[:, model.lvl_1L[0].to(per_scale.device)]  # (B, L)
        m = scale_maps(self.mask.unsqueeze(0).to(tok.device), model.patch_nums)
        return m * tok + (1 - m) * ALPHA_CONTENT_END, 0.0

    def regions(
        self,
        model: StyleVAR,
        encode: Callable[[torch.Tensor, str], tuple[torch.Tensor, torch.Tensor]],
        rows: int,
        batch_size: int,
    ) -> StyleRegions | None:
        """The region styles for a batch of ``batch_size``, encoded once, each in a batch of ``rows`` (the
        size the pairs' styles are encoded at: the same bytes); None without regions."""
        if not self.inputs:
            return None
        if rows not in self.encoded:
            feats, cvaes = [], []
            for _, x in self.inputs:
                f, c = encode(x.unsqueeze(0).expand(rows, -1, -1, -1), "style")
                feats.append(f[0])
                cvaes.append(c[0])
            self.encoded[rows] = (torch.stack(feats), torch.stack(cvaes))
        feat, cvae = self.encoded[rows]
        masks = torch.stack([m for m, _ in self.inputs])
        return model.regions_from_features(feat, cvae, masks, batch_size)


def load_regional(regions: Regions, resolution: int, fit: str, cuda_graphs: bool = False) -> Regional | None:
    """A run's mask and region styles, and StyleAR's leakage knobs (the style image's salient region as a
    ``style_mask`` or found by a ``segmenter`` -- a SAM folder / Hub id or a callable, see
    :class:`Regional` --, ``subtract`` alpha, ``style_noise`` gamma), read and resized now (a bad file fails
    before any work); None without any. ``regions`` was validated when it was made
    (:class:`stylevar.stylize.settings.Regions`)."""
    if not regions.active:
        return None
    leak = regions.leakage
    segmenter = leak.segmenter
    if segmenter is not None and not callable(segmenter):
        from ..perceptual.salient import SalientRegion

        segmenter = SalientRegion(segmenter)
    if cuda_graphs and (regions.mask is not None or regions.regions):
        raise ConfigError("a mask or regions run the eager sampler: drop cuda_graphs")
    mask_map = None if regions.mask is None else to_mask(read_input(regions.mask, "mask"), resolution, fit)
    inputs = [
        (
            to_mask(read_input(mask, "region mask"), resolution, fit),
            to_model_input(read_input(style, "region style"), resolution, fit),
        )
        for mask, style in regions.regions
    ]
    smask = None
    if leak.style_mask is not None:
        smask = to_mask(read_input(leak.style_mask, "style mask"), resolution, fit)
    return Regional(
        mask_map,
        inputs,
        style_mask=smask,
        subtract=leak.subtract,
        style_noise=leak.style_noise,
        resolution=resolution,
        fit=fit,
        segmenter=segmenter,
    )
