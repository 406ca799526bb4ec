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


def resolve_dtype(dtype: str, device: str | torch.device, model=None) -> str:
    """A run's ``dtype`` (:class:`~stylevar.config.Sampling`) with ``auto`` resolved for ``device``.

    ``auto``: a model already converted in place keeps its arithmetic (``int8``, or ``bf16``: its fp32
    weights are gone); otherwise ``bf16`` where the device computes bf16 natively (:func:`has_fast_bf16`:
    CPUs with AMX or AVX512-BF16, CUDA since Ampere), else ``fp32``. docs/speed.md ("bf16 on the CPU")
    measures what it changes. Other values are returned as they are."""
    if dtype != "auto":
        return dtype
    if getattr(model, "int8", False):
        return "int8"
    if getattr(model, "bf16", False):
        return "bf16"
    return "bf16" if has_fast_bf16(device) else "fp32"


def decode_dtype(model, device) -> torch.dtype | None:
    """The VQ-VAE decoding's autocast dtype for a run of ``model``: bf16 for an int8 model
    (:mod:`stylevar.models.quantized`) on a CPU with AMX, where the d20 decoder runs 2.7x faster (docs/speed.md;
    not measured with AVX512-BF16 alone, so such CPUs decode in the run's own dtype) or on a GPU that
    computes bf16; None (the run's own dtype) otherwise. On such a CPU the int8 run's convolutions are
    stored in bf16 (:func:`bf16_convolutions_`)."""
    if not getattr(model, "int8", False):
        return None
    dev = torch.device(device)
    fast = has_amx(dev) if dev.type == "cpu" else has_fast_bf16(dev)
    return torch.bfloat16 if fast else None


def bf16_convolutions_(vae, model, device) -> bool:
    """With an int8 ``model`` whose decoding runs in bf16 (:func:`decode_dtype`), store the convolutions of the
    VQ-VAE (decoder and encoder) and of the ResNet-18 encoders in bf16, channels-last
    (:func:`stylevar.models.quantized.bf16_decoder_convs_`, :func:`~stylevar.models.quantized.bf16_encoders_`):
    they then compute in bf16, half the memory, in the layout oneDNN's bf16 convolutions are fast in; on the
    demo model within 0.001 SSIM of fp32 (docs/speed.md). Returns whether it did."""
    if decode_dtype(model, device) != torch.bfloat16:
        return False
    from .models.quantized import bf16_decoder_convs_, bf16_encoders_

    bf16_decoder_convs_(vae)
    bf16_encoders_(model, vae)
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
