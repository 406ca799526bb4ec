"""int8 weights for the transformer's linear layers on the CPU (``--dtype int8``), with PyTorch's own
dynamic-quantization kernel (``torch.ops.quantized.linear_dynamic``: FBGEMM/oneDNN).

Every product of the blocks (the guide queries, the target keys/values, the attention output
projection, the FFN, the AdaLN projection) gets its weight quantized once, symmetric int8 per output
channel (scale = max |w| / 127), and prepacked for the kernel; each call quantizes its activations
(per tensor, 7-bit range as FBGEMM requires), multiplies in int8 with int32 sums, and returns fp32 with
the bias added. The fp32 weights of those layers are then released: the transformer's 688 M weights
of the d20 release take a quarter of the memory. The embeddings, the LayerNorms, the attention itself,
the head (its logits feed sampling), the ResNet encoders and the VQ-VAE stay fp32.

A quantized model is for inference: it cannot be trained or saved (its quantized layers hold no fp32
weights any more). docs/speed.md reports its accuracy and speed.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..errors import ConfigError
from .ops import Linear, parse_dtype


class Int8Weight:
    """A linear layer's weight (and bias) as prepacked int8 per output channel; call it on fp32 input."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        w = weight.detach().float().contiguous()
        if w.device.type != "cpu":
            raise ValueError("int8 weights run on the CPU (PyTorch's quantized kernels); use bf16 on a GPU")
        n = w.shape[0]
        scales = (w.abs().amax(1).double() / 127).clamp_min(1e-12)
        with (
            warnings.catch_warnings()
        ):  # PyTorch announces a move of these kernels to torchao (docs/speed.md)
            warnings.simplefilter("ignore", UserWarning)
            qw = torch.quantize_per_channel(w, scales, torch.zeros(n, dtype=torch.long), 0, torch.qint8)
        b = None if bias is None else bias.detach().float().contiguous()
        self.packed = torch.ops.quantized.linear_prepack(qw, b)
        self.out_features, self.in_features = w.shape
        self.nbytes = w.numel() + n * 8 + (0 if b is None else b.numel() * 4)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float().contiguous()
        y = torch.ops.quantized.linear_dynamic(x2, self.packed, True)  # reduce_range: FBGEMM's 7 bits
        return y.view(*shape[:-1], self.out_features)


def _release(p: nn.Parameter) -> None:
    """Drop a parameter's fp32 storage (the quantized copy replaces it)."""
    p.data = torch.empty(0, dtype=p.dtype, device=p.device)


def quantize_int8_(model: nn.Module) -> int:
    """Quantize the blocks of a StyleVAR in place (module doc); returns the fp32 bytes released. Idempotent."""
    if getattr(model, "int8", False):
        return 0
    if torch.backends.quantized.engine == "none":
        raise RuntimeError("this PyTorch build has no quantized CPU engine (FBGEMM/oneDNN) for --dtype int8")
    released = 0
    for block in model.blocks:
        attn = block.attn
        C = attn.C
        w_g, w_t = attn.mat_qkv_guide.weight, attn.mat_qkv_target.weight
        attn.q_int8 = Int8Weight(w_g[:C], attn.q_bias_guide)
        attn.kv_int8 = Int8Weight(w_t[C:], torch.cat((attn.zero_k_bias_target, attn.v_bias_target)))
        for p in (w_g, w_t):
            released += p.numel() * p.element_size()
            _release(p)
        for m in block.modules():
            if isinstance(m, Linear):
                m.int8 = Int8Weight(m.weight, m.bias)
                released += m.weight.numel() * m.weight.element_size()
                _release(m.weight)
    model.int8 = True
    model.drop_static_runners()
    return released


def run_dtype(model: nn.Module, device: torch.device, dtype: torch.dtype | str | None) -> torch.dtype | None:
    """The autocast dtype of a run's ``dtype`` for ``generate``; ``"int8"`` quantizes ``model``'s blocks once,
    in place (CPU only), and runs the rest in fp32 (None)."""
    if isinstance(dtype, str) and dtype.lower() in ("int8", "qint8"):
        if torch.device(device).type != "cpu":
            raise ConfigError("int8 runs on the CPU (PyTorch's quantized kernels); on a GPU use bf16")
        quantize_int8_(model)
        return None
    if getattr(model, "int8", False) and parse_dtype(dtype) not in (None, torch.float32):
        raise ConfigError("this model's transformer is int8 now: leave dtype unset or int8")
    return parse_dtype(dtype)
