"""Creative controls shared by the pipeline, the CLI and the app (one implementation each).

* **Colour preservation** (:func:`preserve_colour`): keep the content's colours, take the style's
  texture. ``luminance``: the result's luma (BT.601 Y) with the content's chroma (Cb, Cr), as Gatys et
  al. (2016) propose; ``stats``: the result's RGB mean and covariance matched to the content's
  (:func:`coral`, the AdaIN paper's colour-preservation map).
* **Full-resolution output** (:func:`guided_upsample`): the model works at its square resolution; the
  result is resized to the content's original size and aspect, then a guided filter (He et al. 2013)
  with the full-resolution content as guide restores the content's fine edges that the low-resolution
  result cannot hold.
* **Style interpolation** (:func:`blend_weights`): several style images with weights, blended inside the
  model's conditioning (the AdaLN condition and the style queries) by the pipeline, not by averaging
  output pixels.

Images here are (N, 3, H, W) float tensors in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from ..config import COLOUR_MODES
from ..errors import ConfigError

# BT.601 full-range RGB <-> YCbCr (JPEG's), on [0, 1] values
_RGB2YCC = torch.tensor(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=torch.float64
)
_YCC2RGB = torch.linalg.inv(_RGB2YCC)


def rgb_to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB (N, 3, H, W) -> Y in [0, 1], Cb and Cr centred on 0."""
    m = _RGB2YCC.to(device=x.device, dtype=x.dtype)
    return torch.einsum("ij,njhw->nihw", m, x)


def ycbcr_to_rgb(x: torch.Tensor) -> torch.Tensor:
    m = _YCC2RGB.to(device=x.device, dtype=x.dtype)
    return torch.einsum("ij,njhw->nihw", m, x)


def _sym_pow(cov: torch.Tensor, power: float, eps: float = 0.0) -> torch.Tensor:
    """(cov + eps·I)^power of symmetric PSD (..., 3, 3) matrices via eigh (negative rounding noise → 0)."""
    lam, u = torch.linalg.eigh(cov)
    lam = lam.clamp(min=0) + eps
    return (u * lam.pow(power).unsqueeze(-2)) @ u.transpose(-1, -2)


def coral(source: torch.Tensor, target: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """Colour transfer by CORAL (the linear map of the AdaIN paper's colour-preservation option, after
    Gatys et al. 2016): each source image's RGB pixels are mapped by x ↦ Σt^{1/2} Σs^{-1/2} (x − μs) + μt
    so their mean and covariance become the target's. Symmetric matrix square roots by eigendecomposition,
    in float64; covariances unbiased (1/(P − 1)) on both sides; ``eps`` is added to the source
    covariance's eigenvalues in the inverse square root (a flat source maps to the target's mean colour
    instead of dividing by zero). Equivalent, up to its regulariser, to naoto0804's ``coral`` (which
    standardises channels first and adds an identity to both correlation matrices).

    ``source`` (N, 3, H, W), ``target`` (N or 1, 3, H', W'); returns (N, 3, H, W) in the source's dtype,
    **not** clamped to [0, 1] (as naoto0804's ``test.py``: the encoder sees the values as they are).
    """
    if source.ndim != 4 or source.shape[1] != 3 or target.ndim != 4 or target.shape[1] != 3:
        raise ValueError(
            f"coral: expected (N, 3, H, W) images, got {tuple(source.shape)} and {tuple(target.shape)}"
        )
    if target.shape[0] not in (1, source.shape[0]):
        raise ValueError(
            f"coral: target batch {target.shape[0]} does not match source batch {source.shape[0]}"
        )
    if source[0, 0].numel() < 2 or target[0, 0].numel() < 2:
        raise ValueError("coral: covariances need at least 2 pixels per image")
    s = source.double().flatten(2)  # (N, 3, P)
    t = target.to(source.device).double().flatten(2)
    mu_s, mu_t = s.mean(2, keepdim=True), t.mean(2, keepdim=True)
    ds, dt = s - mu_s, t - mu_t
    cov_s = ds @ ds.transpose(1, 2) / (ds.shape[2] - 1)
    cov_t = dt @ dt.transpose(1, 2) / (dt.shape[2] - 1)
    a = _sym_pow(cov_t, 0.5) @ _sym_pow(cov_s, -0.5, eps)
    out = a @ ds + mu_t
    return out.view(source.shape).to(source.dtype)


def preserve_colour(result: torch.Tensor, content: torch.Tensor, mode: str = "luminance") -> torch.Tensor:
    """``result`` with the content's colours (module doc), clamped to [0, 1]. ``content`` is resized to
    the result's size when it differs (bilinear, antialiased); ``mode`` ``none`` returns ``result``."""
    if mode not in COLOUR_MODES:
        raise ConfigError(f"colour preservation must be one of {', '.join(COLOUR_MODES)}, got {mode!r}")
    if mode == "none":
        return result
    if content.shape[-2:] != result.shape[-2:]:
        content = F.interpolate(content.float(), size=result.shape[-2:], mode="bilinear", antialias=True)
    content = content.to(result.device)
    if mode == "luminance":
        r, c = rgb_to_ycbcr(result.double()), rgb_to_ycbcr(content.double())
        out = ycbcr_to_rgb(torch.cat([r[:, :1], c[:, 1:]], dim=1))
    else:
        out = coral(result.double(), content.double())
    return out.clamp(0, 1).to(result.dtype)


def _box_1d(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Mean over [i - r, i + r] along ``dim`` (cut at the border), by a cumulative sum: O(1) per pixel."""
    n = x.shape[dim]
    pad = [0, 0] * (x.ndim - 1 - (dim % x.ndim)) + [r + 1, r]
    c = F.pad(x.double(), pad).cumsum(dim)  # float64: running sums over thousands of pixels stay exact
    total = (c.narrow(dim, 2 * r + 1, n) - c.narrow(dim, 0, n)).to(x.dtype)
    idx = torch.arange(n, device=x.device)
    count = ((idx + r).clamp(max=n - 1) - (idx - r).clamp(min=0) + 1).to(x.dtype)
    shape = [1] * x.ndim
    shape[dim] = n
    return total / count.view(shape)


def _box(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean over the (2r+1)² window around each pixel (windows cut at the border) of (N, C, H, W)."""
    return _box_1d(_box_1d(x, r, -2), r, -1)


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """He et al.'s guided filter with a grey guide (N, 1, H, W) and a source (N, C, H, W): per window, the
    source is fit as a·guide + b; the output is the window-averaged fit, so it follows the guide's edges."""
    mean_i = _box(guide, radius)
    mean_p = _box(src, radius)
    cov_ip = _box(guide * src, radius) - mean_i * mean_p
    var_i = _box(guide * guide, radius) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return _box(a, radius) * guide + _box(b, radius)


def guided_upsample(
    result: torch.Tensor, content: torch.Tensor, *, radius: int | None = None, eps: float = 1e-4
) -> torch.Tensor:
    """The (N, 3, r, r) result at the content's size (N, 3, H, W): bicubic resize, then a guided filter with
    the content's luma as guide, so the content's detail comes back at full resolution. ``radius`` defaults
    to the upscaling factor (at least 2); larger ``eps`` keeps more of the result, less of the guide."""
    h, w = content.shape[-2:]
    up = F.interpolate(result.float(), size=(h, w), mode="bicubic", align_corners=False)
    if radius is None:
        radius = max(2, round(max(h, w) / max(result.shape[-2:])))
    guide = rgb_to_ycbcr(content.to(up.device).float())[:, :1]  # float32: full-size photos stay light
    return guided_filter(guide, up, radius, eps).clamp(0, 1).to(result.dtype)


def blend_weights(weights: Sequence[float], n_styles: int) -> list[float]:
    """Style-interpolation weights, checked (one per style, non-negative, not all 0) and normalised to sum 1."""
    w = [float(x) for x in weights]
    if len(w) != n_styles:
        raise ConfigError(
            f"{len(w)} style weights for {n_styles} style images; give one weight per style image"
        )
    if any(x < 0 or x != x for x in w) or sum(w) <= 0:
        raise ConfigError(f"style weights must be >= 0 and not all 0, got {w}")
    total = sum(w)
    return [x / total for x in w]
