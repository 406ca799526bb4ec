"""``stylevar evaluate --protocol styleid`` end to end on generated folders, tiny weights for every network
(the tiny StyleVAR, AdaIN, art_inception, pytorch-fid's Inception, AlexNet, VGG-19)."""

from __future__ import annotations

import importlib.util
import json

import pytest
from PIL import Image

from stylevar.cli import main
from stylevar.data.synthetic import synthetic_triplet
from stylevar.eval import styleid as S

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
        "evaluate", "--out", str(out), "--protocol", "styleid",
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
def weights(ours_dir, adain_dir, vgg_file, inception_file, art_inception_file, alexnet_file):
    return {
        "ckpt": ours_dir,
        "adain": adain_dir,
        "vgg": vgg_file,
        "inception": inception_file,
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
        assert r["n"] == 6
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
