"""Reduced-precision weights for inference: int8 for the transformer's linear layers on the CPU
(``--dtype int8``), and bf16 weights stored once (``--dtype bf16`` on the CPU, :func:`to_bf16_`).

**int8**, with PyTorch's own dynamic-quantization kernel (``torch.ops.quantized.linear_dynamic``), prepacked
for oneDNN where the CPU has AMX-INT8 (its int8 tiles: the blocks' products 2.3x faster than FBGEMM's over a
d20 sampling run, docs/speed.md) and for FBGEMM elsewhere (:func:`int8_engine`).

Every product of the blocks (the guide queries, the target keys/values, the attention output
projection, the FFN, the AdaLN projection) gets its weight quantized once, symmetric int8 per output
channel (scale = max |w| / 127), and prepacked for the kernel; each call quantizes its activations
(per tensor: the full 8 bits with oneDNN, 7 with FBGEMM, whose AVX2 kernels would otherwise overflow),
multiplies in int8 with int32 sums, and returns fp32 with the bias added. The fp32 weights of those layers are then released: the transformer's 688 M weights
of the d20 release take a quarter of the memory. The embeddings, the LayerNorms, the attention itself,
the head (its logits feed sampling), the ResNet encoders and the VQ-VAE stay fp32.

A quantized model is for inference: it cannot be trained or saved (its quantized layers hold no fp32
weights any more). docs/speed.md reports its accuracy and speed.

**bf16** (:func:`to_bf16_`): autocast re-casts every fp32 weight to bf16 at every op, which at batch 1 on
a CPU costs more than the bf16 products save. Here the weights are cast once, in place: every parameter of
the transformer blocks (the products, the attention's biases; not the per-head attention scale), and the
convolutions of both ResNet-18 encoders and of the VQ-VAE encoder and decoder (channels-last, the layout
oneDNN's bf16 convolutions are fast in). Each product then computes in its weight's dtype
(:func:`~stylevar.models.ops.linear`, :func:`~stylevar.models.ops.stored_input`), without autocast. What
stays fp32: the embeddings and the residual stream, the LayerNorm/GroupNorm/BatchNorm parameters (the
CPU's norm kernels take bf16 input with fp32 parameters and sum in fp32), the AdaLN head and the head (the
logits feed sampling), ``quant_conv`` and the quantizer (its nearest-code search runs on fp32 features),
and a CLIP style encoder. Like int8 the conversion is for inference and cannot be undone: the fp32 weights
are released, so such a model refuses fp32 (load it again). docs/speed.md, "bf16 on the CPU", measures it.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..errors import ConfigError
from .ops import Linear, parse_dtype

#: what a bf16 run on the CPU converts (:func:`to_bf16_`)
BF16_PARTS = ("blocks", "encoders", "decoder")


def int8_engine() -> str:
    """The quantized engine int8 weights are prepacked for: ``onednn`` on a CPU with AMX-INT8 (measured faster
    at every row count of d20 sampling but the first three scales', where it is within 20 %), else ``fbgemm``
    (or the build's own engine without either)."""
    engines = torch.backends.quantized.supported_engines
    try:
        amx = bool(torch.cpu.get_capabilities().get("amx_int8", False))
    except (AttributeError, RuntimeError):  # older torch: no capability query
        amx = False
    if amx and "onednn" in engines:
        return "onednn"
    return "fbgemm" if "fbgemm" in engines else torch.backends.quantized.engine


class Int8Weight:
    """A linear layer's weight (and bias) as prepacked int8 per output channel; call it on fp32 input.
    ``engine``: the quantized engine to pack for (default :func:`int8_engine`)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, engine: str | None = None):
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
        self.engine = engine or int8_engine()
        before = torch.backends.quantized.engine
        torch.backends.quantized.engine = self.engine  # the packed weights carry their kernel from here on
        try:
            self.packed = torch.ops.quantized.linear_prepack(qw, b)
        finally:
            torch.backends.quantized.engine = before
        #: FBGEMM quantizes activations to 7 bits (its AVX2 int16 sums would saturate); oneDNN takes all 8
        self.reduce_range = self.engine != "onednn"
        self.out_features, self.in_features = w.shape
        self.nbytes = w.numel() + n * 8 + (0 if b is None else b.numel() * 4)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float().contiguous()
        y = torch.ops.quantized.linear_dynamic(x2, self.packed, self.reduce_range)
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


def _bf16_(t: torch.Tensor, channels_last: bool = False) -> int:
    """Store a parameter or buffer in bf16 (channels-last for 4-d conv weights), in place; fp32 bytes released."""
    if t.dtype != torch.float32:
        return 0
    released = t.numel() * 2
    fmt = torch.channels_last if channels_last and t.ndim == 4 else torch.contiguous_format
    t.data = t.data.to(dtype=torch.bfloat16, memory_format=fmt)
    return released


def bf16_blocks_(model: nn.Module) -> int:
    """Every floating parameter and buffer of the transformer blocks in bf16, in place, except each
    attention's learned temperature (``scale_mul_1H11``, 1 x H values, scaled in fp32). Returns bytes released."""
    released = 0
    for block in model.blocks:
        for name, t in [*block.named_parameters(), *block.named_buffers()]:
            if not name.endswith("scale_mul_1H11"):
                released += _bf16_(t)
    model.drop_static_runners()
    return released


def bf16_convs_(module: nn.Module) -> int:
    """The weights and biases of every convolution under ``module`` in bf16, channels-last, in place; the
    norm layers keep fp32 parameters. Returns bytes released."""
    released = 0
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            for t in (m.weight, m.bias):
                if t is not None:
                    released += _bf16_(t, channels_last=True)
    return released


def bf16_encoders_(model: nn.Module, vae: nn.Module) -> int:
    """Both ResNet-18 encoders (a CLIP style encoder stays fp32) and the VQ-VAE encoder in bf16 (quant_conv
    and the quantizer stay fp32). Returns bytes released."""
    encoders = [model.content_encoder, vae.encoder]
    if not getattr(model, "has_style_tokens", False):
        encoders.append(model.style_encoder)
    return sum(bf16_convs_(m) for m in encoders)


def bf16_decoder_convs_(vae: nn.Module) -> int:
    """The VQ-VAE decoder and ``post_quant_conv`` in bf16, channels-last. Returns bytes released."""
    return bf16_convs_(vae.decoder) + bf16_convs_(vae.post_quant_conv)


def to_bf16_(model: nn.Module, vae: nn.Module) -> int:
    """Store ``model``'s blocks and encoders and ``vae``'s encoder and decoder in bf16, in place, for a bf16 run
    without autocast (module doc); returns the bytes released. Idempotent. CPU only: on a GPU bf16 runs
    under autocast (the weights stay fp32)."""
    if getattr(model, "bf16", False):
        return 0
    if getattr(model, "int8", False):
        raise ConfigError("this model's transformer is int8 now: bf16 needs its fp32 weights; load it again")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("bf16 weights are for the CPU; on a GPU bf16 runs under autocast")
    released = bf16_blocks_(model) + bf16_encoders_(model, vae) + bf16_decoder_convs_(vae)
    model.bf16 = True
    return released


def run_dtype(
    model: nn.Module, device: torch.device, dtype: torch.dtype | str | None, vae: nn.Module | None = None
) -> torch.dtype | None:
    """The autocast dtype of a run's ``dtype`` for ``generate`` (None: none), after making the weights fit it.

    ``"int8"`` quantizes ``model``'s blocks once, in place (CPU only), and runs the rest in fp32. ``"bf16"`` on
    the CPU with ``vae`` given stores both models' weights in bf16 once, in place (:func:`to_bf16_`), and
    runs without autocast; elsewhere (a GPU, or no ``vae``) bf16 runs under autocast as before. Once a model
    is int8 or bf16 its fp32 weights are gone: other dtypes are refused (``auto`` must be resolved by the
    caller, see ``StyleVARPipeline.prepare_dtype``)."""
    name = dtype.lower() if isinstance(dtype, str) else None
    dev = torch.device(device)
    if getattr(model, "bf16", False):
        if name in ("bf16", "bfloat16") or dtype == torch.bfloat16:
            return None
        raise ConfigError(
            f"this model's weights are stored in bf16 now (an earlier bf16 run converted them in place): "
            f"dtype {dtype} needs its fp32 weights, so load the model again (or keep dtype bf16 / auto)"
        )
    if name in ("int8", "qint8"):
        if dev.type != "cpu":
            raise ConfigError("int8 runs on the CPU (PyTorch's quantized kernels); on a GPU use bf16")
        quantize_int8_(model)
        return None
    if getattr(model, "int8", False) and parse_dtype(dtype) not in (None, torch.float32):
        raise ConfigError("this model's transformer is int8 now: leave dtype unset or int8")
    out = parse_dtype(dtype)
    if out == torch.bfloat16 and dev.type == "cpu" and vae is not None:
        to_bf16_(model, vae)
        return None
    return out
