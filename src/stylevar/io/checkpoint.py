"""Our checkpoint format: a StyleVAR transformer and its VQ-VAE in one folder.

    config.json          {"format": "stylevar", "format_version": 1, "stylevar": {...}, "vqvae": {...},
                          "sampling": {...}, "info": {...}}
    model.safetensors    StyleVAR transformer (the published code's key names)
    vqvae.safetensors    VQ-VAE (VAR's key names)

The config is enough to rebuild both models; ``info`` holds provenance (where the weights came from,
how they were trained or merged). :class:`Checkpoint` is what every loader of :mod:`stylevar.io`
returns.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import Sampling, StyleVARConfig, VQVAEConfig, alpha_for_scales
from ..errors import CheckpointError, ConfigError
from ..models import VQVAE, StyleVAR
from .folders import (
    CHECKPOINT,
    CONFIG_NAME,
    MODEL_WEIGHTS,
    VAE_WEIGHTS,
    config_from,
    read_config,
    read_section,
    read_weights,
    write_folder,
)
from .safe import short_error
from .state import build_stylevar, build_vqvae


@dataclass
class Checkpoint:
    """A loaded StyleVAR + VQ-VAE pair with its sampling defaults and provenance."""

    model: StyleVAR
    vae: VQVAE
    sampling: Sampling = field(default_factory=Sampling)  #: its defaults: top-k/top-p, temperature, strength
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
    sampling: Sampling | None = None,
    info: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` + ``vqvae.safetensors`` into ``out_dir``, atomically.

    Files are written to a temporary sibling directory that replaces ``out_dir`` only when complete.
    ``dtype`` casts floating-point weights (e.g. ``torch.bfloat16`` halves the size); loading casts back.
    """
    body = {
        "stylevar": model.config.to_dict(),
        "vqvae": vae.config.to_dict(),
        "sampling": (sampling or Sampling()).stored(),
        "info": info or {},
    }
    return write_folder(CHECKPOINT, out_dir, {MODEL_WEIGHTS: model, VAE_WEIGHTS: vae}, body, dtype=dtype)


def load_checkpoint_dir(directory: str | os.PathLike, alpha: Any = None) -> Checkpoint:
    """Load our checkpoint folder (float32, CPU, eval mode); ``alpha`` overrides the stored per-scale alpha."""
    directory = Path(directory)
    config_file = directory / CONFIG_NAME
    _, raw = read_config(directory, (CHECKPOINT,))
    scfg = config_from(StyleVARConfig, raw, "stylevar", config_file)
    vcfg = config_from(VQVAEConfig, raw, "vqvae", config_file)
    sampling = config_from(Sampling, raw, "sampling", config_file, required=False)
    stored_info = read_section(raw, "info", config_file, required=False)
    try:
        scfg.check_vqvae(vcfg)
    except ConfigError as e:
        raise CheckpointError(f"{config_file}: invalid configuration ({short_error(e)})") from None
    if alpha is not None:  # the caller's value, not the file's: its error is the caller's
        scfg = dataclasses.replace(scfg, alpha=alpha_for_scales(alpha, scfg.num_scales))
    sds = {name: read_weights(directory, name, CHECKPOINT) for name in CHECKPOINT.weights}
    model = build_stylevar(scfg, sds[MODEL_WEIGHTS], directory / MODEL_WEIGHTS)
    vae = build_vqvae(vcfg, sds[VAE_WEIGHTS], directory / VAE_WEIGHTS)
    info = dict(stored_info)
    info["source"] = str(directory)
    return Checkpoint(model.float(), vae.float(), sampling, info)
