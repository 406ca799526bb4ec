"""Regional style for the pipeline: a call's style-strength mask and region styles, read once, turned into
the per-token alpha and the :class:`~stylevar.models.StyleRegions` of each batch (see
:meth:`stylevar.pipeline.StyleVARPipeline.iter_batches`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import ConfigError
from .images import to_mask, to_model_input
from .models import ALPHA_CONTENT_END, StyleRegions, StyleVAR, scale_maps
from .stream import read_input


@dataclass
class Regional:
    """A call's regional style: the style-strength mask (R, R) and the region (mask (R, R), style (3, R, R)
    in [-1, 1]) inputs at the model's resolution; the region styles' encodings by encoder batch size."""

    mask: torch.Tensor | None
    inputs: list[tuple[torch.Tensor, torch.Tensor]]
    encoded: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

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


def load_regional(
    mask: Any, regions: Sequence[tuple[Any, Any]] | None, resolution: int, fit: str, cuda_graphs: bool = False
) -> Regional | None:
    """A call's mask and region styles, read and resized now (a bad file fails before any work); None
    without either."""
    if mask is None and not regions:
        return None
    if cuda_graphs:
        raise ConfigError("a mask or regions run the eager sampler: drop cuda_graphs")
    mask_map = None if mask is None else to_mask(read_input(mask, "mask"), resolution, fit)
    inputs = []
    for item in regions or ():
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ConfigError("regions must be (mask, style) pairs")
        inputs.append(
            (
                to_mask(read_input(item[0], "region mask"), resolution, fit),
                to_model_input(read_input(item[1], "region style"), resolution, fit),
            )
        )
    return Regional(mask_map, inputs)
