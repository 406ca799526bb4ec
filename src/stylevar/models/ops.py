"""Small numerical building blocks shared by the models.

``linear`` is ``F.linear`` except for one case measured to matter: on the CPU, MKL's fp32 GEMM
for ``x @ W.T`` with very few rows (the first scales of sampling at batch 1) runs at a third of the
memory-bound speed, while the same product computed as ``(W @ x.T).T`` streams the weight once.
``benchmarks/bench_linear.py`` measures both kernels on the machine at hand. The two forms give
the same result up to float summation order (~1e-7 relative).

Weights stored in bf16 (``--dtype bf16`` on the CPU, :func:`stylevar.models.quantized.to_bf16_`) set the
precision of their own products: :func:`linear` and :func:`stored_input` cast the input to the weight's
dtype, the way autocast would, but without autocast's per-op cast of every fp32 weight (docs/speed.md,
"bf16 on the CPU").
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError

#: at most this many rows use the transposed form on the CPU (measured crossover, see module doc)
SKINNY_ROWS = 16


def linear(x: torch.Tensor, weight: Any, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, with the faster kernel for few fp32 rows on the CPU; ``weight`` may be
    a :class:`~stylevar.models.quantized.Int8Weight` (its bias is prepacked with it: ``bias`` is ignored).
    A weight stored in a reduced precision (bf16) computes in it: ``x`` is cast to its dtype and the result
    has that dtype, as under autocast."""
    if not isinstance(weight, torch.Tensor):
        return weight(x)
    if x.dtype != weight.dtype and weight.dtype != torch.float32:
        x = x.to(weight.dtype)
    C = x.shape[-1]
    rows = x.numel() // C if C else 0
    if 0 < rows <= SKINNY_ROWS and x.device.type == "cpu" and x.dtype == torch.float32 == weight.dtype:
        xt = x.reshape(rows, C).t()
        out = torch.mm(weight, xt) if bias is None else torch.addmm(bias.unsqueeze(1), weight, xt)
        # row-major result: the next skinny product wants a row-major input (its transpose is then
        # the layout MKL's fast path reads; the column-major one is ~2.5x slower)
        return out.t().contiguous().view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


def stored_input(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The input of a convolution whose weights are ``weight``: ``x`` unchanged for fp32 weights (autocast, if
    on, decides); for weights stored in a reduced precision (bf16 inference on the CPU), ``x`` in their dtype
    and channels-last, the layout in which oneDNN's bf16 convolutions are fast (docs/speed.md)."""
    if weight.dtype == torch.float32:
        return x
    if x.ndim != 4:
        return x.to(weight.dtype)
    return x.to(dtype=weight.dtype, memory_format=torch.channels_last)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) whose forward uses :func:`linear` (with its int8
    copy once :func:`stylevar.models.quantized.quantize_int8_` made one)."""

    int8: Any = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight if self.int8 is None else self.int8, self.bias)


_GELU_K = 2 * math.sqrt(2 / math.pi)


def gelu_tanh_(x: torch.Tensor) -> torch.Tensor:
    """GELU (tanh approximation) computed in place as ``x * sigmoid(2u)``, ``u = sqrt(2/pi)(x + 0.044715 x^3)``.

    Identical to ``0.5 x (1 + tanh u)``; aten's CPU kernel for the tanh form is about twice as
    slow. No autograd (in place); ``x`` is returned.
    """
    u = x * x
    u.mul_(0.044715 * _GELU_K).add_(_GELU_K).mul_(x).sigmoid_()
    return x.mul_(u)


_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``None``/a torch dtype/``"fp32"``, ``"bf16"``, ``"fp16"`` (and long names) -> torch dtype or None (fp32)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        if dtype not in (None, torch.float32, torch.bfloat16, torch.float16):
            raise ConfigError(f"unsupported dtype {dtype}: use float32, bfloat16 or float16")
        return None if dtype == torch.float32 else dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}: use fp32, bf16 or fp16")
    return None if _DTYPES[key] == torch.float32 else _DTYPES[key]


def autocast_to(device: torch.device, dtype: torch.dtype | str | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device``; nothing for None/float32."""
    dtype = parse_dtype(dtype)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class _NoAutocast(contextlib.AbstractContextManager):
    """Autocast off on a device type inside an autocast region; nothing at all outside one (decided on
    entering, so a context made outside a region still works inside one)."""

    def __init__(self, device_type: str):
        self.device_type = device_type
        self._inner: contextlib.AbstractContextManager | None = None

    def __enter__(self) -> None:
        if torch.is_autocast_enabled(self.device_type):
            self._inner = torch.autocast(self.device_type, enabled=False)
            self._inner.__enter__()

    def __exit__(self, *exc: Any) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.__exit__(*exc)


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off on ``device`` (fp32 regions inside an autocast region); outside an autocast region it
    enters none (a bf16-weight run on the CPU runs without autocast altogether)."""
    if device.type in ("cuda", "cpu", "mps", "xpu"):
        return _NoAutocast(device.type)
    return contextlib.nullcontext()
