"""The ``stylevar`` command: end to end on real files, folders and both checkpoint formats; one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import smooth_images
from stylevar.cli import main


def _write_pics(folder: Path, n: int, seed: int, sizes=((80, 60), (64, 64), (40, 70))) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        a = ((smooth_images(1, 96, seed + i)[0].permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)
        p = folder / f"pic{i}.{'png' if i % 2 == 0 else 'jpg'}"
        Image.fromarray(a).resize(sizes[i % len(sizes)]).save(p)
        out.append(p)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    return {
        "content": _write_pics(d / "content", 2, 100),
        "style": _write_pics(d / "style", 2, 200),
        "root": d,
    }


def _cli_script() -> list[str]:
    script = Path(sys.executable).parent / "stylevar"
    return [str(script)] if script.exists() else [sys.executable, "-m", "stylevar"]


@pytest.mark.slow
def test_stylize_one_pair_from_upstream_pth_via_the_installed_command(tmp_path, data, upstream_dir):
    out = tmp_path / "result.png"
    cmd = _cli_script() + [
        "stylize",
        str(data["content"][0]),
        str(data["style"][1]),
        "-o",
        str(out),
        "--checkpoint",
        str(upstream_dir / "StyleVAR-GRPO.pth"),
        "--seed",
        "7",
        "--grid",
        "--device",
        "cpu",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
    ]
    r = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert Image.open(out).size == (64, 64)
    grid = Image.open(tmp_path / "result_grid.png")
    assert grid.size == (3 * 66 + 2, 66 + 2)
    assert "seed 7" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.png", "result_grid.png"]


def test_folders_every_pair_our_format_and_resume(tmp_path, data, ours_dir, capsys):
    out = tmp_path / "out"
    args = [
        "stylize",
        str(data["content"][0].parent),
        str(data["style"][0].parent),
        "-o",
        str(out),
        "--checkpoint",
        str(ours_dir),
        "--num-samples",
        "2",
        "--batch-size",
        "3",
        "--seed",
        "11",
        "-q",
    ]
    assert main(args) == 0
    names = sorted(p.name for p in out.iterdir())
    want = sorted(f"pic{c}__pic{s}__{k}.png" for c in range(2) for s in range(2) for k in range(2))
    assert names == sorted(want + ["stylevar_runs.jsonl"])
    log = [json.loads(line) for line in (out / "stylevar_runs.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in log] == list(range(11, 19))
    assert "8 written, 0 skipped (unreadable input)" in capsys.readouterr().out

    victim = out / "pic1__pic0__1.png"
    kept = np.asarray(Image.open(victim))
    victim.unlink()
    assert main(args + ["--skip-existing"]) == 0
    printed = capsys.readouterr().out
    assert "1 written, 0 skipped (unreadable input), 7 already there" in printed
    # same seed, same image, to the byte: the resumed run computes it in a batch of the same size
    assert np.array_equal(np.asarray(Image.open(victim)), kept)


def test_keep_size_squash_and_jpeg(tmp_path, data, ours_dir):
    out = tmp_path / "r.jpg"
    assert (
        main(
            [
                "stylize",
                str(data["content"][0]),
                str(data["style"][0]),
                "-o",
                str(out),
                "--checkpoint",
                str(ours_dir),
                "--fit",
                "squash",
                "--keep-size",
                "--seed",
                "0",
                "-q",
            ]
        )
        == 0
    )
    assert Image.open(out).size == Image.open(data["content"][0]).size == (80, 60)


def test_fast_path_options_match_the_python_pipeline(tmp_path, data, ours_dir):
    """--dtype bf16 --cuda-graphs (the static path runs eagerly on the CPU) writes what the pipeline gives."""
    from stylevar.pipeline import StyleVARPipeline

    out = tmp_path / "fast.png"
    c, s = str(data["content"][0]), str(data["style"][0])
    args = ["stylize", c, s, "-o", str(out), "--checkpoint", str(ours_dir), "--seed", "3", "-q"]
    assert main([*args, "--dtype", "bf16", "--cuda-graphs"]) == 0
    pipe = StyleVARPipeline.from_pretrained(str(ours_dir), device="cpu")
    want = pipe(c, s, seed=3, dtype="bf16", cuda_graphs=True, output_type="pt").images[0]
    got = torch.from_numpy(np.asarray(Image.open(out), dtype=np.float32) / 255).permute(2, 0, 1)
    assert (got - want).abs().max() <= 1 / 255 + 1e-6


def _bad(tmp_path, args, capsys):
    out = tmp_path / "outdir"
    code = main(["stylize", *args[:2], "-o", str(out), *args[2:], "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    assert err.startswith("stylevar: error: ") and "\n" not in err, err
    assert not out.exists() or not any(out.iterdir()), "nothing may be written on a user error"
    return err


def test_every_bad_input_gets_one_line(tmp_path, data, ours_dir, upstream_dir, capsys):
    c, s = str(data["content"][0]), str(data["style"][0])
    ck = ["--checkpoint", str(ours_dir)]
    notimg = tmp_path / "notes.png"
    notimg.write_text("not an image")
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (8, 8)).save(tiny)
    badfolder = tmp_path / "badfolder"
    badfolder.mkdir()
    Image.open(data["content"][0]).save(badfolder / "a.png")
    (badfolder / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    emptyfolder = tmp_path / "empty"
    emptyfolder.mkdir()
    (emptyfolder / "readme.txt").write_text("x")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save(
        {
            "model": torch.load(upstream_dir / "StyleVAR-GRPO.pth")["model"],
            "args": __import__("argparse").Namespace(a=1),
        },
        pickled / "StyleVAR-GRPO.pth",
    )
    (pickled / "vae_ch160v4096z32.pth").write_bytes((upstream_dir / "vae_ch160v4096z32.pth").read_bytes())
    cases = [
        ([str(tmp_path / "missing.png"), s, *ck], "content path not found"),
        ([str(notimg), s, *ck], "not an image file"),
        ([c, str(tiny), *ck], "smaller than"),
        ([str(badfolder), s, *ck], "b.jpg"),
        ([str(emptyfolder), s, *ck], "has no image files"),
        (
            [c, s, "--checkpoint", str(upstream_dir / "vae_ch160v4096z32.pth")],
            "VQ-VAE (tokenizer) checkpoint",
        ),
        ([c, s, "--checkpoint", str(tmp_path / "nothing_here")], "not found"),
        ([c, s, "--checkpoint", str(pickled)], "--trust-checkpoint"),
        ([c, s, *ck, "--alpha", "0.1,0.2"], "alpha needs one value per scale"),
        ([c, s, *ck, "--top-p", "2"], "top_p"),
    ]
    if not torch.cuda.is_available():
        cases.append(([c, s, *ck, "--device", "cuda"], "CUDA is not available"))
    for args, fragment in cases:
        err = _bad(tmp_path, args, capsys)
        assert fragment in err, (args, err)
    # a file name for many outputs
    code = main(["stylize", str(data["content"][0].parent), s, "-o", str(tmp_path / "one.png"), *ck, "-q"])
    assert code == 1 and "give a folder" in capsys.readouterr().err
    # trusted pickled file works
    assert (
        main(
            [
                "stylize",
                c,
                s,
                "-o",
                str(tmp_path / "ok.png"),
                "--checkpoint",
                str(pickled),
                "--trust-checkpoint",
                "-q",
            ]
        )
        == 0
    )


def test_convert_then_info(tmp_path, upstream_dir, capsys):
    out = tmp_path / "converted"
    assert (
        main(["convert", str(upstream_dir / "StyleVAR-GRPO.pth"), "-o", str(out), "--dtype", "bfloat16"]) == 0
    )
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "vqvae.safetensors"]
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["stylevar"]["patch_nums"] == [1, 2, 3, 4] and info["resolution"] == 64
    assert info["stylevar"]["alpha"] == [0.2, 0.4, 0.6, 0.8] and info["info"]["variant"] == "grpo"


def test_offline_hub_default_gives_a_clear_error(tmp_path, data, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = _bad(
        tmp_path,
        [str(data["content"][0]), str(data["style"][0]), "--cache-dir", str(tmp_path / "emptycache")],
        capsys,
    )
    assert "Senfier-LiqiJing/StyleVAR" in err and "offline" in err


def test_only_inference_commands_change_the_allocator(tmp_path, monkeypatch, capsys):
    """glibc's 1 MiB mmap threshold is for inference; the training commands keep the default policy
    (page faults on every step's activations made training 1.57x slower)."""
    import stylevar.cli as cli

    calls = []
    monkeypatch.setattr(cli, "release_memory_promptly", lambda: calls.append(1))
    assert main(["info", str(tmp_path / "missing.pth")]) != 0 and calls == [1]
    assert main(["train-tokenizer", str(tmp_path / "no-images"), "-o", str(tmp_path / "tok")]) != 0
    assert main(["sft", str(tmp_path / "no-data"), "-o", str(tmp_path / "sft"), "--depth", "2"]) != 0
    assert calls == [1] and cli.TRAINING_COMMANDS >= {"demo", "train-tokenizer", "sft", "grpo"}
