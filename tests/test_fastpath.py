"""Every fast path against the reference path: fused blocks, skinny CPU products, in-place inference ops."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn import functional as F

from helpers import smooth_images, tiny_models
from stylevar.config import Sampling
from stylevar.models.ops import SKINNY_ROWS, gelu_tanh_, linear
from stylevar.models.reference import reference_generate


@pytest.mark.parametrize("rows", [1, 3, SKINNY_ROWS, SKINNY_ROWS + 1, 64])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_equals_f_linear(rows, bias):
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(1, rows, 96, generator=g)
    w = torch.randn(80, 96, generator=g)
    b = torch.randn(80, generator=g) if bias else None
    out = linear(x, w, b)
    assert out.shape == (1, rows, 80) and out.is_contiguous()
    # equal up to fp32 summation order: 1e-6 of the largest output (the sums reach ~35 here, one ulp
    # 4e-6; MKL builds differ in the order, measured up to 1.3e-5 absolute, 3.8e-7 relative)
    ref = F.linear(x, w, b)
    assert (out - ref).abs().max() < 1e-6 * ref.abs().max()
    # the transposed kernel must also accept a column-major input (the output of a previous skinny product)
    xt = torch.randn(96, rows, generator=g).t().unsqueeze(0)
    ref = F.linear(xt, w, b)
    assert (linear(xt, w, b) - ref).abs().max() < 1e-6 * ref.abs().max()


def test_linear_keeps_autograd():
    x = torch.randn(2, 3, 8, requires_grad=True)
    w = torch.randn(5, 8, requires_grad=True)
    linear(x, w).sum().backward()
    ref_x, ref_w = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    F.linear(x, w).sum().backward()
    assert torch.allclose(x.grad, ref_x, atol=1e-6) and torch.allclose(w.grad, ref_w, atol=1e-6)


def test_gelu_tanh_in_place_equals_aten():
    x = torch.linspace(-12, 12, 10001)
    want = F.gelu(x, approximate="tanh")
    got = gelu_tanh_(x.clone())
    assert (got - want).abs().max() < 2e-6


@torch.no_grad()
def test_inference_vae_equals_autograd_vae(tiny):
    _, vae = tiny
    img = smooth_images(2, vae.config.resolution, 9) * 2 - 1
    f_fast = vae.encode_f(img)
    rec_fast = vae.fhat_to_img(f_fast)
    with torch.enable_grad():
        f_ref = vae.encode_f(img)
        rec_ref = vae.fhat_to_img(f_ref)
    assert torch.equal(f_fast, f_ref) and torch.equal(rec_fast, rec_ref.detach())


@pytest.mark.parametrize("legacy", [True, False], ids=["published-cache", "correct-cache"])
@pytest.mark.parametrize("cfg", [dict(), dict(patch_nums=(1, 3, 5), depth=3, num_heads=4, embed_dim=64)])
@torch.no_grad()
def test_fused_sampler_reproduces_the_straightforward_sampler(legacy, cfg):
    model, vae = tiny_models(tag="fast", **cfg)
    res = vae.config.resolution
    cond = model.conditioning(vae, smooth_images(3, res, 4), smooth_images(3, res, 5))
    kw = dict(top_k=20, top_p=0.9, style_strength=0.3)
    ref = reference_generate(
        model, vae, cond, legacy_kv_cache=legacy, seed=[5, 6, 7], return_logits=True, **kw
    )
    sampling = Sampling.plain(legacy_kv_cache=legacy, **kw)
    ours = model.generate(vae, cond, sampling, seed=[5, 6, 7], return_logits=True)
    for si in range(len(model.patch_nums)):
        assert torch.equal(ours.tokens[si], ref.tokens[si]), f"scale {si}"
        assert (ours.logits[si] - ref.logits[si]).abs().max() < 1e-4
    assert (ours.images - ref.images).abs().max() < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@torch.no_grad()
def test_reduced_precision_sampling_tracks_fp32(dtype):
    """bf16/fp16 autocast: logits within the dtype's tolerance, argmax agreement documented in the README."""
    if dtype == torch.float16:
        try:
            with torch.autocast("cpu", dtype=torch.float16):
                torch.nn.functional.linear(torch.ones(2, 2), torch.ones(2, 2))
        except RuntimeError:
            pytest.skip("this torch build has no fp16 autocast on the CPU")
    model, vae = tiny_models(tag="amp", patch_nums=(1, 2, 3, 4, 6), depth=3, num_heads=4, embed_dim=128)
    res = vae.config.resolution
    cond = model.conditioning(vae, smooth_images(4, res, 1), smooth_images(4, res, 2))
    full = model.generate(vae, cond, seed=[1, 2, 3, 4], return_logits=True)
    # same prefix for both: teacher-forced logits of fp32's tokens, fp32 vs autocast
    x = vae.quantize.idx_to_teacher_input(full.tokens)
    ref = model(x, cond)
    with torch.autocast("cpu", dtype=dtype):
        amp = model(x, cond)
    assert amp.dtype == torch.float32  # logits always fp32
    err = (amp - ref).abs().max().item() / ref.abs().max().item()
    assert err < 2e-2, err
    agree = (amp.argmax(-1) == ref.argmax(-1)).float().mean().item()
    assert agree > 0.95, agree
    # the reduced-precision sampler's cache is consistent with its own teacher forcing
    out = model.generate(vae, cond, Sampling.plain(dtype=dtype), seed=[1, 2, 3, 4], return_logits=True)
    with torch.autocast("cpu", dtype=dtype):
        teacher = model(vae.quantize.idx_to_teacher_input(out.tokens), cond)
    for si, (bg, ed) in enumerate(model.begin_ends):
        assert (out.logits[si] - teacher[:, bg:ed]).abs().max() < 2e-2 * ref.abs().max(), si
    assert out.images.dtype == torch.float32 and out.images.shape == full.images.shape


def test_parse_dtype():
    from stylevar.models.ops import parse_dtype

    assert parse_dtype(None) is None and parse_dtype("fp32") is None and parse_dtype(torch.float32) is None
    assert parse_dtype("bf16") == torch.bfloat16 and parse_dtype("torch.float16") == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        parse_dtype("int8")


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
@torch.no_grad()
def test_static_runner_matches_eager_sampling(dtype):
    """The CUDA-graph path's static buffers and fixed cache offsets (run eagerly here) give the eager results."""
    model, vae = tiny_models(tag="static", patch_nums=(1, 2, 3, 5), depth=2, num_heads=2)
    res = vae.config.resolution
    for call in range(2):  # the second call reuses the runner and its buffers with new conditions
        cond = model.conditioning(vae, smooth_images(2, res, 10 + call), smooth_images(2, res, 20 + call))
        sampling = Sampling.plain(top_k=30, top_p=0.95, dtype=dtype or "fp32", style_strength=0.2)
        kw = dict(seed=[call, call + 1], return_logits=True)
        eager = model.generate(vae, cond, sampling, **kw)
        static = model.generate(vae, cond, dataclasses.replace(sampling, cuda_graphs=True), **kw)
        tol = 1e-4 if dtype is None else 0.05
        for si in range(len(model.patch_nums)):
            if dtype is None:
                assert torch.equal(static.tokens[si], eager.tokens[si]), f"call {call} scale {si}"
            if torch.equal(static.tokens[si], eager.tokens[si]):
                assert (static.logits[si] - eager.logits[si]).abs().max() < tol
    assert len(model.__dict__["_static_runners"]) == 1
    with pytest.raises(ValueError, match="legacy_kv_cache"):
        model.generate(vae, cond, Sampling.plain(cuda_graphs=True, legacy_kv_cache=True))


@torch.no_grad()
def test_static_runner_refreshes_reduced_precision_weights():
    model, vae = tiny_models(tag="static2", patch_nums=(1, 2, 3), depth=1, num_heads=2)
    runner = model.static_runner(1, "cpu", torch.bfloat16)
    model.blocks[0].ffn.fc1.weight.add_(1.0)
    assert not torch.equal(runner.blocks[0].ffn.fc1.weight, model.blocks[0].ffn.fc1.weight.bfloat16())
    runner.refresh_weights()
    assert torch.equal(runner.blocks[0].ffn.fc1.weight, model.blocks[0].ffn.fc1.weight.bfloat16())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@torch.no_grad()
def test_cuda_graphs_replay_matches_eager_on_cuda():
    model, vae = tiny_models(tag="graph", patch_nums=(1, 2, 3, 5), depth=2, num_heads=2)
    model, vae = model.cuda(), vae.cuda()
    res = vae.config.resolution
    for call in range(2):
        cond = model.conditioning(
            vae,
            smooth_images(2, res, 30 + call).cuda() * 2 - 1,
            smooth_images(2, res, 40 + call).cuda() * 2 - 1,
        )
        kw = dict(seed=[call, call + 1], return_logits=True)
        eager = model.generate(vae, cond, Sampling.plain(top_k=30), **kw)
        graph = model.generate(vae, cond, Sampling.plain(top_k=30, cuda_graphs=True), **kw)
        for si in range(len(model.patch_nums)):
            assert torch.equal(graph.tokens[si], eager.tokens[si])
            assert (graph.logits[si] - eager.logits[si]).abs().max() < 1e-3


def test_release_memory_promptly_respects_the_users_setting(monkeypatch):
    import platform

    from stylevar._malloc import release_memory_promptly

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert release_memory_promptly() is False  # the user's own setting wins
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    assert release_memory_promptly() is (platform.libc_ver()[0] == "glibc")


@torch.no_grad()
def test_int8_weights_track_fp32():
    """--dtype int8: the blocks' weights int8 per channel (PyTorch's dynamic-quantization kernel); teacher-forced
    logits close to fp32's, the sampler consistent with its own teacher forcing, the fp32 weights released."""
    import copy

    from stylevar.models.quantized import quantize_int8_

    model, vae = tiny_models(tag="amp", patch_nums=(1, 2, 3, 4, 6), depth=3, num_heads=4, embed_dim=128)
    res = vae.config.resolution
    cond = model.conditioning(vae, smooth_images(4, res, 1), smooth_images(4, res, 2))
    full = model.generate(vae, cond, seed=[1, 2, 3, 4], return_logits=True)
    x = vae.quantize.idx_to_teacher_input(full.tokens)
    ref = model(x, cond)
    q = copy.deepcopy(model)
    before = sum(p.numel() for p in q.parameters())
    released = quantize_int8_(q)
    assert q.int8 and released > 0.8 * 4 * sum(p.numel() for p in model.blocks.parameters())
    assert sum(p.numel() for p in q.parameters()) < before - released // 4 + 1
    assert quantize_int8_(q) == 0  # idempotent
    got = q(x, cond)
    err = (got - ref).abs().max().item() / ref.abs().max().item()
    agree = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
    assert err < 3e-2 and agree > 0.95, (err, agree)
    out = q.generate(vae, cond, seed=[1, 2, 3, 4], return_logits=True)
    teacher = q(vae.quantize.idx_to_teacher_input(out.tokens), cond)
    # activations are quantized per call (per tensor): a scale's pass and the whole sequence's pass round
    # them on different grids, so the sampler matches teacher forcing to the int8 tolerance, not exactly
    for si, (bg, ed) in enumerate(q.begin_ends):
        assert (out.logits[si] - teacher[:, bg:ed]).abs().max() < 3e-2 * ref.abs().max(), si
    with pytest.raises(ValueError, match="int8"):
        q.generate(vae, cond, Sampling.plain(dtype=torch.bfloat16), seed=1)
