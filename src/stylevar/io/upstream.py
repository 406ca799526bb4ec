"""Files of the published code: StyleVAR transformer ``.pth`` files in every wrapping, and their VQ-VAE.

The released files (``StyleVAR_SFT.pth``, ``StyleVAR-GRPO.pth``, ``vae_ch160v4096z32.pth``), SFT trainer
checkpoints (with the VQ-VAE embedded) and GRPO training checkpoints (LoRA-wrapped: baked; LoRA-only:
applied to a base) load here; the configuration is read off the tensor shapes and the per-scale alpha,
which the published files do not store, comes from the variant (docs/upstream.md §8). PyTorch files are
read with ``weights_only=True``; pickled Python objects need ``allow_pickle``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..config import VARIANT_ALPHA, Sampling, StyleVARConfig
from ..errors import CheckpointError, ConfigError
from ..models import VQVAE
from .adapters import (
    apply_lora_to_plain_state,
    bake_wrapped_state,
    lora_hparams,
    lora_hparams_from_checkpoint,
)
from .checkpoint import Checkpoint
from .safe import read_file
from .state import (
    build_stylevar,
    build_vqvae,
    classify,
    extract_state_dict,
    infer_stylevar_config,
    infer_vqvae_config,
    is_tensor_dict,
    wrong_kind,
)

logger = logging.getLogger(__name__)

VAE_FILENAME = "vae_ch160v4096z32.pth"
VARIANT_FILES = {"grpo": "StyleVAR-GRPO.pth", "sft": "StyleVAR_SFT.pth"}


def guess_variant(path: Path) -> str | None:
    name = path.name.lower()
    if "grpo" in name:
        return "grpo"
    if "sft" in name:
        return "sft"
    return None


def read_vae(vae_src: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    return extract_state_dict(read_file(vae_src, allow_pickle=allow_pickle), vae_src)


def vae_for(
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
            raise wrong_kind(vae_src, vkind, vae_sd, "VQ-VAE")
        vcfg = infer_vqvae_config(vae_sd, scfg.patch_nums)
    else:
        vcfg = vae.config
    try:
        scfg.check_vqvae(vcfg)
    except ConfigError as e:
        raise CheckpointError(f"{vae_src} does not fit {model_path}: {e}") from None
    return vae if vae is not None else build_vqvae(vcfg, vae_sd, vae_src)  # type: ignore[arg-type]


def load_upstream_file(
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
    load_base: Callable[[], Checkpoint] | None = None,
) -> Checkpoint:
    """Load a transformer file of the published code's kinds (and its VQ-VAE); see
    :func:`stylevar.io.load_upstream` for the rules.

    ``base`` names the base checkpoint that LoRA-only adapters apply to and ``load_base`` loads it
    (the dispatcher of :mod:`stylevar.io.loader` passes both; it is only called for LoRA-only files).
    With ``need_vae=False`` a missing VQ-VAE leaves ``Checkpoint.vae`` None.
    """
    obj = read_file(model_path, allow_pickle=allow_pickle)
    sd = extract_state_dict(obj, model_path)
    kind = classify(sd)
    lora_info: dict[str, Any] = {}
    base_ckpt: Checkpoint | None = None
    if kind in ("stylevar_lora", "lora_only"):
        if kind == "lora_only" and base is None:
            raise wrong_kind(model_path, kind, sd, "StyleVAR transformer")
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
                assert base is not None and load_base is not None
                base_ckpt = load_base()
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
        raise wrong_kind(model_path, kind, sd, "StyleVAR transformer")
    elif base is not None:
        logger.info(
            "%s is a full (merged) checkpoint; --base %s is not needed and was ignored", model_path, base
        )
    variant = variant or guess_variant(model_path)
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
        vae_sd = read_vae(vae_src, allow_pickle)
    elif base_ckpt is not None and base_ckpt.vae is not None:
        vae_model = base_ckpt.vae
        vae_src = base_ckpt.info.get("vae_source", base_ckpt.info.get("source", base))
    elif (
        isinstance(obj, Mapping)
        and isinstance(obj.get("trainer"), Mapping)
        and is_tensor_dict(obj["trainer"].get("vae_local"))
    ):
        vae_src, vae_sd = model_path, dict(obj["trainer"]["vae_local"])
    elif (model_path.parent / VAE_FILENAME).exists():
        vae_src = model_path.parent / VAE_FILENAME
        vae_sd = read_vae(vae_src, allow_pickle)
    elif need_vae:
        raise CheckpointError(
            f"no VQ-VAE for {model_path}: pass --vae PATH (the released file is {VAE_FILENAME}) "
            "or put it beside the checkpoint"
        )
    vae = None if vae_src is None else vae_for(scfg, vae_src, vae_sd, model_path, vae_model)
    model = build_stylevar(scfg, sd, model_path)
    info: dict[str, Any] = {
        "source": str(model_path),
        "vae_source": None if vae_src is None else str(vae_src),
        "variant": variant,
        "alpha_source": alpha_src,
        **lora_info,
    }
    logger.info("loaded %s (variant %s), alpha %s (%s)", model_path, variant, list(scfg.alpha), alpha_src)
    sampling = base_ckpt.sampling if base_ckpt is not None else Sampling()
    return Checkpoint(model.float(), None if vae is None else vae.float(), sampling, info)  # type: ignore[arg-type]
