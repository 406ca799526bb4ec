"""Creative controls (controls.py) in the pipeline and the CLI: colour preservation, style interpolation
inside the conditioning, full-resolution output with guided upsampling. Style strength, per-scale alpha
and seeds per sample are tested in test_pipeline.py."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import rand_images, smooth_images
from stylevar.cli import main
from stylevar.errors import ConfigError
from stylevar.images import pil_to_unit_tensor
from stylevar.stylize import controls as C
from stylevar.stylize.pipeline import StyleVARPipeline


@pytest.fixture(scope="module")
def pics(tmp_path_factory):
    """A reddish content photo (90x60), two styles of other colours, as files."""
    d = tmp_path_factory.mktemp("controls")
    out = []
    for i, (size, tint) in enumerate(
        [((90, 60), (1.0, 0.45, 0.3)), ((64, 64), (0.2, 0.5, 1.0)), ((70, 50), (0.3, 1.0, 0.3))]
    ):
        a = (smooth_images(1, 96, 40 + i)[0] + 1) / 2  # [0, 1]
        a = a * torch.tensor(tint).view(3, 1, 1)
        p = d / f"img{i}.png"
        Image.fromarray((a.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).resize(size).save(p)
        out.append(p)
    return out


def _colour_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    f = x.double().flatten(2)[0]  # (3, P)
    return f.mean(1), torch.cov(f)


def _colour_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    (ma, ca), (mb, cb) = _colour_stats(a), _colour_stats(b)
    return float((ma - mb).norm() + (ca - cb).norm())


def test_preserve_colour_functions():
    res = rand_images(2, 3, 24, 24, seed=1) * 0.5 + 0.25  # mild values: no clamping below
    con = rand_images(2, 3, 48, 40, seed=2) * 0.2 + 0.4
    lum = C.preserve_colour(res, con, "luminance")
    y_res, y_out = C.rgb_to_ycbcr(res.double())[:, 0], C.rgb_to_ycbcr(lum.double())[:, 0]
    assert lum.shape == res.shape and torch.allclose(y_res, y_out, atol=1e-5)  # the result's luma kept
    small = torch.nn.functional.interpolate(con, size=(24, 24), mode="bilinear", antialias=True)
    assert torch.allclose(
        C.rgb_to_ycbcr(lum.double())[:, 1:], C.rgb_to_ycbcr(small.double())[:, 1:], atol=1e-5
    )
    st = C.preserve_colour(res, small, "stats")
    for i in range(2):
        assert _colour_gap(st[i : i + 1], small[i : i + 1]) < 1e-4  # mean and covariance matched
    assert C.preserve_colour(res, con, "none") is res
    with pytest.raises(ConfigError, match="one of none, luminance, stats"):
        C.preserve_colour(res, con, "sepia")
    x = rand_images(1, 3, 16, 16)
    assert torch.allclose(C.ycbcr_to_rgb(C.rgb_to_ycbcr(x.double())), x.double(), atol=1e-12)


def test_blend_weights():
    assert C.blend_weights([3, 1], 2) == [0.75, 0.25]
    for bad, n in (([1], 2), ([1, -1], 2), ([0, 0], 2), ([float("nan"), 1], 2)):
        with pytest.raises(ConfigError):
            C.blend_weights(bad, n)


def test_guided_filter_box_and_identity():
    x = rand_images(1, 3, 20, 30, seed=3)
    r = 2
    naive = torch.stack(
        [
            torch.stack(
                [
                    x[0, :, max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1].mean((1, 2))
                    for j in range(30)
                ],
                -1,
            )
            for i in range(20)
        ],
        -2,
    )
    assert torch.allclose(C._box(x, r), naive[None], atol=1e-6)
    g = rand_images(1, 1, 20, 30, seed=4)
    # a source that is a linear function of the guide is reproduced exactly (eps -> 0)
    assert torch.allclose(C.guided_filter(g, 0.5 * g + 0.2, 3, 1e-9), 0.5 * g + 0.2, atol=1e-4)


def _chroma(x: torch.Tensor) -> torch.Tensor:
    return C.rgb_to_ycbcr(x.double())[:, 1:]


def test_colour_preservation_brings_the_output_closer_to_the_content(pipe, pics):
    content = pil_to_unit_tensor(
        Image.open(pics[0]).convert("RGB").resize((64, 64), Image.Resampling.LANCZOS)
    )
    base = pipe(pics[0], pics[1], seed=1, num_samples=2, fit="squash", output_type="pt")
    for mode, stats in (("luminance", _chroma), ("stats", lambda x: x)):  # chroma stats; all RGB stats
        kept = pipe(
            pics[0], pics[1], seed=1, num_samples=2, fit="squash", output_type="pt", preserve_color=mode
        )
        for b, k in zip(base.images, kept.images):
            before, after = (
                _colour_gap(stats(b[None]), stats(content)),
                _colour_gap(stats(k[None]), stats(content)),
            )
            assert after < 0.5 * before, (mode, before, after)
            # the structure (luma pattern) stays the result's
            yb, yk = C.rgb_to_ycbcr(b[None].double())[0, 0], C.rgb_to_ycbcr(k[None].double())[0, 0]
            assert np.corrcoef(yb.flatten(), yk.flatten())[0, 1] > 0.9


def test_style_interpolation_inside_the_conditioning(pipe, pics):
    kw = dict(seed=4, num_samples=2, output_type="pt")
    one = pipe(pics[0], pics[1], **kw).images
    other = pipe(pics[0], pics[2], **kw).images
    first = pipe(pics[0], [pics[1], pics[2]], style_weights=[1, 0], **kw)
    assert first.pairs == [(0, 0)] * 2  # one blended style
    assert all(torch.equal(a, b) for a, b in zip(one, first.images))
    assert all(
        torch.equal(a, b)
        for a, b in zip(other, pipe(pics[0], [pics[1], pics[2]], style_weights=[0, 2], **kw).images)
    )
    mid = pipe(pics[0], [pics[1], pics[2]], style_weights=[1, 1], **kw).images
    # (a tiny random model may sample the same tokens for one of the samples; not for all)
    assert any(not torch.equal(m, a) for m, a in zip(mid, one))
    assert any(not torch.equal(m, b) for m, b in zip(mid, other))
    # blended in the model: the conditioning is the weighted sum of the two styles' features
    model, vae = pipe.model, pipe.vae
    from stylevar.images import load_image, to_model_input

    s = torch.stack([to_model_input(load_image(p), 64, "crop") for p in pics[1:]])
    f, c = model.encode_style(vae, s)
    seen = {}
    real = model.generate

    def spy(vae_, cond, *a, **k):
        seen["cond"] = cond
        return real(vae_, cond, *a, **k)

    model.generate = spy
    try:
        pipe(pics[0], [pics[1], pics[2]], style_weights=[3, 1], seed=0)
    finally:
        del model.generate
    cond = seen["cond"]
    assert torch.allclose(cond.style_feat[0], 0.75 * f[0] + 0.25 * f[1], atol=1e-6)
    assert torch.allclose(cond.style_cvae[0], 0.75 * c[0] + 0.25 * c[1], atol=1e-6)
    with pytest.raises(ConfigError, match="one weight per style image"):
        pipe(pics[0], [pics[1], pics[2]], style_weights=[1])


def test_full_resolution_output(pipe, pics):
    kw = dict(seed=2, fit="squash", keep_size=True, output_type="pt")
    lanczos = pipe(pics[0], pics[1], **kw).images[0]
    guided = pipe(pics[0], pics[1], upscale="guided", **kw).images[0]
    assert lanczos.shape == guided.shape == (3, 60, 90)  # the content's own size and aspect
    assert not torch.equal(lanczos, guided)
    pil = pipe(
        pics[0], pics[1], seed=2, fit="crop", keep_size=True, upscale="guided", preserve_color="luminance"
    )[0]
    assert pil.size == (60, 60)  # crop: the centred square at full size
    with pytest.raises(ConfigError, match="upscale"):
        pipe(pics[0], pics[1], upscale="nearest")


def test_guided_upsampling_restores_the_contents_detail():
    """A result that keeps the content's structure at low resolution (here: a recoloured, 4x smaller
    content) comes back closer to the full-resolution truth with the guided filter than with bicubic."""
    g = torch.Generator().manual_seed(5)
    yy, xx = torch.meshgrid(torch.arange(128), torch.arange(96), indexing="ij")
    shapes = (((xx // 12 + yy // 16) % 2) * 0.5 + ((xx - 60) ** 2 + (yy - 40) ** 2 < 400) * 0.4).float()
    content = (shapes + 0.05 * torch.rand(128, 96, generator=g)).clamp(0, 1).expand(1, 3, -1, -1)
    truth = 0.2 + content * torch.tensor([0.6, 0.3, 0.1]).view(1, 3, 1, 1)  # a "style" recolouring
    small = torch.nn.functional.interpolate(truth, size=(32, 24), mode="bilinear", antialias=True)
    bicubic = torch.nn.functional.interpolate(small, size=(128, 96), mode="bicubic").clamp(0, 1)
    guided = C.guided_upsample(small, content)
    assert guided.shape == truth.shape
    err_b, err_g = (bicubic - truth).pow(2).mean(), (guided - truth).pow(2).mean()
    assert err_g < 0.5 * err_b, (float(err_g), float(err_b))


def test_cli_controls(tiny, ours_dir, pics, tmp_path):
    out = tmp_path / "o"
    argv = ["stylize", str(pics[0]), str(pics[1]), "-o", str(out), "--checkpoint", str(ours_dir), "--seed", "3",
            "--num-samples", "2", "--full-res", "--fit", "squash", "--preserve-color", "stats",
            "--blend", f"{pics[2]}:0.5", "--style-weight", "1.5", "--device", "cpu", "-q"]  # fmt: skip
    assert main(argv) == 0
    files = sorted(out.glob("*.png"))
    assert len(files) == 2 and all(Image.open(f).size == (90, 60) for f in files)
    rows = [json.loads(line) for line in (out / "stylevar_runs.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == [3, 4]
    assert rows[0]["blend"] == [{"style": str(pics[2]), "weight": 0.5}] and rows[0]["style_weight"] == 1.5
    # the same through the pipeline: weights 1.5 : 0.5, the seed of the second image
    again = StyleVARPipeline(*copy.deepcopy(tiny))(
        pics[0], [pics[1], pics[2]], style_weights=[0.75, 0.25], seed=4, fit="squash", keep_size=True,
        upscale="guided", preserve_color="stats",
    )[0]  # fmt: skip
    assert np.abs(np.asarray(again, dtype=int) - np.asarray(Image.open(files[1]), dtype=int)).max() <= 1
    assert main(argv + ["--blend", str(tmp_path / "nope.png")]) == 1
