"""The real-photo demo (``stylevar demo --real``) on a tiny budget, and the colour-transfer baseline it reports."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
import torch
from PIL import Image

from stylevar.perceptual.colour import colour_transfer


def _stats(x: torch.Tensor):
    flat = x.double().flatten(2)
    mean = flat.mean(2)
    centred = flat - mean[:, :, None]
    return mean, centred @ centred.transpose(1, 2) / flat.shape[2]


def test_colour_transfer_takes_the_styles_statistics_and_keeps_the_layout():
    g = torch.Generator().manual_seed(0)
    content = 0.3 + 0.3 * torch.rand(2, 3, 24, 24, generator=g)
    # a style with correlated channels, well inside [0, 1] so that nothing is clamped
    base = torch.rand(1, 1, 16, 16, generator=g)
    style = torch.cat([0.5 + 0.2 * base, 0.4 + 0.1 * base, 0.45 - 0.15 * base], 1) + 0.02 * torch.rand(
        1, 3, 16, 16, generator=g
    )
    out = colour_transfer(content, style)
    assert out.shape == content.shape and out.dtype == torch.float32
    mean_o, cov_o = _stats(out)
    mean_s, cov_s = _stats(style)
    assert torch.allclose(mean_o, mean_s.expand(2, 3), atol=1e-5)
    assert torch.allclose(cov_o, cov_s.expand(2, 3, 3), atol=1e-5)
    # the same affine map for every pixel: the output is exactly an affine function of the content
    for i in range(2):
        x = torch.cat([content[i].flatten(1), torch.ones(1, 24 * 24)]).double().T
        y = out[i].flatten(1).double().T
        coef = torch.linalg.lstsq(x, y).solution
        assert (x @ coef - y).abs().max() < 1e-5
    # a style with the content's own statistics leaves the content as it is
    assert torch.allclose(colour_transfer(content[:1], content[:1]), content[:1], atol=1e-5)
    with pytest.raises(ValueError, match="1 or 2 style images"):
        colour_transfer(content, torch.rand(3, 3, 8, 8))


@pytest.mark.slow
def test_real_demo_end_to_end_and_its_command_remakes_a_sample(tmp_path):
    """Triplets from the installed photographs and the real 26-style network, a tokenizer, SFT, both
    held-out sets scored, samples and grids written; the printed command remakes a sample bit for bit."""
    from stylevar.cli import main
    from stylevar.cli.demo import real_report
    from stylevar.demo.real import RealDemoConfig, run_real_demo

    cfg = RealDemoConfig(
        size=32,
        render=96,
        crops_per_image=6,
        styles_per_content=2,
        held_out_styles=3,
        heldout_pairs=2,
        tokenizer_steps=2,
        tokenizer_batch=8,
        sft_steps=2,
        sft_batch=8,
        sft_processes=1,
        depth=1,
        embed_dim=64,
        num_heads=2,
        vocab_size=32,
        tokenizer_ch=8,
        mlp_ratio=2.0,
    )
    out = tmp_path / "real"
    m = run_real_demo(out, cfg, progress=False, say=lambda *_: None)
    assert json.loads((out / "metrics.json").read_text())["unseen_photos"] == m["unseen_photos"]
    for name, samples, grid in (
        ("unseen_photos", "samples", "grid.png"),
        ("unseen_styles", "samples_unseen_styles", "grid_unseen_styles.png"),
    ):
        part = m[name]
        assert part["pairs"] == 2 and (out / grid).is_file()
        assert set(part["table"]) == {"stylevar", "teacher", "colour_transfer", "content_copy"}
        teacher, copy = part["table"]["teacher"], part["table"]["content_copy"]
        assert teacher["ssim_to_teacher"] == pytest.approx(1.0) and copy["structure"] == pytest.approx(1.0)
        # the teacher's output is closer to the style, by the teacher's own style vector, than the photo is
        assert teacher["style_distance"] < copy["style_distance"]
        kinds = ("content", "style", "target", "stylevar", "colour_transfer")
        assert sorted(p.name for p in (out / samples).iterdir()) == sorted(
            f"{i:03d}_{k}.png" for i in range(2) for k in kinds
        )
    # the held-out photos are not in training, the held-out styles neither
    split = json.loads((out / "data" / "split.json").read_text())
    train_photos = {t["content"].split("/")[-1].rsplit("_", 1)[0] for t in split["train"]}
    assert train_photos.isdisjoint(split["val_contents"])
    assert len(split["held_out_styles"]) == 3
    assert not any(h in t["style"] for t in split["train"] for h in split["held_out_styles"])
    assert set(m["checks"]) == {"closer_to_style_than_colour_transfer", "keeps_half_the_teachers_structure"}
    assert m["timings"]["total_s"] > 0 and m["model"] == str(out / "sft" / "final")

    text = real_report(m, str(out), device="cpu")
    command = next(line for line in text.splitlines() if line.startswith("  stylevar stylize "))
    argv = shlex.split(command)[1:]
    argv[argv.index("-o") + 1] = str(tmp_path / "again.png")
    assert main(argv + ["--quiet"]) == 0
    again = np.array(Image.open(tmp_path / "again.png"))
    assert np.array_equal(again, np.array(Image.open(out / "samples" / "000_stylevar.png")))


def test_real_demo_refuses_a_reused_tokenizer(capsys):
    from stylevar.cli import main

    with pytest.raises(SystemExit) as e:
        main(["demo", "--real", "--reuse-tokenizer", "x", "-o", "y"])
    assert e.value.code == 2 and "--reuse-tokenizer is for the synthetic demo" in capsys.readouterr().err
