"""Evaluation: the paper's protocol (benchmarks, methods, metric suite, reports) and the AdaIN baseline.

The image metrics themselves live in :mod:`stylevar.perceptual`; the weight-free ones are exported here too.
"""

from ..perceptual.metrics import colour_histogram_distance, frechet_distance, mean_abs_error, psnr, ssim

__all__ = ["colour_histogram_distance", "frechet_distance", "mean_abs_error", "psnr", "ssim"]
