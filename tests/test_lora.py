"""LoRA adapters (docs/upstream.md §6.1), the GRPO checkpoint forms (§6.6) and ``stylevar merge-lora``.

Tolerances: "bit-exact" is ``torch.equal``; merged vs unmerged fp32 logits agree to 1e-5
absolute (the merge only reorders one fp32 sum per weight).
"""

from __future__ import annotations

import argparse
import copy
import json

import pytest
import torch
from torch import nn

from helpers import smooth_images, write_upstream
from stylevar.cli import main
from stylevar.config import Sampling
from stylevar.errors import CheckpointError, ConfigError
from stylevar.io import (
    apply_lora_to_plain_state,
    bake_wrapped_state,
    load_lora,
    load_pretrained,
    lora_hparams_from_checkpoint,
    merge_lora_checkpoint,
    save_lora,
)
from stylevar.models.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    has_lora,
    load_lora_state_dict,
    lora_disabled,
    lora_modules,
    lora_parameters,
    lora_state_dict,
    merge_lora_,
    restore_lora,
    set_lora_enabled,
    snapshot_lora,
    unload_lora,
)
from stylevar.models.ops import Linear, linear

ATOL = 1e-5
RANK, ALPHA = 4, 6.0  # alpha != 2 * rank: a file whose args are ignored would merge with the wrong scale


@pytest.fixture(scope="module")
def inputs(tiny):
    """Fixed images and teacher-forcing tokens for the tiny model."""
    model, vae = tiny
    g = torch.Generator().manual_seed(3)
    idx = [torch.randint(0, model.V, (2, pn * pn), generator=g) for pn in model.patch_nums]
    with torch.no_grad():
        x = vae.quantize.idx_to_teacher_input(idx)
    return smooth_images(2, 64, 0), smooth_images(2, 64, 1), x


@torch.no_grad()
def _logits(model, vae, inputs):
    style, content, x = inputs
    return model(x, model.conditioning(vae, style, content))


@torch.no_grad()
def _tokens(model, vae, inputs, seed=7):
    style, content, _ = inputs
    cond = model.conditioning(vae, style, content)
    out = model.generate(vae, cond, Sampling.plain(top_k=20, top_p=0.9), seed=seed, decode=False)
    return torch.cat(out.tokens, dim=1)


@torch.no_grad()
def _randomise(model, seed=0, scale=0.3):
    """Non-zero A and B in every adapter (a trained-looking update)."""
    g = torch.Generator().manual_seed(seed)
    for m in lora_modules(model).values():
        m.lora_A.copy_(torch.randn(m.lora_A.shape, generator=g) / m.in_features**0.5)
        m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * scale / m.rank**0.5)


def _wrapped(tiny, rank=RANK, alpha=ALPHA, seed=0):
    model = copy.deepcopy(tiny[0])
    apply_lora(model, LoRAConfig(rank=rank, alpha=alpha), generator=torch.Generator().manual_seed(seed))
    _randomise(model, seed)
    return model


def _max_diff(a, b) -> float:
    return (a - b).abs().max().item()


# ------------------------------------------------------------------------------------- config
def test_config_validation_and_round_trip():
    cfg = LoRAConfig()
    assert (cfg.rank, cfg.alpha, cfg.scaling) == (256, 512.0, 2.0)
    assert len(cfg.targets) == 5 and "attn.mat_qkv_guide" in cfg.targets
    c = LoRAConfig(rank=8, alpha=4, targets=["ffn.fc1"])
    assert c.targets == ("ffn.fc1",) and c.scaling == 0.5
    assert LoRAConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    for bad in (
        dict(rank=0),
        dict(rank=2.5),
        dict(rank="4"),
        dict(alpha="x"),
        dict(alpha=0),
        dict(alpha=float("nan")),
        dict(targets=()),
        dict(targets=("ffn.fc1", "ffn.fc1")),
        dict(targets=("",)),
    ):
        with pytest.raises(ConfigError):
            LoRAConfig(**bad)
    with pytest.raises(ConfigError, match="unknown field"):
        LoRAConfig.from_dict({"rank": 4, "dropout": 0.1})


def test_lora_linear_init_and_properties():
    base = nn.Linear(16, 8)
    w0 = base.weight.detach().clone()
    m = LoRALinear(base, 4, 8.0, generator=torch.Generator().manual_seed(0))
    assert m.base_weight is base.weight and m.base_bias is base.bias  # the same Parameters, frozen
    assert not m.base_weight.requires_grad and not m.base_bias.requires_grad
    assert m.lora_A.shape == (4, 16) and m.lora_B.shape == (8, 4) and m.scaling == 2.0
    assert m.lora_A.abs().max() <= 1 / 16**0.5 and m.lora_A.std() > 0.1  # U(+-1/sqrt(in))
    assert torch.equal(m.lora_B, torch.zeros(8, 4)) and torch.equal(m.weight, w0)
    assert set(m.state_dict()) == {"base_weight", "base_bias", "lora_A", "lora_B"}
    again = LoRALinear(nn.Linear(16, 8), 4, 8.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.lora_A, m.lora_A)  # the generator decides the draw
    nobias = LoRALinear(nn.Linear(16, 8, bias=False), 2, 4.0)
    assert nobias.bias is None and set(nobias.state_dict()) == {"base_weight", "lora_A", "lora_B"}
    with torch.no_grad():
        m.lora_B.normal_()
    x = torch.randn(3, 16)
    expect = x @ (w0 + m.lora_B @ m.lora_A * 2.0).T + base.bias
    assert _max_diff(m(x), expect) < ATOL
    assert _max_diff(m.delta(), m.lora_B @ m.lora_A * 2.0) == 0
    m.enabled = False
    assert m.weight is m.base_weight and torch.equal(m(x), linear(x, w0, base.bias))


# ------------------------------------------------------------------------------------- model
def test_apply_lora_freezes_everything_and_wraps_the_targets(tiny):
    model = copy.deepcopy(tiny[0])
    cfg_before = model.config.to_dict()
    params = apply_lora(model, LoRAConfig(rank=RANK, alpha=ALPHA))
    mods = lora_modules(model)
    depth = len(model.blocks)
    assert len(mods) == 5 * depth and "blocks.1.ffn.fc1" in mods and "blocks.0.attn.mat_qkv_guide" in mods
    assert has_lora(model) and model.lora_config == LoRAConfig(rank=RANK, alpha=ALPHA)
    assert model.config.to_dict() == cfg_before
    assert [id(p) for p in params] == [id(p) for p in lora_parameters(model)]
    assert params[0] is mods["blocks.0.attn.mat_qkv_guide"].lora_A  # block 0's targets first, A then B
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.{ab}" for n in mods for ab in ("lora_A", "lora_B")}
    with pytest.raises(ConfigError, match="already has LoRA"):
        apply_lora(model, LoRAConfig(rank=2, alpha=4))
    other = copy.deepcopy(tiny[0])
    with pytest.raises(ConfigError, match="not a linear layer"):
        apply_lora(other, LoRAConfig(rank=2, alpha=4, targets=("ffn.fc1", "ffn.act")))
    assert not has_lora(other) and all(p.requires_grad for p in other.parameters())  # untouched on error


def test_disabled_is_the_base_model_bit_exact(tiny, inputs):
    vae = tiny[1]
    base_logits = _logits(tiny[0], vae, inputs)
    model = copy.deepcopy(tiny[0])
    apply_lora(model, LoRAConfig(rank=RANK, alpha=ALPHA), generator=torch.Generator().manual_seed(1))
    assert torch.equal(_logits(model, vae, inputs), base_logits)  # enabled, B = 0
    _randomise(model)
    on = _logits(model, vae, inputs)
    assert _max_diff(on, base_logits) > 1e-2  # the adapters do change the model
    set_lora_enabled(model, False)
    assert torch.equal(_logits(model, vae, inputs), base_logits)
    assert torch.equal(_tokens(model, vae, inputs), _tokens(tiny[0], vae, inputs))
    set_lora_enabled(model, True)
    mods = lora_modules(model)
    mods["blocks.0.ffn.fc2"].enabled = False  # a mixed state is restored as it was
    with lora_disabled(model):
        assert torch.equal(_logits(model, vae, inputs), base_logits)
    assert not mods["blocks.0.ffn.fc2"].enabled
    assert all(m.enabled for n, m in mods.items() if n != "blocks.0.ffn.fc2")
    mods["blocks.0.ffn.fc2"].enabled = True
    assert torch.equal(_logits(model, vae, inputs), on)


def test_merged_and_unloaded_match_the_unmerged_model(tiny, inputs):
    vae = tiny[1]
    model = _wrapped(tiny)
    on = _logits(model, vae, inputs)
    tokens = _tokens(model, vae, inputs)
    mod = lora_modules(model)["blocks.1.attn.proj"]
    a_before = mod.lora_A.detach().clone()
    merge_lora_(model, generator=torch.Generator().manual_seed(5))
    assert _max_diff(_logits(model, vae, inputs), on) < ATOL
    assert not torch.equal(mod.lora_A, a_before) and mod.lora_A.abs().max() <= 1 / mod.in_features**0.5
    assert all(torch.count_nonzero(m.lora_B) == 0 for m in lora_modules(model).values())  # fresh adapters
    with lora_disabled(model):  # the merged update now lives in the base: the reference moved with it
        assert _max_diff(_logits(model, vae, inputs), on) < ATOL
    assert torch.equal(_tokens(model, vae, inputs), tokens)

    keys = set(tiny[0].state_dict())
    unloaded = unload_lora(_wrapped(tiny))
    assert not has_lora(unloaded) and not hasattr(unloaded, "lora_config")
    assert isinstance(unloaded.blocks[0].attn.mat_qkv_guide, Linear)
    assert set(unloaded.state_dict()) == keys  # upstream's plain key names
    assert _max_diff(_logits(unloaded, vae, inputs), on) < ATOL
    assert torch.equal(_tokens(unloaded, vae, inputs), tokens)  # sampling through the KV cache


def test_gradients_reach_only_the_adapters(tiny, inputs):
    model = _wrapped(tiny)
    style, content, x = inputs
    with torch.no_grad():
        cond = model.conditioning(tiny[1], style, content)
    model(x, cond).logsumexp(-1).mean().backward()
    for name, p in model.named_parameters():
        if ".lora_" in name:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name
    # the weight property also works under autocast and in a bf16 copy (the reduced-dtype sampler)
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, cond)
    out.float().mean().backward()
    assert all(p.grad is not None for p in lora_parameters(model))
    half = copy.deepcopy(model).to(torch.bfloat16)
    assert half.blocks[0].ffn.fc1.weight.dtype == torch.bfloat16
    with torch.no_grad():
        gen = model.generate(
            tiny[1], cond, Sampling.plain(dtype=torch.bfloat16, cuda_graphs=True), seed=0, decode=False
        )
    assert torch.cat(gen.tokens, 1).shape == (2, model.L)


def test_snapshot_restore_and_adapter_state(tiny, inputs):
    vae = tiny[1]
    model = _wrapped(tiny)
    on = _logits(model, vae, inputs)
    snap = snapshot_lora(model)
    assert set(snap) == set(lora_modules(model)) and snap["blocks.0.ffn.fc1"][0].device.type == "cpu"
    _randomise(model, seed=9)
    assert torch.equal(snap["blocks.0.ffn.fc1"][1], _wrapped(tiny).blocks[0].ffn.fc1.lora_B)  # a copy
    restore_lora(model, snap)
    assert torch.equal(_logits(model, vae, inputs), on)
    with pytest.raises(ConfigError):
        restore_lora(model, {k: v for k, v in snap.items() if "fc2" not in k})

    sd = lora_state_dict(model)
    assert len(sd) == 2 * len(lora_modules(model)) and "blocks.1.attn.mat_qkv_target.lora_B" in sd
    other = copy.deepcopy(tiny[0])
    apply_lora(other, LoRAConfig(rank=RANK, alpha=ALPHA))
    load_lora_state_dict(other, sd)
    assert torch.equal(_logits(other, vae, inputs), on)
    with pytest.raises(CheckpointError, match="missing LoRA keys"):
        load_lora_state_dict(other, {k: v for k, v in sd.items() if "fc2" not in k})
    load_lora_state_dict(other, {k: v for k, v in sd.items() if "fc2" not in k}, strict=False)
    with pytest.raises(CheckpointError, match="another LoRA rank"):
        load_lora_state_dict(other, {k: v[:2] if k.endswith("lora_A") else v for k, v in sd.items()})


# ------------------------------------------------------------------------------------- state dicts
def test_the_three_checkpoint_forms_agree(tiny):
    model = _wrapped(tiny)
    plain = unload_lora(copy.deepcopy(model)).state_dict()
    base_sd = tiny[0].state_dict()
    via_adapters = apply_lora_to_plain_state(base_sd, lora_state_dict(model), RANK, ALPHA)  # form 3
    via_wrapped = bake_wrapped_state(model.state_dict(), RANK, ALPHA)  # form 2
    for got in (via_adapters, via_wrapped):
        assert set(got) == set(plain)
        assert max(_max_diff(got[k], plain[k]) for k in plain) < 1e-6
    assert torch.equal(base_sd["head.weight"], via_adapters["head.weight"])
    assert not torch.equal(base_sd["blocks.0.ffn.fc1.weight"], via_adapters["blocks.0.ffn.fc1.weight"])
    # defaults: rank from lora_A's rows, alpha = 2 * rank (upstream's 256 / 512)
    default = bake_wrapped_state(model.state_dict())
    k = "blocks.0.ffn.fc1.weight"
    delta = model.blocks[0].ffn.fc1.delta().detach()
    assert _max_diff(default[k] - base_sd[k], delta * (2 * RANK) / ALPHA) < 1e-6
    with pytest.raises(CheckpointError, match="does not match"):
        bake_wrapped_state(model.state_dict(), rank=RANK + 1)
    with pytest.raises(CheckpointError, match="right base"):
        apply_lora_to_plain_state({"head.weight": base_sd["head.weight"]}, lora_state_dict(model))
    assert lora_hparams_from_checkpoint({"args": {"lora_rank": 8, "lora_alpha": 16}}) == (8, 16.0)
    assert lora_hparams_from_checkpoint({"args": {"lora_r": 4}}) == (4, None)
    assert lora_hparams_from_checkpoint({"args": argparse.Namespace(rank=2, alpha=3)}) == (2, 3.0)
    assert lora_hparams_from_checkpoint({"args": {"lora_rank": True, "alpha": [0.1]}}) == (None, None)
    assert lora_hparams_from_checkpoint({"model": {}}) == (None, None)


def test_our_lora_directory(tmp_path, tiny, inputs, ours_dir):
    vae = tiny[1]
    model = _wrapped(tiny)
    on = _logits(model, vae, inputs)
    out = save_lora(tmp_path / "adapter", model, info={"base": str(ours_dir), "step": 3})
    raw = json.loads((out / "adapter_config.json").read_text())
    assert raw["format"] == "stylevar-lora" and raw["lora"] == {
        "rank": RANK,
        "alpha": ALPHA,
        "targets": list(LoRAConfig().targets),
    }
    assert raw["stylevar"] == model.config.to_dict()
    cfg, sd, meta = load_lora(out)
    assert cfg == model.lora_config and meta["info"]["step"] == 3
    own = lora_state_dict(model)
    assert set(sd) == set(own) and all(torch.equal(sd[k], own[k]) for k in own)
    ckpt = load_pretrained(out)  # the recorded base
    assert _max_diff(_logits(ckpt.model, ckpt.vae, inputs), on) < ATOL
    assert ckpt.info["lora_merged"]["base"] == str(ours_dir) and not has_lora(ckpt.model)
    bare = save_lora(tmp_path / "bare", model)
    with pytest.raises(CheckpointError, match="--base") as e:
        load_pretrained(bare)
    assert "\n" not in str(e.value)
    ckpt = load_pretrained(bare, base=ours_dir)
    assert _max_diff(_logits(ckpt.model, ckpt.vae, inputs), on) < ATOL
    with pytest.raises(CheckpointError, match="not a stylevar LoRA directory"):
        save_lora(ours_dir, model)


def test_upstream_grpo_files_load_and_merge(tmp_path, tiny, inputs):
    vae = tiny[1]
    model = _wrapped(tiny)
    on = _logits(model, vae, inputs)
    sft, vae_file = write_upstream(tiny[0], vae, tmp_path / "sft", model_name="StyleVAR_SFT.pth")
    runs = tmp_path / "run"
    runs.mkdir()
    args = {"lora_rank": RANK, "lora_alpha": ALPHA, "lr": 1e-5}
    torch.save({"step": 100, "model": lora_state_dict(model), "args": args}, runs / "grpo_roll0.pth")
    torch.save({"step": 300, "model": model.state_dict(), "args": args}, runs / "grpo_latest.pth")
    torch.save({"step": 300, "model": model.state_dict()}, runs / "grpo_noargs.pth")

    ckpt = load_pretrained(runs / "grpo_roll0.pth", base=sft)  # VQ-VAE from the base's folder
    assert _max_diff(_logits(ckpt.model, ckpt.vae, inputs), on) < ATOL
    assert ckpt.info["lora_merged"] == {"rank": RANK, "alpha": ALPHA, "base": str(sft), "modules": 10}
    assert ckpt.info["variant"] == "grpo" and ckpt.model.config.alpha == model.config.alpha
    with pytest.raises(CheckpointError) as e:
        load_pretrained(runs / "grpo_roll0.pth", vae=vae_file)
    assert "--base SFT_CHECKPOINT" in str(e.value) and "\n" not in str(e.value)

    ckpt = load_pretrained(runs / "grpo_latest.pth", vae=vae_file)  # LoRA-wrapped: baked
    assert _max_diff(_logits(ckpt.model, ckpt.vae, inputs), on) < ATOL
    assert ckpt.info["lora_baked"] == {"rank": RANK, "alpha": ALPHA}
    ckpt = load_pretrained(runs / "grpo_noargs.pth", vae=vae_file)  # no args: upstream's alpha = 2 * rank
    assert ckpt.info["lora_baked"] == {"rank": RANK, "alpha": 2.0 * RANK}
    assert _max_diff(_logits(ckpt.model, ckpt.vae, inputs), on) > 1e-3

    ours = merge_lora_checkpoint(runs / "grpo_roll0.pth", tmp_path / "merged", base=sft)
    ckpt = load_pretrained(ours)
    assert _max_diff(_logits(ckpt.model, ckpt.vae, inputs), on) < ATOL
    assert "lora merged" in ckpt.info["merge_note"]
    pth = merge_lora_checkpoint(
        runs / "grpo_latest.pth", tmp_path / "up" / "StyleVAR-GRPO-merged.pth", fmt="upstream"
    )
    obj = torch.load(pth, weights_only=True)
    assert set(obj) == {"model", "note"} and set(obj["model"]) == set(tiny[0].state_dict())
    ckpt = load_pretrained(pth, vae=vae_file)
    assert _max_diff(_logits(ckpt.model, ckpt.vae, inputs), on) < ATOL
    # a LoRA-wrapped base is baked first (upstream's merge script); the upstream output needs no VQ-VAE
    lone = tmp_path / "lone"
    lone.mkdir()
    base_model = _wrapped(tiny, seed=4)
    torch.save({"model": base_model.state_dict(), "args": args}, lone / "sft_wrapped.pth")
    pth = merge_lora_checkpoint(
        runs / "grpo_roll0.pth", tmp_path / "two.pth", base=lone / "sft_wrapped.pth", fmt="upstream"
    )
    expect = unload_lora(base_model)
    apply_lora(expect, LoRAConfig(rank=RANK, alpha=ALPHA))
    load_lora_state_dict(expect, lora_state_dict(model))
    ckpt = load_pretrained(pth, vae=vae_file)
    assert _max_diff(_logits(ckpt.model, ckpt.vae, inputs), _logits(expect, vae, inputs)) < ATOL
    with pytest.raises(CheckpointError, match="pass --vae"):
        merge_lora_checkpoint(runs / "grpo_roll0.pth", tmp_path / "x", base=lone / "sft_wrapped.pth")
    with pytest.raises(CheckpointError, match="does not match"):
        merge_lora_checkpoint(runs / "grpo_roll0.pth", tmp_path / "y.pth", base=sft, rank=8, fmt="upstream")


def test_merge_lora_command(tmp_path, tiny, inputs, capsys):
    vae = tiny[1]
    model = _wrapped(tiny)
    on = _logits(model, vae, inputs)
    sft, vae_file = write_upstream(tiny[0], vae, tmp_path / "sft", model_name="StyleVAR_SFT.pth")
    grpo = tmp_path / "grpo_ep0.pth"
    torch.save(
        {"step": 5, "model": lora_state_dict(model), "args": {"lora_rank": RANK, "lora_alpha": ALPHA}}, grpo
    )
    assert main(["merge-lora", str(grpo), "--base", str(sft), "-o", str(tmp_path / "out")]) == 0
    assert "wrote" in capsys.readouterr().out
    ckpt = load_pretrained(tmp_path / "out")
    assert _max_diff(_logits(ckpt.model, ckpt.vae, inputs), on) < ATOL
    rc = main(
        ["merge-lora", str(grpo), "--base", str(sft), "-o", str(tmp_path / "m.pth"), "--format", "upstream"]
        + ["--rank", str(RANK), "--lora-alpha", str(ALPHA)]
    )
    assert rc == 0 and (tmp_path / "m.pth").is_file()
    ckpt = load_pretrained(tmp_path / "m.pth", vae=vae_file)
    assert _max_diff(_logits(ckpt.model, ckpt.vae, inputs), on) < ATOL
    capsys.readouterr()
    assert main(["merge-lora", str(grpo), "-o", str(tmp_path / "nobase")]) == 1
    err = capsys.readouterr().err.strip()
    assert "--base" in err and str(grpo) in err and len(err.splitlines()) == 1
    assert main(["info", str(grpo), "--base", str(sft)]) == 0  # every loading command takes --base
    assert json.loads(capsys.readouterr().out)["info"]["lora_merged"]["rank"] == RANK
