"""CLIP image-image similarity (``transformers``), from a model folder or the Hugging Face cache.
Conventions: :mod:`stylevar.perceptual.common`.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..models.style_encoders import CLIP_MEAN, CLIP_STD
from .common import Frozen, PathLike, check_images, image_pair, load_hf_model

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"


def load_clip_model(src: PathLike, cache_dir: PathLike | None = None, local_files_only: bool | None = None):
    """A transformers CLIP model (``CLIPModel`` or ``CLIPVisionModelWithProjection``) from a folder, or a Hub
    id in the Hugging Face cache (fetched only where the Hub is reachable and not disabled); one-line errors."""
    return load_hf_model(
        src,
        kinds={"clip": "CLIPModel", "clip_vision_model": "CLIPVisionModelWithProjection"},
        what="CLIP",
        save_hint=f"save {DEFAULT_CLIP_MODEL} there on a connected machine "
        "(CLIPModel.from_pretrained(...).save_pretrained(folder)) or give a Hub model id",
        cache_dir=cache_dir,
        local_files_only=local_files_only,
    ).float()


class ClipSimilarity(Frozen):
    """CLIP image-image cosine similarity (docs/upstream.md §6.3, §7.1), (N,), higher is more similar.

    Preprocessing as upstream: bilinear resize to 224×224 (no crop, no antialias) of the [0, 1] images,
    CLIP mean/std; embedding = vision ``pooler_output`` → ``visual_projection`` → L2 normalise.

    Args:
        model_dir_or_name: a local folder saved by ``save_pretrained`` (``CLIPModel`` or
            ``CLIPVisionModelWithProjection``) or a Hub model id (default ``openai/clip-vit-base-patch32``).
        cache_dir: the Hugging Face cache folder for a Hub id.
        local_files_only: True = cache only; False = may download; None = the cache first, then the Hub
            unless ``HF_HUB_OFFLINE`` is set.
    """

    SIZE = 224

    def __init__(
        self,
        model_dir_or_name: PathLike = DEFAULT_CLIP_MODEL,
        *,
        device: str | torch.device = "cpu",
        cache_dir: PathLike | None = None,
        local_files_only: bool | None = None,
    ):
        super().__init__()
        self.model = load_clip_model(model_dir_or_name, cache_dir, local_files_only)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self._freeze()
        self.to(device)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, 224, 224) CLIP-normalised pixels from [0, 1] images."""
        x = check_images(images).to(self.mean.device)
        x = F.interpolate(x, size=(self.SIZE, self.SIZE), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings, (N, projection_dim)."""
        out = self.model.vision_model(pixel_values=self.preprocess(images))
        return F.normalize(self.model.visual_projection(out.pooler_output).float(), dim=-1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = image_pair(a, b, same_size=False)
        return (self.embed(a) * self.embed(b)).sum(-1)
