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


def _cpu_has(*features: str) -> bool:
    """Does this CPU report any of ``features`` (``torch.cpu.get_capabilities`` names)?"""
    try:
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):  # older torch: no capability query
        return False
    return any(bool(caps.get(f, False)) for f in features)


def has_amx(device: str | torch.device) -> bool:
    """Is ``device`` a CPU with Intel AMX bf16 tiles (``amx_bf16``, Sapphire Rapids and newer)?"""
    return torch.device(device).type == "cpu" and _cpu_has("amx_bf16")


def has_fast_bf16(device: str | torch.device) -> bool:
    """Does ``device`` compute in bfloat16 natively (faster than float32)?

    CUDA: ``torch.cuda.is_bf16_supported()`` (Ampere and newer). CPU: Intel AMX (``amx_bf16``) or the
    AVX-512 bf16 dot products (``avx512_bf16``: Cooper Lake, Zen 4 and newer), where oneDNN's bf16
    convolutions beat fp32 (the demo's tokenizer step: 1.8x with AMX, 1.5x on a Zen 4 EPYC;
    docs/demo.md); elsewhere bf16 on the CPU is emulated and slower, so False.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return dev.type == "cpu" and _cpu_has("amx_bf16", "avx512_bf16")


def decode_dtype(model, device) -> torch.dtype | None:
    """The VQ-VAE decoding's autocast dtype for a run of ``model``: bf16 for an int8 model
    (:mod:`stylevar.models.quantized`) on a CPU with AMX, where the d20 decoder runs 2.7x faster (docs/speed.md; not measured with AVX512-BF16 alone, so such CPUs decode in the run's own dtype) or on a GPU
    that computes bf16; None (the run's own dtype) otherwise."""
    if not getattr(model, "int8", False):
        return None
    dev = torch.device(device)
    fast = has_amx(dev) if dev.type == "cpu" else has_fast_bf16(dev)
    return torch.bfloat16 if fast else None


def bf16_decoder_(vae, model, device) -> bool:
    """With an int8 ``model`` whose decoding runs in bf16 (:func:`decode_dtype`), store the VQ-VAE
    decoder's weights in bf16: the same values autocast would cast them to, half the memory. Returns
    whether it did (then decode only under bf16 autocast, as ``generate`` does for such a model)."""
    if decode_dtype(model, device) != torch.bfloat16:
        return False
    vae.decoder.to(torch.bfloat16)
    vae.post_quant_conv.to(torch.bfloat16)
    return True


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), for the machine line beside every measured figure."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
