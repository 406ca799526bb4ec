"""What ``stylevar evaluate`` compares: StyleVAR checkpoints and the baselines.

Every method maps (content, style) batches of (B, 3, R, R) images in [0, 1] and one seed per image to
stylized images in [0, 1]. A method's ``settings`` are recorded with its results so a resumed evaluation
can tell whether the saved images came from the same configuration (``MethodEntry.settings``).

* :class:`StyleVARMethod`: a checkpoint sampled scale by scale (``StyleVAR.generate``), one seed per
  image, so its output does not depend on the batch size.
* :class:`AdaINMethod`: Huang & Belongie's AdaIN with the encoder its decoder was trained with
  (:mod:`stylevar.eval.adain`; docs/upstream.md B15), ``alpha`` and colour preservation.
* :class:`ContentCopy`: output = content. A floor, not a competitor: it marks what "no stylization"
  scores on every metric (the best possible content loss, the style loss of the unchanged photo).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from ..devices import decode_dtype


class Method(Protocol):
    name: str
    kind: str
    reference: bool  #: a reference point (content copy): shown, never marked best

    def __call__(self, content: torch.Tensor, style: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor: ...


class StyleVARMethod:
    """A StyleVAR pipeline as an evaluation method (sampling settings default to the checkpoint's)."""

    kind = "stylevar"
    reference = False

    def __init__(
        self,
        name: str,
        pipeline,
        *,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        style_strength: float | None = None,
        dtype: str | torch.dtype | None = None,
        cuda_graphs: bool = False,
        legacy_kv_cache: bool = False,
    ):
        s = pipeline.sampling
        self.name = name
        self.pipeline = pipeline
        self.top_k = s.top_k if top_k is None else top_k
        self.top_p = s.top_p if top_p is None else top_p
        self.temperature = s.temperature if temperature is None else temperature
        self.style_strength = s.style_strength if style_strength is None else style_strength
        self.dtype = pipeline.prepare_dtype(dtype)  # "int8" quantizes the pipeline's transformer
        self.cuda_graphs = cuda_graphs
        self.legacy_kv_cache = legacy_kv_cache

    @property
    def resolution(self) -> int:
        return self.pipeline.resolution

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    @torch.no_grad()
    def __call__(self, content: torch.Tensor, style: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        model, vae, dev = self.pipeline.model, self.pipeline.vae, self.pipeline.device
        cond = model.conditioning(vae, style.to(dev) * 2 - 1, content.to(dev) * 2 - 1)
        out = model.generate(
            vae,
            cond,
            seed=[int(s) for s in seeds],
            top_k=self.top_k,
            top_p=self.top_p,
            temperature=self.temperature,
            style_strength=self.style_strength,
            legacy_kv_cache=self.legacy_kv_cache,
            dtype=self.dtype,
            cuda_graphs=self.cuda_graphs,
            decode_dtype=decode_dtype(model, dev),
        )
        return out.images.clamp_(0, 1)


class AdaINMethod:
    """The AdaIN baseline: ``vgg_normalised`` encoder, the released decoder, ``alpha``, colour preservation."""

    kind = "adain"
    reference = False

    def __init__(self, adain, *, name: str = "AdaIN", alpha: float = 1.0, preserve_color: bool = False):
        self.name = name
        self.adain = adain
        self.alpha = float(alpha)
        self.preserve_color = bool(preserve_color)
        self.settings = {"alpha": self.alpha, "preserve_color": self.preserve_color}

    @property
    def device(self) -> torch.device:
        return next(self.adain.parameters()).device

    @torch.no_grad()
    def __call__(self, content: torch.Tensor, style: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        dev = self.device
        out = self.adain(content.to(dev), style.to(dev), alpha=self.alpha, preserve_color=self.preserve_color)
        return out.clamp(0, 1)


class ContentCopy:
    """Output = the content image: the "no stylization" reference point."""

    kind = "content-copy"
    reference = True

    def __init__(self, name: str = "content-copy", device: str | torch.device = "cpu"):
        self.name = name
        self.device = torch.device(device)

    def __call__(self, content: torch.Tensor, style: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        return content.to(self.device).clone()
