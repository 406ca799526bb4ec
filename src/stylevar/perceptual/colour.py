"""Colour transfer by matching colour statistics: the simplest style-transfer baseline.

:func:`colour_transfer` gives each content image the mean and covariance of its style image's RGB
colours with the linear map that moves the pixels least (the Monge-Kantorovich solution between two
Gaussians; Pitie and Kokaram, "The linear Monge-Kantorovitch linear colour mapping for example-based
colour transfer", CVMP 2007). It keeps the content's layout exactly (the map is the same affine function
for every pixel) and takes the style's palette, but none of its texture or brush strokes: a method that
is "closer to the style" only by colour statistics does not beat it, which is why the demos and the
evaluation report it beside StyleVAR (docs/demo.md, docs/evaluate.md).
"""

from __future__ import annotations

import torch

from .common import check_images

__all__ = ["colour_transfer"]


def _sqrtm(cov: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Square root and inverse square root of symmetric (N, 3, 3) matrices (eigenvalues floored at eps)."""
    vals, vecs = torch.linalg.eigh(cov)
    vals = vals.clamp_min(eps)
    root = vecs @ torch.diag_embed(vals.sqrt()) @ vecs.transpose(1, 2)
    inv_root = vecs @ torch.diag_embed(vals.clamp_min(1e-300).rsqrt()) @ vecs.transpose(1, 2)
    return root, inv_root


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (N, 3) and covariance (N, 3, 3) of each image's pixels, (N, 3, P)."""
    mean = x.mean(2)
    centred = x - mean[:, :, None]
    return mean, centred @ centred.transpose(1, 2) / x.shape[2]


@torch.no_grad()
def colour_transfer(content: torch.Tensor, style: torch.Tensor, *, eps: float = 1e-5) -> torch.Tensor:
    """``content`` (N, 3, H, W) with the colour mean and covariance of ``style`` ((N or 1, 3, h, w), any
    size), both in [0, 1]; the result in [0, 1] (clamped), float32, on the content's device.

    The map is ``T(x) = A (x - mu_c) + mu_s`` with ``A = C_c^-1/2 (C_c^1/2 C_s C_c^1/2)^1/2 C_c^-1/2``,
    the affine map of least squared displacement that takes the content's colour Gaussian to the style's.
    ``eps`` floors the content covariance's eigenvalues before it is inverted (a flat image has a singular
    covariance); the style's covariance is matched as it is.
    """
    content, style = check_images(content), check_images(style)
    n = content.shape[0]
    if style.shape[0] not in (1, n):
        raise ValueError(
            f"colour_transfer: {n} content images need 1 or {n} style images, got {style.shape[0]}"
        )
    c = content.double().flatten(2)
    s = style.double().flatten(2).to(c.device)
    mu_c, cov_c = _stats(c)
    mu_s, cov_s = _stats(s)
    mu_s, cov_s = mu_s.expand(n, 3), cov_s.expand(n, 3, 3)
    root_c, inv_root_c = _sqrtm(cov_c, eps)
    middle, _ = _sqrtm(root_c @ cov_s @ root_c, 0.0)  # PSD: only rounding below 0 is floored
    a = inv_root_c @ middle @ inv_root_c
    out = a @ (c - mu_c[:, :, None]) + mu_s[:, :, None]
    return out.view_as(content).clamp_(0, 1).float()
