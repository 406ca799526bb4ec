"""Regenerate the two example images (made here, free to redistribute): python examples/make_examples.py"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).parent


def content(size: int = 384) -> Image.Image:
    """A small landscape: sky, sun, hills, a house, a tree."""
    y = np.linspace(0, 1, size)[:, None, None]
    sky = (1 - y) * np.array([110, 170, 235]) + y * np.array([200, 225, 250])
    img = Image.fromarray(np.broadcast_to(sky, (size, size, 3)).astype(np.uint8))
    d = ImageDraw.Draw(img)
    s = size / 384
    d.ellipse([280 * s, 40 * s, 340 * s, 100 * s], fill=(255, 220, 90))
    d.polygon(
        [
            (0, 250 * s),
            (120 * s, 190 * s),
            (260 * s, 240 * s),
            (384 * s, 200 * s),
            (384 * s, 384 * s),
            (0, 384 * s),
        ],
        fill=(90, 150, 70),
    )
    d.polygon(
        [(0, 300 * s), (200 * s, 260 * s), (384 * s, 300 * s), (384 * s, 384 * s), (0, 384 * s)],
        fill=(70, 125, 55),
    )
    d.rectangle(
        [150 * s, 230 * s, 240 * s, 300 * s],
        fill=(220, 200, 170),
        outline=(80, 60, 50),
        width=max(1, int(2 * s)),
    )
    d.polygon([(140 * s, 232 * s), (195 * s, 190 * s), (250 * s, 232 * s)], fill=(170, 60, 50))
    d.rectangle([185 * s, 262 * s, 205 * s, 300 * s], fill=(110, 70, 45))
    d.rectangle([60 * s, 250 * s, 72 * s, 300 * s], fill=(100, 70, 40))
    d.ellipse([35 * s, 195 * s, 97 * s, 262 * s], fill=(50, 110, 50))
    return img.filter(ImageFilter.SMOOTH)


def style(size: int = 384) -> Image.Image:
    """Swirling brush-like bands in warm and cool colours."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    r = np.hypot(xx - 0.5, yy - 0.5)
    a = np.arctan2(yy - 0.5, xx - 0.5)
    t = np.sin(18 * r + 3 * a + 4 * np.sin(6 * xx)) * 0.5 + 0.5
    u = np.sin(40 * (xx + 0.3 * np.sin(9 * yy))) * 0.5 + 0.5
    c1, c2, c3 = np.array([20, 40, 110]), np.array([240, 190, 60]), np.array([200, 70, 40])
    img = t[..., None] * c1 + (1 - t[..., None]) * c2
    img = 0.75 * img + 0.25 * (u[..., None] * c3 + (1 - u[..., None]) * c1)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8))


if __name__ == "__main__":
    content().save(HERE / "content.jpg", quality=90)
    style().save(HERE / "style.jpg", quality=90)
