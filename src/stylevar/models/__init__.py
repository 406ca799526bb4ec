"""Model components: the VQ-VAE tokenizer, the StyleVAR transformer and their parts."""

from .quantizer import MultiScaleQuantizer, phi_indices
from .sampling import filter_logits_, make_generators, sample_tokens
from .stylevar import ALPHA_CONTENT_END, Conditioning, GenerationOutput, StyleRegions, StyleVAR, scale_maps
from .vqvae import VQVAE

__all__ = [
    "ALPHA_CONTENT_END",
    "VQVAE",
    "Conditioning",
    "GenerationOutput",
    "MultiScaleQuantizer",
    "StyleRegions",
    "StyleVAR",
    "filter_logits_",
    "make_generators",
    "phi_indices",
    "sample_tokens",
    "scale_maps",
]
