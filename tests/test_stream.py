"""Many pairs: manifests, recursive folders, the streaming loop, bad files, resume (issue: a million pairs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import write_smooth_pngs
from stylevar.cli import main
from stylevar.errors import ConfigError, ImageError
from stylevar.stylize.pairs import (
    Blend,
    Pair,
    count_manifest,
    folder_pairs,
    list_images_recursive,
    output_names,
    read_manifest,
)


@pytest.fixture(scope="module")
def pics(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    return {
        "content": write_smooth_pngs(d / "content", [(90, 60), (64, 64), (50, 80)], seed=31, stem="c"),
        "style": write_smooth_pngs(d / "style", [(64, 64), (70, 70)], seed=32, stem="s"),
        "root": d,
    }


def _arr(p) -> np.ndarray:
    return np.asarray(Image.open(p).convert("RGB"), dtype=np.int16)


# ----------------------------------------------------------------------------------------- manifests
def test_csv_and_jsonl_manifests(tmp_path):
    (tmp_path / "imgs").mkdir()
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text(
        "content,style,seed,output,style_strength,preserve_color,top_k\n"
        "imgs/a.png,imgs/b.png,7,sub/first.png,0.5,stats,5\n"
        "\n"
        f"{tmp_path / 'x.jpg'},imgs/y.jpg,,,,,\n"
    )
    rows = list(read_manifest(csv_file))
    assert len(rows) == 2 == count_manifest(csv_file)
    a, b = rows
    assert a.content == tmp_path / "imgs" / "a.png" and a.seed == 7 and a.name == "sub/first"
    assert a.style_strength == 0.5 and a.preserve_color == "stats" and a.top_k == 5
    assert a.source == f"{csv_file}:2"
    assert b.content == tmp_path / "x.jpg" and b.seed is None and b.name is None and b.top_k is None
    jl = tmp_path / "pairs.jsonl"
    jl.write_text(
        json.dumps({"content": "imgs/a.png", "style": "imgs/b.png", "seed": 3, "temperature": 0.5}) + "\n\n"
    )
    (only,) = read_manifest(jl)
    assert only.seed == 3 and only.temperature == 0.5 and only.source == f"{jl}:1" and count_manifest(jl) == 1


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("content,style,sed\na.png,b.png,1\n", "unknown column(s) 'sed'"),
        ("content,style\na.png,\n", ":2: no style given"),
        ("content,style,seed\na.png,b.png,x\n", ":2: seed 'x' is not a valid int"),
        ("content,style,output\na.png,b.png,../up\n", "must be a relative path inside the output folder"),
        ("content,style,output\na.png,b.png,/abs/x\n", "must be a relative path"),
        ("content,style,preserve_color\na.png,b.png,grey\n", "preserve_color must be one of none, luminance"),
        ("contnt,style\na.png,b.png\n", "header naming at least the columns content,style"),
        ("content,style\na.png,b.png,extra\n", "more cells than the header"),
    ],
)
def test_a_bad_manifest_row_is_one_line_naming_file_and_line(tmp_path, text, fragment):
    f = tmp_path / "m.csv"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        list(read_manifest(f))
    assert fragment in str(e.value) and "\n" not in str(e.value) and str(f) in str(e.value)


def test_bad_jsonl_and_missing_manifest(tmp_path):
    f = tmp_path / "m.jsonl"
    f.write_text('{"content": "a.png", "style": "b.png"}\n{not json\n')
    with pytest.raises(ConfigError, match=r"m.jsonl:2: not valid JSON"):
        list(read_manifest(f))
    f.write_text('["a.png", "b.png"]\n')
    with pytest.raises(ConfigError, match="must be a JSON object"):
        list(read_manifest(f))
    with pytest.raises(ConfigError, match="manifest not found"):
        list(read_manifest(tmp_path / "nope.csv"))
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ConfigError, match="must be .csv or .jsonl"):
        list(read_manifest(tmp_path / "m.txt"))


def test_recursive_folders_ignore_non_images_and_mirror_sub_folders(tmp_path):
    root = tmp_path / "photos"
    write_smooth_pngs(root, [(32, 32)], seed=1, stem="top")
    write_smooth_pngs(root / "trip" / "day1", [(32, 32)] * 2, seed=2, stem="img")
    write_smooth_pngs(root / ".hidden", [(32, 32)], seed=3, stem="secret")
    (root / "notes.txt").write_text("x")
    (root / "trip" / "meta.json").write_text("{}")
    (root / "trip" / ".DS_Store.png").write_bytes(b"junk")
    found = list_images_recursive(root)
    rel = [p.relative_to(root).as_posix() for p in found]
    assert rel == ["top0.png", "trip/day1/img0.png", "trip/day1/img1.png"]
    assert output_names(found, root) == ["top0", "trip/day1/img0", "trip/day1/img1"]
    pairs = list(folder_pairs(found, [Path("s/a.png")], output_names(found, root), ["a"]))
    assert [p.name for p in pairs] == ["top0__a", "trip/day1/img0__a", "trip/day1/img1__a"]
    empty = tmp_path / "empty"
    (empty / ".git").mkdir(parents=True)
    (empty / ".git" / "x.png").write_bytes(b"junk")
    (empty / "a.txt").write_text("x")
    with pytest.raises(ImageError, match="no image files"):
        list_images_recursive(empty)


# ------------------------------------------------------------------------------------- the pipeline
def test_stylize_pairs_matches_the_call_and_takes_generators(pipe, pics):
    c, s = pics["content"], pics["style"]
    want = pipe(c, s, pairing="product", seed=40, batch_size=2, output_type="pt")
    gen = (Pair(ci, si) for ci in c for si in s)  # a generator: no len, consumed a window at a time
    got = list(pipe.stylize_pairs(gen, seed=40, batch_size=2, window=1, output_type="pt"))
    assert [r.seed for r in got] == want.seeds and [(r.index, r.sample) for r in got] == [
        (i, 0) for i in range(6)
    ]
    for r, w in zip(got, want.images):
        assert torch.equal(r.image, w)
    # a pair's own seed wins; alone and at another batch size it gives the same image
    (one,) = pipe.stylize_pairs([Pair(c[2], s[1], seed=want.seeds[5])], batch_size=1, output_type="pt")
    assert one.seed == want.seeds[5] and (one.image - want.images[5]).abs().max() <= 1 / 255 + 1e-6


def test_per_pair_settings_equal_run_settings(pipe, pics):
    c, s = pics["content"][0], pics["style"][0]
    run = pipe(c, s, seed=3, style_strength=0.6, preserve_color="stats", output_type="pt").images[0]
    (pair,) = pipe.stylize_pairs(
        [Pair(c, s, seed=3, style_strength=0.6, preserve_color="stats")], output_type="pt"
    )
    assert torch.equal(pair.image, run)
    # mixed settings in one stream: pairs with other top-k/temperature run in their own batches
    mixed = list(
        pipe.stylize_pairs(
            [Pair(c, s, seed=3), Pair(c, s, seed=3, top_k=1), Pair(c, s, seed=3, temperature=0.5)],
            output_type="pt",
            batch_size=4,
        )
    )
    greedy = pipe(c, s, seed=3, top_k=1, output_type="pt").images[0]
    assert torch.equal(mixed[1].image, greedy) and not torch.equal(mixed[0].image, greedy)


def test_each_image_is_read_and_encoded_once_per_cache(pipe, pics, monkeypatch):
    """A style shared by every pair is read once and encoded once, across windows."""
    import stylevar.stylize.stream as P

    reads: list[str] = []
    real_load = P.load_image
    monkeypatch.setattr(P, "load_image", lambda p, **kw: reads.append(Path(p).name) or real_load(p, **kw))
    encoded: list[tuple[str, int]] = []
    real_encode = pipe._encode
    monkeypatch.setattr(
        pipe, "_encode", lambda b, role: encoded.append((role, b.shape[0])) or real_encode(b, role)
    )
    contents = pics["content"] * 3  # 9 pairs, 3 distinct contents, 1 style
    list(pipe.stylize_pairs([(c, pics["style"][0]) for c in contents], seed=0, batch_size=2, window=1))
    assert reads.count(pics["style"][0].name) == 1
    # one encoder call for the style; two for the 3 contents (windows of 2: c0 c1 | c2 c0 | c1 c2 | ...)
    assert [role for role, _ in encoded].count("style") == 1
    assert [role for role, _ in encoded].count("content") == 2
    assert all(n == 2 for _, n in encoded)  # a run of >= 1 batch encodes in full (padded) batches
    # a cache of one entry still works (the window's own images are never evicted), it just re-reads
    reads.clear()
    list(
        pipe.stylize_pairs(
            [(c, pics["style"][0]) for c in contents], seed=0, batch_size=2, window=1, cache_size=1
        )
    )
    assert len(reads) > 4


def test_bad_inputs_skip_or_fail(pipe, pics, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0garbage")
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(pics["content"][0].read_bytes()[:200])
    pairs = [(pics["content"][0], pics["style"][0]), (broken, pics["style"][0]),
             (pics["content"][1], trunc), (pics["content"][2], pics["style"][1])]  # fmt: skip
    got = list(pipe.stylize_pairs(pairs, seed=1, on_bad_file="skip", batch_size=2, output_type="pt"))
    assert [r.ok for r in got] == [True, False, False, True]
    assert "broken.jpg" in got[1].error and "trunc.png" in got[2].error
    assert [r.seed for r in got] == [1, 2, 3, 4]  # the good pairs keep their seeds
    # alone, in a batch padded to the same size: the same image (unpadded, a batch of 1 rounds differently)
    (want,) = pipe.stylize_pairs(
        [Pair(pics["content"][2], pics["style"][1], seed=4)], batch_size=2, pad_batches=True, output_type="pt"
    )
    assert torch.equal(got[3].image, want.image)
    with pytest.raises(ImageError, match="broken.jpg"):
        list(pipe.stylize_pairs(pairs, seed=1))
    with pytest.raises(ConfigError, match="on_bad_file"):
        list(pipe.stylize_pairs(pairs, on_bad_file="ignore"))


def test_skip_decides_without_reading(pipe, pics, tmp_path):
    missing = tmp_path / "gone.png"  # would fail if it were read
    seen = []
    got = list(
        pipe.stylize_pairs(
            [(missing, pics["style"][0]), (pics["content"][0], pics["style"][0])],
            seed=9,
            skip=lambda i, pair, k: seen.append(i) or i == 0,
            output_type="pt",
        )
    )
    assert seen == [0, 1] and [(r.index, r.seed) for r in got] == [(1, 10)]


def test_blend_pairs_match_style_weights(pipe, pics):
    c, (s0, s1) = pics["content"][0], pics["style"]
    want = pipe(c, [s0, s1], style_weights=[3, 1], seed=2, output_type="pt").images[0]
    (got,) = pipe.stylize_pairs([Pair(c, Blend((s0, s1), (3.0, 1.0)))], seed=2, output_type="pt")
    assert torch.equal(got.image, want)


# ---------------------------------------------------------------------------------- the command line
def test_folder_manifest_and_api_make_the_same_images(pics, ours_dir, tmp_path, capsys):
    """The seed of a folder run's image, given in a manifest or to the API, makes the same file."""
    from stylevar.stylize.pipeline import StyleVARPipeline

    ck = ["--checkpoint", str(ours_dir), "--device", "cpu", "-q"]
    folder_out = tmp_path / "folder"
    c_dir, s_dir = pics["content"][0].parent, pics["style"][0].parent
    assert (
        main(
            [
                "stylize",
                str(c_dir),
                str(s_dir),
                "-o",
                str(folder_out),
                "--seed",
                "100",
                "--batch-size",
                "4",
                *ck,
            ]
        )
        == 0
    )
    assert "6 written, 0 skipped (unreadable input)" in capsys.readouterr().out
    log = [json.loads(line) for line in (folder_out / "stylevar_runs.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in log] == list(range(100, 106))
    # the manifest, in another order, each row with its seed and an output name in a sub-folder
    manifest = tmp_path / "pairs.csv"
    rows = ["content,style,seed,output"] + [
        f"{r['content']},{r['style']},{r['seed']},m/{Path(r['output']).stem}" for r in reversed(log)
    ]
    manifest.write_text("\n".join(rows) + "\n")
    man_out = tmp_path / "manifest"
    assert main(["stylize", "--pairs", str(manifest), "-o", str(man_out), "--batch-size", "4", *ck]) == 0
    pipe = StyleVARPipeline.from_pretrained(str(ours_dir), device="cpu")
    for r in log:
        a = Path(r["output"])
        b = man_out / "m" / a.name
        assert a.read_bytes() == b.read_bytes(), a.name
        one = [Pair(r["content"], r["style"], seed=r["seed"])]  # alone, in a batch padded to the run's size
        (api,) = pipe.stylize_pairs(one, batch_size=4, pad_batches=True)
        assert np.array_equal(np.asarray(api.image, dtype=np.int16), _arr(a)), a.name


def test_mixed_folder_skip_mode_counts_and_lists_bad_files(pics, ours_dir, tmp_path, capsys):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for p in pics["content"][:2]:
        (mixed / p.name).write_bytes(p.read_bytes())
    (mixed / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    (mixed / "empty.png").write_bytes(b"")
    (mixed / "notes.txt").write_text("not an image, not bad: ignored")
    (mixed / "meta.json").write_text("{}")
    (mixed / ".hidden.png").write_bytes(b"junk")
    out = tmp_path / "out"
    ck = ["--checkpoint", str(ours_dir), "--device", "cpu", "--seed", "0", "-q"]
    args = ["stylize", str(mixed), str(pics["style"][0]), "-o", str(out), *ck]
    assert main(args + ["--on-bad-file", "skip"]) == 3
    printed = capsys.readouterr().out
    assert "2 written, 2 skipped (unreadable input)" in printed and "skipped.jsonl" in printed
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert sorted(Path(r["content"]).name for r in skipped) == ["broken.jpg", "empty.png"]
    assert all(r["error"] and "\n" not in r["error"] for r in skipped)
    assert sorted(p.name for p in out.glob("*.png")) == ["c0__s0.png", "c1__s0.png"]
    # fail (the default) stops at the first bad file with one line naming it
    assert main(["stylize", str(mixed), str(pics["style"][0]), "-o", str(tmp_path / "out2"), *ck]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("stylevar: error: ") and "broken.jpg" in err and "\n" not in err
    # resume: the finished images are not read again (even when their input has gone bad since)
    (mixed / pics["content"][0].name).write_bytes(b"now broken")
    assert main(args + ["--on-bad-file", "skip", "--skip-existing"]) == 3
    printed = capsys.readouterr().out
    assert "0 written, 2 skipped (unreadable input), 2 already there" in printed


def test_manifest_with_recursive_names_and_duplicate_outputs(pics, ours_dir, tmp_path, capsys):
    tree = tmp_path / "tree"
    for i, p in enumerate(pics["content"][:2]):
        (tree / f"album{i}").mkdir(parents=True)
        (tree / f"album{i}" / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    ck = ["--checkpoint", str(ours_dir), "--device", "cpu", "--seed", "5", "-q"]
    assert main(["stylize", str(tree), str(pics["style"][0]), "-o", str(out), "--recursive", *ck]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "album0/c0__s0.png",
        "album1/c1__s0.png",
    ]
    dup = tmp_path / "dup.csv"
    dup.write_text(
        f"content,style,output\n{pics['content'][0]},{pics['style'][0]},x\n{pics['content'][1]},{pics['style'][0]},x\n"
    )
    assert main(["stylize", "--pairs", str(dup), "-o", str(tmp_path / "d"), *ck]) == 1
    assert "dup.csv:3: output 'x' is already the output of" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # a usage error: exit 2, the subcommand's usage
        main(["stylize", str(pics["content"][0]), "--pairs", str(dup), "-o", str(tmp_path / "e"), *ck])
    assert e.value.code == 2 and "not both" in capsys.readouterr().err


def test_a_missing_or_empty_manifest_is_one_line(ours_dir, tmp_path, capsys):
    ck = ["--checkpoint", str(ours_dir), "--device", "cpu", "-q"]
    m = tmp_path / "m.csv"
    for text, fragment in [(None, "manifest not found"), ("content,style\n", "holds no pairs")]:
        if text is not None:
            m.write_text(text)
        assert main(["stylize", "--pairs", str(m), "-o", str(tmp_path / "out"), *ck]) == 1
        err = capsys.readouterr().err.strip()
        assert fragment in err and "\n" not in err, err
    with pytest.raises(SystemExit) as e:
        main(["stylize", "-o", str(tmp_path / "out"), *ck])
    assert e.value.code == 2 and "give CONTENT and STYLE" in capsys.readouterr().err
