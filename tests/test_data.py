"""Triplet data: every layout on generated folders, manifests, deterministic splits, bad files, transforms."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stylevar.data import (
    TripletDataset,
    TripletTransform,
    UnpairedDataset,
    load_split,
    read_manifest,
    save_split,
    scan,
    split_triplets,
    unpaired_pairs,
    validate_triplets,
    write_manifest,
)
from stylevar.errors import DataError


def _img(path: Path, seed: int, size=(40, 30), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(a).convert(mode).save(path)
    return path


def _omnistyle(root: Path, target_dir="target") -> Path:
    _img(root / "content" / "park.jpg", 1)
    _img(root / "content" / "cat.png", 2, mode="L")
    _img(root / "style" / "s0415.jpeg.jpg", 3)
    _img(root / "style" / "wave.png", 4, mode="RGBA")
    _img(root / target_dir / "park.jpg&&s0415.jpeg.jpg.png", 5)
    _img(root / target_dir / "cat.png&&wave.png.png", 6)
    _img(root / target_dir / "cat.png&&s0415.jpeg.jpg.webp", 7)  # upstream's "last 4 chars" rule breaks here
    _img(root / target_dir / "unrelated.png", 8)  # no "&&": not a triplet
    return root


def test_omnistyle_layout_and_the_style_name_rule(tmp_path):
    ts = scan(_omnistyle(tmp_path / "omni"))
    assert [t.key for t in ts] == sorted(t.key for t in ts) and len(ts) == 3
    by_key = {t.key: t for t in ts}
    t = by_key["park.jpg&&s0415.jpeg.jpg.png"]
    assert t.content.name == "park.jpg" and t.style.name == "s0415.jpeg.jpg" and t.target.exists()
    assert by_key["cat.png&&s0415.jpeg.jpg.webp"].style.name == "s0415.jpeg.jpg"
    assert all(p.exists() for t in ts for p in t.paths().values())


def test_omnistyle_fallback_target_folder(tmp_path):
    ts = scan(_omnistyle(tmp_path / "omni", target_dir="OmniStyle-150K"), layout="omnistyle")
    assert len(ts) == 3 and ts[0].target.parent.name == "OmniStyle-150K"


def test_imagepulse_folders_json_and_organised(tmp_path):
    root = tmp_path / "pulse"
    for i in range(2):
        for role, seed in (("content", 10), ("style", 20), ("target", 30)):
            _img(root / "folders" / f"sample_{i}" / f"{role}.{'jpg' if role == 'style' else 'png'}", seed + i)
    ex = root / "extracted" / "batch0"
    for k in (1, 2, 3, 4):
        _img(ex / f"img_{k}.png", 40 + k)
    (ex / "rec.json").write_text(
        json.dumps(
            {"image_1": "img_1.png", "image_2": "img_2.png", "image_3": "img_3.png", "image_4": "img_4.png"}
        )
    )
    (ex / "notes.json").write_text(json.dumps({"unrelated": 1}))
    ts = scan(root, layout="imagepulse")
    assert len(ts) == 3
    rec = [t for t in ts if t.key.endswith("rec")][0]
    assert (rec.content.name, rec.style.name, rec.target.name) == ("img_1.png", "img_2.png", "img_4.png")
    folder = [t for t in ts if t.key == "folders/sample_1"][0]
    assert folder.style.suffix == ".jpg" and folder.target.name == "target.png"
    organised = scan(_omnistyle(tmp_path / "organised"), layout="imagepulse")
    assert len(organised) == 3


def test_manifests_csv_and_jsonl(tmp_path):
    ts = scan(_omnistyle(tmp_path / "omni"))
    csv_path = write_manifest(ts, tmp_path / "m.csv")
    assert [t.content for t in read_manifest(csv_path)] == [t.content.resolve() for t in ts]
    rel = tmp_path / "omni" / "mine.jsonl"
    rel.write_text(
        "\n".join(
            json.dumps(
                {"content": f"content/{c}", "style": f"style/{s}", "target": f"target/{t.target.name}"}
            )
            for c, s, t in zip(["park.jpg", "cat.png"], ["s0415.jpeg.jpg", "wave.png"], ts[:2])
        )
    )
    got = scan(rel)  # a file: auto-detected as a manifest; relative to its folder
    assert len(got) == 2 and all(p.exists() for t in got for p in t.paths().values())
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="header lacks"):
        read_manifest(bad)
    with pytest.raises(DataError, match="dataset not found"):
        scan(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no ImagePulse samples"):
        scan(tmp_path / "empty")


def test_split_is_deterministic_and_honours_files(tmp_path):
    root = tmp_path / "pulse"
    for i in range(40):
        for role in ("content", "style", "target"):
            _img(root / f"s{i:02d}" / f"{role}.png", i, size=(16, 16))
    ts = scan(root)
    tr, va = split_triplets(ts, val_fraction=0.1, seed=3)
    shuffled = list(ts)
    random.Random(0).shuffle(shuffled)
    tr2, va2 = split_triplets(shuffled, val_fraction=0.1, seed=3)
    assert [t.key for t in va] == [t.key for t in va2] and len(va) == 4 and len(tr) == 36
    assert {t.key for t in tr}.isdisjoint(t.key for t in va)
    assert [t.key for t in split_triplets(ts, val_fraction=0.1, seed=4)[1]] != [t.key for t in va]
    path = save_split(tmp_path / "new_run" / "split.json", tr, va, seed=3)  # creates the run folder
    ltr, lva = load_split(path)
    assert [t.key for t in ltr] == [t.key for t in tr] and lva[0].target == va[0].target
    (root / "train_files.txt").write_text("s00\ns01\n")
    (root / "val_files.txt").write_text("s02\n")
    tr3, va3 = split_triplets(ts, root=root)
    assert [t.key for t in tr3] == ["s00", "s01"] and [t.key for t in va3] == ["s02"]


def test_validation_finds_missing_and_corrupt_files(tmp_path):
    root = _omnistyle(tmp_path / "omni")
    (root / "content" / "cat.png").unlink()  # missing
    data = (root / "style" / "s0415.jpeg.jpg").read_bytes()
    (root / "style" / "s0415.jpeg.jpg").write_bytes(data[: len(data) // 3])  # truncated
    ts = scan(root)
    with pytest.raises(DataError) as e:
        validate_triplets(ts, full=True)
    msg = str(e.value)
    assert "\n" not in msg and "--on-bad-file skip" in msg and "3 triplets" in msg
    with pytest.raises(DataError, match="no usable triplets"):
        validate_triplets(ts, on_bad="skip", full=True)
    _img(root / "content" / "cat.png", 2)
    kept, report = validate_triplets(ts, on_bad="skip", full=True)
    assert [t.key for t in kept] == ["cat.png&&wave.png.png"] and len(report.dropped) == 2
    assert report.problems == {
        str(root / "style" / "s0415.jpeg.jpg"): report.problems[str(root / "style" / "s0415.jpeg.jpg")]
    }
    (root / "target" / "cat.png&&wave.png.png").write_text("not an image")
    with pytest.raises(DataError, match="unreadable"):
        validate_triplets(scan(root))


def test_dataset_items_transforms_and_augmentation_determinism(tmp_path):
    ts = scan(_omnistyle(tmp_path / "omni"))
    tf = TripletTransform(resolution=32, content_rotation=15, content_brightness=0.3, style_crop=0.5)
    ds = TripletDataset(ts, tf, train=True, seed=1)
    item = ds[0]
    assert set(item) == {"target", "style", "content", "index"}
    for k in ("target", "style", "content"):
        assert item[k].shape == (3, 32, 32) and item[k].dtype == torch.float32
        assert -1 <= item[k].min() and item[k].max() <= 1
    assert torch.equal(ds[0]["content"], item["content"])  # same (seed, epoch, index): same augmentation
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["content"], item["content"])
    plain = TripletDataset(ts, tf, train=False)[0]
    assert torch.equal(plain["target"], item["target"])  # targets are never augmented
    assert torch.equal(
        plain["content"], TripletTransform(resolution=32).to_tensor(Image.open(ts[0].content).convert("RGB"))
    )


def test_dataset_image_cache(tmp_path, monkeypatch):
    """cache_images: each file decoded once (a shared style too), the same tensors as without the cache;
    augmented images are drawn afresh every time."""
    import stylevar.data.datasets as datasets

    ts = scan(_omnistyle(tmp_path / "omni"))
    loads: list = []
    real = datasets.load_image
    monkeypatch.setattr(datasets, "load_image", lambda p, role: loads.append(p) or real(p, role=role))
    tf = TripletTransform(resolution=16)
    plain = [TripletDataset(ts, tf)[i] for i in range(len(ts))]
    loads.clear()
    cached = TripletDataset(ts, tf, cache_images=True)
    for _ in range(2):
        for i, want in enumerate(plain):
            got = cached[i]
            assert all(torch.equal(got[k], want[k]) for k in ("target", "style", "content"))
    files = {p for t in ts for p in (t.target, t.style, t.content)}
    assert sorted(loads) == sorted(files) and len(files) < 3 * len(ts)  # shared files once, nothing twice
    aug = TripletTransform(resolution=16, content_rotation=15)
    ds = TripletDataset(ts, aug, train=True, cache_images=True)
    loads.clear()
    first = ds[0]["content"]
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["content"], first)  # augmented contents are not cached
    assert loads.count(ts[0].content) == 2 and loads.count(ts[0].target) == 1  # the target still is


def test_dataset_bad_file_at_load_time(tmp_path, caplog):
    root = _omnistyle(tmp_path / "omni")
    ts = scan(root)
    ts[0].content.unlink()
    with pytest.raises(DataError, match="on-bad-file skip"):
        TripletDataset(ts, TripletTransform(resolution=16))[0]
    ds = TripletDataset(ts, TripletTransform(resolution=16), on_bad="skip")
    # ts[0] and ts[1] share the missing content image: served the next loadable triplet, both counted
    assert ds[0]["index"] == 2 and ds.load_failures == 2


def test_unpaired_pairs(tmp_path):
    for i in range(3):
        _img(tmp_path / "c" / f"c{i}.png", i)
        _img(tmp_path / "s" / f"s{i}.jpg", 10 + i)
    allp = unpaired_pairs(tmp_path / "c", tmp_path / "s")
    assert len(allp) == 9 and allp[0] == (tmp_path / "c" / "c0.png", tmp_path / "s" / "s0.jpg")
    some = unpaired_pairs(tmp_path / "c", tmp_path / "s", num_pairs=4, seed=2)
    assert some == unpaired_pairs(tmp_path / "c", tmp_path / "s", num_pairs=4, seed=2) and len(set(some)) == 4
    item = UnpairedDataset(some, TripletTransform(resolution=24))[3]
    assert item["content"].shape == item["style"].shape == (3, 24, 24)
