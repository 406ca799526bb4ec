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
    """SSIM of each image pair, (B,), for images in [0, 1] (upstream-spec §6.2); differentiable.

    The Gaussian window is separable, so the five zero-padded 2-D blurs run as one batched pair
    of 1-D convolutions (the same values as the 2-D window, in float64, ~50x faster on the CPU).
    """
    _check(a, b)
    a, b = a.double(), b.double()
    C = a.shape[1]
    x = torch.arange(window, device=a.device, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    stack = torch.cat((a, b, a * a, b * b, a * b), dim=1)  # (B, 5C, H, W)
    n = stack.shape[1]
    pad = window // 2
    blurred = F.conv2d(stack, g.view(1, 1, window, 1).expand(n, 1, window, 1), padding=(pad, 0), groups=n)
    blurred = F.conv2d(blurred, g.view(1, 1, 1, window).expand(n, 1, 1, window), padding=(0, pad), groups=n)
    mu_a, mu_b, e_aa, e_bb, e_ab = blurred.split(C, dim=1)
    var_a = e_aa - mu_a**2
    var_b = e_bb - mu_b**2
    cov = e_ab - mu_a * mu_b
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
