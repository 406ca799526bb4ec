"""Regenerate the example images (made here, free to redistribute): python examples/make_examples.py"""

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


def content2(size: int = 384) -> Image.Image:
    """A still life: a vase, two apples and a cup on a table against a wall."""
    img = Image.new("RGB", (size, size), (226, 214, 190))
    d = ImageDraw.Draw(img)
    s = size / 384
    d.rectangle([0, 250 * s, size, size], fill=(150, 100, 62))  # table
    d.line([(0, 250 * s), (size, 250 * s)], fill=(110, 70, 40), width=max(1, int(3 * s)))
    d.ellipse([110 * s, 120 * s, 200 * s, 260 * s], fill=(60, 90, 150))  # vase body
    d.rectangle([138 * s, 80 * s, 172 * s, 140 * s], fill=(60, 90, 150))  # neck
    d.ellipse([130 * s, 70 * s, 180 * s, 92 * s], fill=(45, 70, 125))
    d.ellipse([215 * s, 215 * s, 265 * s, 262 * s], fill=(200, 40, 35))  # apples
    d.ellipse([255 * s, 222 * s, 300 * s, 264 * s], fill=(120, 170, 50))
    d.rectangle([300 * s, 200 * s, 345 * s, 258 * s], fill=(240, 240, 235), outline=(90, 90, 90))  # cup
    d.arc([330 * s, 212 * s, 362 * s, 244 * s], -90, 90, fill=(90, 90, 90), width=max(1, int(4 * s)))
    return img.filter(ImageFilter.SMOOTH)


def style2(size: int = 384) -> Image.Image:
    """A mosaic: irregular tiles in blues, teals and ochre with dark grout."""
    rng = np.random.default_rng(7)
    n = 90
    pts = rng.uniform(0, size, (n, 2))
    palette = np.array([[30, 60, 120], [40, 130, 140], [200, 160, 60], [230, 220, 200], [90, 40, 60]])
    cols = palette[rng.integers(0, len(palette), n)] + rng.integers(-20, 20, (n, 3))
    yy, xx = np.mgrid[0:size, 0:size]
    d = (xx[..., None] - pts[:, 0]) ** 2 + (yy[..., None] - pts[:, 1]) ** 2
    order = np.argsort(d, axis=-1)
    nearest, second = order[..., 0], order[..., 1]
    gap = np.sqrt(np.take_along_axis(d, second[..., None], -1)[..., 0]) - np.sqrt(
        np.take_along_axis(d, nearest[..., None], -1)[..., 0]
    )
    img = cols[nearest].astype(float)
    img[gap < 3] = (35, 30, 30)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))


if __name__ == "__main__":
    content().save(HERE / "content.jpg", quality=90)
    style().save(HERE / "style.jpg", quality=90)
    content2().save(HERE / "content2.jpg", quality=90)
    style2().save(HERE / "style2.jpg", quality=90)
