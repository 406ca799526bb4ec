"""Evaluation: weight-free image metrics (more metrics and the paper's protocol build on these)."""

from .metrics import colour_histogram_distance, frechet_distance, mean_abs_error, psnr, ssim

__all__ = ["colour_histogram_distance", "frechet_distance", "mean_abs_error", "psnr", "ssim"]
