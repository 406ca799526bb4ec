"""The VQ-VAE (tokenizer) on its own: our tokenizer folder, and the one loader for every VQ-VAE source.

A tokenizer folder (``stylevar train-tokenizer`` writes ``RUN_DIR/final``)::

    config.json          {"format": "stylevar-vqvae", "format_version": 1, "vqvae": {...}, "info": {...}}
    vqvae.safetensors    VQ-VAE (VAR's key names)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import DEFAULT_PATCH_NUMS, VQVAEConfig
from ..errors import CheckpointError, ConfigError
from ..models import VQVAE
from .folders import (
    CHECKPOINT,
    CONFIG_NAME,
    TOKENIZER,
    VAE_WEIGHTS,
    config_from,
    read_config,
    read_weights,
    write_folder,
)
from .safe import read_file, short_error
from .state import build_vqvae, classify, extract_state_dict, infer_vqvae_config, is_tensor_dict
from .upstream import VAE_FILENAME

#: the ``"format"`` of a tokenizer training checkpoint (``RUN_DIR/checkpoints/*.pt``)
TOKENIZER_TRAINING_FORMAT = "stylevar-tokenizer-1"


def save_vqvae(out_dir: str | os.PathLike, vae: VQVAE, *, info: dict[str, Any] | None = None) -> Path:
    """Write a tokenizer folder: ``vqvae.safetensors`` + ``config.json`` (see the module docstring),
    atomically (a temporary sibling folder replaces ``out_dir`` only when complete)."""
    body = {"vqvae": vae.config.to_dict(), "info": info or {}}
    return write_folder(TOKENIZER, out_dir, {VAE_WEIGHTS: vae}, body)


def _with_patch_nums(cfg: VQVAEConfig, patch_nums: Sequence[int] | None) -> VQVAEConfig:
    return cfg if patch_nums is None else dataclasses.replace(cfg, patch_nums=tuple(patch_nums))


def _load_dir(d: Path, patch_nums: Sequence[int] | None, allow_pickle: bool) -> VQVAE:
    if not (d / CONFIG_NAME).exists():
        if (d / VAE_FILENAME).exists():
            return load_vqvae(d / VAE_FILENAME, patch_nums=patch_nums, allow_pickle=allow_pickle)
        raise CheckpointError(
            f"{d} holds neither {CONFIG_NAME} (a stylevar tokenizer or checkpoint folder) nor {VAE_FILENAME}"
        )
    fmt, raw = read_config(d, (TOKENIZER, CHECKPOINT))
    cfg = config_from(VQVAEConfig, raw, "vqvae", d / CONFIG_NAME)
    try:
        cfg = _with_patch_nums(cfg, patch_nums)
    except ConfigError as e:  # the caller's patch_nums
        raise CheckpointError(f"{d / CONFIG_NAME}: invalid VQ-VAE configuration ({short_error(e)})") from None
    return build_vqvae(cfg, read_weights(d, VAE_WEIGHTS, fmt), d / VAE_WEIGHTS)


def _from_training_checkpoint(obj: Mapping[str, Any], p: Path, patch_nums: Sequence[int] | None) -> VQVAE:
    """The VQ-VAE of a tokenizer training checkpoint (``{"format", "config": {"vqvae": ...}, "model": ...}``)."""
    config = obj.get("config")
    if not isinstance(config, Mapping):
        raise CheckpointError(
            f'{p}: its "config" is not an object; the tokenizer training checkpoint is damaged'
        )
    try:
        cfg = _with_patch_nums(VQVAEConfig.from_dict(config.get("vqvae")), patch_nums)
    except (TypeError, ValueError, ConfigError) as e:
        raise CheckpointError(f"{p}: invalid VQ-VAE configuration ({short_error(e)})") from None
    sd = obj.get("model")
    if not is_tensor_dict(sd):
        raise CheckpointError(f'{p}: its "model" is not a state dict of tensors; the checkpoint is damaged')
    return build_vqvae(cfg, sd, p)


def load_vqvae(
    path: str | os.PathLike, *, patch_nums: Sequence[int] | None = None, allow_pickle: bool = False
) -> VQVAE:
    """Load a VQ-VAE (float32, CPU, eval mode) from any of:

    * a tokenizer folder written by :func:`save_vqvae` (``RUN_DIR/final`` of ``stylevar train-tokenizer``);
    * our full checkpoint folder (``config.json`` with ``"format": "stylevar"``): its VQ-VAE;
    * an upstream VQ-VAE file (``vae_ch160v4096z32.pth``, a plain state dict; configuration read
      off the tensor shapes, ``patch_nums`` default VAR's 256 px scales), or a folder holding it;
    * an upstream SFT trainer checkpoint (its embedded ``trainer.vae_local``);
    * a tokenizer training checkpoint (``RUN_DIR/checkpoints/last.pt``).

    ``patch_nums`` replaces the stored scales (the weights do not depend on them). Errors are
    one-line :class:`CheckpointError` messages naming the file.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"VQ-VAE not found: {p}")
    if p.is_dir():
        return _load_dir(p, patch_nums, allow_pickle).float()
    obj = read_file(p, allow_pickle=allow_pickle)
    if isinstance(obj, Mapping) and obj.get("format") == TOKENIZER_TRAINING_FORMAT:
        return _from_training_checkpoint(obj, p, patch_nums).float()
    trainer = obj.get("trainer") if isinstance(obj, Mapping) else None
    if isinstance(trainer, Mapping) and isinstance(
        trainer.get("vae_local"), Mapping
    ):  # upstream SFT trainer file
        sd = extract_state_dict(trainer["vae_local"], p)
    else:
        sd = extract_state_dict(obj, p)
    kind = classify(sd)
    if kind != "vqvae":
        raise CheckpointError(
            f"{p} is not a VQ-VAE checkpoint (its weights look like: {kind}); give a tokenizer folder, "
            f"a stylevar checkpoint folder or a VQ-VAE file such as {VAE_FILENAME}"
        )
    cfg = infer_vqvae_config(sd, tuple(patch_nums) if patch_nums is not None else DEFAULT_PATCH_NUMS)
    return build_vqvae(cfg, sd, p).float()
