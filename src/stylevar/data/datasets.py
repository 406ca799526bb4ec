"""Torch datasets over triplets and unpaired (content, style) pairs, with the model's transforms.

The published transform (docs/upstream.md §5.1) is applied to all three images: resize to the
model resolution with LANCZOS, aspect not kept ("squash"), then [0, 1] -> [-1, 1]. The paper's
augmentations, never implemented upstream, are options here: rotation and brightness jitter on
the content image, a random crop of the style image. Their randomness is a function of
(seed, epoch, index) only, so a resumed run sees exactly the images an uninterrupted one would.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch.utils.data import Dataset

from ..config import Serialisable
from ..errors import DataError, ImageError
from ..images import FITS, crop_box, list_images, load_image
from .triplets import Triplet

logger = logging.getLogger(__name__)


@dataclass
class TripletTransform(Serialisable):
    """Images -> (3, R, R) tensors in [-1, 1].

    Attributes:
        resolution: model resolution R.
        fit: ``squash`` (the published training transform: whole image, aspect not kept) or
            ``crop`` (centred square).
        content_rotation: maximum rotation of the content image in degrees (0 = off).
        content_brightness: maximum relative brightness change of the content image (0 = off).
        style_crop: smallest side fraction of a random square crop of the style image (1 = off).
    """

    resolution: int = 256
    fit: str = "squash"
    content_rotation: float = 0.0
    content_brightness: float = 0.0
    style_crop: float = 1.0

    def __post_init__(self) -> None:
        if self.fit not in FITS:
            raise DataError(f"fit must be one of {FITS}, not {self.fit!r}")
        if not 0 < self.style_crop <= 1:
            raise DataError(f"style_crop must be in (0, 1], got {self.style_crop}")

    @property
    def augments(self) -> bool:
        return bool(self.content_rotation or self.content_brightness or self.style_crop < 1)

    def to_tensor(self, img: Image.Image) -> torch.Tensor:
        region = img.crop(crop_box(img.size, self.fit))
        region = region.resize((self.resolution, self.resolution), Image.Resampling.LANCZOS)
        a = torch.from_numpy(np.asarray(region, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        return a.mul_(2).sub_(1)

    def content(self, img: Image.Image, rng: random.Random | None) -> torch.Tensor:
        if rng is not None and self.content_rotation:
            angle = rng.uniform(-self.content_rotation, self.content_rotation)
            img = img.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=(255, 255, 255))
        if rng is not None and self.content_brightness:
            img = ImageEnhance.Brightness(img).enhance(1 + rng.uniform(-1, 1) * self.content_brightness)
        return self.to_tensor(img)

    def style(self, img: Image.Image, rng: random.Random | None) -> torch.Tensor:
        if rng is not None and self.style_crop < 1:
            w, h = img.size
            side = max(1, round(min(w, h) * rng.uniform(self.style_crop, 1.0)))
            x0, y0 = rng.randint(0, w - side), rng.randint(0, h - side)
            img = img.crop((x0, y0, x0 + side, y0 + side))
        return self.to_tensor(img)


class TripletDataset(Dataset):
    """(content, style, target) triplets as ``{"target", "style", "content"}`` tensors in [-1, 1] and ``"index"``.

    Args:
        triplets: from :func:`stylevar.data.scan` (ideally after :func:`validate_triplets`).
        transform: resize/augmentation policy.
        train: apply the transform's augmentations (validation never does).
        seed: augmentation seed; see :meth:`set_epoch`.
        on_bad: a file that fails to load: ``fail`` raises :class:`DataError`; ``skip`` serves
            the next triplet instead and counts it (``load_failures``, logged).
        cache_images: keep each file's tensor in memory after its first load (keyed by role and path, so a style
            shared by many triplets is decoded once; 12 R^2 bytes per distinct file, per DataLoader
            worker). Augmented images (``train`` with augmentations) are never cached.
    """

    def __init__(
        self,
        triplets: Sequence[Triplet],
        transform: TripletTransform | None = None,
        *,
        train: bool = False,
        seed: int = 0,
        on_bad: str = "fail",
        cache_images: bool = False,
    ):
        if not triplets:
            raise DataError("no triplets to train or evaluate on")
        self.triplets = list(triplets)
        self.transform = transform or TripletTransform()
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.on_bad = on_bad
        self.load_failures = 0
        self.cache_images = cache_images
        self._cache: dict[tuple[str, Path], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.triplets)

    def set_epoch(self, epoch: int) -> None:
        """Augmentations of item i depend on (seed, epoch, i) only."""
        self.epoch = epoch

    def _rng(self, index: int) -> random.Random | None:
        if not (self.train and self.transform.augments):
            return None
        return random.Random(f"{self.seed}/{self.epoch}/{index}")

    def _load(self, index: int) -> dict:
        t = self.triplets[index]
        rng = self._rng(index)
        tf = self.transform
        return {
            "target": self._image("target", t.target, tf.to_tensor, None),
            "style": self._image("style", t.style, lambda img: tf.style(img, rng), rng),
            "content": self._image("content", t.content, lambda img: tf.content(img, rng), rng),
            "index": index,
        }

    def _image(self, role: str, path: Path, transform, rng: random.Random | None) -> torch.Tensor:
        """``transform(the image at path)``, from the cache when allowed (no augmentation drawn)."""
        if not self.cache_images or rng is not None:
            return transform(load_image(path, role=role))
        key = (role, path)
        if key not in self._cache:
            self._cache[key] = transform(load_image(path, role=role))
        return self._cache[key]

    def __getitem__(self, index: int) -> dict:
        for attempt in range(len(self.triplets)):
            i = (index + attempt) % len(self.triplets)
            try:
                return self._load(i)
            except ImageError as e:
                if self.on_bad != "skip":
                    raise DataError(f"{e}; run with --on-bad-file skip to leave such triplets out") from None
                self.load_failures += 1
                logger.warning("skipping triplet %s: %s", self.triplets[i].key, e)
        raise DataError("no triplet of the dataset could be loaded")


def unpaired_pairs(
    content: str | os.PathLike | Sequence[Path],
    style: str | os.PathLike | Sequence[Path],
    *,
    num_pairs: int | None = None,
    seed: int = 0,
) -> list[tuple[Path, Path]]:
    """(content, style) pairs from two folders (or lists): every combination in sorted order, or
    ``num_pairs`` of them drawn without replacement with ``random.Random(seed)``."""
    cs = sorted(list_images(content, "content")) if isinstance(content, (str, os.PathLike)) else list(content)
    ss = sorted(list_images(style, "style")) if isinstance(style, (str, os.PathLike)) else list(style)
    total = len(cs) * len(ss)
    if num_pairs is None or num_pairs >= total:
        return [(c, s) for c in cs for s in ss]
    picks = sorted(random.Random(seed).sample(range(total), num_pairs))
    return [(cs[k // len(ss)], ss[k % len(ss)]) for k in picks]


class UnpairedDataset(Dataset):
    """Unpaired (content, style) pairs as ``{"content", "style"}`` tensors in [-1, 1] and ``"index"``."""

    def __init__(self, pairs: Sequence[tuple[Path, Path]], transform: TripletTransform | None = None):
        if not pairs:
            raise DataError("no (content, style) pairs")
        self.pairs = list(pairs)
        self.transform = transform or TripletTransform()

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        c, s = self.pairs[index]
        tf = self.transform
        return {
            "content": tf.to_tensor(load_image(c, role="content")),
            "style": tf.to_tensor(load_image(s, role="style")),
            "index": index,
        }
