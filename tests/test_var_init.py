"""StyleVAR from a vanilla VAR checkpoint: the paper's mapping, on a small VAR-format file the test writes."""

from __future__ import annotations

import pytest
import torch

from helpers import smooth_images, tiny_configs
from stylevar.errors import CheckpointError, ConfigError
from stylevar.models import VQVAE, StyleVAR
from stylevar.training import init_from_var, load_resnet18_weights, var_config_from_state_dict


def _var_state_dict(cfg, num_classes: int = 11, seed: int = 0) -> dict[str, torch.Tensor]:
    """A vanilla-VAR state dict of the same size as ``cfg`` (VAR's key names), random values."""
    g = torch.Generator().manual_seed(seed)
    ref = StyleVAR(cfg).state_dict()
    C = cfg.embed_dim
    sd: dict[str, torch.Tensor] = {"class_emb.weight": torch.randn(num_classes, C, generator=g)}
    for k, v in ref.items():
        if k.startswith(("style_encoder.", "content_encoder.", "feat_emb.")):
            continue
        if ".attn." in k and ("_guide" in k or "_target" in k):
            block = k.split(".attn.")[0]
            for name, shape in (
                ("mat_qkv.weight", (3 * C, C)),
                ("q_bias", (C,)),
                ("v_bias", (C,)),
                ("zero_k_bias", (C,)),
            ):
                key = f"{block}.attn.{name}"
                if key not in sd:
                    sd[key] = (
                        torch.zeros(shape)
                        if name == "zero_k_bias"
                        else torch.randn(shape, generator=g) * 0.02
                    )
            continue
        sd[k] = (
            v.clone()
            if k in ("lvl_1L", "attn_bias_for_masking")
            else torch.randn(v.shape, generator=g) * 0.02
        )
    return sd


def test_var_checkpoint_initialises_both_attention_streams(tmp_path):
    scfg, vcfg = tiny_configs(depth=2, num_heads=2)
    var_sd = _var_state_dict(scfg)
    path = tmp_path / "var_d2.pth"
    torch.save(var_sd, path)  # VAR's releases are plain state dicts
    cfg = var_config_from_state_dict(var_sd, alpha=scfg.alpha, style_enc_dim=64)
    assert (cfg.depth, cfg.embed_dim, cfg.num_heads, cfg.patch_nums) == (
        2,
        scfg.embed_dim,
        2,
        scfg.patch_nums,
    )
    model = StyleVAR(cfg)
    report = init_from_var(model, path)
    sd = model.state_dict()
    for b in range(2):
        w = var_sd[f"blocks.{b}.attn.mat_qkv.weight"]
        assert torch.equal(sd[f"blocks.{b}.attn.mat_qkv_guide.weight"], w)
        assert torch.equal(sd[f"blocks.{b}.attn.mat_qkv_target.weight"], w)
        for name in ("q_bias", "v_bias"):
            src = var_sd[f"blocks.{b}.attn.{name}"]
            assert torch.equal(sd[f"blocks.{b}.attn.{name}_guide"], src)
            assert torch.equal(sd[f"blocks.{b}.attn.{name}_target"], src)
        assert torch.equal(sd[f"blocks.{b}.ffn.fc1.weight"], var_sd[f"blocks.{b}.ffn.fc1.weight"])
    for k in ("head.weight", "word_embed.weight", "pos_1LC", "lvl_embed.weight", "head_nm.ada_lin.1.weight"):
        assert torch.equal(sd[k], var_sd[k])
    assert "class_emb.weight" in report.dropped and "blocks.0.attn.zero_k_bias" in report.dropped
    assert len(report.duplicated) == 2 * 3 * 2
    assert all(
        k.startswith(("style_encoder.", "content_encoder.", "feat_emb.", "blocks.")) for k in report.kept_init
    )
    assert model.config.encoder_input == "raw" and report.resnet == "random"
    # the initialised model runs
    vae = VQVAE(vcfg).eval()
    model.eval()
    cond = model.conditioning(vae, smooth_images(1, 64, 0) * 2 - 1, smooth_images(1, 64, 1) * 2 - 1)
    out = model.generate(vae, cond, seed=0)
    assert torch.isfinite(out.images).all()


def test_imagenet_resnet_weights_and_their_input_convention(tmp_path):
    from torchvision.models import resnet18

    rsd = resnet18(weights=None).state_dict()  # same keys and shapes as torchvision's ImageNet file
    rpath = tmp_path / "resnet18-f37072fd.pth"
    torch.save(rsd, rpath)
    mapped = load_resnet18_weights(rpath)
    assert torch.equal(mapped["0.weight"], rsd["conv1.weight"]) and "7.1.bn2.running_var" in mapped
    assert not any(k.startswith("8") or "fc" in k for k in mapped)
    # ImageNet weights need full-width encoders; a narrow model says so in one line
    narrow, _ = tiny_configs(depth=2, num_heads=2, style_enc_dim=64)
    with pytest.raises(ConfigError, match="style_enc_dim 512.*has 64"):
        init_from_var(StyleVAR(narrow), _var_state_dict(narrow), resnet_weights=rpath)
    scfg, _ = tiny_configs(depth=2, num_heads=2, style_enc_dim=512)
    model = StyleVAR(scfg)
    report = init_from_var(model, _var_state_dict(scfg), resnet_weights=rpath)
    assert report.resnet == "imagenet" and model.config.encoder_input == "imagenet"
    assert torch.equal(model.style_encoder.state_dict()["0.weight"], rsd["conv1.weight"])
    assert torch.equal(model.content_encoder.state_dict()["4.0.conv1.weight"], rsd["layer1.0.conv1.weight"])
    # the encoders see ImageNet-normalised [0, 1] images
    img = smooth_images(1, 64, 2) * 2 - 1
    model.eval()
    with torch.no_grad():
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        want = model.feat_emb(model.style_encoder(((img + 1) / 2 - mean) / std))
        assert torch.allclose(model._image_feat(model.style_encoder, img), want, atol=1e-6)


def test_wrong_sizes_and_kinds_are_refused(tmp_path):
    scfg, _ = tiny_configs(depth=2, num_heads=2)
    var_sd = _var_state_dict(scfg)
    deeper = StyleVAR(tiny_configs(depth=3, num_heads=2)[0])
    with pytest.raises(CheckpointError, match="fewer blocks"):
        init_from_var(deeper, var_sd)
    shallower = StyleVAR(tiny_configs(depth=1, num_heads=2)[0])
    with pytest.raises(CheckpointError, match="fewer blocks"):
        init_from_var(shallower, var_sd)
    with pytest.raises(CheckpointError, match="not a vanilla VAR"):
        init_from_var(StyleVAR(scfg), StyleVAR(scfg).state_dict())
