"""Deprecated: the pretrained perceptual networks moved to :mod:`stylevar.perceptual` (the GRPO rewards
use them too)."""

from .._deprecated import moved

__getattr__ = moved(
    __name__,
    {
        **{
            name: f"stylevar.perceptual:{name}"
            for name in (
                "CLIP_MEAN",
                "CLIP_STD",
                "DEFAULT_CLIP_MODEL",
                "EXTRA_HINT",
                "IMAGENET_MEAN",
                "IMAGENET_STD",
                "ClipSimilarity",
                "DreamSimDistance",
                "InceptionFeatures",
                "LPIPSDistance",
                "StyleContentLoss",
                "VGGFeatures",
                "content_loss",
                "gram_matrix",
                "gram_style_loss",
                "resolve_cache_dir",
            )
        },
    },
)
