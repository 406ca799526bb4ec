"""What crosses the boundary of a stylization run is checked once, before any work: the settings object,
a manifest's rows, the output plan (collisions, outputs that are inputs), and what stops a run (a full or
read-only disk, SIGTERM, SIGHUP) leaves complete files and a summary with a resume hint.

The disk tests mount real tmpfs file systems (a full one, a read-only one); they need root (CI runs as
root) and are skipped with the reason elsewhere. The signal tests run the real ``stylevar`` command.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import write_smooth_pngs
from stylevar.cli import main
from stylevar.config import Sampling
from stylevar.errors import ConfigError
from stylevar.stylize.pairs import Pair, read_manifest
from stylevar.stylize.settings import Leakage, Output, RunPolicy, StylizeSettings


@pytest.fixture(scope="module")
def pics(tmp_path_factory):
    root = tmp_path_factory.mktemp("bounds")
    contents = write_smooth_pngs(root / "contents", [(40, 40)] * 3, seed=300, stem="c")
    styles = write_smooth_pngs(root / "styles", [(40, 40)] * 2, seed=310, stem="s")
    return {"content": contents, "style": styles, "root": root}


def _ck(ours_dir) -> list[str]:
    return ["--checkpoint", str(ours_dir), "--device", "cpu", "-q"]


def _no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".tmp-" in p.name or ".partial-" in p.name]


# ---------------------------------------------------------------------------------- the settings object
@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(temperature=0), "temperature must be > 0"),
        (dict(top_p=5), r"top_p must lie in \[0, 1\], got 5"),
        (dict(top_k=-1), "top_k must be >= 0"),
        (dict(top_k=2.5), "top_k must be an integer"),
        (dict(top_k=True), "top_k must be an integer"),
        (dict(style_strength=math.nan), "style_strength must be a finite number"),
        (dict(temperature=math.inf), "temperature must be a finite number"),
        (dict(seed=2**70), r"seed must be in \[0, 9223372036854775807\]"),
        (dict(seed=-1), "seed must be in"),
        (dict(dtype="fp64"), "dtype must be one of fp32, bf16, fp16, int8"),
        (dict(alpha="paper"), "alpha must be a list"),
        (dict(alpha=[0.2, 1.5]), r"alpha must lie in \[0, 1\]"),
        (dict(cuda_graphs=True, legacy_kv_cache=True), "drop legacy_kv_cache"),
    ],
)
def test_sampling_refuses_bad_values_in_one_line(kw, message):
    with pytest.raises(ConfigError, match=message) as e:
        Sampling(**kw)
    assert "\n" not in str(e.value)


def test_settings_parts_validate_and_round_trip():
    assert Sampling(dtype="bfloat16").dtype == "bf16" and Sampling(seed=3.0).seed == 3
    with pytest.raises(ConfigError, match="fit must be one of crop, squash"):
        Output(fit="stretch")
    with pytest.raises(ConfigError, match="num_samples must be in"):
        RunPolicy(num_samples=0)
    with pytest.raises(ConfigError, match="subtract needs the style image's salient region"):
        Leakage(subtract=0.5)
    s = StylizeSettings().with_(top_k=1, seed=7, keep_size=True, mask="m.png", regions=[("a.png", "b.png")])
    assert s.sampling.top_k == 1 and s.output.keep_size and s.regions.regions == (("a.png", "b.png"),)
    again = StylizeSettings.from_dict(json.loads(json.dumps(s.to_dict())))  # what a Ray task carries
    assert again == s
    with pytest.raises(ConfigError, match="unknown setting 'tmperature'; did you mean 'temperature'"):
        s.with_(tmperature=1.0)
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        s.with_(temperature=0)
    assert s.with_(top_k=None) is s  # None: not given


def test_pair_settings_are_checked_like_the_runs():
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        Pair("a.png", "b.png", temperature=0)
    with pytest.raises(ConfigError, match="pairs.csv:3: top_p must lie in"):
        Pair("a.png", "b.png", top_p=5, source="pairs.csv:3")
    assert Pair("a.png", "b.png", top_k=4.0).top_k == 4


def test_pipeline_keywords_and_settings_object_make_the_same_images(pipe, pics):
    keywords = dict(seed=5, top_k=4, num_samples=2, keep_size=True)
    a = pipe(pics["content"][0], pics["style"][0], **keywords)
    b = pipe(pics["content"][0], pics["style"][0], pipe.settings(**keywords))
    assert a.seeds == b.seeds == [5, 6]
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a.images, b.images))
    with pytest.raises(ConfigError, match="unknown setting 'samples'"):
        pipe(pics["content"][0], pics["style"][0], samples=2)


# ---------------------------------------------------------------------------------- manifests
BAD_ROWS = [
    ("temperature", "0", "temperature must be > 0"),
    ("top_p", "5", "top_p must lie in"),
    ("style_strength", "nan", "style_strength must be a finite number"),
    ("seed", str(2**70), "seed must be in"),
]


@pytest.mark.parametrize("column, value, message", BAD_ROWS, ids=[r[0] for r in BAD_ROWS])
def test_a_bad_manifest_row_is_refused_before_anything_is_made(
    pics, ours_dir, tmp_path, capsys, column, value, message
):
    c, s = pics["content"], pics["style"][0]
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(f"content,style,{column}\n{c[0]},{s},\n{c[1]},{s},\n{c[2]},{s},{value}\n")
    out = tmp_path / "out"
    assert main(["stylize", "--pairs", str(manifest), "-o", str(out), *_ck(ours_dir)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"stylevar: error: {manifest}:4: ") and message in err and "\n" not in err
    assert not out.exists() or not list(out.glob("*.png"))  # nothing generated before the refusal
    # skip: the good rows are made, the bad one is listed with its reason, exit 3
    assert (
        main(["stylize", "--pairs", str(manifest), "-o", str(out), "--on-bad-file", "skip", *_ck(ours_dir)])
        == 3
    )
    assert len(list(out.glob("*.png"))) == 2
    (row,) = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert row["source"] == f"{manifest}:4" and message in row["error"]


def test_manifest_reader_names_the_file_for_encoding_json_and_names(tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("content,style\nbild_\xe4.png,s.png\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin.csv: not UTF-8 text .*save the manifest as UTF-8"):
        list(read_manifest(latin))
    nested = tmp_path / "deep.jsonl"
    nested.write_text('{"content": "a.png", "style": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(ConfigError, match=r"deep.jsonl:1: "):
        list(read_manifest(nested))
    nul = tmp_path / "nul.jsonl"
    nul.write_text(json.dumps({"content": "a.png", "style": "b.png", "output": "x\u0000y"}) + "\n")
    with pytest.raises(ConfigError, match=r"nul.jsonl:1: output name .* holds a control character"):
        list(read_manifest(nul))
    typed = tmp_path / "typed.jsonl"
    typed.write_text(json.dumps({"content": "a.png", "style": "b.png", "top_k": True}) + "\n")
    with pytest.raises(ConfigError, match=r"typed.jsonl:1: top_k must be an integer, got True"):
        list(read_manifest(typed))
    with pytest.raises(ConfigError, match="is a folder"):
        list(read_manifest(tmp_path))


def test_output_plan_is_checked_before_generating(pics, ours_dir, tmp_path, capsys):
    c, s = pics["content"], pics["style"][0]
    out = tmp_path / "out"
    # an explicit output named like another row's automatic name
    manifest = tmp_path / "clash.csv"
    manifest.write_text(f"content,style,output\n{c[0]},{s},\n{c[1]},{s},000000__c0__s0\n")
    assert main(["stylize", "--pairs", str(manifest), "-o", str(out), *_ck(ours_dir)]) == 1
    err = capsys.readouterr().err
    assert "clash.csv:3: output" in err and "is already the output of" in err and "clash.csv:2" in err
    assert not out.exists()
    # a 300-character output name fails before generating, not after
    long = tmp_path / "long.csv"
    long.write_text(f"content,style,output\n{c[0]},{s},{'n' * 300}\n")
    assert main(["stylize", "--pairs", str(long), "-o", str(out), *_ck(ours_dir)]) == 1
    assert "longer than 200 bytes" in capsys.readouterr().err and not out.exists()


def test_outputs_never_replace_inputs(pics, ours_dir, tmp_path, capsys):
    content = tmp_path / "photo.png"
    content.write_bytes(pics["content"][0].read_bytes())
    before = content.read_bytes()
    assert main(["stylize", str(content), str(pics["style"][0]), "-o", str(content), *_ck(ours_dir)]) == 1
    assert "is an input of this run" in capsys.readouterr().err and content.read_bytes() == before
    link = tmp_path / "link.png"
    link.symlink_to(content)
    assert main(["stylize", str(content), str(pics["style"][0]), "-o", str(link), *_ck(ours_dir)]) == 1
    assert "is an input of this run" in capsys.readouterr().err and content.read_bytes() == before
    # a manifest whose output lands on one of its inputs
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "a.png").write_bytes(before)
    manifest = tmp_path / "over.csv"
    manifest.write_text(f"content,style,output\n{folder / 'a.png'},{pics['style'][0]},a\n")
    assert main(["stylize", "--pairs", str(manifest), "-o", str(folder), *_ck(ours_dir)]) == 1
    assert "is an input of this run" in capsys.readouterr().err and (folder / "a.png").read_bytes() == before


def test_paths_say_what_is_wrong(pics, ours_dir, tmp_path, capsys):
    c, s = str(pics["content"][0]), str(pics["style"][0])
    assert main(["stylize", c, s, "-o", str(tmp_path / "result.txt"), *_ck(ours_dir)]) == 1
    assert ".txt is not an image type" in capsys.readouterr().err
    assert not (tmp_path / "result.txt").exists()
    assert (
        main(["stylize", c, s, "-o", str(tmp_path / "r.png"), "--mask", str(tmp_path), *_ck(ours_dir)]) == 1
    )
    assert f"--mask {tmp_path} is a folder" in capsys.readouterr().err
    assert (
        main(
            ["stylize", c, s, "-o", str(tmp_path / "r.png"), "--seed", "99999999999999999999", *_ck(ours_dir)]
        )
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("stylevar: error: seed must be in") and "\n" not in err


# ---------------------------------------------------------------------------------- what stops a run
def _mount_tmpfs(where: Path, options: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True
        ).returncode
        == 0
    )


def _umount(where: Path) -> None:
    if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
        subprocess.run(
            ["umount", "-l", str(where)], capture_output=True
        )  # busy: detach it now, free it later


@pytest.fixture
def full_disk(tmp_path):
    mnt = tmp_path / "full"
    if not _mount_tmpfs(mnt, "size=256k"):
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    yield mnt
    _umount(mnt)


@pytest.fixture
def read_only_disk(tmp_path):
    mnt = tmp_path / "ro"
    if not _mount_tmpfs(mnt, "size=64k,ro"):
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    yield mnt
    _umount(mnt)


def test_a_full_disk_stops_with_a_summary_and_a_resume_hint(pics, ours_dir, full_disk, capsys):
    # leave room for a few of the images (each a few kB), not for all 6
    (full_disk / "filler").write_bytes(b"\0" * (256 * 1024 - 12 * 1024))
    out = full_disk / "out"
    c_dir, s_dir = pics["content"][0].parent, pics["style"][0].parent
    rc = main(
        [
            "stylize",
            str(c_dir),
            str(s_dir),
            "-o",
            str(out),
            "--seed",
            "0",
            "--batch-size",
            "1",
            *_ck(ours_dir),
        ]
    )
    printed = capsys.readouterr()
    err, out_text = printed.err, printed.out
    assert rc == 1
    assert "cannot write" in err and "the disk is full" in err and len(err.strip().splitlines()) == 1
    assert "stopped by an error after" in out_text and "--skip-existing" in out_text
    assert _no_temporaries(full_disk)
    written = list(out.glob("*.png"))
    assert all(p.stat().st_size > 0 for p in written)  # complete files only
    # the disk freed, --skip-existing makes the rest
    (full_disk / "filler").unlink()
    rc = main(
        ["stylize", str(c_dir), str(s_dir), "-o", str(out), "--seed", "0", "--skip-existing", *_ck(ours_dir)]
    )
    assert rc == 0 and len(list(out.glob("*.png"))) == 6
    assert f"{len(written)} already there" in capsys.readouterr().out


def test_a_read_only_output_folder_is_one_line(pics, ours_dir, read_only_disk, capsys):
    rc = main(
        [
            "stylize",
            str(pics["content"][0]),
            str(pics["style"][0]),
            "-o",
            str(read_only_disk / "r.png"),
            *_ck(ours_dir),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "the file system is read-only" in err and "Traceback" not in err


def test_stale_temporaries_of_a_killed_run_are_removed(pics, ours_dir, tmp_path):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [out / f".c0__s0.png.tmp-{dead.pid}-0badcafe", out / "sub" / f".x.png.tmp-{dead.pid}-12345678"]
    for p in stale:
        p.write_bytes(b"half")
    mine = out / f".y.png.tmp-{os.getpid()}-abcdef01"  # a live process's file is left alone
    mine.write_bytes(b"in progress")
    c_dir, s_dir = pics["content"][0].parent, pics["style"][0].parent
    assert main(["stylize", str(c_dir), str(s_dir), "-o", str(out), "--seed", "0", *_ck(ours_dir)]) == 0
    assert not any(p.exists() for p in stale) and mine.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)], ids=["SIGTERM", "SIGHUP"]
)
def test_stop_signals_end_the_run_like_ctrl_c(pics, ours_dir, tmp_path, sig, code):
    """The real command, stopped by a signal once its first image exists: the conventional exit code, the
    summary with the resume hint, no temporary file left."""
    out = tmp_path / "out"
    c_dir, s_dir = pics["content"][0].parent, pics["style"][0].parent
    cmd = [sys.executable, "-m", "stylevar", "stylize", str(c_dir), str(s_dir), "-o", str(out)]
    cmd += ["--seed", "0", "--batch-size", "1", "--num-samples", "40", *_ck(ours_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(out.glob("*.png")) and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "interrupted:" in err and "written" in err and "--skip-existing" in err
    assert f"stopped by {signal.Signals(sig).name}" in err and "Traceback" not in err
    assert _no_temporaries(out)
