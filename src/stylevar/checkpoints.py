"""Loading and saving checkpoints: our format, upstream ``.pth`` files and the Hugging Face Hub.

Our format is a directory::

    config.json          {"format": "stylevar", "stylevar": {...}, "vqvae": {...}, "sampling": {...}, ...}
    model.safetensors    StyleVAR transformer (upstream's key names)
    vqvae.safetensors    VQ-VAE (VAR's key names)

Upstream files (``StyleVAR_SFT.pth``, ``StyleVAR-GRPO.pth``, ``vae_ch160v4096z32.pth``, SFT trainer
checkpoints) load through ``torch.load(weights_only=True)``; their configuration is read off the
tensor shapes. Pickled Python objects are refused unless the caller opts in (``allow_pickle``).
"""

from __future__ import annotations

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
    "lora_only": "it holds only LoRA adapters of a GRPO run; merge them into their SFT base first "
    "(the released StyleVAR-GRPO.pth is already merged)",
    "stylevar_lora": "it is a LoRA-wrapped GRPO training checkpoint; merge the adapters into the base weights "
    "first (the released StyleVAR-GRPO.pth is already merged)",
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
    modules: Mapping[str, torch.nn.Module],
    config: dict[str, Any],
    *,
    kind: str,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write each module's state dict as ``<name>`` (safetensors) plus ``config.json`` into ``out_dir``.

    Atomic: the files go to a temporary sibling directory that replaces ``out_dir`` only when
    complete. An existing non-empty ``out_dir`` without a ``config.json`` is refused (``kind``
    names what it should have been). ``dtype`` casts floating-point weights.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    if out.exists() and not (out / CONFIG_NAME).exists() and any(out.iterdir()):
        raise CheckpointError(f"{out} exists and is not a {kind}; choose a new output path")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for name, module in modules.items():
            sd, seen = {}, set()
            for k, v in module.state_dict().items():
                v = v.detach().to("cpu")
                if dtype is not None and v.is_floating_point():
                    v = v.to(dtype)
                v = v.contiguous()
                if v.numel() and v.data_ptr() in seen:  # safetensors refuses shared storage
                    v = v.clone()
                seen.add(v.data_ptr())
                sd[k] = v
            save_file(sd, str(tmp / name), metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
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


def load_upstream(
    model_path: str | os.PathLike,
    vae_path: str | os.PathLike | None = None,
    *,
    variant: str | None = None,
    alpha: Any = None,
    allow_pickle: bool = False,
) -> Checkpoint:
    """Load upstream ``.pth`` (or plain ``.safetensors``) files: a StyleVAR transformer and a VQ-VAE.

    ``vae_path`` may be omitted when ``model_path`` is an SFT trainer checkpoint (it embeds the
    VQ-VAE) or when ``vae_ch160v4096z32.pth`` lies beside it. Alpha (not stored upstream) is
    ``alpha`` if given, else the variant's preset (``grpo`` -> paper, ``sft`` -> sft; the
    variant is guessed from the file name when not given), else the paper preset.
    """
    model_path = Path(model_path)
    obj = read_file(model_path, allow_pickle=allow_pickle)
    sd = extract_state_dict(obj, model_path)
    kind = classify(sd)
    if kind != "stylevar":
        raise _wrong_kind(model_path, kind, sd, "StyleVAR transformer")
    variant = variant or _guess_variant(model_path)
    if alpha is None:
        alpha_src = VARIANT_ALPHA.get(variant or "", "paper")
        alpha_value: Any = alpha_src
    else:
        alpha_src, alpha_value = "explicit", alpha
    scfg = infer_stylevar_config(sd, alpha_value)

    vae_sd, vae_src = None, None
    if vae_path is not None:
        vae_src = Path(vae_path)
        vae_sd = extract_state_dict(read_file(vae_src, allow_pickle=allow_pickle), vae_src)
    elif (
        isinstance(obj, Mapping)
        and isinstance(obj.get("trainer"), Mapping)
        and _is_tensor_dict(obj["trainer"].get("vae_local"))
    ):
        vae_src, vae_sd = model_path, dict(obj["trainer"]["vae_local"])
    elif (model_path.parent / VAE_FILENAME).exists():
        vae_src = model_path.parent / VAE_FILENAME
        vae_sd = extract_state_dict(read_file(vae_src, allow_pickle=allow_pickle), vae_src)
    else:
        raise CheckpointError(
            f"no VQ-VAE for {model_path}: pass --vae PATH (the released file is {VAE_FILENAME}) "
            "or put it beside the checkpoint"
        )
    vkind = classify(vae_sd)
    if vkind != "vqvae":
        raise _wrong_kind(vae_src, vkind, vae_sd, "VQ-VAE")
    vcfg = infer_vqvae_config(vae_sd, scfg.patch_nums)
    try:
        scfg.check_vqvae(vcfg)
    except ConfigError as e:
        raise CheckpointError(f"{vae_src} does not fit {model_path}: {e}") from None
    model = build_stylevar(scfg, sd, model_path)
    vae = build_vqvae(vcfg, vae_sd, vae_src)
    info = {
        "source": str(model_path),
        "vae_source": str(vae_src),
        "variant": variant,
        "alpha_source": alpha_src,
    }
    logger.info("loaded %s (variant %s), alpha %s (%s)", model_path, variant, list(scfg.alpha), alpha_src)
    return Checkpoint(model.float(), vae.float(), SamplingConfig(), info)


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
) -> Checkpoint:
    """Load a StyleVAR checkpoint from a directory, files or a Hub repo id.

    Args:
        pretrained: one of
            * a directory in our format (``config.json`` + safetensors),
            * a directory holding upstream files (``vae_ch160v4096z32.pth`` and
              ``StyleVAR-GRPO.pth`` / ``StyleVAR_SFT.pth``),
            * a transformer file (``.pth`` / ``.safetensors``), with ``vae`` or the VQ-VAE beside it,
            * a Hub repo id (default ``Senfier-LiqiJing/StyleVAR``).
        vae: path of the VQ-VAE file (upstream files only).
        variant: ``grpo`` or ``sft``: which released transformer, and its default alpha.
        alpha: per-scale alpha values or a preset name; overrides the checkpoint's.
        revision, cache_dir, local_files_only: passed to ``huggingface_hub``.
        allow_pickle: allow ``.pth`` files with arbitrary pickled objects (trusted files only).
    """
    if variant is not None and variant not in VARIANT_FILES:
        raise CheckpointError(f"unknown variant {variant!r}; choose one of {sorted(VARIANT_FILES)}")
    src = str(pretrained) if pretrained is not None else DEFAULT_REPO
    path = Path(src).expanduser()
    if path.exists():
        if path.is_dir():
            if (path / CONFIG_NAME).exists():
                return _load_our_format(path, alpha)
            name = VARIANT_FILES[variant or "grpo"]
            candidates = (
                [path / name] if variant else [path / VARIANT_FILES["grpo"], path / VARIANT_FILES["sft"]]
            )
            found = next((c for c in candidates if c.exists()), None)
            if found is None:
                raise CheckpointError(
                    f"{path} holds neither a stylevar checkpoint ({CONFIG_NAME}) nor {' / '.join(c.name for c in candidates)}"
                )
            vae_path = Path(vae) if vae else path / VAE_FILENAME
            return load_upstream(
                found,
                vae_path if vae_path.exists() or vae else None,
                variant=variant or _guess_variant(found),
                alpha=alpha,
                allow_pickle=allow_pickle,
            )
        return load_upstream(path, vae, variant=variant, alpha=alpha, allow_pickle=allow_pickle)
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
    ckpt = load_upstream(model_file, vae_file, variant=variant, alpha=alpha, allow_pickle=allow_pickle)
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
