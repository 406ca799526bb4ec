"""Weight-free image metrics. Images are (B, 3, H, W) tensors in **[0, 1]**; results are per image, (B,).

:func:`ssim` is the paper's (upstream-spec §6.2): an 11x11 Gaussian window (sigma 1.5) applied
per channel with zero padding 5 (the map keeps the input's size, no valid-region crop),
C1 = 0.01^2, C2 = 0.03^2 for data range 1, the map averaged over pixels and channels.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _check(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(
            f"expected two (B, C, H, W) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    w = (g[:, None] * g[None, :]).to(dtype)
    return w.expand(channels, 1, size, size).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor, *, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM of each image pair, (B,), for images in [0, 1] (upstream-spec §6.2)."""
    _check(a, b)
    a, b = a.double(), b.double()
    C = a.shape[1]
    w = _gaussian_window(window, sigma, C, a.device, a.dtype)
    pad = window // 2

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, padding=pad, groups=C)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    m = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return m.flatten(1).mean(1).float()


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for data range 1, (B,); identical images give +inf."""
    _check(a, b)
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse)).float()


def mean_abs_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute pixel error, (B,), in units of the [0, 1] range."""
    _check(a, b)
    return (a.double() - b.double()).abs().flatten(1).mean(1).float()
