"""Plain image collections (not triplets): the tokenizer's training data.

:func:`collect_images` gathers image files from files, folders and triplet datasets;
:func:`split_images` holds a seeded share out for validation; :class:`ImageFolderDataset` serves them
as (3, R, R) tensors in [-1, 1] with the training transform of :class:`~stylevar.data.TripletTransform`.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError, ImageError
from ..images import IMAGE_EXTENSIONS, load_image
from .datasets import TripletTransform
from .triplets import scan

logger = logging.getLogger(__name__)


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in it
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    )


def collect_images(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    triplets: bool = False,
    recursive: bool = False,
) -> list[Path]:
    """Image files from files, folders and triplet datasets, in order, duplicates dropped.

    Each source is an image file; a folder of images (directly inside, or at any depth with
    ``recursive``); or a triplet source that :func:`stylevar.data.scan` reads (OmniStyle or
    ImagePulse root, CSV/JSONL manifest), from which the target images are taken -- all three
    images of each triplet with ``triplets=True`` (folders are then read as triplet sources
    first). Raises :class:`DataError` naming the source when nothing usable is found.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    out: list[Path] = []
    for src in sources:
        p = Path(src).expanduser()
        if not p.exists():
            raise DataError(f"image source not found: {p}")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            out.append(p)
            continue
        imgs = _images_in(p, recursive) if p.is_dir() else []
        if imgs and not triplets:
            out.extend(imgs)
            continue
        try:
            found = scan(p)
        except DataError as e:
            if imgs:
                out.extend(imgs)
                continue
            where = (
                "inside it or its subfolders"
                if recursive
                else "directly inside it (pass --recursive for subfolders)"
            )
            raise DataError(f"{p}: no image files {where}, and not a triplet dataset ({e})") from None
        for t in found:
            out.extend([t.content, t.style, t.target] if triplets else [t.target])
    files = list(dict.fromkeys(out))
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} listed image file(s) do not exist, e.g. {missing[0]}; fix the dataset"
        )
    if not files:
        raise DataError("no training images found in " + ", ".join(str(s) for s in sources))
    return files


def split_images(paths: Sequence[Path], val_fraction: float, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Seeded split: ``round(n * val_fraction)`` files (at least 1 when the fraction is > 0 and n >= 2)
    for validation, the rest (in their order) for training."""
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(paths)
    n_val = min(n - 1, max(1, round(n * val_fraction))) if val_fraction > 0 and n >= 2 else 0
    picked = set(random.Random(seed).sample(range(n), n_val))
    train = [p for i, p in enumerate(paths) if i not in picked]
    val = [p for i, p in enumerate(paths) if i in picked]
    return train, val


class ImageFolderDataset(Dataset):
    """Images as (3, R, R) float32 tensors in [-1, 1].

    Args:
        paths_or_folders: image files and/or folders (see :func:`collect_images`; triplet
            sources give their targets).
        resolution: side R in pixels (the VQ-VAE's ``config.resolution``).
        fit: ``squash`` (whole image, aspect not kept: the published transform) or ``crop``
            (centred square); LANCZOS, exactly :meth:`stylevar.data.TripletTransform.to_tensor`.
        hflip: random horizontal flips, decided by (seed, epoch, index) only (see :meth:`set_epoch`).
        on_bad: a file that fails to load: ``fail`` raises :class:`DataError`; ``skip`` serves
            the next image instead and counts it (``load_failures``).
        cache_images: keep each file's tensor in memory after its first load (small datasets
            read many times, e.g. the demo's 3600 32-px images: 44 MB); per process and data-loader
            worker. Flips are drawn after the cache, as without it.
    """

    def __init__(
        self,
        paths_or_folders: str | os.PathLike | Sequence[str | os.PathLike],
        resolution: int,
        *,
        fit: str = "squash",
        hflip: bool = False,
        seed: int = 0,
        recursive: bool = False,
        on_bad: str = "fail",
        cache_images: bool = False,
    ):
        self.files = collect_images(paths_or_folders, recursive=recursive)
        self.cache_images = cache_images
        self._cache: dict[int, torch.Tensor] = {}
        self.transform = TripletTransform(resolution=resolution, fit=fit)
        self.hflip, self.seed, self.epoch = hflip, seed, 0
        if on_bad not in ("fail", "skip"):
            raise ConfigError(f"on_bad must be fail or skip, not {on_bad!r}")
        self.on_bad = on_bad
        self.load_failures = 0

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        """Flips of item i depend on (seed, epoch, i) only."""
        self.epoch = epoch

    def _load(self, index: int) -> torch.Tensor:
        x = self._cache.get(index)
        if x is None:
            x = self.transform.to_tensor(load_image(self.files[index]))
            if self.cache_images:
                self._cache[index] = x
        if self.hflip and random.Random(f"{self.seed}/{self.epoch}/{index}").random() < 0.5:
            x = x.flip(-1)
        return x

    def __getitem__(self, index: int) -> torch.Tensor:
        for attempt in range(len(self.files)):
            i = (index + attempt) % len(self.files)
            try:
                return self._load(i)
            except ImageError as e:
                if self.on_bad != "skip":
                    raise DataError(
                        f"{e}; remove the file or pass on_bad='skip' (--on-bad-file skip)"
                    ) from None
                self.load_failures += 1
                logger.warning("skipping image %s: %s", self.files[i], e)
        raise DataError("no image of the dataset could be loaded")
