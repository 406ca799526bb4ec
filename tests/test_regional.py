"""Regional style: a style-strength mask and per-region styles (models/stylevar.py StyleRegions, the
pipeline's ``mask``/``regions``, ``stylevar stylize --mask/--region``), on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import write_smooth_pngs
from stylevar.cli import main
from stylevar.errors import ConfigError, ImageError
from stylevar.models import ALPHA_CONTENT_END, scale_maps


@pytest.fixture(scope="module")
def pics(tmp_path_factory):
    d = tmp_path_factory.mktemp("regional")
    content, a, b = write_smooth_pngs(d, [(64, 64), (64, 64), (72, 72)], seed=31, stem="img")
    masks = {}
    for name, value in (("white", 255), ("black", 0), ("grey", 128)):
        masks[name] = d / f"{name}.png"
        Image.new("L", (64, 64), value).save(masks[name])
    left = np.zeros((64, 64), np.uint8)
    left[:, :32] = 255
    masks["left"] = d / "left.png"
    Image.fromarray(left).save(masks["left"])
    return {"content": content, "a": a, "b": b, **masks}


def _run(pipe, pics, style="a", **kw):
    return pipe(pics["content"], pics[style], seed=3, top_k=8, output_type="pt", **kw)[0]


def test_white_mask_is_the_plain_result_bit_for_bit(pipe, pics):
    plain = _run(pipe, pics)
    assert torch.equal(_run(pipe, pics, mask=pics["white"]), plain)
    with_strength = _run(pipe, pics, style_strength=0.4)
    assert torch.equal(_run(pipe, pics, style_strength=0.4, mask=pics["white"]), with_strength)
    # black: every token at the content end, the same as alpha 0.01 at every scale
    SN = len(pipe.model.patch_nums)
    black = _run(pipe, pics, mask=pics["black"])
    assert torch.equal(black, _run(pipe, pics, alpha=[ALPHA_CONTENT_END] * SN))
    assert not torch.equal(black, plain)
    # grey: each token's alpha between the two ends, in proportion (the alpha the blocks receive)
    seen = []
    handle = pipe.model.blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[3].clone()))
    try:
        _run(pipe, pics, mask=pics["grey"])
    finally:
        handle.remove()
    a = pipe.model.resolve_alpha(None)[0]
    g = 128 / 255
    for si, got in enumerate(seen):
        want = g * a[si] + (1 - g) * ALPHA_CONTENT_END
        assert got.shape[1] == pipe.model.patch_nums[si] ** 2  # per token
        torch.testing.assert_close(got, torch.full_like(got, float(want)))


def test_a_region_over_the_whole_image_is_that_style(pipe, pics):
    with_b = _run(pipe, pics, style="b")
    assert torch.equal(_run(pipe, pics, regions=[(pics["white"], pics["b"])]), with_b)
    # an empty region changes nothing
    assert torch.equal(_run(pipe, pics, regions=[(pics["black"], pics["b"])]), _run(pipe, pics))
    # half the image in style B: neither A's nor B's image
    half = _run(pipe, pics, regions=[(pics["left"], pics["b"])])
    assert not torch.equal(half, with_b) and not torch.equal(half, _run(pipe, pics))


def test_region_tokens_are_conditioned_on_their_style_only(pipe, pics):
    """Capture the first block's guides and AdaLN parameters: a token inside the region (weight 1) has
    exactly the values of a run with the region's style, a token outside exactly the main style's."""
    block = pipe.model.blocks[0]
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(_module, args, kwargs):
        seen.append((args[1].clone(), kwargs["ada"].clone()))

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        runs = {}
        for name, kw in (
            ("a", {}),
            ("b", {"style": "b"}),
            ("left_b", {"regions": [(pics["left"], pics["b"])]}),
        ):
            seen.clear()
            _run(pipe, pics, **kw)
            runs[name] = list(seen)
    finally:
        handle.remove()
    R = pipe.resolution
    m = torch.zeros(1, R, R)
    m[:, :, : R // 2] = 1
    w = scale_maps(m, pipe.model.patch_nums)[0]
    checked = 0
    for si, (bg, ed) in enumerate(pipe.model.begin_ends):
        n = ed - bg
        for j in range(n):
            if w[bg + j] not in (0.0, 1.0):
                continue  # a token on the edge blends (soft): checked by the identities above
            ref = runs["b"] if w[bg + j] == 1 else runs["a"]
            g, ada = runs["left_b"][si]
            g_ref, ada_ref = ref[si]
            assert torch.equal(g[:, j], g_ref[:, j])  # the style guide token of position j
            assert torch.equal(g[:, n + j], g_ref[:, n + j])  # its content guide token (same content)
            assert torch.equal(ada[:, j], ada_ref[:, 0])  # its AdaLN parameters: the style's
            checked += 1
    assert checked >= 8  # both sides, several scales


def test_overlapping_regions_share_and_bad_inputs_fail_in_one_line(pipe, pics, tmp_path):
    model = pipe.model
    feat = torch.randn(2, model.C)
    cvae = torch.randn(2, model.L, model.Cvae)
    ones = torch.ones(2, 16, 16)
    reg = model.regions_from_features(feat, cvae, ones, batch_size=3)
    assert reg.weights.shape == (3, model.L, 2)
    torch.testing.assert_close(reg.weights.sum(-1), torch.ones(3, model.L))  # scaled to sum 1
    assert float(model._region_weights(reg)[..., 0].abs().max()) == 0  # no weight left for the main style
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(ImageError, match="bad.png") as e:
        _run(pipe, pics, mask=bad)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="eager"):
        _run(pipe, pics, mask=pics["white"], cuda_graphs=True)
    with pytest.raises(ConfigError, match=r"\(mask, style\) pairs"):
        _run(pipe, pics, regions=[pics["b"]])


def test_cli_mask_and_region(ours_dir, pics, tmp_path, capsys):
    out = tmp_path / "out.png"
    base = ["stylize", str(pics["content"]), str(pics["a"]), "--checkpoint", str(ours_dir), "--seed", "3",
            "--top-k", "8", "--device", "cpu", "-q", "--fit", "squash"]  # fmt: skip
    assert main([*base, "-o", str(tmp_path / "plain.png")]) == 0
    assert main([*base, "-o", str(out), "--mask", str(pics["white"])]) == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "plain.png")))
    region = f"{pics['left']}:{pics['b']}"
    assert main([*base, "-o", str(tmp_path / "r.png"), "--region", region, "--mask", str(pics["grey"])]) == 0
    assert Image.open(tmp_path / "r.png").size == (64, 64)
    capsys.readouterr()
    assert main([*base, "-o", str(tmp_path / "x.png"), "--region", str(pics["left"])]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "MASK.png:STYLE" in err
    assert main([*base, "-o", str(tmp_path / "y.png"), "--mask", str(tmp_path / "missing.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.png" in err
