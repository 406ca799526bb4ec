"""Which device to run on: ``auto`` picks CUDA when it is there; anything asked for is checked first."""

from __future__ import annotations

import torch

from .errors import ConfigError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None -> CUDA if available, else CPU; otherwise the named device (checked)."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:N, mps or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device} requested but CUDA is not available here; use --device cpu")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"device {device} requested but MPS is not available here; use --device cpu")
    return dev
