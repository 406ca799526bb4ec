"""StyleVARPipeline: inputs of every kind, seeds, pairing, batching, output policy."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import write_smooth_pngs
from stylevar.config import Sampling
from stylevar.errors import ConfigError, ImageError
from stylevar.images import to_model_input
from stylevar.stylize.pipeline import StyleVARPipeline


@pytest.fixture(scope="module")
def pics(tmp_path_factory):
    return write_smooth_pngs(
        tmp_path_factory.mktemp("pics"), [(90, 60), (64, 64), (50, 80)], seed=20, stem="img"
    )


def test_single_pair_returns_pil_images_with_seeds(pipe, pics):
    out = pipe(pics[0], pics[1], seed=5, num_samples=3)
    assert len(out) == 3 and out.seeds == [5, 6, 7] and out.pairs == [(0, 0)] * 3
    assert all(isinstance(im, Image.Image) and im.size == (64, 64) and im.mode == "RGB" for im in out)
    again = pipe(pics[0], pics[1], seed=6, num_samples=1)  # the second sample, alone, from its seed
    # same tokens; decoding a batch of 1 vs 3 may move a pixel by one 8-bit level
    assert np.abs(np.asarray(again[0], dtype=int) - np.asarray(out[1], dtype=int)).max() <= 1
    assert np.abs(np.asarray(out[0], dtype=int) - np.asarray(out[1], dtype=int)).max() > 10


def test_results_do_not_depend_on_batch_size(pipe, pics):
    a = pipe(pics, pics[1], seed=0, batch_size=1, output_type="pt")
    b = pipe(pics, pics[1], seed=0, batch_size=3, output_type="pt")
    assert len(a) == 3 and all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a, b))


def test_pipeline_equals_the_models_upstream_protocol(pipe, pics, tiny):
    """Batch 1 with seed s is upstream's autoregressive_infer(B=1, g_seed=s) on the resized images."""
    model, vae = tiny
    out = pipe(pics[2], pics[0], seed=42, top_k=30, top_p=0.9, output_type="pt")
    c = to_model_input(Image.open(pics[2]).convert("RGB"), 64, "crop")[None]
    s = to_model_input(Image.open(pics[0]).convert("RGB"), 64, "crop")[None]
    with torch.no_grad():
        ref = model.generate(
            vae, model.conditioning(vae, s, c), Sampling.plain(top_k=30, top_p=0.9), seed=42
        ).images[0]
    assert torch.allclose(out[0], ref, atol=1e-6)


def test_pairing_and_input_kinds(pipe, pics):
    pil = [Image.open(p) for p in pics]
    tens = torch.stack([(to_model_input(im.convert("RGB"), 64, "squash") + 1) / 2 for im in pil])  # [0, 1]
    assert len(pipe(pics, pics, seed=0)) == 3  # zip
    prod = pipe(pics[:2], pics, seed=0, pairing="product")
    assert prod.pairs == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    from_pil = pipe(pil[0], pil[1], seed=9, fit="squash", output_type="pt")
    from_tensor = pipe(tens[0], tens[1], seed=9, fit="squash", output_type="pt")
    assert (from_pil[0] - from_tensor[0]).abs().max() < 0.02  # same pictures through two input paths
    with pytest.raises(ConfigError, match="cannot be zipped"):
        pipe(pics[:2], pics, seed=0)
    with pytest.raises(ImageError, match="values must lie in"):
        pipe(tens[0] * 255, tens[1])


def test_keep_size_restores_the_content_region(pipe, pics):
    squash = pipe(pics[0], pics[1], seed=1, fit="squash", keep_size=True)
    crop = pipe(pics[0], pics[1], seed=1, fit="crop", keep_size=True)
    assert squash[0].size == (90, 60) and crop[0].size == (60, 60)


def test_controls_change_the_result(pipe, pics):
    """Seeded draws change only where a shifted distribution moves a category boundary past the draw:
    over 16 samples of this tiny model each control changes at least one image. (Its alpha matters
    little: the controls move alpha far from the config's (0.2, 0.4, 0.6, 0.8).)"""

    def run(**kw):
        return pipe(pics[0], pics[1], seed=3, num_samples=16, output_type="pt", **kw).images

    base = run()
    assert all(torch.equal(a, b) for a, b in zip(base, run()))
    for kw in (dict(style_strength=-0.9), dict(alpha=[0.1] * 4), dict(legacy_kv_cache=True), dict(top_k=3)):
        assert any(not torch.equal(a, b) for a, b in zip(base, run(**kw))), kw
    with pytest.raises(ConfigError, match="4 values per scale"):
        pipe(pics[0], pics[1], alpha=[0.5, 0.5])


def test_random_seed_is_reported_and_reproduces(pipe, pics):
    out = pipe(pics[0], pics[1])
    again = pipe(pics[0], pics[1], seed=out.seeds[0])
    assert np.array_equal(np.asarray(out[0]), np.asarray(again[0]))
    assert out.seeds != pipe(pics[0], pics[1]).seeds


def test_bad_arguments(pipe, pics):
    for kw, frag in [
        (dict(top_p=1.5), "top_p"),
        (dict(num_samples=0), "num_samples"),
        (dict(fit="stretch"), "fit"),
        (dict(temperature=0), "temperature"),
    ]:
        with pytest.raises(ConfigError, match=frag):
            pipe(pics[0], pics[1], **kw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pipeline_on_cuda(tiny, pics):

    gpu = StyleVARPipeline(*(copy.deepcopy(m) for m in tiny), device="cuda")
    out = gpu(pics[:2], pics[2], seed=0, num_samples=2, batch_size=3)
    again = gpu(pics[:2], pics[2], seed=0, num_samples=2, batch_size=1)
    assert len(out) == 4 and all(im.size == (64, 64) for im in out)
    diffs = [np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() for a, b in zip(out, again)]
    assert max(diffs) <= 1  # same seeds, same images, whatever the batch size


def test_int8_pipeline(tiny, pics, tmp_path):
    """dtype="int8" quantizes the pipeline's transformer once (CPU) and stays int8; the CLI takes it too."""
    from stylevar.cli import main
    from stylevar.io import save_pretrained

    pipe = StyleVARPipeline(*copy.deepcopy(tiny), device="cpu")
    fp32 = pipe(pics[1], pics[1], seed=2, top_k=8, output_type="pt")[0]
    q = pipe(pics[1], pics[1], seed=2, top_k=8, output_type="pt", dtype="int8")[0]
    assert pipe.model.int8 and q.shape == fp32.shape and (q - fp32).abs().mean() < 0.2
    with pytest.raises(ConfigError, match="int8 now"):
        pipe(pics[1], pics[1], seed=2, dtype="bf16")
    ckpt = tmp_path / "ckpt"
    save_pretrained(ckpt, *copy.deepcopy(tiny))
    out = tmp_path / "o.png"
    argv = ["stylize", str(pics[1]), str(pics[1]), "-o", str(out), "--checkpoint", str(ckpt), "--dtype", "int8",
            "--device", "cpu", "-q", "--seed", "2", "--top-k", "8"]  # fmt: skip
    assert main(argv) == 0 and Image.open(out).size == (64, 64)
