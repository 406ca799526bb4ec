"""Image input/output: reading any file safely, the resize policy, tensors <-> PIL, atomic writes.

Policy (also in docs/stylize.md):

* Every PIL-readable file is accepted. EXIF orientation is applied. Palette, grayscale, CMYK,
  16-bit and float images become 8-bit RGB; transparency is composited onto white; animated
  files use their first frame.
* ``fit="squash"`` resizes the whole image to the model's square resolution (LANCZOS), exactly as
  the model was trained (aspect not preserved). ``fit="crop"`` (default) takes the centred
  square crop first, so nothing is distorted.
* Results are square at the model's resolution; ``keep_size=True`` resizes each result back to
  the size of the content region it came from (the whole content image with ``squash``, its
  centred square with ``crop``).
* Images whose shorter side is below ``min_side`` pixels or with more than ``max_pixels``
  pixels are refused with a one-line :class:`~stylevar.errors.ImageError`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from .config import FITS
from .errors import ImageError
from .files import atomic_write

IMAGE_EXTENSIONS = {
    ".png",
    ".jpg",
    ".jpeg",
    ".webp",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
    ".pbm",
    ".tga",
    ".jfif",
}
MIN_SIDE = 16
MAX_PIXELS = 100_000_000


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; alpha composited onto white (EXIF rotation is not applied here)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            peak = 1.0 if a.size and np.nanmax(a) <= 1.0 else 255.0
        elif img.mode.startswith("I;16"):
            peak = 65535.0
        else:
            peak = 65535.0 if a.size and a.max() > 255 else 255.0
        a = np.clip(np.nan_to_num(a) / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(a)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def load_image(
    path: str | os.PathLike, *, role: str = "image", min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS
) -> Image.Image:
    """Read an image file as 8-bit RGB (EXIF rotation applied).

    Raises :class:`ImageError` with a one-line message for a missing file, a directory, a file
    that is not an image, or an image that is too small or too large.
    """
    p = Path(path)
    if not p.exists():
        raise ImageError(f"{role} image not found: {p}")
    if p.is_dir():
        raise ImageError(f"{role} image {p} is a directory")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(p)
        except Image.DecompressionBombError:
            limit = 2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6
            raise ImageError(
                f"{role} image {p} is absurdly large (over {limit:.0f} MP, PIL's decompression-bomb limit); "
                "downscale it first"
            ) from None
        except UnidentifiedImageError:
            raise ImageError(
                f"{role} image {p} is not an image file PIL can read; convert it to PNG or JPEG"
            ) from None
        except OSError as e:
            raise ImageError(
                f"cannot read {role} image {p}: truncated or corrupt file ({e}); re-export it"
            ) from None
        w, h = img.size
        if w * h > max_pixels:
            raise ImageError(
                f"{role} image {p} is {w}x{h} ({w * h / 1e6:.0f} MP), over the {max_pixels / 1e6:.0f} MP limit; "
                "downscale it first"
            )
        if min(w, h) < min_side:
            raise ImageError(
                f"{role} image {p} is {w}x{h}, smaller than {min_side} px on a side; use a larger image"
            )
        try:
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return to_rgb(img)
        except (OSError, ValueError, SyntaxError) as e:
            raise ImageError(
                f"cannot read {role} image {p}: truncated or corrupt file ({e}); re-export it"
            ) from None


def crop_box(size: tuple[int, int], fit: str) -> tuple[int, int, int, int]:
    """The region of an image of ``size`` (w, h) that the model sees."""
    w, h = size
    if fit == "squash":
        return (0, 0, w, h)
    if fit == "crop":
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        return (left, top, left + s, top + s)
    raise ValueError(f"fit must be one of {FITS}, got {fit!r}")


def to_model_input(img: Image.Image, resolution: int, fit: str = "crop") -> torch.Tensor:
    """RGB PIL image -> (3, R, R) float32 tensor in [-1, 1] (LANCZOS, as in training)."""
    region = img.crop(crop_box(img.size, fit))
    region = region.resize((resolution, resolution), Image.Resampling.LANCZOS)
    a = torch.from_numpy(np.asarray(region, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
    return a.mul_(2).sub_(1)


def to_mask(img: Image.Image, resolution: int, fit: str = "crop") -> torch.Tensor:
    """A grey-level map (any mode; colour is reduced to its luma) -> (R, R) float32 in [0, 1]: the region
    ``fit`` takes of an image of the mask's shape, area-averaged (PIL's BOX filter) to R x R. A mask
    covers its content image: give it the content's aspect ratio."""
    grey = to_rgb(img).convert("L").crop(crop_box(img.size, fit))
    grey = grey.resize((resolution, resolution), Image.Resampling.BOX)
    return torch.from_numpy(np.asarray(grey, dtype=np.uint8).copy()).float().div_(255)


def tensor_to_pil(img: torch.Tensor) -> Image.Image:
    """(3, H, W) tensor in [0, 1] -> 8-bit RGB PIL image (rounded)."""
    a = img.detach().float().clamp(0, 1).mul(255).add_(0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(a)


def pil_to_unit_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (1, 3, H, W) float tensor in [0, 1]."""
    a = np.asarray(to_rgb(img), dtype=np.uint8)
    return torch.from_numpy(a.copy()).permute(2, 0, 1).unsqueeze(0).float().div_(255)


def pil_from_tensor_input(t: torch.Tensor, role: str) -> list[Image.Image]:
    """User tensors (3, H, W) or (B, 3, H, W) in [0, 1] -> PIL images."""
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[1] not in (1, 3, 4):
        raise ImageError(
            f"{role} tensor must be (3, H, W) or (B, 3, H, W) in [0, 1], got shape {tuple(t.shape)}"
        )
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    if t.shape[1] == 4:
        t = t[:, :3] * t[:, 3:] + (1 - t[:, 3:])
    if t.is_floating_point() and (t.min() < -1e-3 or t.max() > 1 + 1e-3):
        raise ImageError(
            f"{role} tensor values must lie in [0, 1] (got {t.min().item():.3g}..{t.max().item():.3g})"
        )
    if not t.is_floating_point():
        t = t.float() / 255
    return [tensor_to_pil(x) for x in t]


def list_images(folder: str | os.PathLike, role: str = "image") -> list[Path]:
    """Image files (by extension) directly in ``folder``, sorted by name; hidden files skipped."""
    d = Path(folder)
    files = sorted(
        p
        for p in d.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise ImageError(
            f"{role} folder {d} has no image files ({', '.join(sorted(IMAGE_EXTENSIONS)[:5])}, ...)"
        )
    return files


def save_image_atomic(img: Image.Image, path: str | os.PathLike) -> Path:
    """Save ``img`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    p = Path(path)
    fmt = Image.registered_extensions().get(p.suffix.lower())
    if fmt is None:
        raise ImageError(f"cannot write {p}: unknown image extension {p.suffix!r}; use .png, .jpg or .webp")
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    return atomic_write(p, lambda f: img.save(f, format=fmt, **options))


def label_font(size: int) -> ImageFont.ImageFont:
    """PIL's built-in font at ``size`` pixels (a fixed small size on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def fit_label(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    """``text``, cut with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def make_grid(
    rows: Sequence[Sequence[Image.Image]], cell: int, pad: int = 2, labels: Sequence[str] | None = None
) -> Image.Image:
    """A white sheet with one row per entry of ``rows`` (e.g. content | style | result...), under a
    header naming the columns when ``labels`` are given."""
    ncols = max(len(r) for r in rows)
    head = max(16, cell // 10) if labels else 0
    sheet = Image.new(
        "RGB", (ncols * (cell + pad) + pad, head + len(rows) * (cell + pad) + pad), (255, 255, 255)
    )
    if labels:
        draw = ImageDraw.Draw(sheet)
        font = label_font(max(10, head - 5))
        for j, text in enumerate(labels):
            draw.text(
                (pad + j * (cell + pad) + 2, 1),
                fit_label(draw, text, font, cell - 4),
                fill=(0, 0, 0),
                font=font,
            )
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            tile = im if im.size == (cell, cell) else ImageOps.fit(im, (cell, cell), Image.Resampling.LANCZOS)
            sheet.paste(tile, (pad + j * (cell + pad), head + pad + i * (cell + pad)))
    return sheet
