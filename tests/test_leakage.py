"""Content leakage (StyleAR): the synthetic measure, where the truth is known (demo.leakage_scores), and the
edge-map correlation for real images (perceptual.edge_correlation, ``--metrics leakage,structure``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stylevar.data.synthetic import synthetic_triplet
from stylevar.demo import leakage_scores
from stylevar.perceptual import edge_correlation


def _unit(img) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)


def test_synthetic_leakage_is_zero_for_the_target_and_high_for_the_style_image():
    rows = [synthetic_triplet(i, 10 + i, seed=3, size=32) for i in range(8)]
    masks = torch.from_numpy(np.stack([t.mask for t in rows]))
    blobs = torch.from_numpy(np.stack([t.style_mask for t in rows]))
    palettes = torch.from_numpy(np.stack([t.spec.palette() for t in rows]))
    target = torch.stack([_unit(t.target) for t in rows])
    style = torch.stack([_unit(t.style) for t in rows])
    assert leakage_scores(target, masks, palettes, blobs).abs().max() < 1e-6  # the right answer leaks nothing
    leak = leakage_scores(style, masks, palettes, blobs)
    assert leak.min() > 0.9  # the style image is its own layout
    # a target with the style image's blobs pasted in: leakage = the share of blob pixels pasted
    pasted = torch.where(blobs.unsqueeze(1), style, target)
    assert leakage_scores(pasted, masks, palettes, blobs).mean() > 0.9
    half = blobs.clone()
    half[:, :, 16:] = False
    partial = leakage_scores(torch.where(half.unsqueeze(1), style, target), masks, palettes, blobs)
    assert 0.1 < partial.mean() < 0.9


def test_edge_correlation():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 40, 40, generator=g)
    assert edge_correlation(a, a) == pytest.approx([1, 1, 1], abs=1e-5)
    b = torch.rand(3, 3, 40, 40, generator=g)
    assert edge_correlation(a, b).abs().max() < 0.15  # unrelated layouts
    big = torch.nn.functional.interpolate(a, size=(80, 80), mode="nearest")
    assert edge_correlation(a, big).min() > 0.5  # the second is resized to the first's size
    flat = torch.full((1, 3, 40, 40), 0.5)
    assert edge_correlation(flat, a[:1]).item() == 0.0  # no edges: no shared structure
    assert edge_correlation(a, a[:1]).shape == (3,)  # a single reference broadcasts
    with pytest.raises(ValueError):
        edge_correlation(a, torch.rand(2, 3, 40, 40))


def test_subtraction_and_noise_knobs(pipe, tmp_path):
    """StyleAR's knobs in the pipeline: alpha 1 and gamma 0 change nothing (bit for bit); alpha < 1 needs the
    style mask and changes the result; the noise is deterministic per seed; the CLI takes them."""
    from PIL import Image

    from helpers import write_smooth_pngs
    from stylevar.errors import ConfigError

    c, s = write_smooth_pngs(tmp_path, [(64, 64), (64, 64)], seed=41)
    m = tmp_path / "m.png"
    Image.new("L", (64, 64), 0).save(m)
    half = np.zeros((64, 64), np.uint8)
    half[:, :32] = 255
    Image.fromarray(half).save(tmp_path / "half.png")

    def run(**knobs):
        return pipe(c, s, seed=3, top_k=8, output_type="pt", leakage=knobs or None)[0]

    plain = run()
    assert torch.equal(run(style_mask=m, subtract=1.0), plain)
    assert torch.equal(run(style_mask=m, subtract=0.0), plain)  # an empty salient region: nothing to subtract
    sub = run(style_mask=tmp_path / "half.png", subtract=0.0)
    assert not torch.equal(sub, plain)
    noisy = run(style_noise=0.5)
    assert torch.equal(run(style_noise=0.5), noisy)  # seeded
    seen = []  # the style guides the first block receives: the noise is there (the tiny model's tokens may not move)
    handle = pipe.model.blocks[0].register_forward_pre_hook(lambda _m, a: seen.append(a[1].clone()))
    try:
        run()
        run(style_noise=0.5)
    finally:
        handle.remove()
    n = len(seen) // 2
    assert all(torch.equal(x, y) is False for x, y in zip(seen[:n], seen[n:]))
    with pytest.raises(ConfigError, match="style_mask"):
        run(subtract=0.5)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        run(style_mask=m, subtract=2.0)
