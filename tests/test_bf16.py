"""--dtype bf16 on the CPU (weights stored in bf16 once, no autocast) and --dtype auto (docs/speed.md,
"bf16 on the CPU")."""

from __future__ import annotations

import argparse
import copy
import json

import pytest
import torch
from torch import nn

from helpers import smooth_images, tiny_models, write_smooth_pngs
from stylevar.config import Sampling
from stylevar.errors import ConfigError
from stylevar.models.quantized import to_bf16_
from stylevar.stylize.pipeline import StyleVARPipeline

BF16, FP32, CL = torch.bfloat16, torch.float32, torch.channels_last


@pytest.fixture(scope="module")
def pics(tmp_path_factory):
    return write_smooth_pngs(tmp_path_factory.mktemp("pics"), [(64, 64), (70, 50)], seed=30, stem="img")


def _pipe(tiny) -> StyleVARPipeline:
    return StyleVARPipeline(*copy.deepcopy(tiny), device="cpu")


def _tokens_agree(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return torch.cat([(x == y).flatten() for x, y in zip(a, b)]).float().mean().item()


def test_bf16_stores_the_weights_once_and_keeps_the_rest_fp32(tiny):
    pipe = _pipe(tiny)
    assert pipe.prepare_dtype("bf16") is None  # no autocast: the weights carry the dtype
    m, v = pipe.model, pipe.vae
    assert m.bf16 and not m.int8
    for name, p in m.blocks.named_parameters():  # products and biases; each head's temperature stays fp32
        assert p.dtype == (FP32 if name.endswith("scale_mul_1H11") else BF16), name
    convs = [
        c
        for part in (m.content_encoder, m.style_encoder, v.encoder, v.decoder, v.post_quant_conv)
        for c in part.modules()
        if isinstance(c, nn.Conv2d)
    ]
    assert len(convs) > 20
    for c in convs:
        assert c.weight.dtype == BF16 and c.weight.is_contiguous(memory_format=CL)
        assert c.bias is None or c.bias.dtype == BF16
    # norms, embeddings, the heads, quant_conv and the quantizer: fp32
    kept = [m.head, m.head_nm, m.word_embed, m.feat_emb, m.lvl_embed, v.quant_conv, v.quantize]
    kept += [n for part in (m, v) for n in part.modules() if isinstance(n, (nn.GroupNorm, nn.BatchNorm2d))]
    assert all(p.dtype == FP32 for k in kept for p in k.parameters())
    assert m.pos_1LC.dtype == m.pos_start.dtype == FP32
    assert to_bf16_(m, v) == 0  # idempotent
    assert pipe.prepare_dtype("auto") is None and pipe.prepare_dtype("bfloat16") is None


def test_bf16_runs_without_autocast(tiny, pics, monkeypatch):
    pipe = _pipe(tiny)
    pipe.prepare_dtype("bf16")

    def no_autocast_here(*args, **kwargs):
        raise AssertionError("a bf16-weight run entered an autocast region")

    monkeypatch.setattr(torch, "autocast", no_autocast_here)
    out = pipe(pics[0], pics[1], seed=4, num_samples=2, dtype="bf16", output_type="pt")
    static = pipe(pics[0], pics[1], seed=4, num_samples=2, dtype="bf16", cuda_graphs=True, output_type="pt")
    assert len(out) == 2 and all(img.dtype == FP32 and img.isfinite().all() for img in out)
    assert all(torch.equal(a, b) for a, b in zip(out, static))  # the static-buffer path (eager on the CPU)


@torch.no_grad()
def test_bf16_weights_track_fp32():
    """Thresholds: bf16 keeps 8 significant bits (rounding 2^-9 = 0.2% per op). On this model (the one of
    test_fastpath's autocast and int8 tests) teacher-forced logits measured within 0.35% of the largest fp32
    logit with every argmax the same, and the weights' run within 0.4% of autocast's (the same arithmetic,
    rounded at a few other places); the tests allow 2% and 97%. Greedy sampling from the same conditioning
    measured 95.5-98.3% of fp32's tokens (a flipped token changes every later scale's input), from the bf16
    encoders' conditioning 90-98% (their VQ tokens flip too): the tests allow 90% and 80%."""
    model, vae = tiny_models(tag="amp", patch_nums=(1, 2, 3, 4, 6), depth=3, num_heads=4, embed_dim=128)
    res = vae.config.resolution
    style, content = smooth_images(8, res, 10), smooth_images(8, res, 20)
    cond = model.conditioning(vae, style, content)
    greedy = Sampling.plain(top_k=1)
    full = model.generate(vae, cond, greedy, seed=list(range(8)), return_logits=True)
    x = vae.quantize.idx_to_teacher_input(full.tokens)
    ref = model(x, cond)
    with torch.autocast("cpu", dtype=BF16):
        amp = model(x, cond)
    q, qv = copy.deepcopy(model), copy.deepcopy(vae)
    released = to_bf16_(q, qv)
    assert released > 0.45 * 4 * sum(p.numel() for p in model.blocks.parameters())
    got = q(x, cond)
    assert got.dtype == FP32  # logits always fp32
    top = ref.abs().max().item()
    err = (got - ref).abs().max().item() / top
    agree = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
    assert err < 2e-2 and agree > 0.97, (err, agree)
    assert (got - amp).abs().max().item() / top < 1e-2
    bf16_greedy = Sampling.plain(top_k=1, dtype="bf16")
    same_cond = q.generate(qv, cond, bf16_greedy, seed=list(range(8)), return_logits=True)
    assert _tokens_agree(same_cond.tokens, full.tokens) > 0.9
    # the sampler is consistent with its own teacher forcing
    teacher = q(qv.quantize.idx_to_teacher_input(same_cond.tokens), cond)
    for si, (bg, ed) in enumerate(q.begin_ends):
        assert (same_cond.logits[si] - teacher[:, bg:ed]).abs().max() < 2e-2 * top, si
    own = q.generate(qv, q.conditioning(qv, style, content), bf16_greedy, seed=list(range(8)))
    assert _tokens_agree(own.tokens, full.tokens) > 0.8
    assert own.images.dtype == FP32 and own.images.shape == full.images.shape and own.images.is_contiguous()


def test_a_bf16_pipeline_refuses_fp32_afterwards(tiny, pics):
    """The conversion releases the fp32 weights: fp32 (and fp16, int8) would not be what was asked for, so
    they are refused with a one-line error; bf16 and auto go on."""
    pipe = _pipe(tiny)
    bf16 = pipe(pics[0], pics[1], seed=2, dtype="bf16", output_type="pt")[0]
    auto = pipe(pics[0], pics[1], seed=2, dtype="auto", output_type="pt")[0]
    assert torch.equal(bf16, auto)
    for other in ("fp32", "fp16", "int8"):
        with pytest.raises(ConfigError, match="bf16 now.*load the model again"):
            pipe(pics[0], pics[1], seed=2, dtype=other)
    with pytest.raises(ConfigError, match="bf16 now"):
        pipe(pics[0], pics[1], seed=2)  # the default, fp32
    int8 = _pipe(tiny)
    int8.prepare_dtype("int8")
    assert int8.prepare_dtype("auto") is None and not int8.model.bf16  # auto keeps int8
    with pytest.raises(ConfigError, match="int8 now"):
        int8.prepare_dtype("bf16")


def test_auto_resolves_per_device(tiny, pics, monkeypatch):
    from stylevar import devices
    from stylevar.devices import resolve_dtype

    monkeypatch.setattr(devices, "has_fast_bf16", lambda device: False)
    assert resolve_dtype("auto", "cpu") == "fp32"
    slow = _pipe(tiny)
    fp32 = _pipe(tiny)(pics[0], pics[1], seed=1, output_type="pt")[0]
    assert torch.equal(slow(pics[0], pics[1], seed=1, dtype="auto", output_type="pt")[0], fp32)
    assert not slow.model.bf16  # exact fp32: nothing converted

    monkeypatch.setattr(devices, "has_fast_bf16", lambda device: True)
    assert resolve_dtype("auto", "cpu") == "bf16"
    fast = _pipe(tiny)
    got = fast(pics[0], pics[1], seed=1, dtype="auto", output_type="pt")[0]
    assert fast.model.bf16
    assert torch.equal(got, _pipe(tiny)(pics[0], pics[1], seed=1, dtype="bf16", output_type="pt")[0])
    # a converted model keeps its arithmetic; explicit values pass unchanged
    assert resolve_dtype("auto", "cpu", fast.model) == "bf16"
    assert resolve_dtype("auto", "cpu", type("M", (), {"int8": True})()) == "int8"
    explicit = ["fp32", "bf16", "fp16", "int8"]
    assert [resolve_dtype(d, "cpu") for d in explicit] == explicit
    # the model alone: auto runs the weights as stored (fp32 here: exact)
    model, vae = copy.deepcopy(tiny)
    cond = model.conditioning(vae, smooth_images(1, 64, 3), smooth_images(1, 64, 4))
    a = model.generate(vae, cond, Sampling.plain(dtype="auto"), seed=5)
    b = model.generate(vae, cond, Sampling.plain(), seed=5)
    assert torch.equal(a.images, b.images)


def test_sampling_accepts_auto_and_checkpoints_keep_it(tiny, tmp_path):
    from stylevar.cli.checkpoints import CONVERT_DTYPES
    from stylevar.cli.settings_flags import add_sampling_flags
    from stylevar.io import load_pretrained, save_pretrained

    assert Sampling(dtype="auto").dtype == "auto" and Sampling(dtype="AUTO").dtype == "auto"
    with pytest.raises(ConfigError, match="fp32, bf16, fp16, int8, auto"):
        Sampling(dtype="fp64")
    assert "auto" not in CONVERT_DTYPES  # a way of computing, not a weight format on disk
    # a checkpoint stores its dtype among its sampling defaults; one written before reads as fp32
    save_pretrained(tmp_path / "auto", *tiny, sampling=Sampling(top_k=7, dtype="auto"))
    raw = json.loads((tmp_path / "auto" / "config.json").read_text())
    assert raw["sampling"]["dtype"] == "auto"
    ckpt = load_pretrained(tmp_path / "auto")
    assert ckpt.sampling.dtype == "auto" and ckpt.sampling.top_k == 7
    pipe = StyleVARPipeline(ckpt.model, ckpt.vae, ckpt.sampling)
    assert pipe.settings().sampling.dtype == "auto" and pipe.settings(dtype="fp32").sampling.dtype == "fp32"
    del raw["sampling"]["dtype"]
    (tmp_path / "auto" / "config.json").write_text(json.dumps(raw))
    assert load_pretrained(tmp_path / "auto").sampling.dtype == "fp32"
    # the command line: --dtype auto, and by default the checkpoint's
    p = argparse.ArgumentParser()
    add_sampling_flags(p)
    assert p.parse_args(["--dtype", "auto"]).dtype == "auto" and p.parse_args([]).dtype is None
    assert "auto: bf16 where the device computes it natively" in " ".join(p.format_help().split())
