"""CLIP image-image similarity (``transformers``), from a model folder or the Hugging Face cache.
Conventions: :mod:`stylevar.perceptual.common`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.nn import functional as F

from ..errors import CheckpointError, MissingWeightsError
from ..io.safe import why
from ..models.style_encoders import CLIP_MEAN, CLIP_STD
from .common import Frozen, PathLike, check_images, image_pair, require

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"


def _hub_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _looks_like_path(src: str) -> bool:
    return src.startswith(("/", ".", "~")) or src.count("/") > 1 or "\\" in src


def load_clip_model(src: PathLike, cache_dir: PathLike | None = None, local_files_only: bool | None = None):
    """A transformers CLIP model (``CLIPModel`` or ``CLIPVisionModelWithProjection``) from a folder, or a Hub
    id in the Hugging Face cache (fetched only where the Hub is reachable and not disabled); one-line errors."""
    transformers = require("transformers", "CLIP")
    return _load_clip(transformers, str(src), cache_dir, local_files_only).float()


def _load_clip(transformers, src: str, cache_dir, local_files_only: bool | None):
    def load(source: str, **kw):
        config = transformers.AutoConfig.from_pretrained(source, **kw)
        kind = getattr(config, "model_type", "")
        if kind == "clip":
            cls = transformers.CLIPModel
        elif kind == "clip_vision_model":
            cls = transformers.CLIPVisionModelWithProjection
        else:
            raise CheckpointError(f"{source}: not a CLIP model (model_type {kind!r})")
        return cls.from_pretrained(source, **kw)

    path = Path(src).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise MissingWeightsError(f"{path}: not a Hugging Face model folder (no config.json)")
        try:
            return load(str(path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot load the CLIP model ({why(e)})") from None
    if _looks_like_path(src):
        raise MissingWeightsError(
            f"CLIP model folder {path} does not exist; save {DEFAULT_CLIP_MODEL} there on a connected "
            "machine (CLIPModel.from_pretrained(...).save_pretrained(folder)) or give a Hub model id"
        )
    if local_files_only is None:
        attempts = [True] if _hub_offline() else [True, False]
    else:
        attempts = [bool(local_files_only)]
    for lfo in attempts:
        try:
            return load(src, cache_dir=cache_dir, local_files_only=lfo)
        except (OSError, ValueError):
            continue
    where = "not in the Hugging Face cache" + ("" if attempts == [True] else " and the Hub is unreachable")
    raise MissingWeightsError(
        f"CLIP model {src!r}: {where}; on a connected machine run `hf download {src}` (then copy the "
        "Hugging Face cache here) or save the model to a folder and pass that folder"
    )


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
        transformers = require("transformers", "CLIP similarity")
        self.model = _load_clip(transformers, str(model_dir_or_name), cache_dir, local_files_only).float()
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
