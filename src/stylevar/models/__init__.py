"""Model components: the VQ-VAE tokenizer, the StyleVAR transformer and their parts."""

from .quantizer import MultiScaleQuantizer, phi_indices
from .sampling import filter_logits_, make_generators, sample_tokens
from .stylevar import Conditioning, GenerationOutput, StyleVAR
from .vqvae import VQVAE

__all__ = [
    "VQVAE",
    "Conditioning",
    "GenerationOutput",
    "MultiScaleQuantizer",
    "StyleVAR",
    "filter_logits_",
    "make_generators",
    "phi_indices",
    "sample_tokens",
]
