"""What ``stylevar evaluate`` compares: StyleVAR checkpoints and the baselines.

Every method maps (content, style) batches of (B, 3, R, R) images in [0, 1] and one seed per image to
stylized images in [0, 1]. A method's ``settings`` are recorded with its results so a resumed evaluation
can tell whether the saved images came from the same configuration (``MethodEntry.settings``).

* :class:`StyleVARMethod`: a checkpoint sampled scale by scale (``StyleVAR.generate``), one seed per
  image, so its output does not depend on the batch size.
* :class:`AdaINMethod`: Huang & Belongie's AdaIN with the encoder its decoder was trained with
  (:mod:`stylevar.eval.adain`; docs/upstream.md B15), ``alpha`` and colour preservation.
* :class:`MagentaMethod`: Magenta's arbitrary-style network (Ghiasi et al. 2017, pretrained, run by
  onnxruntime on the CPU; :mod:`stylevar.perceptual.magenta`), a real feed-forward peer that runs offline
  with the ``teachers`` extra; ``strength`` is its content blending.
* :class:`ContentCopy`: output = content. A floor, not a competitor: it marks what "no stylization"
  scores on every metric (the best possible content loss, the style loss of the unchanged photo).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from ..config import Sampling
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

    def __init__(self, name: str, pipeline, sampling: Sampling | None = None):
        self.name = name
        self.pipeline = pipeline
        #: the checkpoint's sampling defaults unless given (:meth:`StyleVARPipeline.settings`)
        self.sampling = sampling if sampling is not None else pipeline.settings().sampling
        pipeline.prepare_dtype(self.sampling.dtype)  # "int8" quantizes the pipeline's transformer

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
            vae, cond, self.sampling, seed=[int(s) for s in seeds], decode_dtype=decode_dtype(model, dev)
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


class MagentaMethod:
    """Magenta's arbitrary-style network: each content stylized with its style image at ``strength``
    (:class:`~stylevar.perceptual.magenta.MagentaArbitrary`; the seeds are unused: it is deterministic)."""

    kind = "magenta"
    reference = False

    def __init__(self, network, *, name: str = "Magenta", strength: float = 1.0):
        self.name = name
        self.network = network
        self.strength = float(strength)
        self.settings = {"strength": self.strength}
        self.device = torch.device("cpu")  # onnxruntime's CPU provider: inputs come back from the CPU

    def __call__(self, content: torch.Tensor, style: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        return self.network.stylize(content.cpu(), style.cpu(), strength=self.strength)


class ContentCopy:
    """Output = the content image: the "no stylization" reference point."""

    kind = "content-copy"
    reference = True

    def __init__(self, name: str = "content-copy", device: str | torch.device = "cpu"):
        self.name = name
        self.device = torch.device(device)

    def __call__(self, content: torch.Tensor, style: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        return content.to(self.device).clone()
