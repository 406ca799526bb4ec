"""Procedural (content, style, target) triplets whose target is a deterministic stylization.

Made for learning and testing the whole pipeline without downloads (``stylevar make-synthetic``,
``stylevar demo``):

* **content**: a few geometric shapes (discs, rectangles, triangles, rings) in dark colours of
  any hue on a light, muted background. Its *structure* is the shapes' silhouette (a foreground mask).
* **style**: a two-colour palette and a texture (stripes, checks, dots, or plain), shown as
  the textured background colour with a few blobs of the second colour at random places.
* **target**: the content's silhouette rendered in the style: background pixels take the
  textured first palette colour, shape pixels the second palette colour (with the texture's
  faint imprint). The texture is anchored to the image grid, so the target's background is the
  style image's background wherever both are background.

So the target keeps the content's structure and takes the style's colours and texture; the
content's own colours and the style's blob positions must not leak into it. Everything is a
function of ``(seed, index)``: the same call gives the same files on any machine.
"""

from __future__ import annotations

import colorsys
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from ..files import atomic_write

TEXTURES: tuple[str, ...] = ("plain", "hstripes", "vstripes", "diagonal", "checks", "dots")


@dataclass(frozen=True)
class StyleSpec:
    """A synthetic style: two RGB colours in [0, 1] and a texture anchored to the pixel grid."""

    background: tuple[float, float, float]
    foreground: tuple[float, float, float]
    texture: str
    period: int  #: texture period in pixels
    strength: float  #: how far the texture darkens (0..1)

    def texture_map(self, size: int) -> np.ndarray:
        """(size, size) float32 in [0, 1]: 1 where the texture darkens."""
        y, x = np.mgrid[0:size, 0:size]
        p, h = self.period, self.period / 2
        if self.texture == "plain":
            t = np.zeros((size, size))
        elif self.texture == "hstripes":
            t = (y % p) < h
        elif self.texture == "vstripes":
            t = (x % p) < h
        elif self.texture == "diagonal":
            t = ((x + y) % p) < h
        elif self.texture == "checks":
            t = ((x // h) + (y // h)) % 2 == 0
        elif self.texture == "dots":
            t = ((x % p - h + 0.5) ** 2 + (y % p - h + 0.5) ** 2) <= (p * 0.3) ** 2
        else:
            raise DataError(f"unknown texture {self.texture!r}; choose one of {', '.join(TEXTURES)}")
        return np.asarray(t, dtype=np.float32)

    def palette(self) -> np.ndarray:
        """(4, 3) float32: the colours :meth:`paint` uses: figure plain and textured, then background
        plain and textured."""
        fg, bg = np.asarray(self.foreground, np.float32), np.asarray(self.background, np.float32)
        return np.stack([fg, fg * (1 - 0.25 * self.strength), bg, bg * (1 - self.strength)])

    def paint(self, mask: np.ndarray) -> np.ndarray:
        """Render a foreground ``mask`` (H, W) bool in this style -> (H, W, 3) float in [0, 1]."""
        t = self.texture_map(mask.shape[0])[..., None]
        bg = np.asarray(self.background, np.float32) * (1 - self.strength * t)
        fg = np.asarray(self.foreground, np.float32) * (1 - 0.25 * self.strength * t)
        return np.where(mask[..., None], fg, bg)


def _colour(rng: random.Random, lightness: tuple[float, float]) -> tuple[float, float, float]:
    return colorsys.hls_to_rgb(rng.random(), rng.uniform(*lightness), rng.uniform(0.45, 0.95))


def _luma(c: Sequence[float]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def random_style(rng: random.Random, *, period: int = 8) -> StyleSpec:
    """Two colours far apart in lightness (either may be the lighter one) and a texture."""
    light, dark = _colour(rng, (0.62, 0.85)), _colour(rng, (0.15, 0.38))
    bg, fg = (light, dark) if rng.random() < 0.5 else (dark, light)
    return StyleSpec(bg, fg, rng.choice(TEXTURES), period, rng.uniform(0.35, 0.6))


def _shape_mask(rng: random.Random, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] + 0.5
    kind = rng.choice(("disc", "rect", "triangle", "ring"))
    cx, cy = rng.uniform(0.25, 0.75) * size, rng.uniform(0.25, 0.75) * size
    r = rng.uniform(0.14, 0.3) * size
    if kind == "disc":
        return (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    if kind == "ring":
        d2 = (x - cx) ** 2 + (y - cy) ** 2
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if kind == "rect":
        w, h = r * rng.uniform(0.7, 1.3), r * rng.uniform(0.7, 1.3)
        return (abs(x - cx) <= w) & (abs(y - cy) <= h)
    # triangle with a horizontal base, pointing up or down
    up = rng.random() < 0.5
    top, bottom = cy - r, cy + r
    rel = (y - top) / (bottom - top) if up else (bottom - y) / (bottom - top)
    return (rel >= 0) & (rel <= 1) & (abs(x - cx) <= rel * r)


def random_content(rng: random.Random, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 3) float in [0, 1], foreground mask (H, W) bool): 1-3 shapes on a background.

    The background is light and muted (a sheet of paper), the shapes darker and of any hue
    (lightness at least 0.25 apart), so every pixel's own colour tells whether it belongs to the
    silhouette, as edges and figure/ground do in a photograph or a drawing.
    """
    bg = colorsys.hls_to_rgb(rng.random(), rng.uniform(0.72, 0.95), rng.uniform(0.0, 0.4))
    img = np.empty((size, size, 3), np.float32)
    img[:] = bg
    mask = np.zeros((size, size), bool)
    for _ in range(rng.randint(1, 3)):
        m = _shape_mask(rng, size)
        while True:
            c = _colour(rng, (0.1, 0.55))
            if abs(_luma(c) - _luma(bg)) >= 0.25:
                break
        img[m] = c
        mask |= m
    return img, mask


def style_blobs(rng: random.Random, size: int) -> np.ndarray:
    """The style image's layout: 2-4 discs at random places, (size, size) bool."""
    mask = np.zeros((size, size), bool)
    y, x = np.mgrid[0:size, 0:size] + 0.5
    for _ in range(rng.randint(2, 4)):
        cx, cy, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.08, 0.18) * size
        mask |= (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    return mask


def style_image(spec: StyleSpec, rng: random.Random, size: int) -> np.ndarray:
    """The style reference: the palette and texture over the whole frame, with 2-4 foreground blobs
    at random places (so its layout differs from any target's)."""
    return spec.paint(style_blobs(rng, size))


def _to_pil(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(a * 255), 0, 255).astype(np.uint8), "RGB")


@dataclass
class SyntheticTriplet:
    content: Image.Image
    style: Image.Image
    target: Image.Image
    #: the content's figure (H, W) bool: the structure the target must keep
    mask: np.ndarray | None = None
    #: the style's palette and texture: the colours the target's figure and background take
    spec: StyleSpec | None = None
    #: the style image's own blobs (H, W) bool: its layout, which must not reach the target
    style_mask: np.ndarray | None = None


def synthetic_triplet(
    content_id: int, style_id: int, *, seed: int = 0, size: int = 64, period: int = 0
) -> SyntheticTriplet:
    """The triplet of content ``content_id`` and style ``style_id`` (each a pure function of its id and seed),
    with its ground truth (the content's figure, the style's palette, the style image's blobs).

    ``period``: texture period in pixels (0: ``size // 8``).
    """
    content, mask = random_content(random.Random(f"synthetic/{seed}/content/{content_id}"), size)
    srng = random.Random(f"synthetic/{seed}/style/{style_id}")
    spec = random_style(srng, period=period or max(2, size // 8))
    blobs = style_blobs(srng, size)
    return SyntheticTriplet(
        _to_pil(content), _to_pil(spec.paint(blobs)), _to_pil(spec.paint(mask)), mask, spec, blobs
    )


def parse_ids(content: str | os.PathLike, style: str | os.PathLike) -> tuple[int, int]:
    """``(content_id, style_id)`` of files written by :func:`make_synthetic` (``c00012.png``, ``s00034.png``)."""
    ids = []
    for path, letter in ((content, "c"), (style, "s")):
        stem = Path(path).stem
        if not (stem.startswith(letter) and stem[1:].isdigit()):
            raise DataError(
                f"{path}: not a synthetic {('content', 'style')[letter == 's']} file ({letter}NNNNN.png)"
            )
        ids.append(int(stem[1:]))
    return ids[0], ids[1]


def make_synthetic(
    out_dir: str | os.PathLike,
    *,
    num_contents: int = 200,
    num_styles: int = 200,
    num_triplets: int = 1000,
    size: int = 64,
    period: int = 0,
    seed: int = 0,
) -> Path:
    """Write a synthetic dataset in the OmniStyle-150K layout (``content/``, ``style/``, ``target/``
    with ``<content>&&<style>.png`` names), readable by :func:`stylevar.data.scan`.

    ``num_triplets`` (content, style) pairs are drawn without replacement from the
    ``num_contents x num_styles`` grid with ``random.Random(seed)``; every content and style
    image is used at least once when ``num_triplets`` allows. Files are PNG; ``info.json``
    records the arguments. Returns ``out_dir``.
    """
    if min(num_contents, num_styles, num_triplets) < 1:
        raise DataError("num_contents, num_styles and num_triplets must be >= 1")
    if num_triplets > num_contents * num_styles:
        raise DataError(
            f"{num_triplets} triplets asked from {num_contents} contents x {num_styles} styles; "
            "raise --num-contents/--num-styles"
        )
    if size < 16 or size % 8:
        raise DataError(f"size must be a multiple of 8 and >= 16, got {size}")
    out = Path(out_dir)
    dirs = {r: out / r for r in ("content", "style", "target")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"synthetic/{seed}/pairs")
    # a cover of every content and style first, then random further pairs
    cs, ss = list(range(num_contents)), list(range(num_styles))
    rng.shuffle(cs)
    rng.shuffle(ss)
    n_cover = min(num_triplets, max(num_contents, num_styles))
    pairs = {(cs[i % num_contents], ss[i % num_styles]) for i in range(n_cover)}
    while len(pairs) < num_triplets:
        pairs.add((rng.randrange(num_contents), rng.randrange(num_styles)))
    written_c: set[int] = set()
    written_s: set[int] = set()
    for ci, si in sorted(pairs):
        t = synthetic_triplet(ci, si, seed=seed, size=size, period=period)
        cname, sname = f"c{ci:05d}.png", f"s{si:05d}.png"
        if ci not in written_c:
            _save(t.content, dirs["content"] / cname)
            written_c.add(ci)
        if si not in written_s:
            _save(t.style, dirs["style"] / sname)
            written_s.add(si)
        _save(t.target, dirs["target"] / f"{cname}&&{sname}.png")
    info = dict(
        generator="stylevar.data.synthetic",
        num_contents=num_contents,
        num_styles=num_styles,
        num_triplets=num_triplets,
        size=size,
        period=period or max(2, size // 8),
        seed=seed,
    )
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def _save(img: Image.Image, path: Path) -> None:
    atomic_write(path, lambda f: img.save(f, format="PNG"))
