"""Checkpoints: our format, upstream .pth wrappings, safe loading, wrong kinds, the Hub cache, convert."""

from __future__ import annotations

import argparse
import json
import os
import shutil

import pytest
import torch

from helpers import smooth_images, write_upstream
from stylevar.errors import CheckpointError
from stylevar.io import (
    classify,
    convert_upstream,
    extract_state_dict,
    load_pretrained,
    load_upstream,
    save_pretrained,
)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


@torch.no_grad()
def _logits(model, vae):
    cond = model.conditioning(vae, smooth_images(1, 64, 0), smooth_images(1, 64, 1))
    return model.generate(vae, cond, seed=0, return_logits=True, decode=False).logits[-1]


def test_upstream_pair_loads_strictly_and_infers_its_config(upstream_dir, tiny):
    ckpt = load_pretrained(upstream_dir)
    assert ckpt.model.config.to_dict() == {
        **tiny[0].config.to_dict(),
        "drop_path_rate": ckpt.model.config.drop_path_rate,
    }
    assert ckpt.vae.config == tiny[1].config
    assert _same_weights(ckpt.model, tiny[0]) and _same_weights(ckpt.vae, tiny[1])
    assert torch.equal(_logits(ckpt.model, ckpt.vae), _logits(*tiny))
    assert ckpt.info["variant"] == "grpo" and ckpt.info["alpha_source"] == "paper"


@pytest.mark.parametrize("wrap", ["model", "state_dict", None, "trainer", "ddp"])
def test_every_upstream_wrapping(tmp_path, tiny, wrap):
    model, vae = tiny
    sd = model.state_dict()
    if wrap == "trainer":  # SFT trainer checkpoint: the VQ-VAE rides along, optimizer state too
        obj = {
            "epoch": 3,
            "iter": 0,
            "trainer": {
                "var_wo_ddp": sd,
                "vae_local": vae.state_dict(),
                "var_opt": {"optimizer": {"state": {}, "param_groups": []}},
            },
            "args": {"tblr": 1e-3},
        }
    elif wrap == "ddp":
        obj = {"model": {f"module.{k}": v for k, v in sd.items()}, "optimizer": {"state": {}}, "step": 7}
    elif wrap is None:
        obj = sd
    else:
        obj = {wrap: sd}
    torch.save(obj, tmp_path / "StyleVAR_SFT.pth")
    vae_arg = None if wrap == "trainer" else tmp_path / "vae.pth"
    if vae_arg:
        torch.save(vae.state_dict(), vae_arg)
    ckpt = load_upstream(tmp_path / "StyleVAR_SFT.pth", vae_arg)
    assert _same_weights(ckpt.model, model) and _same_weights(ckpt.vae, vae)
    assert ckpt.info["variant"] == "sft" and ckpt.info["alpha_source"] == "sft"  # guessed from the file name
    assert ckpt.model.config.alpha == (0.1, 0.3, 0.4, 0.5)  # the SFT preset resampled to 4 scales


def test_alpha_defaults_by_variant_and_override(upstream_dir):
    assert load_pretrained(upstream_dir, variant="grpo").model.config.alpha == (0.2, 0.4, 0.6, 0.8)
    assert load_pretrained(upstream_dir, alpha=[0.5, 0.5, 0.5, 0.5]).model.config.alpha == (0.5,) * 4
    assert load_pretrained(upstream_dir, alpha="sft").model.config.alpha == (0.1, 0.3, 0.4, 0.5)


def test_pickled_objects_are_refused_unless_trusted(tmp_path, tiny):
    model, vae = tiny
    obj = {"model": model.state_dict(), "args": argparse.Namespace(lr=1e-5)}  # upstream-style args object
    torch.save(obj, tmp_path / "StyleVAR-GRPO.pth")
    torch.save(vae.state_dict(), tmp_path / "vae_ch160v4096z32.pth")
    with pytest.raises(CheckpointError) as e:
        load_pretrained(tmp_path)
    assert (
        "--trust-checkpoint" in str(e.value) and "weights_only" in str(e.value) and "\n" not in str(e.value)
    )
    ckpt = load_pretrained(tmp_path, allow_pickle=True)
    assert _same_weights(ckpt.model, model)


def test_our_format_round_trip_and_dtype(tmp_path, tiny, ours_dir):
    cfg = json.loads((ours_dir / "config.json").read_text())
    assert cfg["format"] == "stylevar" and cfg["stylevar"]["alpha"] == list(tiny[0].config.alpha)
    ckpt = load_pretrained(ours_dir)
    assert _same_weights(ckpt.model, tiny[0]) and _same_weights(ckpt.vae, tiny[1])
    assert ckpt.model.pos_1LC.dtype == torch.float32
    half = save_pretrained(tmp_path / "bf16", *tiny, dtype=torch.bfloat16)
    small = load_pretrained(half)
    assert small.model.pos_1LC.dtype == torch.float32  # cast back to fp32 at load
    assert (small.model.head.weight - tiny[0].head.weight).abs().max() < 1e-2
    assert (half / "model.safetensors").stat().st_size < 0.6 * (ours_dir / "model.safetensors").stat().st_size


def test_save_is_atomic(tmp_path, tiny, monkeypatch):
    out = save_pretrained(tmp_path / "ck", *tiny)
    before = (out / "model.safetensors").read_bytes()
    import safetensors.torch

    calls = {"n": 0}
    real = safetensors.torch.save_file

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(*a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", failing)
    with pytest.raises(OSError):
        save_pretrained(out, *tiny)
    assert (out / "model.safetensors").read_bytes() == before  # the old checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary leftovers


def test_wrong_kinds_and_broken_files(tmp_path, tiny, upstream_dir):
    model, vae = tiny
    vae_file = upstream_dir / "vae_ch160v4096z32.pth"
    model_file = upstream_dir / "StyleVAR-GRPO.pth"
    cases = {}
    cases["vae as model"] = (lambda: load_pretrained(vae_file, vae=vae_file), "VQ-VAE (tokenizer) checkpoint")
    cases["model as vae"] = (lambda: load_pretrained(model_file, vae=model_file), "not a VQ-VAE checkpoint")
    var_sd = {"class_emb.weight": torch.zeros(3, 4), "blocks.0.attn.mat_qkv.weight": torch.zeros(12, 4)}
    torch.save({"model": var_sd}, tmp_path / "var_d20.pth")
    cases["vanilla VAR"] = (
        lambda: load_pretrained(tmp_path / "var_d20.pth", vae=vae_file),
        "vanilla (class-conditional) VAR",
    )
    lora = {"blocks.0.ffn.fc1.lora_A": torch.zeros(2, 4), "blocks.0.ffn.fc1.lora_B": torch.zeros(4, 2)}
    torch.save({"model": lora}, tmp_path / "grpo_roll0.pth")
    cases["lora only"] = (
        lambda: load_pretrained(tmp_path / "grpo_roll0.pth", vae=vae_file),
        "only LoRA adapters",
    )
    torch.save({"model": {"foo.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    cases["unknown"] = (
        lambda: load_pretrained(tmp_path / "other.pth", vae=vae_file),
        "match neither StyleVAR",
    )
    (tmp_path / "trunc.pth").write_bytes(model_file.read_bytes()[:5000])
    cases["truncated"] = (
        lambda: load_pretrained(tmp_path / "trunc.pth", vae=vae_file),
        "not a valid PyTorch checkpoint",
    )
    (tmp_path / "text.pth").write_text("hello")
    cases["text"] = (lambda: load_pretrained(tmp_path / "text.pth", vae=vae_file), "is not a checkpoint")
    cases["missing"] = (lambda: load_pretrained(tmp_path / "nope.pth"), "not found")
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(model_file, lone / "StyleVAR-GRPO.pth")
    cases["no vae"] = (lambda: load_pretrained(lone / "StyleVAR-GRPO.pth"), "pass --vae")
    cases["empty dir"] = (lambda: load_pretrained(tmp_path / "empty_dir_that_exists"), "holds neither")
    (tmp_path / "empty_dir_that_exists").mkdir()
    small_vae = type(vae)(type(vae.config)(vocab_size=32, z_channels=4, ch=32, patch_nums=(1, 2, 3, 4)))
    torch.save(small_vae.state_dict(), tmp_path / "vae32.pth")
    cases["vae mismatch"] = (lambda: load_pretrained(model_file, vae=tmp_path / "vae32.pth"), "vocab_size")
    for name, (fn, fragment) in cases.items():
        with pytest.raises(CheckpointError) as e:
            fn()
        msg = str(e.value)
        assert fragment in msg, (name, msg)
        assert "\n" not in msg, name


def test_state_dict_extraction_rules():
    t = {"a": torch.zeros(1)}
    assert extract_state_dict({"trainer": {"var_wo_ddp": t}, "model": {"b": torch.zeros(1)}}) == t
    assert extract_state_dict({"weights": t, "note": "x"}) == t
    assert extract_state_dict({"wrapper": t, "step": 3}) == t  # the single nested tensor dict
    with pytest.raises(CheckpointError):
        extract_state_dict({"x": t, "y": t})
    assert classify({"blocks.0.attn.mat_qkv_guide.weight": torch.zeros(1)}) == "stylevar"


def _fake_hub_cache(cache, repo, files: dict):
    """A Hugging Face cache laid out as huggingface_hub writes it (refs/main -> snapshots/<commit>/)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    for name, src in files.items():
        shutil.copy(src, snap / name)


def _cache_release(cache, upstream_dir):
    """The released GRPO + VQ-VAE files (small stand-ins) in a Hugging Face cache."""
    _fake_hub_cache(
        cache,
        "Senfier-LiqiJing/StyleVAR",
        {name: upstream_dir / name for name in ("StyleVAR-GRPO.pth", "vae_ch160v4096z32.pth")},
    )


def test_hub_repo_from_the_cache_offline(tmp_path, upstream_dir, tiny, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hf"
    _cache_release(cache, upstream_dir)
    ckpt = load_pretrained(cache_dir=cache)  # default repo, default variant grpo
    assert _same_weights(ckpt.model, tiny[0]) and ckpt.info["repo_id"] == "Senfier-LiqiJing/StyleVAR"
    with pytest.raises(CheckpointError) as e:  # the SFT file is not cached and we are offline
        load_pretrained(variant="sft", cache_dir=cache)
    msg = str(e.value)
    assert (
        "StyleVAR_SFT.pth" in msg
        and "offline" in msg
        and "hf download Senfier-LiqiJing/StyleVAR StyleVAR_SFT.pth vae_ch160v4096z32.pth --local-dir StyleVAR"
        in msg
        and msg.endswith("--checkpoint StyleVAR")
        and "\n" not in msg
    )
    with pytest.raises(CheckpointError) as e:  # with --vae given, only the model file is named
        load_pretrained(variant="sft", vae=upstream_dir / "vae_ch160v4096z32.pth", cache_dir=cache)
    assert "hf download Senfier-LiqiJing/StyleVAR StyleVAR_SFT.pth --local-dir StyleVAR'" in str(e.value)


def test_unresolvable_hub_uses_the_cache_without_retrying(tmp_path, upstream_dir, tiny, monkeypatch):
    """No network at all (the Hub's name does not resolve): straight to the cache, no retry loop."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # RFC 2606: never resolves
    calls = []
    import huggingface_hub

    real = huggingface_hub.hf_hub_download
    monkeypatch.setattr(
        huggingface_hub,
        "hf_hub_download",
        lambda *a, **k: calls.append(k["local_files_only"]) or real(*a, **k),
    )
    cache = tmp_path / "hf"
    _cache_release(cache, upstream_dir)
    ckpt = load_pretrained(cache_dir=cache)
    assert _same_weights(ckpt.model, tiny[0])
    assert calls and all(calls)  # every lookup was cache-only
    with pytest.raises(CheckpointError, match="offline and not in the Hugging Face cache"):
        load_pretrained(variant="sft", cache_dir=cache)


def test_hub_repo_in_our_format_from_the_cache(tmp_path, ours_dir, tiny, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hf"
    _fake_hub_cache(cache, "someone/stylevar-mine", {p.name: p for p in ours_dir.iterdir()})
    ckpt = load_pretrained("someone/stylevar-mine", cache_dir=cache)
    assert _same_weights(ckpt.model, tiny[0])


def test_not_a_path_nor_a_repo():
    with pytest.raises(CheckpointError, match="neither a local path nor a Hub repo id"):
        load_pretrained("./no/such/dir")


def test_convert_upstream_to_our_format(tmp_path, upstream_dir, tiny):
    out = convert_upstream(upstream_dir / "StyleVAR-GRPO.pth", tmp_path / "conv", variant="sft")
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "vqvae.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["info"]["variant"] == "sft" and cfg["stylevar"]["alpha"] == [0.1, 0.3, 0.4, 0.5]
    ckpt = load_pretrained(out)
    assert _same_weights(ckpt.model, tiny[0]) and _same_weights(ckpt.vae, tiny[1])
    assert ckpt.model.config.alpha == (0.1, 0.3, 0.4, 0.5)


def test_write_upstream_helper_matches_release_layout(tmp_path, tiny):
    mp, vp = write_upstream(*tiny, tmp_path)
    obj = torch.load(mp, weights_only=True)
    assert list(obj) == ["model"] and "blocks.0.attn.mat_qkv_guide.weight" in obj["model"]
