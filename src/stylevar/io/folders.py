"""stylevar's own on-disk formats: folders of safetensors files beside a versioned JSON config.

One reader and one writer serve the three kinds of folder:

==================  ===================  =======================  ======================================
format name         config file          weights                  written by
==================  ===================  =======================  ======================================
``stylevar``        ``config.json``      ``model.safetensors``,   :func:`stylevar.io.save_pretrained`
                                         ``vqvae.safetensors``    (a full checkpoint)
``stylevar-vqvae``  ``config.json``      ``vqvae.safetensors``    :func:`stylevar.io.save_vqvae`
                                                                  (a tokenizer)
``stylevar-lora``   ``adapter_config``   ``adapter.safetensors``  :func:`stylevar.io.save_lora`
                    ``.json``                                     (LoRA adapters of a GRPO run)
==================  ===================  =======================  ======================================

Every config holds ``{"format": name, "format_version": N, ...}``. A reader refuses a folder of
another format and one written by a newer stylevar (``format_version`` above what it knows), with
one line naming the file. Writing is atomic (a temporary sibling folder replaces the target only when
complete, :func:`~stylevar.io.safe.write_weights_dir`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..errors import CheckpointError, ConfigError
from .safe import read_file, read_json, short_error, short_repr, write_weights_dir

C = TypeVar("C")


@dataclass(frozen=True)
class FolderFormat:
    """One kind of stylevar folder: its format name and version, config file and weight files."""

    name: str
    version: int
    config_name: str
    weights: tuple[str, ...]
    kind: str  #: how messages call it, e.g. "stylevar checkpoint directory"
    use: str = ""  #: where such a folder goes, for a message about a folder passed in the wrong place


CONFIG_NAME = "config.json"
MODEL_WEIGHTS = "model.safetensors"
VAE_WEIGHTS = "vqvae.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter.safetensors"

CHECKPOINT = FolderFormat(
    "stylevar",
    1,
    CONFIG_NAME,
    (MODEL_WEIGHTS, VAE_WEIGHTS),
    "stylevar checkpoint directory",
    "--checkpoint / --init",
)
TOKENIZER = FolderFormat(
    "stylevar-vqvae",
    1,
    CONFIG_NAME,
    (VAE_WEIGHTS,),
    "stylevar tokenizer folder",
    "--vae (stylevar sft --depth N --vae trains a StyleVAR on it)",
)
ADAPTER = FolderFormat(
    "stylevar-lora",
    1,
    ADAPTER_CONFIG,
    (ADAPTER_WEIGHTS,),
    "stylevar LoRA directory",
)
KNOWN_FORMATS = (CHECKPOINT, TOKENIZER, ADAPTER)


def write_folder(
    fmt: FolderFormat,
    out_dir: str | os.PathLike,
    tensors: Mapping[str, torch.nn.Module | Mapping[str, torch.Tensor]],
    body: dict[str, Any],
    *,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a folder of format ``fmt``: each entry of ``tensors`` (a module or a tensor dict) as its
    safetensors file, and ``{"format", "format_version", **body}`` as the config. Atomic."""
    unknown = sorted(set(tensors) - set(fmt.weights))
    if unknown:
        raise ValueError(f"{fmt.name} folders hold {list(fmt.weights)}, not {unknown}")
    config = {"format": fmt.name, "format_version": fmt.version, **body}
    return write_weights_dir(
        out_dir, tensors, config, kind=fmt.kind, dtype=dtype, config_name=fmt.config_name
    )


def has_config(directory: str | os.PathLike, fmt: FolderFormat) -> bool:
    """True when ``directory`` is a folder holding ``fmt``'s config file (of whatever content)."""
    p = Path(directory)
    return p.is_dir() and (p / fmt.config_name).is_file()


def read_config(
    directory: str | os.PathLike, formats: Sequence[FolderFormat], *, what: str = "config"
) -> tuple[FolderFormat, dict[str, Any]]:
    """The format (one of ``formats``, which share one config file name) and raw config of a folder.

    Refuses, with one line naming the file: a missing or unreadable config, another format (``what``
    names the expected kind, e.g. ``"LoRA config"``), or a newer format version.
    """
    d = Path(directory)
    config_file = d / formats[0].config_name
    if d.exists() and not d.is_dir():
        raise CheckpointError(
            f"{d} is a file, not a folder; a {formats[0].kind} is a folder holding {formats[0].config_name}"
        )
    if not config_file.is_file():
        raise CheckpointError(f"{d} holds no {formats[0].config_name}; it is not a {formats[0].kind}")
    raw = read_json(config_file, what)
    found = raw.get("format")
    fmt = next((f for f in formats if f.name == found), None)
    if fmt is None:
        expected = " or ".join(repr(f.name) for f in formats)
        other = next((f for f in KNOWN_FORMATS if f.name == found and f.use), None)
        hint = f"; it is a {other.kind}: it goes to {other.use}" if other else ""
        raise CheckpointError(
            f'{config_file} is not a stylevar {what} ("format" is {found!r}, expected {expected}){hint}'
        )
    try:
        version = int(raw.get("format_version", 0))
    except (TypeError, ValueError):
        raise CheckpointError(
            f"{config_file}: format_version {raw.get('format_version')!r} is not a number"
        ) from None
    if version > fmt.version:
        raise CheckpointError(
            f"{d} was written by a newer stylevar ({fmt.name} format {version}, this one reads up to "
            f"{fmt.version}); upgrade stylevar"
        )
    return fmt, raw


def read_section(
    raw: Mapping[str, Any], key: str, config_file: Path, *, required: bool = True
) -> dict[str, Any]:
    """``raw[key]`` of a config read by :func:`read_config`: a JSON object (``{}`` when absent and not
    ``required``); one :class:`CheckpointError` line naming ``config_file`` otherwise."""
    if key not in raw:
        if required:
            raise CheckpointError(f'{config_file} has no "{key}" section; it is incomplete')
        return {}
    value = raw[key]
    if not isinstance(value, dict):
        raise CheckpointError(
            f'{config_file}: "{key}" must be an object ({{...}}), got {type(value).__name__} {short_repr(value)}'
        )
    return value


def config_from(
    cls: type[C], raw: Mapping[str, Any], key: str, config_file: Path, *, required: bool = True
) -> C:
    """``cls.from_dict(raw[key])`` (a :class:`~stylevar.config.Serialisable` config: fields type-checked,
    then validated), its errors as one :class:`CheckpointError` line naming ``config_file``."""
    section = read_section(raw, key, config_file, required=required)
    try:
        return cls.from_dict(section)  # type: ignore[attr-defined]
    except (TypeError, ValueError, ConfigError) as e:
        raise CheckpointError(f"{config_file}: invalid {key} configuration ({short_error(e)})") from None


def read_weights(directory: str | os.PathLike, name: str, fmt: FolderFormat) -> dict[str, torch.Tensor]:
    """The tensors of ``name`` (a safetensors file of the folder); one line when missing or broken."""
    p = Path(directory) / name
    if not p.is_file():
        raise CheckpointError(f"{p} is missing; the {fmt.kind} is incomplete")
    return read_file(p)
