"""From tensors to models: finding the state dict in a loaded file, telling what it holds, reading a
model's configuration off its tensor shapes, and building models with it loaded strictly.

Every format reader of :mod:`stylevar.io` builds its models here (on the meta device, so no memory
or time goes into an initialisation the weights overwrite), and here every loaded weight is checked to
be finite, whatever file it came from.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch

from ..config import StyleVARConfig, VQVAEConfig, alpha_for_scales
from ..errors import CheckpointError, ConfigError
from ..models import VQVAE, StyleVAR
from .safe import check_finite, load_strict, short_error

_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "weights", "params")
_PREFIXES = ("module.", "_orig_mod.")


def is_tensor_dict(d: Any) -> bool:
    return isinstance(d, Mapping) and len(d) > 0 and all(torch.is_tensor(v) for v in d.values())


def extract_state_dict(obj: Any, path: Any = "<checkpoint>") -> dict[str, torch.Tensor]:
    """Find the state dict inside a loaded checkpoint object (upstream's ``_extract_state_dict``).

    Order: ``trainer.var_wo_ddp``; the first of model / state_dict / model_state_dict / weights /
    params holding tensors; the object itself; its single nested tensor dict. ``module.`` and
    ``_orig_mod.`` prefixes (DDP, torch.compile) are stripped.
    """
    sd: Any = None
    if isinstance(obj, Mapping):
        trainer = obj.get("trainer")
        if isinstance(trainer, Mapping) and is_tensor_dict(trainer.get("var_wo_ddp")):
            sd = trainer["var_wo_ddp"]
        if sd is None:
            for k in _WRAPPER_KEYS:
                if is_tensor_dict(obj.get(k)):
                    sd = obj[k]
                    break
        if sd is None and is_tensor_dict(obj):
            sd = obj
        if sd is None:
            nested = [v for v in obj.values() if is_tensor_dict(v)]
            if len(nested) == 1:
                sd = nested[0]
    if sd is None:
        raise CheckpointError(
            f"{path}: no state dict found (expected a dict of tensors, or one under 'model')"
        )
    out = {}
    for k, v in sd.items():
        for p in _PREFIXES:
            while k.startswith(p):
                k = k[len(p) :]
        out[k] = v
    return out


def classify(sd: Mapping[str, torch.Tensor]) -> str:
    """What a state dict holds: 'stylevar', 'stylevar_lora', 'lora_only', 'var', 'vqvae' or 'unknown'."""
    keys = set(sd)
    if any(".lora_A" in k for k in keys):
        return "stylevar_lora" if "head.weight" in keys else "lora_only"
    if "blocks.0.attn.mat_qkv_guide.weight" in keys:
        return "stylevar"
    if "blocks.0.attn.mat_qkv.weight" in keys or "class_emb.weight" in keys:
        return "var"
    if "encoder.conv_in.weight" in keys and "quantize.embedding.weight" in keys:
        return "vqvae"
    return "unknown"


_KIND_HINT = {
    "vqvae": "it is a VQ-VAE (tokenizer) checkpoint, not the StyleVAR transformer; pass it with --vae "
    "and give the transformer (StyleVAR-GRPO.pth or StyleVAR_SFT.pth) with --checkpoint",
    "var": "it is a vanilla (class-conditional) VAR checkpoint; it only initialises StyleVAR training, "
    "use a StyleVAR checkpoint (StyleVAR-GRPO.pth or StyleVAR_SFT.pth)",
    "lora_only": "it holds only LoRA adapters of a GRPO run; pass --base SFT_CHECKPOINT (the checkpoint "
    "the run started from) to apply them, or merge once with stylevar merge-lora (the released "
    "StyleVAR-GRPO.pth is already merged)",
    "stylevar_lora": "it is a LoRA-wrapped GRPO training checkpoint of the StyleVAR transformer; pass it with "
    "--checkpoint (its adapters are baked in when it loads)",
    "stylevar": "it is a StyleVAR transformer checkpoint, not a VQ-VAE; pass it with --checkpoint and the "
    "VQ-VAE (vae_ch160v4096z32.pth) with --vae",
}


def wrong_kind(path: Any, kind: str, sd: Mapping[str, torch.Tensor], expected: str) -> CheckpointError:
    hint = _KIND_HINT.get(kind)
    if hint is None:
        sample = ", ".join(sorted(sd)[:4])
        hint = f"its keys ({sample}, ...) match neither StyleVAR nor VAR's VQ-VAE"
    return CheckpointError(f"{path} is not a {expected} checkpoint: {hint}")


# ---------------------------------------------------------------------------- config inference
def infer_stylevar_config(sd: Mapping[str, torch.Tensor], alpha: Any = "paper") -> StyleVARConfig:
    """Rebuild a :class:`StyleVARConfig` from the tensor shapes of a StyleVAR (or vanilla VAR) state dict."""
    if any(k.startswith("style_encoder.clip.") for k in sd):
        raise CheckpointError(
            "a clip_resampler StyleVAR's configuration cannot be read off its tensors: load the checkpoint "
            "folder with its config.json (save_pretrained writes one)"
        )
    try:
        depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
        C = sd["pos_start"].shape[-1]
        lvl = sd["lvl_1L"].reshape(-1).tolist()
        counts = Counter(int(v) for v in lvl)
        patch_nums = []
        for s in range(len(counts)):
            pn = math.isqrt(counts[s])
            if pn * pn != counts[s]:
                raise ConfigError(f"scale {s} has {counts[s]} tokens, not a square")
            patch_nums.append(pn)
        heads = sd["blocks.0.attn.scale_mul_1H11"].shape[1] if "blocks.0.attn.scale_mul_1H11" in sd else None
        cfg = StyleVARConfig(
            depth=depth,
            embed_dim=C,
            num_heads=heads or depth,
            mlp_ratio=sd["blocks.0.ffn.fc1.weight"].shape[0] / C,
            attn_l2_norm=heads is not None,
            style_enc_dim=sd["feat_emb.weight"].shape[1] if "feat_emb.weight" in sd else 512,  # VAR has none
            vocab_size=sd["head.weight"].shape[0],
            z_channels=sd["word_embed.weight"].shape[1],
            patch_nums=tuple(patch_nums),
            alpha="paper",
            content_residual="content_embed.weight" in sd,
        )
    except (KeyError, ValueError, ConfigError) as e:
        raise CheckpointError(
            f"cannot read the model configuration off the checkpoint ({short_error(e)})"
        ) from None
    return dataclasses.replace(
        cfg, alpha=alpha_for_scales(alpha, cfg.num_scales)
    )  # a wrong alpha: ConfigError


def infer_vqvae_config(sd: Mapping[str, torch.Tensor], patch_nums: tuple[int, ...]) -> VQVAEConfig:
    """Rebuild a :class:`VQVAEConfig` from the tensor shapes of a VQ-VAE state dict."""
    try:
        vocab, z = sd["quantize.embedding.weight"].shape
        ch = sd["encoder.conv_in.weight"].shape[0]
        levels = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.(\d+)\.", k)))
        ch_mult = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels))
        nrb = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k)))
        if any(k.startswith("quantize.quant_resi.qresi_ls.") for k in sd):
            share = 1 + max(
                int(m.group(1)) for k in sd if (m := re.match(r"quantize\.quant_resi\.qresi_ls\.(\d+)\.", k))
            )
            counts = 0
        elif any(k.startswith("quantize.quant_resi.qresi.") for k in sd):
            share, counts = 1, 0
        else:
            share = 0
            n = 1 + max(
                (int(m.group(1)) for k in sd if (m := re.match(r"quantize\.quant_resi\.(\d+)\.", k))),
                default=-1,
            )
            counts = n if n != len(patch_nums) else 0
        ks = sd["quant_conv.weight"].shape[-1]
        cfg = VQVAEConfig(
            vocab_size=vocab,
            z_channels=z,
            ch=ch,
            ch_mult=ch_mult,
            num_res_blocks=nrb,
            quant_conv_ks=ks,
            share_quant_resi=share,
            default_qresi_counts=counts,
            patch_nums=patch_nums,
            using_sa=f"encoder.down.{levels - 1}.attn.0.qkv.weight" in sd,
            using_mid_sa="encoder.mid.attn_1.qkv.weight" in sd,
            in_channels=sd["encoder.conv_in.weight"].shape[1],
        )
    except (KeyError, ValueError, ConfigError) as e:
        raise CheckpointError(
            f"cannot read the VQ-VAE configuration off the checkpoint ({short_error(e)})"
        ) from None
    return cfg


# ---------------------------------------------------------------------------- model building
def build_stylevar(
    cfg: StyleVARConfig, sd: Mapping[str, torch.Tensor], path: Any = "<state dict>"
) -> StyleVAR:
    """A StyleVAR with ``sd`` loaded strictly, in eval mode (built on the meta device: no wasted init, no copy).

    Weights holding NaN or inf are refused (:func:`~stylevar.io.safe.check_finite`), naming ``path``."""
    with torch.device("meta"):
        model = StyleVAR(cfg)
    # a clip_resampler model: a whole CLIP tower's keys above the layer it reads are dropped
    drop_unbuilt = getattr(model.style_encoder, "drop_unbuilt", None)
    if drop_unbuilt is not None:
        sd = dict(sd)
        drop_unbuilt(sd, "style_encoder.")
    load_strict(model, sd, f"{path} does not fit the model", assign=True)
    check_finite(sd, path)  # NaN weights would load, and fail only when sampling
    materialize = getattr(model.style_encoder, "materialize_buffers_", None)
    if materialize is not None:  # a clip_resampler model: its tower's non-persistent buffers
        materialize()
    with torch.device("cpu"):
        ref = StyleVAR._lvl_buffers(cfg.patch_nums)
    if not torch.equal(model.lvl_1L.cpu().long(), ref[0]):
        raise CheckpointError(
            f"{path}: its scale layout (lvl_1L) does not match patch_nums {list(cfg.patch_nums)}"
        )
    return model.eval()


def build_vqvae(cfg: VQVAEConfig, sd: Mapping[str, torch.Tensor], path: Any = "<state dict>") -> VQVAE:
    """A VQ-VAE with ``sd`` loaded strictly, in eval mode; a codebook-usage buffer of another scale count is
    reset (as VAR does). Weights holding NaN or inf are refused, naming ``path``."""
    sd = dict(sd)
    ema = sd.get("quantize.ema_vocab_hit_SV")
    if ema is not None and ema.shape[0] != len(cfg.patch_nums):
        sd["quantize.ema_vocab_hit_SV"] = torch.zeros(len(cfg.patch_nums), cfg.vocab_size)
    with torch.device("meta"):
        vae = VQVAE(cfg)
    load_strict(vae, sd, f"{path} does not fit the model", assign=True)
    check_finite(sd, path)
    return vae.eval()
