"""Weight-free image metrics. Images are (B, 3, H, W) tensors in **[0, 1]**; results are per image, (B,).

:func:`ssim` is the paper's (docs/upstream.md §7.2): an 11x11 Gaussian window (sigma 1.5) applied
per channel with zero padding 5 (the map keeps the input's size, no valid-region crop),
C1 = 0.01^2, C2 = 0.03^2 for data range 1, the map averaged over pixels and channels.
``valid=True`` averages only where the window lies inside the image instead (scikit-image, torchmetrics
< 1.5, the 'valid' filtering of Wang et al.'s MATLAB code).

:func:`colour_histogram_distance` compares joint RGB colour histograms (Hellinger distance, in [0, 1]);
:func:`frechet_distance` is the Fréchet distance between Gaussians fitted to two feature sets (FID when
the features are Inception pool features, see :class:`stylevar.perceptual.InceptionFeatures`).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def _check(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(
            f"expected two (B, C, H, W) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    window: int = 11,
    sigma: float = 1.5,
    valid: bool = False,
    return_map: bool = False,
) -> torch.Tensor:
    """SSIM of each image pair, (B,), for images in [0, 1] (docs/upstream.md §7.2); differentiable.

    Default (the paper's): the blurs zero-pad by ``window // 2``, so the SSIM map has the input's size and
    its border pixels see the zero padding; the map is averaged over every pixel and channel.
    ``valid=True`` keeps only the interior (H − window + 1) × (W − window + 1) where the window lies fully
    inside the image: the number scikit-image (``gaussian_weights=True, use_sample_covariance=False``)
    and torchmetrics before 1.5 report (and the 'valid' filtering of Wang et al.'s MATLAB code).
    torchmetrics >= 1.5 (its PR #2721) averages a reflect-padded full-size map instead, a third number;
    all these maps agree on the interior.
    ``return_map=True`` returns the (B, C, h, w) SSIM map instead of its mean.

    The Gaussian window is separable, so the five 2-D blurs run as one batched pair of 1-D convolutions
    (the same values as the 2-D window, in float64, ~50x faster on the CPU).
    """
    _check(a, b)
    if valid and min(a.shape[-2:]) < window:
        raise ValueError(f"ssim(valid=True) needs images of at least {window}x{window}, got {tuple(a.shape)}")
    a, b = a.double(), b.double()
    C = a.shape[1]
    x = torch.arange(window, device=a.device, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    stack = torch.cat((a, b, a * a, b * b, a * b), dim=1)  # (B, 5C, H, W)
    n = stack.shape[1]
    pad = 0 if valid else window // 2
    blurred = F.conv2d(stack, g.view(1, 1, window, 1).expand(n, 1, window, 1), padding=(pad, 0), groups=n)
    blurred = F.conv2d(blurred, g.view(1, 1, 1, window).expand(n, 1, 1, window), padding=(0, pad), groups=n)
    mu_a, mu_b, e_aa, e_bb, e_ab = blurred.split(C, dim=1)
    var_a = e_aa - mu_a**2
    var_b = e_bb - mu_b**2
    cov = e_ab - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    m = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    if return_map:
        return m.float()
    return m.flatten(1).mean(1).float()


def colour_histogram_distance(a: torch.Tensor, b: torch.Tensor, *, bins: int = 8) -> torch.Tensor:
    """Hellinger distance between the joint RGB colour histograms of each image pair, (B,), in [0, 1].

    Each image's pixels fall into ``bins`` equal bins per channel over [0, 1] (``bins**3`` cells; values
    outside [0, 1] go to the end bins); the counts are normalised to sum 1 (p, q) and the distance is
    sqrt(1 − Σ sqrt(p·q)): 0 for images with the same colour distribution (whatever their layout), 1 for
    images sharing no colour cell. ``a`` and ``b`` may differ in size; ``b`` may have batch size 1
    (broadcast). Not differentiable (counts).
    """
    for name, x in (("first", a), ("second", b)):
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{name} images: expected a (B, 3, H, W) tensor in [0, 1], got {tuple(x.shape)}")
    if b.shape[0] not in (1, a.shape[0]):
        raise ValueError(f"expected batch sizes B and B (or 1), got {a.shape[0]} and {b.shape[0]}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    p, q = _colour_histograms(a, bins), _colour_histograms(b.to(a.device), bins)
    overlap = torch.sqrt(p * q).sum(1)  # Bhattacharyya coefficient, (B,) after broadcasting
    return torch.sqrt((1 - overlap).clamp(0, 1)).float()


def _colour_histograms(x: torch.Tensor, bins: int) -> torch.Tensor:
    """(B, bins**3) normalised joint RGB histograms of (B, 3, H, W) images in [0, 1]."""
    n = x.shape[0]
    q = (x.detach().double() * bins).floor().clamp_(0, bins - 1).long()  # (B, 3, H, W) bin per channel
    cell = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]  # (B, H, W)
    cell = cell.flatten(1) + torch.arange(n, device=x.device).unsqueeze(1) * bins**3
    counts = torch.bincount(cell.flatten(), minlength=n * bins**3).view(n, bins**3).double()
    return counts / counts.sum(1, keepdim=True)


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets, (N, D) and (M, D) (N, M >= 2).

    ``|μa − μb|² + tr(Σa) + tr(Σb) − 2 tr((Σa Σb)^{1/2})`` with the sample means and unbiased covariances
    (as ``numpy.cov``), in float64 without scipy: with Σa = U diag(λ) Uᵀ and S = U diag(sqrt(λ⁺)) Uᵀ,
    tr((Σa Σb)^{1/2}) = Σ sqrt(eigenvalues⁺ of S Σb S) (a symmetric matrix, so ``eigh`` is exact where
    ``scipy.linalg.sqrtm`` of the non-symmetric product may return small imaginary parts). λ⁺: eigenvalues
    clamped at 0, those at rounding-noise level (below n·eps·max) included, so identical sets give ~0
    even when N < D (rank-deficient covariances). When N or M < D the same trace is computed in sample
    space (the nuclear norm of an N×M matrix; comment in the code), ~1000x faster for 50 x 2048. With Inception
    pool features this is FID; see :class:`stylevar.perceptual.InceptionFeatures` for which FID.
    """
    fa, fb = feats_a.detach(), feats_b.detach()
    if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1]:
        raise ValueError(
            f"expected (N, D) and (M, D) feature sets, got {tuple(fa.shape)} and {tuple(fb.shape)}"
        )
    if fa.shape[0] < 2 or fb.shape[0] < 2:
        raise ValueError(
            f"the Fréchet distance needs at least 2 samples per set (covariances), got {fa.shape[0]} and "
            f"{fb.shape[0]}"
        )
    fa, fb = fa.double(), fb.to(fa.device).double()
    mu_a, mu_b = fa.mean(0), fb.mean(0)
    if min(fa.shape[0], fb.shape[0]) < fa.shape[1]:
        # fewer samples than dimensions (50 images, 2048 features): with A = (Xa − μa)/sqrt(N−1) and B likewise,
        # Σa = AᵀA, Σb = BᵀB, and the non-zero eigenvalues of Σa Σb are the squared singular values of A Bᵀ
        # (N×M), so tr((Σa Σb)^{1/2}) is the nuclear norm of A Bᵀ: exact, and no D×D matrix is formed
        a = (fa - mu_a) / math.sqrt(fa.shape[0] - 1)
        b = (fb - mu_b) / math.sqrt(fb.shape[0] - 1)
        tr_sqrt = torch.linalg.svdvals(a @ b.T).sum()
        d = (mu_a - mu_b).pow(2).sum() + a.pow(2).sum() + b.pow(2).sum() - 2 * tr_sqrt
        return float(d.clamp_min(0))
    cov_a, cov_b = torch.cov(fa.T).reshape(fa.shape[1], -1), torch.cov(fb.T).reshape(fb.shape[1], -1)
    lam, u = torch.linalg.eigh(cov_a)
    s = (u * _psd_clamp(lam).sqrt()) @ u.T  # Σa^{1/2}
    inner = s @ cov_b @ s
    tr_sqrt = _psd_clamp(torch.linalg.eigvalsh((inner + inner.T) / 2)).sqrt().sum()
    d = (mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * tr_sqrt
    return float(d)


def _psd_clamp(eigenvalues: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a PSD matrix with the rounding noise zeroed: those below ``n·eps·max`` (the
    ``matrix_rank`` tolerance) become 0, so a rank-deficient covariance (N < D) adds no sqrt(noise)."""
    tol = eigenvalues.abs().max() * eigenvalues.numel() * torch.finfo(eigenvalues.dtype).eps
    return torch.where(eigenvalues > tol, eigenvalues, torch.zeros_like(eigenvalues))


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for data range 1, (B,); identical images give +inf."""
    _check(a, b)
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse)).float()


def mean_abs_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute pixel error, (B,), in units of the [0, 1] range."""
    _check(a, b)
    return (a.double() - b.double()).abs().flatten(1).mean(1).float()


def edge_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Structure shared by two images, (B,) in [-1, 1]: the Pearson correlation of their luma's Sobel
    gradient magnitudes (1: the same edges in the same places, 0: unrelated layouts). ``b`` is resized to
    ``a``'s size (bilinear, antialiased) when they differ; ``b`` may have batch size 1.

    Against the content image it says how much of the content's structure an output keeps; against the
    style image, how much of the *style image's* layout leaked into it (StyleAR's content leakage), the
    measure ``stylevar evaluate --metrics leakage`` reports for real images.
    """
    for name, x in (("first", a), ("second", b)):
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{name} images: expected a (B, 3, H, W) tensor in [0, 1], got {tuple(x.shape)}")
    if b.shape[0] not in (1, a.shape[0]):
        raise ValueError(f"expected batch sizes B and B (or 1), got {a.shape[0]} and {b.shape[0]}")
    b = b.to(a.device)
    if b.shape[-2:] != a.shape[-2:]:
        b = F.interpolate(b.float(), size=a.shape[-2:], mode="bilinear", align_corners=False, antialias=True)

    def edges(x: torch.Tensor) -> torch.Tensor:
        luma = (x.double() * x.new_tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(1, 3, 1, 1)).sum(
            1, True
        )
        k = torch.tensor(
            [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=torch.float64, device=x.device
        )
        g = F.conv2d(F.pad(luma, (1, 1, 1, 1), mode="replicate"), torch.stack([k, k.t()]).unsqueeze(1))
        return g.pow(2).sum(1).sqrt().flatten(1)  # (B, H*W)

    ea, eb = edges(a), edges(b).expand(a.shape[0], -1)
    ea, eb = ea - ea.mean(1, keepdim=True), eb - eb.mean(1, keepdim=True)
    den = (ea.pow(2).sum(1) * eb.pow(2).sum(1)).sqrt()
    return torch.where(den > 0, (ea * eb).sum(1) / den.clamp_min(1e-30), torch.zeros_like(den)).float()
