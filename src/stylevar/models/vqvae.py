"""VAR's VQ-VAE: a conv encoder/decoder around the multi-scale quantizer (docs/upstream.md §2).

State-dict keys equal VAR's (``encoder.*``, ``decoder.*``, ``quantize.*``, ``quant_conv.*``,
``post_quant_conv.*``), so ``vae_ch160v4096z32.pth`` loads strictly. Images are in [-1, 1].
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..config import VQVAEConfig
from .ops import stored_input
from .quantizer import MultiScaleQuantizer


def _norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class Upsample2x(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Downsample2x(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, pad=(0, 1, 0, 1), mode="constant", value=0))


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, dropout: float, groups: int = 32):
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=1, padding=1)
        self.norm2 = _norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel_size=3, stride=1, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            h = self.conv1(F.silu(self.norm1(x)))
            h = self.conv2(self.dropout(F.silu(self.norm2(h))))
            return self.nin_shortcut(x) + h
        # inference: each temporary is released as soon as the next one exists (peak: x + 2 maps)
        h = F.silu(self.norm1(x), inplace=True)
        h = self.conv1(h)
        h = F.silu(self.norm2(h), inplace=True)
        h = self.conv2(self.dropout(h))
        return h.add_(self.nin_shortcut(x))


class AttnBlock(nn.Module):
    """Single-head self-attention over pixels; ``qkv`` is one 1x1 conv split [q | k | v]."""

    def __init__(self, ch: int, groups: int = 32):
        super().__init__()
        self.C = ch
        self.norm = _norm(ch, groups)
        self.qkv = nn.Conv2d(ch, 3 * ch, kernel_size=1)
        self.w_ratio = ch**-0.5
        self.proj_out = nn.Conv2d(ch, ch, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(self.norm(x))
        B, _, H, W = qkv.shape
        C = self.C
        q, k, v = qkv.reshape(B, 3, C, H, W).unbind(1)
        q = q.reshape(B, C, H * W).permute(0, 2, 1).contiguous()  # B, HW, C
        k = k.reshape(B, C, H * W).contiguous()  # B, C, HW
        w = torch.bmm(q, k).mul_(self.w_ratio).softmax(dim=2)  # B, HWq, HWk
        v = v.reshape(B, C, H * W).contiguous()
        h = torch.bmm(v, w.permute(0, 2, 1).contiguous()).view(B, C, H, W)
        return x + self.proj_out(h)


def _attn(ch: int, on: bool, groups: int = 32) -> nn.Module:
    return AttnBlock(ch, groups) if on else nn.Identity()


class Encoder(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        ch, mult = cfg.ch, cfg.ch_mult
        n = len(mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, kernel_size=3, stride=1, padding=1)
        in_mult = (1,) + tuple(mult)
        self.down = nn.ModuleList()
        block_in = ch
        for lvl in range(n):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_mult[lvl], ch * mult[lvl]
            for _ in range(cfg.num_res_blocks):
                block.append(ResnetBlock(block_in, block_out, cfg.dropout, cfg.norm_groups))
                block_in = block_out
                if lvl == n - 1 and cfg.using_sa:
                    attn.append(AttnBlock(block_in, cfg.norm_groups))
            down = nn.Module()
            down.block, down.attn = block, attn
            if lvl != n - 1:
                down.downsample = Downsample2x(block_in)
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, cfg.dropout, cfg.norm_groups)
        self.mid.attn_1 = _attn(block_in, cfg.using_mid_sa, cfg.norm_groups)
        self.mid.block_2 = ResnetBlock(block_in, block_in, cfg.dropout, cfg.norm_groups)
        self.norm_out = _norm(block_in, cfg.norm_groups)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for lvl, down in enumerate(self.down):
            for i, block in enumerate(down.block):
                h = block(h)
                if len(down.attn):
                    h = down.attn[i](h)
            if lvl != len(self.down) - 1:
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h), inplace=not torch.is_grad_enabled()))


class Decoder(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        ch, mult = cfg.ch, cfg.ch_mult
        n = len(mult)
        block_in = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, cfg.dropout, cfg.norm_groups)
        self.mid.attn_1 = _attn(block_in, cfg.using_mid_sa, cfg.norm_groups)
        self.mid.block_2 = ResnetBlock(block_in, block_in, cfg.dropout, cfg.norm_groups)
        ups: list[nn.Module] = []
        for lvl in reversed(range(n)):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * mult[lvl]
            for _ in range(cfg.num_res_blocks + 1):
                block.append(ResnetBlock(block_in, block_out, cfg.dropout, cfg.norm_groups))
                block_in = block_out
                if lvl == n - 1 and cfg.using_sa:
                    attn.append(AttnBlock(block_in, cfg.norm_groups))
            up = nn.Module()
            up.block, up.attn = block, attn
            if lvl != 0:
                up.upsample = Upsample2x(block_in)
            ups.insert(0, up)  # decoder.up[i] is level i
        self.up = nn.ModuleList(ups)
        self.norm_out = _norm(block_in, cfg.norm_groups)
        self.conv_out = nn.Conv2d(block_in, cfg.in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for lvl in reversed(range(len(self.up))):
            up = self.up[lvl]
            for i, block in enumerate(up.block):
                h = block(h)
                if len(up.attn):
                    h = up.attn[i](h)
            if lvl != 0:
                h = up.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h), inplace=not torch.is_grad_enabled()))


class VQVAE(nn.Module):
    """Multi-scale VQ-VAE. Images in [-1, 1], (B, 3, R, R) with R = ``config.resolution``."""

    def __init__(self, config: VQVAEConfig | None = None):
        super().__init__()
        self.config = cfg = config or VQVAEConfig()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = MultiScaleQuantizer(cfg)
        ks = cfg.quant_conv_ks
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, ks, stride=1, padding=ks // 2)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, ks, stride=1, padding=ks // 2)

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return self.quantize.patch_nums

    def encode_f(self, img: torch.Tensor) -> torch.Tensor:
        """Images [-1, 1] (B, 3, R, R) -> continuous features (B, Cvae, R/16, R/16) (quant_conv applied).

        An encoder stored in bf16 (:func:`~stylevar.models.quantized.to_bf16_`) runs in bf16, channels-last;
        ``quant_conv`` and the quantizer stay fp32 (the features it gets are fp32, NCHW)."""
        h = self.encoder(stored_input(img, self.encoder.conv_in.weight))
        if h.dtype != self.quant_conv.weight.dtype and not torch.is_autocast_enabled(h.device.type):
            h = h.to(self.quant_conv.weight.dtype, memory_format=torch.contiguous_format)
        return self.quant_conv(h)

    @torch.no_grad()
    def img_to_idx(self, img: torch.Tensor) -> list[torch.Tensor]:
        """Images [-1, 1] -> token indices per scale, each (B, pn*pn) int64."""
        return self.quantize.f_to_idx(self.encode_f(img))

    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Quantised features (B, Cvae, side, side) -> images in [-1, 1] (clamped), NCHW; in the decoder's
        dtype (a decoder stored in bf16 runs in bf16, channels-last, without autocast)."""
        h = self.post_quant_conv(stored_input(f_hat, self.post_quant_conv.weight))
        return self.decoder(stored_input(h, self.decoder.conv_in.weight)).contiguous().clamp_(-1, 1)

    def idx_to_img(self, idx_list: list[torch.Tensor]) -> torch.Tensor:
        """Token indices of all scales -> images in [-1, 1]."""
        return self.fhat_to_img(self.quantize.idx_to_fhat(idx_list))

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokenizer training step: returns ``(reconstruction [-1,1] unclamped, vq_loss, vocab_hits)``."""
        f_hat, vq_loss, hits = self.quantize(self.encode_f(img))
        return self.decoder(self.post_quant_conv(f_hat)), vq_loss, hits
