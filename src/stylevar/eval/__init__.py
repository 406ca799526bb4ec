"""Evaluation: weight-free image metrics (more metrics and the paper's protocol build on these)."""

from .metrics import mean_abs_error, psnr, ssim

__all__ = ["mean_abs_error", "psnr", "ssim"]
