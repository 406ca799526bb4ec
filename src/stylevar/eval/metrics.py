"""Deprecated: the weight-free metrics moved to :mod:`stylevar.perceptual.metrics` (the GRPO rewards use
them too); ``stylevar.eval`` still exports them."""

from .._deprecated import moved

__getattr__ = moved(
    __name__,
    {
        name: f"stylevar.perceptual.metrics:{name}"
        for name in ("colour_histogram_distance", "frechet_distance", "mean_abs_error", "psnr", "ssim")
    },
)
