"""Reading images of every awkward kind, the resize policy, and the one-line errors."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from stylevar.errors import ImageError
from stylevar.images import crop_box, load_image, make_grid, save_image_atomic, tensor_to_pil, to_model_input


def _gradient(w=40, h=30):
    x = np.linspace(0, 255, w, dtype=np.float64)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float64)[:, None, None]
    return np.concatenate(
        [np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)), np.full((h, w, 1), 128.0)], 2
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rgb = Image.fromarray(_gradient().astype(np.uint8))
    out = {}

    def put(name, img, **kw):
        p = d / name
        img.save(p, **kw)
        out[name] = p

    put("rgb.png", rgb)
    put("rgb.jpg", rgb, quality=95)
    put("rgba.png", rgb.convert("RGBA"))
    rgba = np.dstack([_gradient().astype(np.uint8), np.zeros((30, 40), np.uint8)])  # fully transparent
    put("transparent.png", Image.fromarray(rgba))
    put("gray.png", rgb.convert("L"))
    put("la.png", rgb.convert("LA"))
    put("palette.gif", rgb.convert("P"))
    pal = rgb.convert("P")
    pal.info["transparency"] = 0
    put("palette_t.png", pal, transparency=0)
    put("bw.bmp", rgb.convert("1"))
    put("cmyk.jpg", rgb.convert("CMYK"))
    put("gray16.png", Image.fromarray((_gradient()[..., 0] * 257).astype(np.uint16)))
    put("float.tif", Image.fromarray((_gradient()[..., 0] / 255).astype(np.float32)))
    put("rgb.webp", rgb)
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    out["anim.gif"] = d / "anim.gif"
    # EXIF orientation 6 (rotate 90 clockwise to display): stored 40x30, shown 30x40
    exif = Image.Exif()
    exif[0x0112] = 6
    put("rotated.jpg", rgb, exif=exif)
    put("tiny.png", rgb.resize((8, 8)))
    (d / "notes.png").write_text("this is not an image")
    out["notes.png"] = d / "notes.png"
    data = (d / "rgb.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 3])
    out["truncated.jpg"] = d / "truncated.jpg"
    out["huge.png"] = _huge_png(d / "huge.png", 60000, 60000)
    out["large.png"] = _huge_png(d / "large.png", 12000, 10000)
    return out


def _huge_png(path, w, h):
    """A tiny file whose header claims w x h pixels (a decompression bomb)."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    return path


@pytest.mark.parametrize(
    "name",
    [
        "rgb.png",
        "rgb.jpg",
        "rgba.png",
        "gray.png",
        "la.png",
        "palette.gif",
        "palette_t.png",
        "bw.bmp",
        "cmyk.jpg",
        "gray16.png",
        "float.tif",
        "rgb.webp",
        "anim.gif",
    ],
)
def test_every_mode_becomes_rgb(files, name):
    img = load_image(files[name])
    assert img.mode == "RGB" and img.size == (40, 30)
    x = to_model_input(img, 64, "crop")
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1


def test_values_are_preserved_across_depths(files):
    g8 = np.asarray(load_image(files["gray.png"]))[..., 0].astype(int)
    g16 = np.asarray(load_image(files["gray16.png"]))[..., 0].astype(int)
    gf = np.asarray(load_image(files["float.tif"]))[..., 0].astype(int)
    assert np.abs(g16 - np.asarray(Image.open(files["rgb.png"]))[..., 0]).max() <= 1
    assert np.abs(gf - g16).max() <= 1
    assert g8.std() > 10


def test_transparency_is_composited_onto_white(files):
    a = np.asarray(load_image(files["transparent.png"]))
    assert (a == 255).all()


def test_exif_rotation_is_applied(files):
    assert load_image(files["rotated.jpg"]).size == (30, 40)


@pytest.mark.parametrize(
    "name,fragment",
    [
        ("notes.png", "not an image file"),
        ("truncated.jpg", "truncated or corrupt"),
        ("tiny.png", "smaller than"),
        ("huge.png", "absurdly large"),
        ("large.png", "is 12000x10000 (120 MP), over the 100 MP limit"),
    ],
)
def test_bad_files_get_one_line_errors(files, name, fragment):
    with pytest.raises(ImageError) as e:
        load_image(files[name], role="style")
    msg = str(e.value)
    assert (
        fragment in msg
        and str(files[name]) in msg
        and "\n" not in msg
        and msg.startswith(("style", "cannot"))
    )


def test_missing_and_directory(tmp_path):
    with pytest.raises(ImageError, match="content image not found"):
        load_image(tmp_path / "nope.png", role="content")
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path, role="content")


def test_fit_policies():
    assert crop_box((400, 300), "crop") == (50, 0, 350, 300)
    assert crop_box((300, 400), "crop") == (0, 50, 300, 350)
    assert crop_box((400, 300), "squash") == (0, 0, 400, 300)
    left_red = np.zeros((100, 200, 3), np.uint8)
    left_red[:, :50, 0] = 255  # red only in the left quarter: cropped away by "crop", kept by "squash"
    img = Image.fromarray(left_red)
    assert to_model_input(img, 32, "crop")[0].max() < -0.9
    assert to_model_input(img, 32, "squash")[0, :, :4].min() > 0.9


def test_round_trip_and_atomic_save(tmp_path):
    t = torch.rand(3, 16, 16)
    pil = tensor_to_pil(t)
    back = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float() / 255
    assert (back - t).abs().max() <= 0.5 / 255 + 1e-6
    p = save_image_atomic(pil, tmp_path / "sub" / "x.png")
    assert p.exists() and [q.name for q in p.parent.iterdir()] == ["x.png"]
    with pytest.raises(ImageError, match="unknown image extension"):
        save_image_atomic(pil, tmp_path / "x.foo")
    sheet = make_grid([[pil, pil, pil], [pil]], cell=16)
    assert sheet.size == (3 * 18 + 2, 2 * 18 + 2)
