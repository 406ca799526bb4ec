"""``stylevar evaluate`` (eval/data.py, benchmark.py, report.py, run.py) end to end on CPU.

Generated data in the three layouts (OmniStyle, ImagePulse per-sample folders, COCO/WikiArt-like folders
with awkward files), the tiny checkpoint, AdaIN and content copy with random weights the tests build. The
DreamSim, CLIP and LPIPS metrics join when their optional packages are installed (``stylevar[rewards]``).
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import random_inception_state
from stylevar.cli import main
from stylevar.data import save_split, scan
from stylevar.data.synthetic import make_synthetic, synthetic_triplet
from stylevar.errors import ConfigError, DataError
from stylevar.eval import benchmark as B
from stylevar.eval.data import Exclusions, load_exclusions, paired_benchmark, unpaired_benchmark

HAS_EXTRAS = all(importlib.util.find_spec(m) for m in ("lpips", "dreamsim", "transformers", "peft"))


# ---------------------------------------------------------------------------------------------------
# data


def _save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaldata")
    omni = make_synthetic(root / "omni", num_contents=4, num_styles=4, num_triplets=10, size=64, seed=1)
    # ImagePulse layout A: one folder per sample, mixed formats (JPEG target, RGBA style, grey content)
    ip = root / "imagepulse"
    for i in range(5):
        t = synthetic_triplet(i, i + 1, seed=2, size=48)
        d = ip / f"group{i % 2}" / f"sample_{i:02d}"
        _save(t.content.convert("L") if i == 0 else t.content, d / "content.png")
        _save(t.style.convert("RGBA") if i == 1 else t.style, d / "style.png")
        _save(t.target, d / ("target.jpg" if i == 2 else "target.png"), **({"quality": 95} if i == 2 else {}))
    # COCO-like flat content folder, WikiArt-like style folder with one sub-folder per style
    coco, wiki = root / "coco", root / "wikiart"
    for i in range(4):
        t = synthetic_triplet(10 + i, 20 + i, seed=3, size=56)
        ext = (".jpg", ".png", ".webp", ".png")[i]
        _save(t.content, coco / f"{i:012d}{ext}")
        _save(t.style, wiki / ("Impressionism" if i % 2 else "Cubism") / f"painting_{i}.png")
    (coco / ".hidden.png").write_bytes(b"not an image")  # hidden files are skipped
    # a training run's split: 2 OmniStyle triplets were trained on
    ts = sorted(scan(omni), key=lambda t: t.key)
    split = save_split(root / "run" / "split.json", ts[:2], ts[2:3])
    return {"omni": omni, "imagepulse": ip, "coco": coco, "wikiart": wiki, "split": split, "train": ts[:2]}


def test_paired_selection_is_deterministic_and_leaves_out_training(datasets):
    ex = load_exclusions([datasets["split"]])
    a = paired_benchmark("OmniStyle", datasets["omni"], num_samples=5, seed=42, exclude=ex)
    b = paired_benchmark("OmniStyle", datasets["omni"], num_samples=5, seed=42, exclude=ex)
    assert [s.key for s in a.samples] == [s.key for s in b.samples] and a.fingerprint() == b.fingerprint()
    trained = {t.key for t in datasets["train"]}
    assert not trained & {s.key for s in a.samples}
    assert a.selection["excluded_training"] == 2 and a.selection["available"] == 10
    assert [s.index for s in a.samples] == list(range(5))
    c = paired_benchmark("OmniStyle", datasets["omni"], num_samples=5, seed=7, exclude=ex)
    assert [s.key for s in c.samples] != [s.key for s in a.samples]  # the seed matters
    # a run folder (holding split.json) works too, and strict hold-out drops shared contents/styles
    strict = paired_benchmark(
        "OmniStyle",
        datasets["omni"],
        num_samples=10,
        exclude=load_exclusions([datasets["split"].parent]),
        strict=True,
    )
    seen_c = {str(t.content) for t in datasets["train"]}
    seen_s = {str(t.style) for t in datasets["train"]}
    assert all(str(s.content) not in seen_c and str(s.style) not in seen_s for s in strict.samples)
    assert 0 < len(strict.samples) < 8
    with pytest.raises(DataError, match="split file not found"):
        load_exclusions([datasets["split"].parent / "nope.json"])


def test_selection_does_not_depend_on_listing_order(datasets, tmp_path, monkeypatch):
    ref = [s.key for s in paired_benchmark("O", datasets["omni"], num_samples=6, seed=1).samples]
    real_iterdir = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: reversed(list(real_iterdir(self))))
    assert [s.key for s in paired_benchmark("O", datasets["omni"], num_samples=6, seed=1).samples] == ref


def test_dataset_root_train_files_are_excluded(tmp_path):
    root = make_synthetic(tmp_path / "d", num_contents=3, num_styles=3, num_triplets=6, size=32)
    keys = sorted(t.key for t in scan(root))
    (root / "train_files.txt").write_text("\n".join(keys[:5]) + "\n")
    (root / "val_files.txt").write_text(keys[5] + "\n")
    b = paired_benchmark("D", root, num_samples=6, exclude=Exclusions())
    assert [s.key for s in b.samples] == [keys[5]]
    (root / "train_files.txt").write_text("\n".join(keys) + "\n")
    with pytest.raises(DataError, match="all 6 triplets were used in training"):
        paired_benchmark("D", root, num_samples=6)


def test_unpaired_selection(datasets):
    b = unpaired_benchmark("COCO+WikiArt", datasets["coco"], datasets["wikiart"], num_samples=6, seed=42)
    assert not b.paired and b.reference == "content" and b.slug == "COCO_WikiArt"
    assert len({s.key for s in b.samples}) == 6  # distinct pairs
    assert (
        b.selection["content_images"] == 4 and b.selection["style_images"] == 4
    )  # recursive, hidden skipped
    assert any("Impressionism/" in s.key for s in b.samples)
    again = unpaired_benchmark("x", datasets["coco"], datasets["wikiart"], num_samples=6, seed=42)
    assert [s.key for s in again.samples] == [s.key for s in b.samples]
    everything = unpaired_benchmark("x", datasets["coco"], datasets["wikiart"], num_samples=100)
    assert len(everything.samples) == 16
    with pytest.raises(DataError, match="holds no images"):
        unpaired_benchmark("x", datasets["coco"] / "..", datasets["split"].parent, num_samples=1)


def test_timing_excludes_warmup_and_times_full_batches():
    calls = []

    def method(c, s, seeds):
        calls.append(c.shape[0])
        return c

    x = torch.rand(5, 3, 8, 8)
    t = B.time_method(method, x, x, list(range(5)), batch_size=2, warmup=3, device=torch.device("cpu"))
    assert calls == [2, 2, 2, 2, 2] and t["calls"] == 2 and t["batch_size"] == 2
    assert set(t["per_image_s"]) == {"mean", "median", "std"} and t["per_image_s"]["mean"] >= 0


# ---------------------------------------------------------------------------------------------------
# end to end


def fid_inception_state(seed: int) -> dict:
    """Random weights in the layout of pytorch-fid's pt_inception-2015-12-05-6726825d.pth: torchvision's
    trunk keys (its FID blocks have the same parameters), an fc of 1008 rows and no AuxLogits, as
    pytorch-fid's builder makes it (``_inception_v3(num_classes=1008, aux_logits=False)``)."""
    from torchvision.models import inception_v3

    with torch.device("meta"):
        model = inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    return random_inception_state(model.to_empty(device="cpu").state_dict(), seed)


@pytest.fixture(scope="module")
def fid_inception_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fid_inception") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(fid_inception_state(seed=0), path)
    return path


@pytest.fixture(scope="module")
def weights(
    vgg_file,
    vgg16_file,
    fid_inception_file,
    inception_file,
    art_inception_file,
    alexnet_file,
    adain_dir,
    request,
):
    # "inception": the FID network's weights for the default --fid-inception pytorch-fid; "tv_inception":
    # torchvision's layout (--fid-inception torchvision)
    w = {"vgg": vgg_file, "inception": fid_inception_file, "tv_inception": inception_file, "adain": adain_dir}
    w |= {"art": art_inception_file, "alex": alexnet_file}
    if HAS_EXTRAS:
        w |= {
            "lpips": vgg16_file,
            "dreamsim": request.getfixturevalue("dreamsim_dir"),
            "clip": request.getfixturevalue("clip_dir"),
        }
    return w


def _args(datasets, weights, ckpt, out, *extra):
    metrics = "all" if HAS_EXTRAS else "torchvision"
    a = [
        "evaluate",
        "--output", str(out),
        "--model", f"tiny={ckpt}",
        "--adain", "--adain-weights", str(weights["adain"]),
        "--content-copy",
        "--omnistyle", str(datasets["omni"]),
        "--exclude-split", str(datasets["split"]),
        "--imagepulse", str(datasets["imagepulse"]),
        "--coco", str(datasets["coco"]),
        "--wikiart", str(datasets["wikiart"]),
        "-n", "3",
        "--metrics", metrics,
        "--vgg-weights", str(weights["vgg"]),
        "--inception-weights", str(weights["inception"]),
        "--batch-size", "2",
        "--timing-samples", "2",
        "--timing-batch-size", "2",
        "--sheet-samples", "2",
        "--device", "cpu",
        "-q",
    ]  # fmt: skip
    if HAS_EXTRAS:
        a += ["--lpips-weights", str(weights["lpips"]), "--dreamsim-dir", str(weights["dreamsim"])]
        a += ["--clip-model", str(weights["clip"])]
        a += ["--art-inception-weights", str(weights["art"]), "--alexnet-weights", str(weights["alex"])]
    return a + list(extra)


def _summary(out: Path) -> dict:
    doc = json.loads((out / "summary.json").read_text())
    return {(r["benchmark"], r["method"]): r for r in doc["results"]}


@pytest.mark.slow
def test_evaluate_end_to_end(datasets, weights, ours_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(_args(datasets, weights, ours_dir, out)) == 0
    printed = capsys.readouterr().out
    assert "OmniStyle: 3 of 10 triplets (vs target, 2 training triplets left out)" in printed
    for f in ("summary.json", "summary.csv", "summary.md", "config.json", "metrics.png"):
        assert (out / f).is_file(), f
    for b in ("OmniStyle", "ImagePulse", "COCO_WikiArt"):
        sheet = Image.open(out / "sheets" / f"{b}.png")
        cols = 6 if b != "COCO_WikiArt" else 5  # content | style | [target] | tiny | AdaIN | content-copy
        assert sheet.width == cols * (128 + 2) + 2  # 64-px images shown at least 128 px
        for m in ("tiny", "AdaIN", "content-copy"):
            assert len(list((out / "images" / b / m).glob("*.png"))) == 3
    res = _summary(out)
    assert len(res) == 9
    names = ["style_loss", "content_loss", "ssim", "histogram", "cfsd"] + (
        ["lpips", "dreamsim", "clip", "lpips_alex"] if HAS_EXTRAS else []
    )
    for (bench, method), r in res.items():
        assert r["n"] == 3 and r["compared_to"] == ("content" if bench == "COCO+WikiArt" else "target")
        for n in names:
            st = r["metrics"][n]
            assert set(st) == {"mean", "median", "std"} and np.isfinite(st["mean"]), (bench, method, n)
        assert r["set_metrics"]["fid"] is not None and r["set_metrics"]["fid"] >= -1e-6
        assert set(r["timing"]) >= {"b1", "b2", "device"}
        if HAS_EXTRAS:  # ArtFID = (1 + LPIPS-Alex to the content)(1 + FID over art_inception features)
            lp = np.mean([json.loads(x)["lpips_alex"] for x in _records(out, bench, method)])
            sm = r["set_metrics"]
            assert sm["artfid"] == pytest.approx((1 + lp) * (1 + sm["fid_art"]))
            assert sm["fid_art"] != pytest.approx(sm["fid"])  # two networks
    # the content copy is the floor: zero content loss; against the content image its similarity is perfect
    cc = res[("COCO+WikiArt", "content-copy")]["metrics"]
    assert cc["content_loss"]["mean"] == pytest.approx(0, abs=1e-6) and cc["ssim"]["mean"] == pytest.approx(1)
    assert cc["cfsd"]["mean"] == pytest.approx(0, abs=1e-6)
    if HAS_EXTRAS:
        assert cc["lpips"]["mean"] == pytest.approx(0, abs=1e-6)
        assert cc["lpips_alex"]["mean"] == pytest.approx(0, abs=1e-6)
    # every method used the same seeds; the records and the saved images agree
    for bench, method in res:
        rows = [json.loads(x) for x in _records(out, bench, method)]
        assert [x["seed"] for x in rows] == [42, 43, 44]
    md = (out / "summary.md").read_text()
    assert (
        "| Dataset | Method | Style loss ↓ | Content loss ↓ |" in md and "**" in md and "*content-copy*" in md
    )
    assert "s/img (batch 1)" in md and "s/img (batch 2)" in md
    assert "FID: pytorch-fid's FID Inception" in md and "biased upwards at small n" in md
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert (
        len(rows) == 9 and "style_loss_mean" in rows[0] and "time_b1_mean_s" in rows[0] and "fid" in rows[0]
    )

    # rerunning is a no-op that keeps every number
    before = (out / "summary.csv").read_text()
    assert main(_args(datasets, weights, ours_dir, out)) == 0
    assert (out / "summary.csv").read_text().splitlines()[1:] == before.splitlines()[1:]

    # an image lost (and a record cut mid-line) is redone, with the same tokens (seeds are per image; the
    # decoder's float sums differ with the batch size in the last bits, so a pixel may round one level apart)
    img = out / "images" / "OmniStyle" / "tiny" / "0001.png"
    first = np.asarray(Image.open(img))
    img.unlink()
    rec = out / "records" / "OmniStyle" / "tiny.jsonl"
    rec.write_text(rec.read_text() + '{"index": 2, "key"')
    assert main(_args(datasets, weights, ours_dir, out, "--batch-size", "1")) == 0
    assert np.abs(np.asarray(Image.open(img)).astype(int) - first).max() <= 1
    after = _summary(out)[("OmniStyle", "tiny")]["metrics"]
    for n in names:
        assert after[n]["mean"] == pytest.approx(res[("OmniStyle", "tiny")]["metrics"][n]["mean"], rel=1e-3)

    # a setting that changes the results is refused, naming it; --overwrite starts afresh
    assert main(_args(datasets, weights, ours_dir, out, "--seed", "1")) == 1
    assert "other settings: seed 42 -> 1" in capsys.readouterr().err
    assert main(_args(datasets, weights, ours_dir, out, "--adain-alpha", "0.5")) == 1
    assert "method AdaIN (alpha)" in capsys.readouterr().err


def _records(out: Path, bench: str, method: str) -> list[str]:
    slug = bench.replace("+", "_")
    return (out / "records" / slug / f"{method}.jsonl").read_text().splitlines()


@pytest.mark.slow
def test_interrupted_evaluation_resumes_to_the_same_numbers(
    datasets, weights, ours_dir, tmp_path, monkeypatch
):
    from stylevar.eval import methods as Mth

    # the per-image metrics the resume must reproduce; the heavy networks (Inception, DreamSim, LPIPS) are
    # exercised by test_evaluate_end_to_end and add nothing to the resume logic
    args = ["--content-copy", "--timing-samples", "0", "--metrics", "style_loss,content_loss,ssim,histogram"]
    full = tmp_path / "full"
    assert main(_args(datasets, weights, ours_dir, full, *args)) == 0

    real = Mth.StyleVARMethod.__call__
    calls = {"n": 0}

    def flaky(self, content, style, seeds):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, content, style, seeds)

    monkeypatch.setattr(Mth.StyleVARMethod, "__call__", flaky)
    part = tmp_path / "part"
    assert main(_args(datasets, weights, ours_dir, part, *args)) == 130
    assert "PARTIAL" in (part / "summary.md").read_text()
    kept = len(list((part / "images").rglob("*.png")))
    assert 0 < kept < 27
    monkeypatch.setattr(Mth.StyleVARMethod, "__call__", real)
    assert main(_args(datasets, weights, ours_dir, part, *args)) == 0
    assert "PARTIAL" not in (part / "summary.md").read_text()
    a, b = _summary(full), _summary(part)
    assert a.keys() == b.keys()
    for k in a:
        for n, st in a[k]["metrics"].items():
            assert b[k]["metrics"][n]["mean"] == pytest.approx(st["mean"], rel=1e-5, abs=1e-7), (k, n)


def test_missing_metric_weights_fail_before_generating(datasets, ours_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    out = tmp_path / "eval"
    code = main(
        ["evaluate", "--output", str(out), "--model", str(ours_dir), "--omnistyle", str(datasets["omni"]),
         "--metrics", "style_loss,ssim", "--device", "cpu", "-q"]
    )  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "vgg19-dcbb9e9d.pth" in err and "download.pytorch.org" in err
    assert not (out / "images").exists()


def test_cli_errors_are_one_line(datasets, ours_dir, tmp_path, capsys):
    base = ["evaluate", "--output", str(tmp_path / "o"), "--metrics", "ssim", "--device", "cpu", "-q"]
    cases = [
        (base + ["--omnistyle", str(datasets["omni"])], "nothing to evaluate"),
        (base + ["--content-copy"], "no dataset given"),
        (base + ["--content-copy", "--coco", str(datasets["coco"])], "needs both --content-dir"),
        (base + ["--content-copy", "--omnistyle", str(tmp_path / "missing")], "dataset not found"),
        (
            base + ["--content-copy", "--omnistyle", str(datasets["omni"]), "--metrics", "fidd"],
            "unknown metric 'fidd'",
        ),
        (base + ["--model", "=x", "--omnistyle", str(datasets["omni"])], "expected NAME=VALUE"),
        (
            base
            + ["--adain", "--adain-weights", str(tmp_path / "none"), "--omnistyle", str(datasets["omni"])],
            "vgg_normalised.pth",
        ),
        (
            base + ["--model", "released:v3", "--omnistyle", str(datasets["omni"])],
            "released:grpo or released:sft",
        ),
    ]
    for argv, needle in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err


def test_fid_weights_must_fit_the_chosen_fid_network(datasets, weights, tmp_path, capsys):
    """--inception-weights goes to the network --fid-inception names; a file of the other network (their
    trunks share one key layout, so it would load) is refused in one line before any generation."""
    out = tmp_path / "o"
    base = ["evaluate", "--output", str(out), "--content-copy", "--omnistyle", str(datasets["omni"]),
            "--metrics", "fid", "-n", "2", "--resolution", "32", "--timing-samples", "0",
            "--sheet-samples", "0", "--device", "cpu", "-q"]  # fmt: skip
    tv, fid = str(weights["tv_inception"]), str(weights["inception"])
    assert main([*base, "--inception-weights", tv]) == 1  # default: pytorch-fid
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and tv in err and "torchvision's ImageNet Inception-v3" in err
    assert "--fid-inception torchvision" in err and not (out / "images").exists()
    assert main([*base, "--inception-weights", fid, "--fid-inception", "torchvision"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fid in err and "fc of 1008 rows" in err
    assert "--fid-inception pytorch-fid" in err and not (out / "images").exists()
    # each with its own network runs
    for w, net in ((tv, "torchvision"), (fid, "pytorch-fid")):
        assert main([*base, "--inception-weights", w, "--fid-inception", net, "--overwrite"]) == 0
        assert _summary(out)[("OmniStyle", "content-copy")]["set_metrics"]["fid"] is not None


def test_content_copy_alone_needs_no_checkpoint(datasets, tmp_path):
    out = tmp_path / "cc"
    argv = ["evaluate", "--output", str(out), "--content-copy", "--paired", f"pulse={datasets['imagepulse']}",
            "--metrics", "ssim,histogram", "-n", "2", "--resolution", "32", "--device", "cpu", "-q"]  # fmt: skip
    assert main(argv) == 0
    r = _summary(out)[("pulse", "content-copy")]
    assert r["n"] == 2 and r["metrics"]["ssim"]["mean"] < 0.9  # vs the GT target, not the content
    assert Image.open(out / "images" / "pulse" / "content-copy" / "0000.png").size == (32, 32)
    with pytest.raises(ConfigError, match="share a name"):
        bench = paired_benchmark("a", datasets["imagepulse"], num_samples=1)
        B.Evaluation(out, [bench, bench], [B.MethodEntry("m", "content-copy", lambda: None)], None)


@pytest.mark.skipif(
    not HAS_EXTRAS, reason="lpips, dreamsim, transformers or peft not installed (pip install -e '.[eval]')"
)
def test_suite_runs_every_metric_on_random_weights(weights):
    from stylevar.eval.suite import ALL_METRICS, MetricSuite, MetricWeights

    suite = MetricSuite(
        ALL_METRICS,
        MetricWeights(
            vgg=weights["vgg"],
            lpips_backbone=weights["lpips"],
            dreamsim_dir=weights["dreamsim"],
            clip_model=weights["clip"],
            inception=weights["inception"],
            art_inception=weights["art"],
            alexnet=weights["alex"],
        ),
    )
    g = torch.Generator().manual_seed(0)
    c, s, t = (torch.rand(3, 3, 32, 32, generator=g) for _ in range(3))
    same = suite.per_image(t, c, s, t)  # output == target: the paired metrics at their ideal values
    assert same["lpips"] == pytest.approx([0, 0, 0], abs=1e-6) and same["ssim"] == pytest.approx([1, 1, 1])
    assert same["dreamsim"] == pytest.approx([0, 0, 0], abs=1e-5) and same["clip"] == pytest.approx([1, 1, 1])
    other = suite.per_image(c, c, s, t)
    assert all(o > 1e-4 for o in other["lpips"]) and all(o < 1 for o in other["ssim"])
    assert other["content_loss"] == pytest.approx([0, 0, 0], abs=1e-9)  # output == content
    assert other["lpips_alex"] == pytest.approx([0, 0, 0], abs=1e-6)  # ArtFID's term is vs the content
    assert other["cfsd"] == pytest.approx([0, 0, 0], abs=1e-6)
    c, s = (torch.nn.functional.interpolate(x, size=96) for x in (c, s))  # ArtFID's Inception: >= 75 px
    feats = suite.features(torch.cat([c, s]))
    assert set(feats) == {"fid", "art"}
    res = suite.set_metrics({k: f[:3] for k, f in feats.items()}, {k: f[3:] for k, f in feats.items()}, [0.0])
    assert res["fid"] > 0 and res["fid_art"] > 0 and res["artfid"] == pytest.approx(1 + res["fid_art"])
    one = suite.set_metrics(
        {k: f[:1] for k, f in feats.items()}, {k: f[3:4] for k, f in feats.items()}, [0.1]
    )
    assert one == {"fid": None, "fid_art": None, "artfid": None}
