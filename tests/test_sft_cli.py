"""``stylevar sft`` end to end on generated data: every start (VAR, our checkpoint, scratch), resume and its
refusal, bad files (fail vs skip), and a real 2-process ``torchrun`` launch with ``--fsdp``."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_var_init import _var_state_dict

from helpers import tiny_configs, tiny_models, torchrun_env
from stylevar.cli import main
from stylevar.config import alpha_for_scales
from stylevar.io import load_pretrained, save_pretrained

FAST = "--micro-batch 1 --grad-accum 1 --num-workers 0 --save-every 0 --lr 1e-3 -q".split()


def _png(path: Path, seed: int, size: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
    Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC).save(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An OmniStyle root (8 triplets), a CSV manifest (4), a VAR file, a VQ-VAE .pth, our checkpoint."""
    base = tmp_path_factory.mktemp("sft_cli")
    omni = base / "omni"
    for c in range(4):
        _png(omni / "content" / f"c{c}.png", c)
    for s in range(2):
        _png(omni / "style" / f"s{s}.jpg.png", 100 + s, size=80)  # another size: resized by the transform
    for c in range(4):
        for s in range(2):
            _png(omni / "target" / f"c{c}.png&&s{s}.jpg.png.png", 200 + 10 * c + s)
    rows = []
    for i in range(4):
        rows.append(
            [_png(base / "pairs" / f"{role}{i}.png", 300 + 10 * i + k) for k, role in enumerate("cst")]
        )
    manifest = base / "pairs" / "manifest.csv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["content", "style", "target"])
        w.writerows([[p.name for p in r] for r in rows])
    scfg, _ = tiny_configs(depth=2, num_heads=2)
    torch.save(_var_state_dict(scfg), base / "var_d2.pth")
    model, vae = tiny_models(tag="cli", depth=2, num_heads=2)
    torch.save(vae.state_dict(), base / "vae.pth")  # upstream's VQ-VAE wrapping: a plain state dict
    save_pretrained(base / "ours", model, vae)
    return {"omni": omni, "manifest": manifest, "base": base}


def _sft(files, run: Path, *extra: str) -> int:
    return main(
        [
            "sft",
            str(files["omni"]),
            str(files["manifest"]),
            "-o",
            str(run),
            "--val-fraction",
            "0.1",
            *FAST,
            *extra,
        ]
    )


def _moved(before: dict, after: dict) -> int:
    return sum(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())


def test_from_var_then_resume_and_its_refusal(files, tmp_path, capsys):
    run = tmp_path / "run"
    start = ["--init-var", str(files["base"] / "var_d2.pth"), "--vae", str(files["base"] / "vae.pth")]
    assert _sft(files, run, *start, "--max-steps", "1", "--alpha-jitter", "0.1") == 0
    out = capsys.readouterr().out
    assert "initialised from VAR var_d2.pth" in out and f"final model: {run / 'final'}" in out
    assert "12 triplets, all files readable; 10 train, 2 validation" in out
    split = json.loads((run / "split.json").read_text())
    assert len(split["train"]) == 10 and len(split["val"]) == 2 and split["seed"] == 42
    args = json.loads((run / "sft_args.json").read_text())
    assert args["global_batch"] == 1 and args["sft"]["alpha_jitter"] == 0.1 and args["parallel"] == "none"
    assert args["stylevar"]["alpha"] == list(alpha_for_scales("sft", 4))  # new models: the SFT preset
    first = load_pretrained(run / "final")
    assert first.info["steps"] == 1 and first.model.config.depth == 2

    # an existing run is refused without --resume: one line naming the file and both ways out
    assert _sft(files, run, *start, "--max-steps", "2") == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "last.pt exists" in err and "--resume" in err and "-o RUN_DIR" in err

    # --resume continues at step 1 with the saved split (the data sources are not read again)
    (run / "split.json").write_text(json.dumps(dict(split, note="kept")))
    assert _sft(files, run, *start, "--max-steps", "2", "--resume") == 0
    out = capsys.readouterr().out
    assert "reusing" in out and "resumed" in out and "at step 1 of 2" in out
    assert json.loads((run / "split.json").read_text())["note"] == "kept"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").open()]
    assert steps[-1] == 2
    assert load_pretrained(run / "final").info["steps"] == 2


def test_from_scratch_and_one_line_user_errors(files, tmp_path, capsys):
    # from scratch: the VQ-VAE (here our checkpoint folder) gives vocabulary, width and scales
    ours = str(files["base"] / "ours")
    new = ("--depth", "1", "--vae", ours, "--encoder-dim", "32")
    assert _sft(files, tmp_path / "b", *new, "--max-steps", "1", "--content-residual", "--cache-tokens") == 0
    assert "new depth-1 model" in capsys.readouterr().out
    cfg = load_pretrained(tmp_path / "b" / "final").model.config
    assert (cfg.depth, cfg.embed_dim, cfg.patch_nums, cfg.vocab_size) == (1, 64, (1, 2, 3, 4), 64)
    assert cfg.style_enc_dim == 32 and cfg.content_residual
    assert json.loads((tmp_path / "b" / "sft_args.json").read_text())["sft"]["cache_tokens"] is True
    vae_pth = str(files["base"] / "vae.pth")
    for extra, needle in (
        (["--depth", "1"], "needs --vae"),
        (["--init-var", vae_pth, "--vae", vae_pth], "not a vanilla VAR"),
        (["--init", ours, "--resolution", "128"], "does not match the VQ-VAE's 64 px"),
        (["--init", ours, "--precision", "fp16", "--fsdp"], "fp16 is not supported with FSDP"),
        (["--init", ours, "--device", "cuda:99"], "cuda"),
        (["--init", ours, "--encoder-dim", "64"], "--init keeps its encoders"),
        (["--init", ours, "--content-residual"], "--init keeps its layout"),
        ([*new[:4], "--encoder-dim", "12"], "multiple of 8"),
    ):
        assert _sft(files, tmp_path / "err", *extra) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("stylevar: error:") and "\n" not in err and needle in err, err


def test_from_our_checkpoint_and_a_bad_file_fail_vs_skip(files, tmp_path, capsys):
    data = tmp_path / "omni"
    shutil.copytree(files["omni"], data)
    bad = data / "target" / "c1.png&&s0.jpg.png.png"
    bad.write_bytes(b"not an image")
    run = tmp_path / "run"
    cmd = ["sft", str(data), "-o", str(run), "--init", str(files["base"] / "ours"), *FAST, "--max-steps", "1"]
    assert main(cmd) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(bad) in err and "--on-bad-file skip" in err
    assert not (run / "checkpoints").exists()

    assert main(cmd + ["--on-bad-file", "skip"]) == 0
    out = capsys.readouterr().out
    assert "1 unusable" in out and "continuing from" in out
    split = json.loads((run / "split.json").read_text())
    assert split["validation"]["dropped"] == [bad.name] and len(split["train"]) + len(split["val"]) == 7
    ours, tuned = load_pretrained(files["base"] / "ours"), load_pretrained(run / "final")
    assert tuned.model.config.alpha == ours.model.config.alpha  # the checkpoint's own alpha
    assert _moved(ours.model.state_dict(), tuned.model.state_dict()) > 20
    emb = "quantize.embedding.weight"
    assert torch.equal(tuned.vae.state_dict()[emb], ours.vae.state_dict()[emb])  # the VQ-VAE stays frozen


@pytest.mark.slow
def test_torchrun_two_processes_with_fsdp(files, tmp_path):
    """The command under a real torchrun (gloo, CPU): it creates the process group, only rank 0 prints."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    run = tmp_path / "run"
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", "29563", "-m", "stylevar", "sft"]
    cmd += [str(files["omni"]), "-o", str(run), "--init", str(files["base"] / "ours"), "--fsdp"]
    cmd += ["--max-steps", "2", "--val-fraction", "0.2", "--val-every", "1", *FAST]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=torchrun_env())
    assert res.returncode == 0, res.stderr[-8000:]
    assert res.stdout.count("final model:") == 1 and "with FSDP" in res.stdout, res.stdout
    args = json.loads((run / "sft_args.json").read_text())
    assert args["world_size"] == 2 and args["parallel"] == "fsdp" and args["global_batch"] == 2
    tuned = load_pretrained(run / "final")
    assert tuned.info["steps"] == 2
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").open() if "val_loss" in line] == [
        1,
        2,
    ]
    assert (run / "checkpoints" / "best.pt").exists()  # saving inside the loop gathers on every rank
    assert _moved(load_pretrained(files["base"] / "ours").model.state_dict(), tuned.model.state_dict()) > 20
