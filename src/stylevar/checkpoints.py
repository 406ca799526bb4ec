"""Loading and saving checkpoints: our format, upstream ``.pth`` files and the Hugging Face Hub.

Our format is a directory::

    config.json          {"format": "stylevar", "stylevar": {...}, "vqvae": {...}, "sampling": {...}, ...}
    model.safetensors    StyleVAR transformer (upstream's key names)
    vqvae.safetensors    VQ-VAE (VAR's key names)

Upstream files (``StyleVAR_SFT.pth``, ``StyleVAR-GRPO.pth``, ``vae_ch160v4096z32.pth``, SFT trainer
checkpoints) load through ``torch.load(weights_only=True)``; their configuration is read off the
tensor shapes. Pickled Python objects are refused unless the caller opts in (``allow_pickle``).

GRPO training checkpoints (upstream-spec §5.6) load as plain models: a LoRA-wrapped full state
is baked, LoRA-only adapters (upstream's ``grpo_*.pth`` or our ``adapter_config.json`` folder,
see :mod:`stylevar.models.lora`) are applied to a ``base`` checkpoint; :func:`merge_lora_checkpoint`
writes the merged result (``stylevar merge-lora``).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import pickle
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import VARIANT_ALPHA, SamplingConfig, StyleVARConfig, VQVAEConfig, alpha_for_scales
from .errors import CheckpointError, ConfigError
from .models import VQVAE, StyleVAR
from .models.lora import (
    ADAPTER_CONFIG,
    apply_lora_to_plain_state,
    bake_wrapped_state,
    is_lora_dir,
    load_lora,
    lora_hparams,
    lora_hparams_from_checkpoint,
)

logger = logging.getLogger(__name__)

DEFAULT_REPO = "Senfier-LiqiJing/StyleVAR"
VAE_FILENAME = "vae_ch160v4096z32.pth"
VARIANT_FILES = {"grpo": "StyleVAR-GRPO.pth", "sft": "StyleVAR_SFT.pth"}
CONFIG_NAME = "config.json"
MODEL_WEIGHTS = "model.safetensors"
VAE_WEIGHTS = "vqvae.safetensors"
FORMAT_NAME = "stylevar"
FORMAT_VERSION = 1
PICKLE_FLAG = "--trust-checkpoint (Python: allow_pickle=True)"

_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "weights", "params")
_PREFIXES = ("module.", "_orig_mod.")


# ---------------------------------------------------------------------------------------- reading
def read_file(path: str | os.PathLike, *, allow_pickle: bool = False) -> Any:
    """Read a ``.safetensors`` or PyTorch file into Python objects (tensors on the CPU).

    PyTorch files are read with ``weights_only=True`` (memory-mapped when possible) unless
    ``allow_pickle`` is set; a refusal names the opt-in flag.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, expected a checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"cannot read {path}: not a valid safetensors file ({_short(e)})") from None
    try:
        try:
            return torch.load(str(path), map_location="cpu", weights_only=not allow_pickle, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e) and "zip" not in str(e):
                raise
            # legacy (non-zip) serialisation cannot be memory-mapped
            return torch.load(str(path), map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as e:
        if not allow_pickle and "weights_only" in str(e).lower().replace(" ", "_"):
            raise CheckpointError(
                f"{path} contains pickled Python objects that safe loading (weights_only=True) refuses; "
                f"if you trust this file, pass {PICKLE_FLAG}"
            ) from None
        raise CheckpointError(f"cannot read {path}: not a PyTorch checkpoint ({_short(e)})") from None
    except Exception as e:  # truncated or foreign files fail in many ways inside torch.load
        raise CheckpointError(
            f"cannot read {path}: not a valid PyTorch checkpoint or truncated ({type(e).__name__}: {_short(e)})"
        ) from None


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:160]


def _is_tensor_dict(d: Any) -> bool:
    return isinstance(d, Mapping) and len(d) > 0 and all(torch.is_tensor(v) for v in d.values())


def extract_state_dict(obj: Any, path: str | os.PathLike = "<checkpoint>") -> dict[str, torch.Tensor]:
    """Find the state dict inside a loaded checkpoint object (upstream's ``_extract_state_dict``).

    Order: ``trainer.var_wo_ddp``; the first of model / state_dict / model_state_dict / weights /
    params holding tensors; the object itself; its single nested tensor dict. ``module.`` and
    ``_orig_mod.`` prefixes (DDP, torch.compile) are stripped.
    """
    sd: Any = None
    if isinstance(obj, Mapping):
        trainer = obj.get("trainer")
        if isinstance(trainer, Mapping) and _is_tensor_dict(trainer.get("var_wo_ddp")):
            sd = trainer["var_wo_ddp"]
        if sd is None:
            for k in _WRAPPER_KEYS:
                if _is_tensor_dict(obj.get(k)):
                    sd = obj[k]
                    break
        if sd is None and _is_tensor_dict(obj):
            sd = obj
        if sd is None:
            nested = [v for v in obj.values() if _is_tensor_dict(v)]
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


def _wrong_kind(path: Any, kind: str, sd: Mapping[str, torch.Tensor], expected: str) -> CheckpointError:
    hint = _KIND_HINT.get(kind)
    if hint is None:
        sample = ", ".join(sorted(sd)[:4])
        hint = f"its keys ({sample}, ...) match neither StyleVAR nor VAR's VQ-VAE"
    return CheckpointError(f"{path} is not a {expected} checkpoint: {hint}")


# ---------------------------------------------------------------------------- config inference
def infer_stylevar_config(sd: Mapping[str, torch.Tensor], alpha: Any = "paper") -> StyleVARConfig:
    """Rebuild a :class:`StyleVARConfig` from the tensor shapes of a StyleVAR (or vanilla VAR) state dict."""
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
        )
    except (KeyError, ValueError, ConfigError) as e:
        raise CheckpointError(
            f"cannot read the model configuration off the checkpoint ({_short(e)})"
        ) from None
    cfg.alpha = alpha_for_scales(alpha, cfg.num_scales)  # a wrong alpha is the caller's ConfigError
    return cfg


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
            f"cannot read the VQ-VAE configuration off the checkpoint ({_short(e)})"
        ) from None
    return cfg


# ---------------------------------------------------------------------------- model building
def _load_into(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], path: Any) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if bad:
            k = bad[0]
            parts.append(
                f"{len(bad)} shape mismatches (e.g. {k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)})"
            )
        raise CheckpointError(f"{path} does not fit the model: " + "; ".join(parts))
    module.load_state_dict(dict(sd), strict=True, assign=True)


def build_stylevar(
    cfg: StyleVARConfig, sd: Mapping[str, torch.Tensor], path: Any = "<state dict>"
) -> StyleVAR:
    """A StyleVAR with ``sd`` loaded strictly, in eval mode (built on the meta device: no wasted init, no copy)."""
    with torch.device("meta"):
        model = StyleVAR(cfg)
    _load_into(model, sd, path)
    with torch.device("cpu"):
        ref = StyleVAR._lvl_buffers(cfg.patch_nums)
    if not torch.equal(model.lvl_1L.cpu().long(), ref[0]):
        raise CheckpointError(
            f"{path}: its scale layout (lvl_1L) does not match patch_nums {list(cfg.patch_nums)}"
        )
    return model.eval()


def build_vqvae(cfg: VQVAEConfig, sd: Mapping[str, torch.Tensor], path: Any = "<state dict>") -> VQVAE:
    """A VQ-VAE with ``sd`` loaded strictly, in eval mode; a codebook-usage buffer of another scale count is
    reset (as VAR does)."""
    sd = dict(sd)
    ema = sd.get("quantize.ema_vocab_hit_SV")
    if ema is not None and ema.shape[0] != len(cfg.patch_nums):
        sd["quantize.ema_vocab_hit_SV"] = torch.zeros(len(cfg.patch_nums), cfg.vocab_size)
    with torch.device("meta"):
        vae = VQVAE(cfg)
    _load_into(vae, sd, path)
    return vae.eval()


# ---------------------------------------------------------------------------- our format
@dataclass
class Checkpoint:
    """A loaded StyleVAR + VQ-VAE pair with its sampling defaults and provenance."""

    model: StyleVAR
    vae: VQVAE
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    info: dict[str, Any] = field(default_factory=dict)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Checkpoint:
        self.model.to(device=device, dtype=dtype)
        self.vae.to(device=device, dtype=dtype)
        return self


def save_pretrained(
    out_dir: str | os.PathLike,
    model: StyleVAR,
    vae: VQVAE,
    *,
    sampling: SamplingConfig | None = None,
    info: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` + ``vqvae.safetensors`` into ``out_dir``, atomically.

    Files are written to a temporary sibling directory that replaces ``out_dir`` only when complete.
    ``dtype`` casts floating-point weights (e.g. ``torch.bfloat16`` halves the size); loading casts back.
    """
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "stylevar": model.config.to_dict(),
        "vqvae": vae.config.to_dict(),
        "sampling": (sampling or SamplingConfig()).to_dict(),
        "info": info or {},
    }
    return write_weights_dir(
        out_dir,
        {MODEL_WEIGHTS: model, VAE_WEIGHTS: vae},
        config,
        kind="stylevar checkpoint directory",
        dtype=dtype,
    )


def write_weights_dir(
    out_dir: str | os.PathLike,
    modules: Mapping[str, torch.nn.Module | Mapping[str, torch.Tensor]],
    config: dict[str, Any],
    *,
    kind: str,
    dtype: torch.dtype | None = None,
    config_name: str = CONFIG_NAME,
) -> Path:
    """Write each module's state dict (or tensor dict) as ``<name>`` (safetensors) plus ``config_name``
    (default ``config.json``) into ``out_dir``.

    Atomic: the files go to a temporary sibling directory that replaces ``out_dir`` only when
    complete. An existing non-empty ``out_dir`` without a ``config_name`` is refused (``kind``
    names what it should have been). ``dtype`` casts floating-point weights.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out} exists and is a file, not a {kind}; choose a new output path")
    if out.exists() and not (out / config_name).exists() and any(out.iterdir()):
        raise CheckpointError(f"{out} exists and is not a {kind}; choose a new output path")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for name, module in modules.items():
            sd, seen = {}, set()
            tensors = module.state_dict() if isinstance(module, torch.nn.Module) else module
            for k, v in tensors.items():
                v = v.detach().to("cpu")
                if dtype is not None and v.is_floating_point():
                    v = v.to(dtype)
                v = v.contiguous()
                if v.numel() and v.data_ptr() in seen:  # safetensors refuses shared storage
                    v = v.clone()
                seen.add(v.data_ptr())
                sd[k] = v
            save_file(sd, str(tmp / name), metadata={"format": "pt"})
        (tmp / config_name).write_text(json.dumps(config, indent=2) + "\n")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _load_our_format(directory: Path, alpha: Any = None) -> Checkpoint:
    from safetensors.torch import load_file

    try:
        raw = json.loads((directory / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {directory / CONFIG_NAME}: {_short(e)}") from None
    if raw.get("format") != FORMAT_NAME:
        raise CheckpointError(f'{directory / CONFIG_NAME} is not a stylevar config (no "format": "stylevar")')
    if int(raw.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{directory} was written by a newer stylevar (format {raw['format_version']}); upgrade stylevar"
        )
    try:
        scfg = StyleVARConfig.from_dict(raw["stylevar"])
        vcfg = VQVAEConfig.from_dict(raw["vqvae"])
        sampling = SamplingConfig.from_dict(raw.get("sampling", {}))
        if alpha is not None:
            scfg.alpha = alpha_for_scales(alpha, scfg.num_scales)
        scfg.check_vqvae(vcfg)
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{directory / CONFIG_NAME}: invalid configuration ({_short(e)})") from None
    sds = {}
    for name in (MODEL_WEIGHTS, VAE_WEIGHTS):
        p = directory / name
        if not p.exists():
            raise CheckpointError(f"{p} is missing; the checkpoint directory is incomplete")
        try:
            sds[name] = load_file(str(p))
        except Exception as e:
            raise CheckpointError(f"cannot read {p}: not a valid safetensors file ({_short(e)})") from None
    model = build_stylevar(scfg, sds[MODEL_WEIGHTS], directory / MODEL_WEIGHTS)
    vae = build_vqvae(vcfg, sds[VAE_WEIGHTS], directory / VAE_WEIGHTS)
    info = dict(raw.get("info", {}))
    info["source"] = str(directory)
    return Checkpoint(model.float(), vae.float(), sampling, info)


# ---------------------------------------------------------------------------- upstream files
def _guess_variant(path: Path) -> str | None:
    name = path.name.lower()
    if "grpo" in name:
        return "grpo"
    if "sft" in name:
        return "sft"
    return None


def _read_vae(vae_src: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    return extract_state_dict(read_file(vae_src, allow_pickle=allow_pickle), vae_src)


def _vae_for(
    scfg: StyleVARConfig,
    vae_src: Any,
    vae_sd: Mapping[str, torch.Tensor] | None,
    model_path: Any,
    vae: VQVAE | None = None,
) -> VQVAE:
    """Build (or check) the VQ-VAE for ``scfg``: from its state dict, or an already built ``vae``."""
    if vae is None:
        assert vae_sd is not None
        vkind = classify(vae_sd)
        if vkind != "vqvae":
            raise _wrong_kind(vae_src, vkind, vae_sd, "VQ-VAE")
        vcfg = infer_vqvae_config(vae_sd, scfg.patch_nums)
    else:
        vcfg = vae.config
    try:
        scfg.check_vqvae(vcfg)
    except ConfigError as e:
        raise CheckpointError(f"{vae_src} does not fit {model_path}: {e}") from None
    return vae if vae is not None else build_vqvae(vcfg, vae_sd, vae_src)  # type: ignore[arg-type]


def _load_base(
    base: str | os.PathLike, vae: str | os.PathLike | None, allow_pickle: bool, need_vae: bool
) -> Checkpoint:
    """The base (SFT) checkpoint that LoRA adapters apply to: any local checkpoint ``load_pretrained`` reads."""
    path = Path(base).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"base checkpoint not found: {path} (--base takes a local SFT checkpoint file or folder)"
        )
    if is_lora_dir(path):
        raise CheckpointError(
            f"the base {path} is itself a LoRA directory; pass the full SFT checkpoint as --base"
        )
    return _load_local(path, vae=vae, allow_pickle=allow_pickle, need_vae=need_vae)


def load_upstream(
    model_path: str | os.PathLike,
    vae_path: str | os.PathLike | None = None,
    *,
    variant: str | None = None,
    alpha: Any = None,
    allow_pickle: bool = False,
    base: str | os.PathLike | None = None,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
) -> Checkpoint:
    """Load upstream ``.pth`` (or plain ``.safetensors``) files: a StyleVAR transformer and a VQ-VAE.

    ``vae_path`` may be omitted when ``model_path`` is an SFT trainer checkpoint (it embeds the
    VQ-VAE), when ``vae_ch160v4096z32.pth`` lies beside it, or when a ``base`` brings one. Alpha
    (not stored upstream) is ``alpha`` if given, else the variant's preset (``grpo`` -> paper,
    ``sft`` -> sft; the variant is guessed from the file name when not given), else the paper
    preset.

    GRPO training checkpoints (upstream-spec §5.6) load too:

    * LoRA-wrapped full state (``.base_weight`` / ``.lora_A`` ...): the adapters are baked in
      (``info["lora_baked"]``);
    * LoRA adapters only: applied to ``base``, the SFT checkpoint the run started from (any local
      checkpoint :func:`load_pretrained` reads; ``info["lora_merged"]``). The model
      configuration (apart from alpha) and, unless ``vae_path`` is given, the VQ-VAE come from
      the base.

    rank / alpha of the adapters: ``lora_rank`` / ``lora_alpha``, else the file's ``args``
    (``lora_rank``, ``lora_alpha``), else lora_A's rows and 2 * rank (upstream's 256 / 512).
    """
    return _load_file(
        Path(model_path),
        vae_path,
        variant=variant,
        alpha=alpha,
        allow_pickle=allow_pickle,
        base=base,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
    )


def _load_file(
    model_path: Path,
    vae_path: str | os.PathLike | None = None,
    *,
    variant: str | None = None,
    alpha: Any = None,
    allow_pickle: bool = False,
    base: str | os.PathLike | None = None,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
    need_vae: bool = True,
) -> Checkpoint:
    """:func:`load_upstream`; with ``need_vae=False`` a missing VQ-VAE leaves ``Checkpoint.vae`` None."""
    obj = read_file(model_path, allow_pickle=allow_pickle)
    sd = extract_state_dict(obj, model_path)
    kind = classify(sd)
    lora_info: dict[str, Any] = {}
    base_ckpt: Checkpoint | None = None
    if kind in ("stylevar_lora", "lora_only"):
        if kind == "lora_only" and base is None:
            raise _wrong_kind(model_path, kind, sd, "StyleVAR transformer")
        file_rank, file_alpha = lora_hparams_from_checkpoint(obj)
        try:
            r, a = lora_hparams(
                sd,
                lora_rank if lora_rank is not None else file_rank,
                lora_alpha if lora_alpha is not None else file_alpha,
                where=model_path,
            )
            if kind == "stylevar_lora":
                sd = bake_wrapped_state(sd, r, a)
                lora_info["lora_baked"] = {"rank": r, "alpha": a}
                logger.info(
                    "%s is a LoRA-wrapped GRPO checkpoint: baked its adapters (rank %d, alpha %g)",
                    model_path,
                    r,
                    a,
                )
            else:
                assert base is not None
                base_ckpt = _load_base(base, vae_path, allow_pickle, need_vae)
                n = len([k for k in sd if k.endswith(".lora_A")])
                sd = apply_lora_to_plain_state(base_ckpt.model.state_dict(), sd, r, a)
                lora_info["lora_merged"] = {"rank": r, "alpha": a, "base": str(base), "modules": n}
                logger.info(
                    "merged %d LoRA adapters of %s into %s (rank %d, alpha %g)", n, model_path, base, r, a
                )
        except CheckpointError as e:
            msg = str(e)
            raise CheckpointError(msg if str(model_path) in msg else f"{model_path}: {msg}") from None
    elif kind != "stylevar":
        raise _wrong_kind(model_path, kind, sd, "StyleVAR transformer")
    elif base is not None:
        logger.info(
            "%s is a full (merged) checkpoint; --base %s is not needed and was ignored", model_path, base
        )
    variant = variant or _guess_variant(model_path)
    if alpha is None:
        alpha_src = VARIANT_ALPHA.get(variant or "", "paper")
        alpha_value: Any = alpha_src
    else:
        alpha_src, alpha_value = "explicit", alpha
    if base_ckpt is not None:  # fields the shapes do not tell (encoder_input, norm_eps) are the base's
        scfg = StyleVARConfig.from_dict({**base_ckpt.model.config.to_dict(), "alpha": alpha_value})
    else:
        scfg = infer_stylevar_config(sd, alpha_value)

    vae_sd, vae_src, vae_model = None, None, None
    if vae_path is not None:
        vae_src = Path(vae_path)
        vae_sd = _read_vae(vae_src, allow_pickle)
    elif base_ckpt is not None and base_ckpt.vae is not None:
        vae_model = base_ckpt.vae
        vae_src = base_ckpt.info.get("vae_source", base_ckpt.info.get("source", base))
    elif (
        isinstance(obj, Mapping)
        and isinstance(obj.get("trainer"), Mapping)
        and _is_tensor_dict(obj["trainer"].get("vae_local"))
    ):
        vae_src, vae_sd = model_path, dict(obj["trainer"]["vae_local"])
    elif (model_path.parent / VAE_FILENAME).exists():
        vae_src = model_path.parent / VAE_FILENAME
        vae_sd = _read_vae(vae_src, allow_pickle)
    elif need_vae:
        raise CheckpointError(
            f"no VQ-VAE for {model_path}: pass --vae PATH (the released file is {VAE_FILENAME}) "
            "or put it beside the checkpoint"
        )
    vae = None if vae_src is None else _vae_for(scfg, vae_src, vae_sd, model_path, vae_model)
    model = build_stylevar(scfg, sd, model_path)
    info: dict[str, Any] = {
        "source": str(model_path),
        "vae_source": None if vae_src is None else str(vae_src),
        "variant": variant,
        "alpha_source": alpha_src,
        **lora_info,
    }
    logger.info("loaded %s (variant %s), alpha %s (%s)", model_path, variant, list(scfg.alpha), alpha_src)
    sampling = base_ckpt.sampling if base_ckpt is not None else SamplingConfig()
    return Checkpoint(model.float(), None if vae is None else vae.float(), sampling, info)  # type: ignore[arg-type]


def _load_lora_dir(
    path: Path,
    *,
    base: str | os.PathLike | None,
    vae: str | os.PathLike | None,
    alpha: Any,
    allow_pickle: bool,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
    need_vae: bool = True,
) -> Checkpoint:
    """Our LoRA directory merged into its base (``base``, else the ``info["base"]`` it recorded)."""
    cfg, lora_sd, meta = load_lora(path)
    recorded = meta["info"].get("base")
    if base is None and recorded:
        base = recorded
        if not Path(base).expanduser().is_absolute() and not Path(base).expanduser().exists():
            base = path / base  # recorded relative to the adapter directory
    if base is None:
        raise CheckpointError(
            f"{path} holds only LoRA adapters; pass --base SFT_CHECKPOINT (the checkpoint they were trained on)"
        )
    if lora_rank is not None and int(lora_rank) != cfg.rank:
        raise CheckpointError(
            f"{path} has rank {cfg.rank} (its {ADAPTER_CONFIG}), not {lora_rank}; drop --rank"
        )
    a = float(lora_alpha) if lora_alpha is not None else cfg.alpha
    base_ckpt = _load_base(base, vae, allow_pickle, need_vae)
    try:
        sd = apply_lora_to_plain_state(base_ckpt.model.state_dict(), lora_sd, cfg.rank, a)
    except CheckpointError as e:
        raise CheckpointError(f"{path} does not fit the base {base}: {e}") from None
    stored = meta.get("stylevar")
    try:
        scfg = StyleVARConfig.from_dict(stored) if stored else copy.deepcopy(base_ckpt.model.config)
        if alpha is not None:
            scfg.alpha = alpha_for_scales(alpha, scfg.num_scales)
    except (TypeError, ConfigError) as e:
        raise CheckpointError(f"{path / ADAPTER_CONFIG}: invalid configuration ({_short(e)})") from None
    model = build_stylevar(scfg, sd, f"{path} merged into {base}")
    vae_model, vae_src = base_ckpt.vae, base_ckpt.info.get("vae_source", base_ckpt.info.get("source"))
    if vae is not None:
        vae_src = Path(vae)
        vae_model = _vae_for(scfg, vae_src, _read_vae(vae_src, allow_pickle), path)
    elif vae_model is not None:
        vae_model = _vae_for(scfg, vae_src, None, path, vae_model)
    info = dict(meta["info"])
    info.update(
        {
            "source": str(path),
            "vae_source": None if vae_src is None else str(vae_src),
            "alpha_source": "explicit" if alpha is not None else "adapter config",
            "lora_merged": {"rank": cfg.rank, "alpha": a, "base": str(base), "modules": len(lora_sd) // 2},
        }
    )
    info.pop("base", None)
    logger.info(
        "merged %d LoRA adapters of %s into %s (rank %d, alpha %g)",
        len(lora_sd) // 2,
        path,
        base,
        cfg.rank,
        a,
    )
    return Checkpoint(
        model.float(), None if vae_model is None else vae_model.float(), base_ckpt.sampling, info
    )  # type: ignore[arg-type]


def _load_local(
    path: Path,
    *,
    vae: str | os.PathLike | None = None,
    variant: str | None = None,
    alpha: Any = None,
    allow_pickle: bool = False,
    base: str | os.PathLike | None = None,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
    need_vae: bool = True,
) -> Checkpoint:
    """A local checkpoint: our directory, our LoRA directory, a folder of upstream files, or a file."""
    lora_kw = dict(
        base=base, allow_pickle=allow_pickle, lora_rank=lora_rank, lora_alpha=lora_alpha, need_vae=need_vae
    )
    if path.is_dir():
        if is_lora_dir(path):
            return _load_lora_dir(path, vae=vae, alpha=alpha, **lora_kw)  # type: ignore[arg-type]
        if (path / CONFIG_NAME).exists():
            return _load_our_format(path, alpha)
        name = VARIANT_FILES[variant or "grpo"]
        candidates = [path / name] if variant else [path / VARIANT_FILES["grpo"], path / VARIANT_FILES["sft"]]
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            raise CheckpointError(
                f"{path} holds neither a stylevar checkpoint ({CONFIG_NAME}) nor {' / '.join(c.name for c in candidates)}"
            )
        vae_path = Path(vae) if vae else path / VAE_FILENAME
        return _load_file(
            found,
            vae_path if vae_path.exists() or vae else None,
            variant=variant or _guess_variant(found),
            alpha=alpha,
            **lora_kw,  # type: ignore[arg-type]
        )
    return _load_file(path, vae, variant=variant, alpha=alpha, **lora_kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- hub
def _hub_errors() -> tuple[type, type]:
    try:
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError:  # huggingface_hub < 0.23
        from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError  # type: ignore
    return EntryNotFoundError, LocalEntryNotFoundError


class HubUnreachableError(CheckpointError):
    """A Hub file could not be downloaded (offline or unreachable) and is not in the local cache."""


def _hub_host_resolves() -> bool:
    """False when the Hub's host name does not resolve (no network): no point in the client's retries.

    Behind a proxy the local resolver may not know the host while downloads still work, so any
    proxy setting counts as reachable.
    """
    import socket
    from urllib.parse import urlparse

    if any(
        os.environ.get(v)
        for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    ):
        return True
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
    if not host:
        return True
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def hub_download(
    repo_id: str,
    filename: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    missing_ok: bool = False,
) -> Path | None:
    """Fetch one file of a Hub repo through ``huggingface_hub`` (and its cache).

    Returns ``None`` for a file the repo does not have when ``missing_ok``; raises a one-line
    :class:`HubUnreachableError` when offline and not cached, :class:`CheckpointError` for other
    failures (unknown repo, authentication).
    """
    from huggingface_hub import hf_hub_download

    entry_missing, local_missing = _hub_errors()
    try:
        return Path(
            hf_hub_download(
                repo_id, filename, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
            )
        )
    except local_missing:
        raise HubUnreachableError(
            f"cannot get {filename} of the Hub repo {repo_id}: offline and not in the Hugging Face cache; "
            f"download it on a connected machine (huggingface-cli download {repo_id} {filename}) and pass "
            "--checkpoint/--vae with the local paths"
        ) from None
    except entry_missing:
        if missing_ok:
            return None
        raise CheckpointError(f"the Hub repo {repo_id} has no file {filename}") from None
    except Exception as e:  # network, authentication, unknown repo
        raise CheckpointError(
            f"cannot download {filename} from the Hub repo {repo_id} ({type(e).__name__}: {_short(e)}); "
            "check the repo id and your connection, or pass local files with --checkpoint/--vae"
        ) from None


_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def load_pretrained(
    pretrained: str | os.PathLike | None = None,
    *,
    vae: str | os.PathLike | None = None,
    variant: str | None = None,
    alpha: Any = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    allow_pickle: bool = False,
    base: str | os.PathLike | None = None,
) -> Checkpoint:
    """Load a StyleVAR checkpoint from a directory, files or a Hub repo id.

    Args:
        pretrained: one of
            * a directory in our format (``config.json`` + safetensors),
            * a directory holding upstream files (``vae_ch160v4096z32.pth`` and
              ``StyleVAR-GRPO.pth`` / ``StyleVAR_SFT.pth``),
            * a transformer file (``.pth`` / ``.safetensors``), with ``vae`` or the VQ-VAE beside it;
              GRPO training checkpoints too (LoRA-wrapped: baked; LoRA only: needs ``base``),
            * our LoRA directory (``adapter_config.json``): merged into ``base``, or into the
              base path it recorded as ``info["base"]``,
            * a Hub repo id (default ``Senfier-LiqiJing/StyleVAR``).
        vae: path of the VQ-VAE file (upstream files only).
        variant: ``grpo`` or ``sft``: which released transformer, and its default alpha.
        alpha: per-scale alpha values or a preset name; overrides the checkpoint's.
        revision, cache_dir, local_files_only: passed to ``huggingface_hub``.
        allow_pickle: allow ``.pth`` files with arbitrary pickled objects (trusted files only).
        base: the local base (SFT) checkpoint that LoRA-only adapters apply to (ignored for full
            checkpoints). Its VQ-VAE is used unless ``vae`` is given.
    """
    if variant is not None and variant not in VARIANT_FILES:
        raise CheckpointError(f"unknown variant {variant!r}; choose one of {sorted(VARIANT_FILES)}")
    src = str(pretrained) if pretrained is not None else DEFAULT_REPO
    path = Path(src).expanduser()
    if path.exists():
        return _load_local(path, vae=vae, variant=variant, alpha=alpha, allow_pickle=allow_pickle, base=base)
    if not _REPO_RE.match(src) or src.startswith((".", "/", "~")):
        raise CheckpointError(
            f"checkpoint not found: {src} (neither a local path nor a Hub repo id like {DEFAULT_REPO})"
        )
    if not local_files_only and not _hub_host_resolves():
        logger.info("the Hugging Face Hub cannot be resolved; using the local cache only")
        local_files_only = True
    kw = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    try:
        cfg_file = hub_download(src, CONFIG_NAME, missing_ok=True, **kw)
    except HubUnreachableError:
        # Unreachable (or offline) and no config.json cached: the upstream files may still be in the
        # cache. Look only there from now on instead of waiting through the Hub client's retries again.
        cfg_file, kw["local_files_only"] = None, True
    if cfg_file is not None:
        directory = cfg_file.parent
        for name in (MODEL_WEIGHTS, VAE_WEIGHTS):
            hub_download(src, name, **kw)
        return _load_our_format(directory, alpha)
    variant = variant or "grpo"
    model_file = hub_download(src, VARIANT_FILES[variant], **kw)
    vae_file = Path(vae) if vae else hub_download(src, VAE_FILENAME, **kw)
    ckpt = load_upstream(
        model_file, vae_file, variant=variant, alpha=alpha, allow_pickle=allow_pickle, base=base
    )
    ckpt.info["repo_id"] = src
    return ckpt


def convert_upstream(
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    vae: str | os.PathLike | None = None,
    variant: str | None = None,
    alpha: Any = None,
    allow_pickle: bool = False,
    dtype: torch.dtype | None = None,
) -> Path:
    """Convert upstream files (a StyleVAR ``.pth`` and its VQ-VAE) into our format in ``out_dir``."""
    ckpt = load_pretrained(model_path, vae=vae, variant=variant, alpha=alpha, allow_pickle=allow_pickle)
    return save_pretrained(out_dir, ckpt.model, ckpt.vae, sampling=ckpt.sampling, info=ckpt.info, dtype=dtype)


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` via a temporary sibling, fsync and an atomic rename.

    A crash leaves either the old file or the new one, never a truncated file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


MERGE_FORMATS = ("stylevar", "upstream")


def merge_lora_checkpoint(
    lora_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    base: str | os.PathLike | None = None,
    vae: str | os.PathLike | None = None,
    fmt: str = "stylevar",
    rank: int | None = None,
    alpha: float | None = None,
    allow_pickle: bool = False,
) -> Path:
    """Merge GRPO LoRA adapters into plain weights and write them (``stylevar merge-lora``).

    ``lora_path`` is a GRPO checkpoint of upstream's (``grpo_*.pth``: LoRA only, which needs
    ``base``; LoRA-wrapped full state; or plain, full-parameter mode) or our LoRA directory.
    ``rank`` / ``alpha`` override the adapters' (default: the file's ``args``, else lora_A's rows
    and 2 * rank). The merged state is checked by a strict load into a fresh plain model and for
    finite values, then written as

    * ``fmt="stylevar"``: our checkpoint directory ``out`` (with the VQ-VAE: ``vae``, the base's,
      or the one beside the checkpoint), provenance in ``info``;
    * ``fmt="upstream"``: ``{'model': plain_state_dict, 'note': str}`` to the file ``out``, like
      upstream's ``merge_grpo_lora.py`` (no VQ-VAE needed).

    Returns the path written.
    """
    if fmt not in MERGE_FORMATS:
        raise ConfigError(f"unknown output format {fmt!r}; choose one of {list(MERGE_FORMATS)}")
    src = Path(lora_path).expanduser()
    if not src.exists():
        raise CheckpointError(f"checkpoint not found: {src}")
    out_path = Path(out).expanduser()
    if fmt == "upstream" and out_path.is_dir():
        raise CheckpointError(
            f"{out_path} is a directory; --format upstream writes one file (e.g. {out_path}/merged.pth)"
        )
    ckpt = _load_local(
        src,
        vae=vae,
        allow_pickle=allow_pickle,
        base=base,
        lora_rank=rank,
        lora_alpha=alpha,
        need_vae=fmt == "stylevar",
    )
    plain = {k: v.detach() for k, v in ckpt.model.state_dict().items()}
    leftover = [k for k in plain if ".lora_" in k or k.endswith((".base_weight", ".base_bias"))]
    if leftover:
        raise CheckpointError(f"{src}: the merged state still has LoRA keys (e.g. {leftover[0]})")
    params = {n for n, _ in ckpt.model.named_parameters()}  # buffers hold -inf (the attention mask)
    bad = [k for k in sorted(params) if not bool(torch.isfinite(plain[k]).all())]
    if bad:
        raise CheckpointError(
            f"{src}: merged weights are not finite (e.g. {bad[0]}); the GRPO run diverged or --rank/--lora-alpha are wrong"
        )
    build_stylevar(copy.deepcopy(ckpt.model.config), plain, f"{src} (merged)")  # strict round trip
    merged = {k: v for k, v in ckpt.info.items() if k in ("lora_merged", "lora_baked")}
    note = f"merged by stylevar merge-lora from {src}"
    for k, v in merged.items():
        note += f"; {k.replace('_', ' ')}: " + ", ".join(f"{a} {b}" for a, b in v.items())
    if not merged:
        note += " (a plain checkpoint: nothing to merge)"
    logger.info(note)
    if fmt == "upstream":
        return atomic_save({"model": plain, "note": note}, out_path)
    info = dict(ckpt.info)
    info["merge_note"] = note
    return save_pretrained(out_path, ckpt.model, ckpt.vae, sampling=ckpt.sampling, info=info)


def save_upstream_grpo(
    path: str | os.PathLike, model: StyleVAR, form: str = "lora", *, step: int = 0, epoch: int = 0
) -> Path:
    """Write a LoRA-wrapped model in one of upstream's three GRPO checkpoint forms (upstream-spec §5.6).

    ``form``: ``lora`` -- only the ``lora_A``/``lora_B`` keys (upstream's saves before a merge; loading
    needs the base); ``wrapped`` -- the full wrapped state (``base_weight``/``base_bias``/``lora_*``,
    upstream's saves after a merge); ``merged`` -- the adapters baked into a plain state dict (the
    released ``StyleVAR-GRPO.pth`` form). The file is ``{step, epoch, use_lora, model, optimizer,
    scaler, args}`` with ``args`` holding ``lora_rank``/``lora_alpha``, written atomically; upstream's
    code and :func:`load_pretrained` read all three.
    """
    from .models.lora import bake_wrapped_state, has_lora, lora_state_dict

    if form not in ("lora", "wrapped", "merged"):
        raise ConfigError(f"form must be lora, wrapped or merged, not {form!r}")
    if not has_lora(model):
        raise ConfigError("the model has no LoRA adapters; save a plain model with save_pretrained")
    cfg = model.lora_config
    full = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if form == "lora":
        sd = {k: v.clone() for k, v in lora_state_dict(model).items()}
    elif form == "wrapped":
        sd = full
    else:
        sd = bake_wrapped_state(full, cfg.rank, cfg.alpha)
    obj = {
        "step": step,
        "epoch": epoch,
        "use_lora": form != "merged",
        "model": sd,
        "optimizer": {},
        "scaler": {},
        "args": {"lora_rank": cfg.rank, "lora_alpha": cfg.alpha},
    }
    return atomic_save(obj, path)
