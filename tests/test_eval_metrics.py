"""Weight-free metrics (eval/metrics.py): SSIM (paper's zero-padded map and the valid-region variant,
cross-checked with torchmetrics), the joint colour-histogram distance and the Fréchet distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from helpers import rand_images
from stylevar.eval import colour_histogram_distance, frechet_distance, ssim


def _smooth(*shape, seed=0):
    """Random images low-pass filtered (upsampled noise), so the SSIM window sees structure."""
    n, c, h, w = shape
    coarse = rand_images(n, c, h // 8 + 1, w // 8 + 1, seed=seed)
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)


# ---------------------------------------------------------------------------------------------------
# SSIM


@pytest.mark.parametrize("kind", ["random", "smooth"])
def test_ssim_valid_matches_torchmetrics(kind):
    """torchmetrics < 1.5 averaged the valid interior; >= 1.5 (PR #2721) averages its reflect-padded
    full-size map. Its map's interior is the valid map in every version, so that is compared always."""
    tm = pytest.importorskip("torchmetrics.functional.image")
    import torchmetrics

    make = rand_images if kind == "random" else _smooth
    a = make(3, 3, 40, 52, seed=1)
    b = (a + 0.2 * (make(3, 3, 40, 52, seed=2) - 0.5)).clamp(0, 1)
    b[2] = make(1, 3, 40, 52, seed=3)[0]  # an unrelated pair too
    kw = dict(gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0, reduction="none")
    ref, ref_map = tm.structural_similarity_index_measure(b, a, return_full_image=True, **kw)
    ours = ssim(b, a, valid=True)
    assert ours.shape == (3,) and ours.dtype == torch.float32
    interior = ref_map[..., 5:-5, 5:-5].double().mean(dim=(1, 2, 3)).float()
    assert torch.allclose(ours, interior, atol=1e-4, rtol=0), (ours, interior)
    # pixel by pixel, with torchmetrics in float64 (in float32 its E[x²] − μ² cancels on smooth images)
    _, map64 = tm.structural_similarity_index_measure(b.double(), a.double(), return_full_image=True, **kw)
    assert torch.allclose(ssim(b, a, valid=True, return_map=True).double(), map64[..., 5:-5, 5:-5], atol=1e-6)
    if tuple(int(v) for v in torchmetrics.__version__.split(".")[:2]) < (1, 5):
        assert torch.allclose(ours, ref.float(), atol=1e-4, rtol=0)
    # the paper's zero-padded average is a different number (its border sees the padding)
    assert not torch.allclose(ssim(b, a), ours, atol=1e-3)


def test_ssim_zero_padded_map_interior_is_the_valid_map():
    a, b = _smooth(2, 3, 36, 30, seed=4), rand_images(2, 3, 36, 30, seed=5)
    full = ssim(a, b, return_map=True)
    interior = ssim(a, b, valid=True, return_map=True)
    assert full.shape == (2, 3, 36, 30) and interior.shape == (2, 3, 26, 20)
    assert torch.allclose(full[..., 5:-5, 5:-5], interior, atol=1e-6, rtol=0)
    # the reductions are the means of those maps (the default unchanged: the whole padded map)
    assert torch.allclose(ssim(a, b), full.double().mean(dim=(1, 2, 3)).float(), atol=1e-6)
    assert torch.allclose(ssim(a, b, valid=True), interior.double().mean(dim=(1, 2, 3)).float(), atol=1e-6)
    # ... and the padded map really differs near the border
    assert not torch.allclose(full[..., :5, :], ssim(a, b, window=1, return_map=True)[..., :5, :], atol=1e-3)


def test_ssim_identical_images_and_small_inputs():
    a = rand_images(2, 3, 24, 24, seed=6)
    assert torch.allclose(ssim(a, a), torch.ones(2), atol=1e-6)
    assert torch.allclose(ssim(a, a, valid=True), torch.ones(2), atol=1e-6)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(a[..., :10], a[..., :10], valid=True)
    assert ssim(a[..., :10], a[..., :10]).shape == (2,)  # zero-padded mode takes any size


# ---------------------------------------------------------------------------------------------------
# Colour histograms


def _naive_hist(img: torch.Tensor, bins: int) -> np.ndarray:
    px = img.permute(1, 2, 0).reshape(-1, 3).double().numpy()
    h, _ = np.histogramdd(px, bins=(bins,) * 3, range=((0, 1),) * 3)
    return h / h.sum()


def test_colour_histogram_distance_matches_a_naive_histogram():
    a, b = rand_images(3, 3, 20, 24, seed=7), _smooth(3, 3, 32, 16, seed=8) * 0.6  # sizes differ
    d = colour_histogram_distance(a, b, bins=4)
    assert d.shape == (3,) and d.dtype == torch.float32
    for i in range(3):
        p, q = _naive_hist(a[i], 4), _naive_hist(b[i], 4)
        ref = math.sqrt(max(0.0, 1 - float(np.sqrt(p * q).sum())))
        assert d[i].item() == pytest.approx(ref, abs=1e-6)
    # batch-1 broadcast
    d1 = colour_histogram_distance(a, b[:1], bins=4)
    assert torch.allclose(
        d1, torch.stack([colour_histogram_distance(a[i : i + 1], b[:1], bins=4)[0] for i in range(3)])
    )


def test_colour_histogram_distance_extremes():
    a = rand_images(2, 3, 16, 16, seed=9)
    assert torch.equal(colour_histogram_distance(a, a), torch.zeros(2))
    # a permutation of the pixels keeps the histogram: distance 0
    perm = a.flatten(2)[:, :, torch.randperm(256, generator=torch.Generator().manual_seed(0))].view_as(a)
    assert torch.allclose(colour_histogram_distance(a, perm), torch.zeros(2), atol=1e-7)
    dark, bright = a * 0.4, 0.6 + a * 0.4  # no shared cell with 8 bins: [0, 0.4] vs [0.6, 1]
    assert torch.allclose(colour_histogram_distance(dark, bright), torch.ones(2))
    with pytest.raises(ValueError):
        colour_histogram_distance(a, a[:, :2])
    with pytest.raises(ValueError):
        colour_histogram_distance(a, torch.cat([a, a]))


# ---------------------------------------------------------------------------------------------------
# Fréchet distance


def test_frechet_distance_against_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(10)
    fa = torch.randn(200, 16, generator=g) @ torch.randn(16, 16, generator=g) * 0.5 + 1.0
    fb = torch.randn(150, 16, generator=g) @ torch.randn(16, 16, generator=g) * 0.3
    a, b = fa.double().numpy(), fb.double().numpy()
    mu_a, mu_b, s_a, s_b = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s_a @ s_b)
    ref = float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean).real)
    assert frechet_distance(fa, fb) == pytest.approx(ref, rel=1e-8, abs=1e-8)
    assert frechet_distance(fb, fa) == pytest.approx(ref, rel=1e-8, abs=1e-8)


@pytest.mark.parametrize("n, m, dim", [(200, 150, 16), (20, 30, 64)])  # eigh path; sample-space path (N < D)
def test_frechet_distance_against_numpy_eigenvalues(n, m, dim):
    """An independent reference needing only numpy: tr((Σa Σb)^{1/2}) = Σ sqrt(eigenvalues of Σa Σb), which
    are real and non-negative for a product of two PSD matrices (rounding noise clamped)."""
    g = torch.Generator().manual_seed(12)
    fa = torch.randn(n, dim, generator=g) @ torch.randn(dim, dim, generator=g) * 0.5 + 1.0
    fb = torch.randn(m, dim, generator=g) @ torch.randn(dim, dim, generator=g) * 0.3
    a, b = fa.double().numpy(), fb.double().numpy()
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eig = np.linalg.eigvals(s_a @ s_b).real
    tr_sqrt = np.sqrt(np.where(eig > 1e-9 * eig.max(), eig, 0)).sum()
    ref = float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_sqrt)
    assert frechet_distance(fa, fb) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(fb, fa) == pytest.approx(ref, rel=1e-6)


def test_frechet_distance_properties():
    g = torch.Generator().manual_seed(11)
    f = torch.randn(64, 8, generator=g, dtype=torch.float64)
    assert abs(frechet_distance(f, f)) < 1e-9
    v = torch.tensor([0.5, -1.0, 2.0, 0, 0, 0, 0.25, 0], dtype=torch.float64)
    assert frechet_distance(f, f + v) == pytest.approx(float(v.pow(2).sum()), abs=1e-9)
    # rank-deficient covariances (D > N) stay finite and non-negative
    d = frechet_distance(torch.randn(5, 32, generator=g), torch.randn(6, 32, generator=g))
    assert math.isfinite(d) and d > 0
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(f[:1], f)
    with pytest.raises(ValueError):
        frechet_distance(f, f[:, :4])
