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


def has_fast_bf16(device: str | torch.device) -> bool:
    """Does ``device`` compute in bfloat16 natively (faster than float32)?

    CUDA: ``torch.cuda.is_bf16_supported()`` (Ampere and newer). CPU: Intel AMX (``amx_bf16``, Sapphire
    Rapids and newer), where oneDNN's bf16 convolutions and matrix products beat fp32 (the demo's
    tokenizer step: 1.8x, README "Demo"); elsewhere bf16 on the CPU is emulated or barely faster, so False.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type == "cpu":
        try:
            return bool(torch.cpu.get_capabilities().get("amx_bf16", False))
        except (AttributeError, RuntimeError):  # older torch: no capability query
            return False
    return False


def decode_dtype(model, device) -> torch.dtype | None:
    """The VQ-VAE decoding's autocast dtype for a run of ``model``: bf16 for an int8 model
    (:mod:`stylevar.models.quantized`) on a CPU that computes bf16 natively (AMX), where the d20 decoder
    runs 2.7x faster (README, Speed); None (the run's own dtype) otherwise."""
    if not getattr(model, "int8", False):
        return None
    return torch.bfloat16 if has_fast_bf16(torch.device(device)) else None


def bf16_decoder_(vae, model, device) -> bool:
    """With an int8 ``model`` whose decoding runs in bf16 (:func:`decode_dtype`), store the VQ-VAE
    decoder's weights in bf16: the same values autocast would cast them to, half the memory. Returns
    whether it did (then decode only under bf16 autocast, as ``generate`` does for such a model)."""
    if decode_dtype(model, device) != torch.bfloat16:
        return False
    vae.decoder.to(torch.bfloat16)
    vae.post_quant_conv.to(torch.bfloat16)
    return True
