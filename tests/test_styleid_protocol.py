"""``stylevar evaluate --protocol styleid`` end to end on generated folders, tiny weights for every network
(the tiny StyleVAR, AdaIN, art_inception, pytorch-fid's Inception, AlexNet, VGG-19)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import random_inception_state
from stylevar.cli import main
from stylevar.data.synthetic import synthetic_triplet
from stylevar.eval import styleid as S
from stylevar.eval.data import Sample
from stylevar.images import load_image

pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("lpips", "pytorch_fid")),
    reason="the eval extra is not installed (pip install -e '.[eval]')",
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("styleid")
    cnt, sty = root / "cnt", root / "sty"
    cnt.mkdir()
    sty.mkdir()
    for i in range(3):  # 64 x 64: the tiny model's resolution, so the content copy is the content itself
        synthetic_triplet(i, 0, seed=7, size=64).content.save(cnt / f"{i:02d}.png")
    for i in range(4):  # styles of other sizes, one not square
        t = synthetic_triplet(0, i, seed=7, size=80)
        (t.style.resize((120, 80)) if i == 1 else t.style).save(sty / f"{i:02d}.png")
    return cnt, sty


def _argv(out, folders, weights, *extra):
    cnt, sty = folders
    return [
        "evaluate", "--output", str(out), "--protocol", "styleid",
        "--content-dir", str(cnt), "--style-dir", str(sty), "--num-contents", "2", "--num-styles", "3",
        "--protocol-size", "96",
        "--model", f"tiny={weights['ckpt']}", "--adain-weights", str(weights["adain"]),
        "--metrics", "ssim,histogram,style_loss",
        "--vgg-weights", str(weights["vgg"]), "--inception-weights", str(weights["inception"]),
        "--art-inception-weights", str(weights["art"]), "--alexnet-weights", str(weights["alex"]),
        "--timing-samples", "0", "--sheet-samples", "2", "--batch-size", "3", "--device", "cpu", "-q",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def fid_inception_file(tmp_path_factory):
    """Random weights in the layout of pytorch-fid's pt_inception-2015-12-05-6726825d.pth (torchvision's
    trunk keys, an fc of 1008 rows, no AuxLogits: what pytorch-fid's builder makes)."""
    from torchvision.models import inception_v3

    with torch.device("meta"):
        model = inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    path = tmp_path_factory.mktemp("fid_inception") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(random_inception_state(model.to_empty(device="cpu").state_dict(), seed=0), path)
    return path


@pytest.fixture(scope="module")
def weights(ours_dir, adain_dir, vgg_file, fid_inception_file, art_inception_file, alexnet_file):
    return {
        "ckpt": ours_dir,
        "adain": adain_dir,
        "vgg": vgg_file,
        "inception": fid_inception_file,
        "art": art_inception_file,
        "alex": alexnet_file,
    }


@pytest.mark.slow
def test_styleid_protocol_end_to_end(folders, weights, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(_argv(out, folders, weights)) == 0
    printed = capsys.readouterr().out
    assert "StyleID protocol, tiny: ArtFID" in printed
    doc = json.loads((out / "styleid.json").read_text())
    assert doc["selection"]["contents"] == 2 and doc["selection"]["styles"] == 3
    assert doc["selection"]["as_published"] is False and doc["size"] == 96
    rows = {r["method"]: r for r in doc["results"]}
    assert set(rows) == {"tiny", "AdaIN", "content-copy"}  # StyleVAR, AdaIN and the content copy
    for r in rows.values():
        assert r["n"] == 6 and r["cfsd_size"] == "96x96"
        for k in ("artfid", "fid_art", "lpips_alex", "cfsd", "fid"):
            assert r[k] is not None and r[k] == r[k] and r[k] >= -1e-6, (r["method"], k)
        assert r["artfid"] == pytest.approx((1 + r["lpips_alex"]) * (1 + r["fid_art"]))
    # the content copy is the content as the model saw it: no content distance at all
    cc = rows["content-copy"]
    assert cc["lpips_alex"] == pytest.approx(0, abs=1e-6) and cc["cfsd"] == pytest.approx(0, abs=1e-5)
    assert rows["tiny"]["lpips_alex"] > 1e-3 and rows["tiny"]["cfsd"] > 1e-4
    # StyleID's order and names: content-major, <content>_stylized_<style>
    keys = [json.loads(x)["key"] for x in (out / "samples" / "StyleID.jsonl").read_text().splitlines()]
    assert len(keys) == 6 and keys[0].endswith("_stylized_" + keys[0].split("_stylized_")[1])
    assert [k.split("_stylized_")[0] for k in keys] == sorted(k.split("_stylized_")[0] for k in keys)
    md = (out / "styleid.md").read_text()
    assert "| Method | source | ArtFID ↓ | FID ↓ | LPIPS ↓ | CFSD ↓ | FID (pytorch-fid) ↓ |" in md
    assert "| StyleID | published, not re-run | 28.801 |" in md and "measured here (n=6)" in md
    assert "NOT the published 20 x 40" in md and "NOT the published 512" in md
    assert (out / "summary.md").is_file()  # our own metrics, at the model's resolution

    # a rerun reads every number back (no image changed)
    before = (out / "styleid.json").read_text()
    cache = out / "records" / "StyleID" / "tiny.styleid.json"
    stamp = cache.stat().st_mtime_ns
    assert main(_argv(out, folders, weights)) == 0
    assert cache.stat().st_mtime_ns == stamp
    assert json.loads((out / "styleid.json").read_text())["results"] == json.loads(before)["results"]


def test_styleid_protocol_refuses_paired_data_and_missing_folders(folders, weights, tmp_path, capsys):
    base = _argv(tmp_path / "o", folders, weights)
    assert main([*base, "--omnistyle", str(tmp_path)]) == 1
    assert "drop --omnistyle" in capsys.readouterr().err
    i = base.index("--content-dir")
    assert main(base[:i] + base[i + 2 :]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs --content-dir" in err
    # missing ArtFID weights: one line naming the file and its URL, before any generation
    j = base.index("--art-inception-weights")
    argv = base[:j] + ["--art-inception-weights", str(tmp_path / "none.pth")] + base[j + 2 :]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1
        and "art_inception.pth" in err
        and "huggingface.co/matthias-wright/art_inception" in err
    )
    assert not (tmp_path / "o" / "images").exists()


def test_styleid_protocol_refuses_torchvision_weights_for_its_pytorch_fid_column(
    folders, weights, inception_file, tmp_path, capsys
):
    base = _argv(tmp_path / "o", folders, weights)
    j = base.index("--inception-weights")
    assert main(base[:j] + ["--inception-weights", str(inception_file)] + base[j + 2 :]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(inception_file) in err and "FID (pytorch-fid) column" in err
    assert "fc of 1000 rows" in err and not (tmp_path / "o" / "images").exists()


class _Recorder:
    """Stands in for one of the protocol's networks and keeps what it is fed: one image batch gives (N, 3)
    "features" (its channel means), two give a distance of 0."""

    def __init__(self, *args, **kwargs):
        self.seen: list[list[torch.Tensor]] = []

    def __call__(self, *xs: torch.Tensor) -> torch.Tensor:
        self.seen.append([x.clone() for x in xs])
        return xs[0].mean((2, 3)) if len(xs) == 1 else torch.zeros(1)


@pytest.fixture
def recording_scorer(monkeypatch):
    """A StyleIDScorer at 96 px whose four networks record their inputs."""
    for name in ("ArtInceptionFeatures", "FIDInceptionFeatures", "LPIPSDistance", "CFSD"):
        monkeypatch.setattr(S.P, name, _Recorder)
    return lambda **kw: S.StyleIDScorer(size=96, **kw)


def _rgba(path, w: int, h: int, seed: int):
    """An RGBA PNG with saturated, non-white colours under its transparent pixels: alpha 0 on the left
    third, 128 in the middle, 255 on the right."""
    g = np.random.default_rng(seed)
    a = np.zeros((h, w, 4), np.uint8)
    a[..., :3] = g.integers(0, 200, (h, w, 3))  # never white
    a[:, w // 3 : 2 * w // 3, 3], a[:, 2 * w // 3 :, 3] = 128, 255
    Image.fromarray(a, "RGBA").save(path)
    return path


def _as_read_by_pytorch_fid(path) -> torch.Tensor:
    """pytorch-fid / art-fid / eval_artfid.py: Image.open(p).convert("RGB"), ToTensor: (1, 3, H, W)."""
    a = np.asarray(Image.open(path).convert("RGB"))
    return torch.from_numpy(a.copy()).permute(2, 0, 1).unsqueeze(0).float() / 255


def test_protocol_reads_files_as_pytorch_fid_and_art_fid_do(recording_scorer, tmp_path):
    """Transparent pixels count with the RGB stored under them (PIL's convert("RGB")), not composited onto
    white as stylevar.images.load_image does for the methods."""
    from torchvision.transforms import functional as TF

    style = _rgba(tmp_path / "style.png", 120, 80, seed=0)
    content = _rgba(tmp_path / "content.png", 64, 64, seed=1)
    outs = [_rgba(tmp_path / f"out{i}.png", 64, 64, seed=2 + i) for i in range(2)]
    # the test images tell the two readings apart
    white = TF.to_tensor(load_image(style)).unsqueeze(0)
    assert (white - _as_read_by_pytorch_fid(style)).abs().max() > 0.3

    scorer = recording_scorer()
    res = scorer.score(outs, [Sample(i, f"k{i}", content, style) for i in range(2)])
    art, fid, lpips, cfsd = scorer.art.seen, scorer.fid.seen, scorer.lpips.seen, scorer.cfsd.seen
    # art_inception: every image's shorter side to 96 (torchvision Resize on the PIL image); pytorch-fid's
    # network: the file as saved. Calls: output 0, its style, output 1 (the style's features are cached)
    rgb = Image.open(style).convert("RGB")
    torch.testing.assert_close(art[1][0], TF.to_tensor(TF.resize(rgb, 96)).unsqueeze(0), rtol=0, atol=0)
    torch.testing.assert_close(fid[1][0], _as_read_by_pytorch_fid(style), rtol=0, atol=0)
    for i, out in enumerate(outs):
        torch.testing.assert_close(fid[2 * i][0], _as_read_by_pytorch_fid(out), rtol=0, atol=0)
        want = TF.to_tensor(TF.resize(Image.open(out).convert("RGB"), 96)).unsqueeze(0)
        torch.testing.assert_close(art[2 * i][0], want, rtol=0, atol=0)
    # the content reference: the content read the same way, its (squash) region resized to 96 x 96
    want = TF.to_tensor(Image.open(content).convert("RGB").resize((96, 96), Image.Resampling.BILINEAR))
    for call in (*lpips, *cfsd):
        torch.testing.assert_close(call[1], want.unsqueeze(0), rtol=0, atol=0)
    assert res["n"] == 2 and res["cfsd_size"] == "96x96"


def test_cfsd_at_the_protocol_size_or_as_saved_like_styleids_code(recording_scorer, tmp_path):
    """Default: CFSD of the output and the content reference both at size x size (LPIPS's inputs).
    cfsd_saved_size=True: StyleID's compute_patch_simi, each output as saved (no resize), the content
    reference at the output's size; a content with an EXIF rotation is taken upright, as the method saw it."""
    from PIL import ImageOps
    from torchvision.transforms import functional as TF

    style = _rgba(tmp_path / "style.png", 100, 100, seed=0)
    content = tmp_path / "content.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: 60 wide, 40 high; upright 40 x 60
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(
        content, exif=exif.tobytes()
    )
    outs = [_rgba(tmp_path / f"out{i}.png", 64, 80, seed=2 + i) for i in range(2)]
    samples = [Sample(i, f"k{i}", content, style) for i in range(2)]
    upright = ImageOps.exif_transpose(Image.open(content).convert("RGB"))
    assert upright.size == (40, 60)

    default = recording_scorer()
    default.score(outs, samples, fit="crop")
    for call_l, call_c in zip(default.lpips.seen, default.cfsd.seen, strict=True):
        assert call_c[0].shape == call_c[1].shape == (1, 3, 96, 96)
        torch.testing.assert_close(call_c, call_l, rtol=0, atol=0)
    crop = upright.crop((0, 10, 40, 50))  # its centred square
    want = TF.to_tensor(crop.resize((96, 96), Image.Resampling.BILINEAR)).unsqueeze(0)
    torch.testing.assert_close(default.cfsd.seen[0][1], want, rtol=0, atol=0)

    saved = recording_scorer(cfsd_saved_size=True)
    res = saved.score(outs, samples, fit="crop")
    assert res["cfsd_size"] == "saved"
    for out, (x_out, x_content) in zip(outs, saved.cfsd.seen, strict=True):
        torch.testing.assert_close(x_out, _as_read_by_pytorch_fid(out), rtol=0, atol=0)
        want = TF.to_tensor(crop.resize((64, 80), Image.Resampling.BILINEAR)).unsqueeze(0)
        torch.testing.assert_close(x_content, want, rtol=0, atol=0)
    assert all(c[0].shape[-2:] == (96, 96) for c in saved.lpips.seen)  # LPIPS is unchanged


def test_grid_benchmark_takes_a_seeded_choice_in_file_order(tmp_path):
    cnt, sty = tmp_path / "c", tmp_path / "s"
    cnt.mkdir()
    sty.mkdir()
    img = Image.new("RGB", (8, 8))
    for i in range(30):
        img.save(cnt / f"{i:02d}.png")
    for i in range(5):
        img.save(sty / f"s{i}.png")
    b = S.grid_benchmark(cnt, sty, num_contents=20, num_styles=40, seed=1)
    assert b.selection["contents"] == 20 and b.selection["styles"] == 5 and len(b.samples) == 100
    assert b.selection["as_published"] is False
    contents = list(dict.fromkeys(s.content.name for s in b.samples))
    assert contents == sorted(contents)
    assert S.grid_benchmark(cnt, sty, seed=1).samples == b.samples
    assert S.grid_benchmark(cnt, sty, seed=2).samples != b.samples


def test_published_rows_satisfy_the_artfid_identity():
    for row in S.PUBLISHED:
        want = (1 + row["lpips_alex"]) * (1 + row["fid_art"])
        assert row["artfid"] == pytest.approx(want, abs=0.01), row["method"]
