"""Real photographs that ship inside installed wheels, and deterministic crops of any image.

scikit-image (``skimage/data``) and scikit-learn (``sklearn/datasets/images``) carry a few real
photographs in their wheels, so a machine without the internet still has real content for tests, demos
and triplet datasets (``pip install "stylevar[photos]"``; docs/triplets.md). The files are read where the
packages are installed (their code is not run).

Colour photographs (:data:`COLOUR_PHOTOS`), the default: scikit-image's astronaut (Eileen Collins),
chelsea (a cat), coffee, hubble_deep_field, ihc (an immunohistochemistry slide), motorcycle_left, retina
and rocket; scikit-learn's china (a temple) and flower. Left out: motorcycle_right (the same scene as
motorcycle_left, a stereo pair: it would leak across a split), the synthetic images (color, chessboard,
phantom, logo, horse) and the tiny ones. Greyscale photographs (:data:`GREY_PHOTOS`: camera, coins, moon,
brick, grass, gravel, cell, clock_motion, page, text) join only when asked (``grey=True``); they are then
converted to RGB (the grey level in all three channels), which teaches a colour model nothing about colour.

Crops (:func:`random_crops`, :func:`photo_crops`): a square of 50-100 % of the shorter side at a random
place, mirrored left-right half of the time, resized to ``size`` (LANCZOS). Each crop's randomness is a
``random.Random`` seeded by (seed, image name, crop number), so a crop does not depend on how many
others are asked for or in which order (the same in every process and Python version).
"""

from __future__ import annotations

import importlib.util
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from ..errors import ConfigError, DataError, MissingDependencyError
from ..images import load_image

logger = logging.getLogger(__name__)

PHOTOS_HINT = 'pip install "stylevar[photos]"'

#: package -> (folder inside it, colour photographs in it)
COLOUR_PHOTOS: dict[str, tuple[str, tuple[str, ...]]] = {
    "skimage": (
        "data",
        (
            "astronaut.png",
            "chelsea.png",
            "coffee.png",
            "hubble_deep_field.jpg",
            "ihc.png",
            "motorcycle_left.png",
            "retina.jpg",
            "rocket.jpg",
        ),
    ),
    "sklearn": ("datasets/images", ("china.jpg", "flower.jpg")),
}
#: greyscale photographs in scikit-image (used with ``grey=True``, converted to RGB)
GREY_PHOTOS = (
    "camera.png",
    "coins.png",
    "moon.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "cell.png",
    "clock_motion.png",
    "page.png",
    "text.png",
)
_WHEELS = {"skimage": "scikit-image", "sklearn": "scikit-learn"}
MIN_CROP = 0.5  #: smallest crop side, as a share of the image's shorter side


@dataclass(frozen=True)
class Photo:
    """A photograph shipped in a wheel: ``name`` (file stem, unique), ``path``, the ``package``."""

    name: str
    path: Path
    package: str
    grey: bool = False


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        missing = [w for p, w in _WHEELS.items() if importlib.util.find_spec(p) is None]
        raise MissingDependencyError(
            f"the sample photographs need the photos extra ({', '.join(missing)} not installed): {PHOTOS_HINT}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def list_photos(*, grey: bool = False) -> list[Photo]:
    """The installed sample photographs, colour ones first (module doc), then with ``grey`` the greyscale
    ones. A file a package version does not ship is skipped (logged); none at all is a :class:`DataError`."""
    wanted = [(pkg, sub, name, False) for pkg, (sub, names) in COLOUR_PHOTOS.items() for name in names]
    if grey:
        wanted += [("skimage", "data", name, True) for name in GREY_PHOTOS]
    out = []
    for pkg, sub, name, is_grey in wanted:
        path = _package_dir(pkg) / sub / name
        if path.is_file():
            out.append(Photo(Path(name).stem, path, _WHEELS[pkg], is_grey))
        else:
            logger.warning("sample photograph %s is not in this %s version; skipped", path, _WHEELS[pkg])
    if not out:
        raise DataError(
            f"no sample photographs found in the installed scikit-image/scikit-learn; {PHOTOS_HINT}"
        )
    return out


def load_photo(photo: Photo) -> Image.Image:
    """A sample photograph as 8-bit RGB."""
    return load_image(photo.path, role="sample photograph")


def crop_box(
    size: tuple[int, int], rng: random.Random, min_scale: float = MIN_CROP
) -> tuple[int, int, int, int]:
    """A random square (left, top, right, bottom) of ``min_scale``-100 % of the shorter side of ``size``."""
    w, h = size
    short = min(w, h)
    side = max(1, round(short * rng.uniform(min_scale, 1.0)))
    left, top = rng.randint(0, w - side), rng.randint(0, h - side)
    return left, top, left + side, top + side


def random_crops(
    img: Image.Image, name: str, n: int, size: int, seed: int, *, min_scale: float = MIN_CROP
) -> list[Image.Image]:
    """``n`` square crops of ``img`` at ``size`` x ``size`` (RGB), each mirrored half of the time; crop ``k``
    depends only on (``seed``, ``name``, ``k``) and the image. Crop 0 with ``n == 1`` is a random crop too."""
    if n < 1 or size < 1:
        raise ConfigError(f"crops: n and size must be >= 1, got {n} and {size}")
    if not 0 < min_scale <= 1:
        raise ConfigError(f"min_scale must be in (0, 1], got {min_scale}")
    out = []
    for k in range(n):
        rng = random.Random(f"{seed}:{name}:{k}")
        crop = img.crop(crop_box(img.size, rng, min_scale))
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        out.append(crop.resize((size, size), Image.Resampling.LANCZOS))
    return out


def photo_crops(n: int, size: int, seed: int = 0, *, grey: bool = False) -> list[tuple[str, Image.Image]]:
    """``n`` crops of the sample photographs, round robin (photo 0 crop 0, photo 1 crop 0, ..., photo 0
    crop 1, ...), as ``(name, image)`` with names ``<photo>_<k>``. Deterministic in (n, size, seed)."""
    photos = list_photos(grey=grey)
    per = -(-n // len(photos))
    crops = {
        p.name: random_crops(load_photo(p), p.name, per, size, seed) for p in photos[: min(n, len(photos))]
    }
    out = []
    for k in range(per):
        for p in photos:
            if len(out) < n:
                out.append((f"{p.name}_{k}", crops[p.name][k]))
    return out
