"""Synthetic triplets: deterministic, in the OmniStyle layout, and the target really is the content in the style."""

from __future__ import annotations

import random
import types

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from stylevar.data import TripletDataset, TripletTransform, scan, split_triplets
from stylevar.data.synthetic import TEXTURES, make_synthetic, random_content, random_style, synthetic_triplet
from stylevar.errors import DataError
from stylevar.eval import mean_abs_error, psnr, ssim


def _arr(img) -> np.ndarray:
    return np.asarray(img, dtype=np.float32) / 255


def test_triplet_is_a_pure_function_of_ids_and_seed():
    a, b = synthetic_triplet(3, 5, seed=1), synthetic_triplet(3, 5, seed=1)
    for x, y in ((a.content, b.content), (a.style, b.style), (a.target, b.target)):
        assert np.array_equal(_arr(x), _arr(y))
    c = synthetic_triplet(3, 6, seed=1)  # same content, another style
    assert np.array_equal(_arr(a.content), _arr(c.content)) and not np.array_equal(
        _arr(a.target), _arr(c.target)
    )
    assert a.target.size == (64, 64) and a.target.mode == "RGB"


@pytest.mark.parametrize("texture", TEXTURES)
def test_target_keeps_structure_and_takes_the_palette(texture):
    size = 64
    _, mask = random_content(random.Random("c"), size)
    spec = random_style(random.Random("s"))
    spec = type(spec)(spec.background, spec.foreground, texture, 8, 0.5)
    out = spec.paint(mask)
    t = spec.texture_map(size)
    # wherever the texture is off, the pixel is exactly the palette colour of its region
    plain = t == 0
    assert np.allclose(out[mask & plain], spec.foreground) and np.allclose(
        out[~mask & plain], spec.background
    )
    # the foreground and background differ clearly, so the silhouette is recoverable from the target alone
    fg_l = out[mask].mean(0) @ [0.299, 0.587, 0.114]
    bg_l = out[~mask].mean(0) @ [0.299, 0.587, 0.114]
    assert abs(fg_l - bg_l) > 0.1
    if texture != "plain":
        assert 0.1 < t.mean() < 0.9


def test_make_synthetic_writes_an_omnistyle_dataset(tmp_path):
    root = make_synthetic(tmp_path / "syn", num_contents=5, num_styles=4, num_triplets=12, size=32, seed=3)
    ts = scan(root)
    assert len(ts) == 12
    assert len({t.content for t in ts}) == 5 and len({t.style for t in ts}) == 4  # every image used
    t = ts[0]
    ci, si = int(t.content.stem[1:]), int(t.style.stem[1:])
    ref = synthetic_triplet(ci, si, seed=3, size=32)
    from PIL import Image

    assert np.array_equal(_arr(Image.open(t.target)), _arr(ref.target))
    train, val = split_triplets(ts, val_fraction=0.25, seed=0)
    assert len(train) == 9 and len(val) == 3
    # the same arguments write the same bytes
    again = make_synthetic(tmp_path / "syn2", num_contents=5, num_styles=4, num_triplets=12, size=32, seed=3)
    assert sorted(p.name for p in (again / "target").iterdir()) == sorted(
        p.name for p in (root / "target").iterdir()
    )
    with pytest.raises(DataError, match="raise --num-contents"):
        make_synthetic(tmp_path / "bad", num_contents=2, num_styles=2, num_triplets=5)


def test_metrics():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 32, 32, generator=g)
    assert torch.allclose(ssim(a, a), torch.ones(2), atol=1e-6)
    noisy = (a + 0.2 * torch.randn(2, 3, 32, 32, generator=g)).clamp(0, 1)
    s = ssim(a, noisy)
    assert (s < 0.9).all() and (s > 0).all()
    # the zero-padded Gaussian-window SSIM of the spec, computed independently with numpy/scipy-free loops
    x, y = a[0:1].double(), noisy[0:1].double()
    k = torch.exp(-((torch.arange(11) - 5.0) ** 2) / (2 * 1.5**2)).double()
    k = k / k.sum()
    w2 = torch.outer(k, k)

    def blur(t):
        p = torch.nn.functional.pad(t, (5, 5, 5, 5))
        out = torch.zeros_like(t)
        for i in range(11):
            for j in range(11):
                out += w2[i, j] * p[..., i : i + 32, j : j + 32]
        return out

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    ref = ((2 * mx * my + 1e-4) * (2 * cxy + 9e-4)) / ((mx**2 + my**2 + 1e-4) * (vx + vy + 9e-4))
    assert s[0].item() == pytest.approx(ref.mean().item(), abs=1e-6)
    assert psnr(a, a).isinf().all() and mean_abs_error(a, a).abs().max() == 0
    assert psnr(torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.1)).item() == pytest.approx(
        20.0, abs=1e-4
    )
    with pytest.raises(ValueError):
        ssim(a, a[:, :, :16])


@pytest.mark.slow
def test_demo_runs_end_to_end_and_writes_its_metrics(tmp_path):
    """The demo's plumbing on a tiny budget (learning itself is measured by the full demo, README)."""
    import json

    from stylevar.cli import main
    from stylevar.demo import DemoConfig, run_demo
    from stylevar.errors import ConfigError

    cfg = DemoConfig(
        num_contents=8,
        num_styles=8,
        num_triplets=40,
        num_heldout=4,
        tokenizer_steps=2,
        sft_steps=2,
        tokenizer_batch=8,
        sft_batch=8,
        depth=1,
        embed_dim=64,
        num_heads=2,
        vocab_size=32,
        tokenizer_ch=8,
        mlp_ratio=2.0,
    )
    m = run_demo(tmp_path / "demo", cfg, progress=False, say=lambda *_: None)
    from stylevar.io import load_checkpoint_dir, load_vqvae

    assert load_vqvae(tmp_path / "demo" / "tokenizer" / "final").config.ch == 8  # the demo's sizes are used
    assert load_checkpoint_dir(tmp_path / "demo" / "sft" / "final").model.config.mlp_ratio == 2.0
    saved = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert saved["against_target"] == m["against_target"] and saved["heldout_pairs"] == 4
    assert set(m["against_target"]) == {
        "stylevar",
        "stylevar_style_swapped",
        "stylevar_content_swapped",
        "content_image",
        "style_image",
        "tokenizer_reconstruction",
        "target",
    }
    target = m["against_target"]["target"]  # the measures' own reference: the target scores perfectly
    assert (
        target["figure_iou"] == 1.0 and target["figure_mae"] == 0.0 and target["ssim"] == pytest.approx(1.0)
    )
    assert target["figure_mae_rgb_se"] == [0.0, 0.0, 0.0]
    # the standard error of each channel's MAE over the pairs, recomputed from the written samples
    from PIL import Image

    from stylevar.demo import figure_scores, heldout_truth

    def read(kind):
        files = [tmp_path / "demo" / "samples" / f"{i:03d}_{kind}.png" for i in range(4)]
        return torch.stack([torch.from_numpy(np.array(Image.open(f))).permute(2, 0, 1) / 255 for f in files])

    held = TripletDataset(scan(tmp_path / "demo" / "data" / "heldout"), TripletTransform(resolution=cfg.size))
    masks, palettes, _ = heldout_truth(held, cfg.seed + 1, cfg.size, cfg.period)
    _, per_pair = figure_scores(read("stylevar"), read("target"), masks, palettes)
    se = per_pair.std(0) / 2  # four pairs
    # (the samples are 8-bit PNGs, the metrics were taken before rounding)
    assert m["against_target"]["stylevar"]["figure_mae_rgb_se"] == pytest.approx(se.tolist(), abs=0.1)
    assert set(m["checks"]) >= {"closer_than_style_image", "tokenizer_ceiling", "figure_iou", "figure_mae"}
    assert set(m["swap_cost"]) == {"style", "content"} and m["sampling"]["top_k"] == cfg.top_k
    from stylevar.demo import resolve_precision

    assert m["precision"] == {"tokenizer": resolve_precision("auto", torch.device("cpu")), "sft": "fp32"}
    # SFT ran as DDP processes where the CPU has two threads (rank 0 wrote the validation scores)
    from stylevar.demo import sft_processes

    assert m["sft_processes"] == sft_processes(cfg, torch.device("cpu"))
    if m["sft_processes"] > 1:
        assert json.loads((tmp_path / "demo" / "sft" / "val.json").read_text()) == m["val"]
    samples = tmp_path / "demo" / "samples"
    kinds = ("content", "style", "target", "stylevar", "swapped")
    assert sorted(p.name for p in samples.iterdir()) == sorted(
        f"{i:03d}_{k}.png" for i in range(4) for k in kinds
    )
    # what `stylevar demo --quick` prints after the run: that a quick run checks the plumbing only, and a
    # command, with the demo's sampling settings, that remakes the grid's first StyleVAR image bit for bit
    import shlex

    from stylevar.cli.demo import report

    text = report(m, str(tmp_path / "demo"), device="cpu", quick=True)
    assert "checks the plumbing only" in text and "not quality" in text and "stylevar demo -o DIR" in text
    assert "--quick" not in report(m, str(tmp_path / "demo"), device="cpu", quick=False)
    command = next(line for line in text.splitlines() if line.startswith("  stylevar stylize "))
    flags = f"--top-k {cfg.top_k} --top-p {cfg.top_p:g} --temperature {cfg.temperature:g}"
    assert cfg.top_k == 1 and flags in command and f"leave out {flags}" in text  # and how to sample freely
    argv = shlex.split(command)[1:]
    argv[argv.index("-o") + 1] = str(tmp_path / "again.png")
    assert main([*argv, "-q"]) == 0
    again, shown = (np.asarray(Image.open(p)) for p in (tmp_path / "again.png", samples / "000_stylevar.png"))
    assert np.array_equal(again, shown)

    assert Image.open(tmp_path / "demo" / "grid.png").size[0] > 5 * 4 * 32
    assert (tmp_path / "demo" / "sft" / "final" / "config.json").exists()
    assert m["model"] == saved["model"] == str(tmp_path / "demo" / "sft" / "final")
    # the resumable training state is deleted by default (keep_checkpoints keeps it); the models stay
    assert (
        not list((tmp_path / "demo").glob("*/checkpoints"))
        and (tmp_path / "demo" / "tokenizer" / "final").is_dir()
    )
    kept = run_demo(tmp_path / "kept", cfg, progress=False, say=lambda *_: None, keep_checkpoints=True)
    assert kept["against_target"] == m["against_target"]  # same seeds, same demo
    assert {p.parent.parent.name for p in (tmp_path / "kept").glob("*/checkpoints/last.pt")} == {
        "tokenizer",
        "sft",
    }
    with pytest.raises(ConfigError, match="already holds a finished demo"):
        run_demo(tmp_path / "demo", cfg, progress=False, say=lambda *_: None)
    # a tokenizer reused from a run with the same settings: the same tokenizer, the same demo, no training
    reused = run_demo(
        tmp_path / "reused", cfg, progress=False, say=lambda *_: None, reuse_tokenizer=tmp_path / "demo"
    )
    assert reused["against_target"] == m["against_target"] and "tokenizer_s" not in reused["timings"]
    assert not (tmp_path / "reused" / "tokenizer" / "metrics.jsonl").exists()
    # another SFT seed reuses the same tokenizer and trains another StyleVAR (the run-to-run spread)
    reseeded = DemoConfig(**{**cfg.to_dict(), "sft_seed": 1, "sft_processes": 1})  # and in this process
    run_demo(
        tmp_path / "seed1", reseeded, progress=False, say=lambda *_: None, reuse_tokenizer=tmp_path / "demo"
    )
    w0, w1 = (load_file(tmp_path / d / "sft" / "final" / "model.safetensors") for d in ("reused", "seed1"))
    assert not (tmp_path / "seed1" / "sft" / "val.json").exists()
    assert w0.keys() == w1.keys() and any(not torch.equal(w0[k], w1[k]) for k in w0)
    # the precision counts as resolved: ``auto`` that became fp32 here is fp32 asked for by name
    from stylevar.demo.stages import reused_tokenizer

    resolved = m["precision"]["tokenizer"]
    named = DemoConfig(**{**cfg.to_dict(), "tokenizer_precision": resolved})
    vae = reused_tokenizer(tmp_path / "demo", named, tmp_path / "named", m["precision"], {}, lambda *_: None)
    assert vae.config.vocab_size == cfg.vocab_size
    flipped = {**m["precision"], "tokenizer": "bf16" if resolved == "fp32" else "fp32"}
    with pytest.raises(ConfigError, match="resolved precision"):
        reused_tokenizer(tmp_path / "demo", named, tmp_path / "flipped", flipped, {}, lambda *_: None)
    other = DemoConfig(**{**cfg.to_dict(), "tokenizer_steps": 3})
    with pytest.raises(ConfigError, match="tokenizer_steps"):
        run_demo(
            tmp_path / "other", other, progress=False, say=lambda *_: None, reuse_tokenizer=tmp_path / "demo"
        )
    assert (
        main(
            [
                "make-synthetic",
                "-o",
                str(tmp_path / "syn"),
                "--num-contents",
                "2",
                "--num-styles",
                "2",
                "--num-triplets",
                "3",
                "--size",
                "16",
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "syn" / "target").iterdir())) == 3


def test_synthetic_truth_and_the_figure_scores():
    """The ground truth regenerated from the file names is the one the files were painted with, and the
    demo's figure measures score the target perfectly, the content and style images poorly."""

    from stylevar.data.synthetic import parse_ids
    from stylevar.demo import figure_scores

    t = synthetic_triplet(4, 9, seed=2, size=32)
    assert t.mask.shape == (32, 32) and t.mask.any() and t.style_mask.any()
    assert np.allclose(_arr(t.target), t.spec.paint(t.mask), atol=0.5 / 255)
    assert np.allclose(_arr(t.style), t.spec.paint(t.style_mask), atol=0.5 / 255)
    assert parse_ids("data/content/c00004.png", "s00009.png") == (4, 9)
    with pytest.raises(DataError, match="not a synthetic style file"):
        parse_ids("c00004.png", "photo.jpg")

    def tensor(img):
        return torch.from_numpy(_arr(img)).permute(2, 0, 1).unsqueeze(0)

    masks, palettes = torch.from_numpy(t.mask)[None], torch.from_numpy(t.spec.palette())[None]
    target = tensor(t.target)
    iou, mae = figure_scores(target, target, masks, palettes)
    assert iou.item() == 1.0 and mae.abs().max().item() == 0.0
    iou_s, mae_s = figure_scores(tensor(t.style), target, masks, palettes)
    assert iou_s.item() < 0.5 and mae_s.shape == (1, 3)
    # the figure painted in another colour: found nowhere, and the error is that colour's distance
    wrong = target.clone()
    wrong[:, :, masks[0]] = 0.5 * palettes[0, 2].view(3, 1) + 0.5 * palettes[0, 3].view(3, 1)
    iou_w, mae_w = figure_scores(wrong, target, masks, palettes)
    assert iou_w.item() == 0.0 and mae_w.min().item() > 0


def test_demo_precision_resolves_per_device(monkeypatch):
    """``auto`` is bf16 only where the device computes it natively (AMX or AVX512-BF16 CPUs); the int8
    decoder's bf16 stays AMX-only; explicit choices are kept; typos refused."""
    from stylevar.demo import DemoConfig, resolve_precision
    from stylevar.devices import decode_dtype, has_amx, has_fast_bf16
    from stylevar.errors import ConfigError

    cpu = torch.device("cpu")
    int8_model = types.SimpleNamespace(int8=True)
    # the decision for each CPU kind, from the capabilities torch reports
    for caps, fast, amx in (
        ({"amx_bf16": True, "avx512_bf16": True}, True, True),  # Sapphire Rapids
        ({"amx_bf16": False, "avx512_bf16": True}, True, False),  # Zen 4, Cooper Lake
        ({"amx_bf16": False, "avx512_bf16": False, "avx2": True}, False, False),  # Zen 3 and older
        ({}, False, False),
    ):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda caps=caps: caps)
        assert has_fast_bf16(cpu) is fast and has_amx(cpu) is amx, caps
        assert resolve_precision("auto", cpu) == ("bf16" if fast else "fp32")
        assert decode_dtype(int8_model, cpu) == (torch.bfloat16 if amx else None)
        assert decode_dtype(types.SimpleNamespace(), cpu) is None  # fp32/bf16 models: the run's own dtype
    monkeypatch.undo()
    assert has_fast_bf16("meta") is False and has_amx("meta") is False
    assert resolve_precision("auto", torch.device("meta")) == "fp32"
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError, match="tokenizer_precision must be auto, fp32 or bf16"):
        DemoConfig(tokenizer_precision="fp16")
    with pytest.raises(ConfigError, match="sft_precision"):
        DemoConfig(sft_precision="half")


def test_demo_sft_processes(monkeypatch, tmp_path):
    """SFT in two processes on a CPU with two threads or more, one elsewhere; a count must divide the batch."""
    from stylevar.demo import DemoConfig, run_demo, sft_processes
    from stylevar.errors import ConfigError

    cpu = torch.device("cpu")
    for threads, want in ((1, 1), (2, 2), (16, 2)):
        monkeypatch.setattr(torch, "get_num_threads", lambda threads=threads: threads)
        assert sft_processes(DemoConfig(), cpu) == want
        assert sft_processes(DemoConfig(sft_batch=31), cpu) == 1  # an odd batch is not split
        assert sft_processes(DemoConfig(), torch.device("meta")) == 1  # not a CPU (a GPU: one process)
        assert sft_processes(DemoConfig(sft_processes=4), cpu) == 4  # asked for: kept
    with pytest.raises(ConfigError, match="sft_processes must be 0"):
        DemoConfig(sft_processes=3)  # 32 triplets do not split in 3
    # processes are CPU ranks: refused on another device before any work (nothing written)
    with pytest.raises(ConfigError, match="trains on the CPU; on meta use 1"):
        run_demo(tmp_path / "gpu", DemoConfig(sft_processes=2), device="meta")
    assert not (tmp_path / "gpu").exists()


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["tokenizer", "SFT"])
def test_a_stop_signal_ends_the_demo_at_its_stage(tmp_path, stage):
    """SIGTERM while a stage trains: that stage saves its state and the demo ends there (exit 143), never
    starting the next stage on a half-trained model; SFT's torchrun processes stop with it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / f"demo-{stage}"
    steps = (
        ["--tokenizer-steps", "100000"]
        if stage == "tokenizer"
        else ["--tokenizer-steps", "2", "--sft-steps", "100000"]
    )
    cmd = [sys.executable, "-m", "stylevar", "demo", "--quick", "-q", "-o", str(out), *steps]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    marker = "2/4 tokenizer" if stage == "tokenizer" else "3/4 StyleVAR SFT"
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            break
    time.sleep(8)  # well inside the stage (its processes started and training)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    text = "".join(seen) + rest
    assert proc.returncode == 128 + signal.SIGTERM, text
    assert "stopped by SIGTERM" in text and not (out / "metrics.json").exists()
    if stage == "tokenizer":
        assert (out / "tokenizer" / "checkpoints" / "last.pt").is_file() and not (out / "sft").exists()
    time.sleep(1)
    left = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert [p for p in left if int(p) != os.getpid()] == []  # no worker outlives the demo
