"""stylevar: reference-based image style transfer with visual autoregressive models (StyleVAR)."""

from .config import ALPHA_PRESETS, SamplingConfig, StyleVARConfig, VQVAEConfig
from .errors import CheckpointError, ConfigError, ImageError, StyleVARError
from .models import VQVAE, Conditioning, GenerationOutput, StyleVAR
from .pipeline import StyleVARPipeline, StylizeOutput

__version__ = "0.1.0"

__all__ = [
    "ALPHA_PRESETS",
    "VQVAE",
    "CheckpointError",
    "Conditioning",
    "ConfigError",
    "GenerationOutput",
    "ImageError",
    "SamplingConfig",
    "StyleVAR",
    "StyleVARConfig",
    "StyleVARError",
    "StyleVARPipeline",
    "StylizeOutput",
    "VQVAEConfig",
    "__version__",
]
