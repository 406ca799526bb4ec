"""What a new user meets first: files that behave like files, one-line refusals, messages that say what
to do, and failures that come before any work (not after it)."""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import smooth_images
from stylevar.cli import main
from stylevar.data.synthetic import make_synthetic
from stylevar.files import atomic_write_json
from stylevar.images import save_image_atomic
from stylevar.io import atomic_save, save_pretrained


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _pic(path: Path, size: int, seed: int = 0) -> Path:
    a = ((smooth_images(1, 96, seed)[0].permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).resize((size, size)).save(path)
    return path


def test_outputs_follow_the_umask(tmp_path, tiny, ours_dir, umask_022, capsys):
    """Everything written atomically gets 0644 files and 0755 folders under umask 022 (not the 0600/0700
    of a temporary file), in the library and through the command line."""
    written = [
        save_image_atomic(Image.new("RGB", (8, 8)), tmp_path / "a" / "img.png"),
        atomic_save({"x": torch.zeros(1)}, tmp_path / "b" / "ck.pt"),
        atomic_write_json(tmp_path / "c.json", {"a": 1}),
    ]
    folder = save_pretrained(tmp_path / "ckpt", *tiny)
    written += sorted(folder.iterdir())
    assert {p.name: _mode(p) for p in written} == {p.name: 0o644 for p in written}
    assert _mode(folder) == 0o755 and _mode(tmp_path / "a") == 0o755
    c, s = _pic(tmp_path / "in" / "c.png", 64, 1), _pic(tmp_path / "in" / "s.png", 64, 2)
    out = tmp_path / "out"
    assert main(["stylize", str(c), str(s), "-o", str(out), "--checkpoint", str(ours_dir), "--device", "cpu",
                 "--grid", "-q", "--seed", "0"]) == 0  # fmt: skip
    assert _mode(out) == 0o755 and {p.name: _mode(p) for p in out.iterdir()} == {
        "c__s.png": 0o644,
        "grid.png": 0o644,
        "stylevar_runs.jsonl": 0o644,
    }
    old = os.umask(0o077)  # a private umask is honoured too
    try:
        p = save_image_atomic(Image.new("RGB", (8, 8)), tmp_path / "private" / "img.png")
        assert _mode(p) == 0o600 and _mode(p.parent) == 0o700
    finally:
        os.umask(old)


def test_a_refused_pickled_checkpoint_is_exactly_one_line(tmp_path, upstream_dir):
    """torch warns about files pickled with protocol 4; the refusal must still be the only line."""
    model_sd = torch.load(upstream_dir / "StyleVAR-GRPO.pth", weights_only=True)["model"]
    bad = tmp_path / "StyleVAR-GRPO.pth"
    torch.save({"model": model_sd, "args": argparse.Namespace(a=1)}, bad, pickle_protocol=4)
    res = subprocess.run([sys.executable, "-m", "stylevar", "info", str(bad), "--vae",
                          str(upstream_dir / "vae_ch160v4096z32.pth")], capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "--trust-checkpoint" in res.stderr, res.stderr


def test_a_training_run_folder_as_checkpoint_points_to_its_final_model(tmp_path, ours_dir, capsys):
    run = tmp_path / "runs" / "sft"
    (run / "checkpoints").mkdir(parents=True)
    import shutil

    shutil.copytree(ours_dir, run / "final")
    for folder in (run, run.parent):  # the run, and a folder of runs (the demo's)
        assert main(["info", str(folder)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.endswith(f"did you mean {run / 'final'} (the run's finished model)?") and "\n" not in err
    unfinished = tmp_path / "stopped"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "checkpoints" / "last.pt").write_bytes(b"")
    assert main(["info", str(unfinished)]) == 1
    assert "has not finished" in capsys.readouterr().err


def test_a_small_model_says_its_resolution(tmp_path, ours_dir, capsys):
    big = _pic(tmp_path / "big.png", 200, 3)
    style = _pic(tmp_path / "style.png", 64, 4)
    args = [
        "stylize",
        str(big),
        str(style),
        "--checkpoint",
        str(ours_dir),
        "--device",
        "cpu",
        "-q",
        "--seed",
        "0",
    ]
    assert main([*args, "-o", str(tmp_path / "a.png")]) == 0
    err = capsys.readouterr().err
    assert "works at 64x64 px" in err and "--keep-size" in err and err.count("\n") == 1
    assert main([*args, "-o", str(tmp_path / "b.png"), "--keep-size"]) == 0  # asked for the size: no note
    assert capsys.readouterr().err == ""


def test_evaluate_finds_every_model_before_generating_anything(tmp_path, ours_dir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = make_synthetic(tmp_path / "omni", num_contents=3, num_styles=3, num_triplets=4, size=64, seed=1)
    out = tmp_path / "eval"
    # a two-part name reads as a Hub repo id (the grpo-ssim/final); a deeper one cannot be one
    for missing, says in (
        ("grpo-ssim/final", "is no local path"),
        ("runs/typo/final", "neither a local path"),
    ):
        code = main(["evaluate", "--output", str(out), "--model", f"A={ours_dir}", "--model", f"B={missing}",
                     "--paired", f"omni={data}", "-n", "2", "--metrics", "ssim", "--device", "cpu", "-q"])  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert code == 1 and "\n" not in err, err
        assert f"--model B={missing}" in err and says in err, err
        assert not out.exists()  # nothing written, no first model's images left behind


def test_a_folder_in_the_wrong_place_says_where_it_goes(tmp_path, tiny, ours_dir, capsys):
    from stylevar.io import save_vqvae

    tok = save_vqvae(tmp_path / "tokenizer" / "final", tiny[1])
    assert main(["info", str(tok)]) == 1
    err = capsys.readouterr().err.strip()
    assert "is a stylevar tokenizer folder: it goes to --vae" in err and "\n" not in err, err
    # a wrong --alpha is the caller's mistake, not the checkpoint file's
    assert main(["info", str(ours_dir), "--alpha", "0.1,0.2"]) == 1
    err = capsys.readouterr().err.strip()
    assert "config.json" not in err and "alpha needs one value per scale (4 for this model), got 2" in err, (
        err
    )
