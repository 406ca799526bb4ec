"""Multi-scale residual vector quantizer of VAR (docs/upstream.md §2).

A feature map ``f`` (B, Cvae, h, w) with h = w = patch_nums[-1] is explained coarse to fine:
at scale k the residual is area-pooled to pn_k x pn_k, quantised to the nearest codebook entry,
upsampled back (bicubic), passed through a small conv ``phi`` and subtracted.

Shape suffixes follow VAR: ``f_BChw`` feature maps, ``idx_Bl`` token indices of one scale
(row-major), ``*_BlC`` token features. Methods are grouped by phase: tokenizer training,
tokenisation, teacher forcing / conditioning, autoregressive inference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn
from torch.nn import functional as F

from ..config import VQVAEConfig


class Phi(nn.Conv2d):
    """phi(h) = (1 - r) * h + r * conv3x3(h): the residual refinement applied to every scale."""

    def __init__(self, channels: int, resi_ratio: float):
        super().__init__(channels, channels, kernel_size=3, stride=1, padding=1)
        self.resi_ratio = abs(resi_ratio)

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        return h_BChw.mul(1 - self.resi_ratio) + super().forward(h_BChw).mul_(self.resi_ratio)


def _make_phi(channels: int, resi_ratio: float) -> nn.Module:
    return Phi(channels, resi_ratio) if abs(resi_ratio) > 1e-6 else nn.Identity()


def phi_ticks(num_phi: int) -> np.ndarray:
    """VAR's tick positions of ``num_phi`` shared phi convs on [0, 1] (float64, VAR's rule)."""
    k = num_phi
    return np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k) if k == 4 else np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)


def phi_indices(num_scales: int, num_phi: int) -> list[int]:
    """Which phi conv each scale uses: the nearest tick to si / (SN - 1), first minimum on ties.

    Computed in float64 exactly as VAR does, which fixes the two exact ties of the release
    configuration (SN = 10, K = 4) to 0 0 1 1 1 2 2 3 3 3.
    """
    if num_phi == 1:
        return [0] * num_scales
    ticks = phi_ticks(num_phi)
    denom = max(num_scales - 1, 1)
    return [int(np.argmin(np.abs(ticks - si / denom))) for si in range(num_scales)]


class PhiShared(nn.Module):
    """share_quant_resi == 1: one phi for every scale (keys ``quant_resi.qresi.*``)."""

    def __init__(self, qresi: nn.Module):
        super().__init__()
        self.qresi = qresi

    def __getitem__(self, i: int) -> nn.Module:
        return self.qresi


class PhiPartiallyShared(nn.Module):
    """share_quant_resi == K >= 2: K phis on ticks (keys ``quant_resi.qresi_ls.{k}.*``)."""

    def __init__(self, qresi_ls: nn.ModuleList):
        super().__init__()
        self.qresi_ls = qresi_ls

    def __getitem__(self, i: int) -> nn.Module:
        return self.qresi_ls[i]


class PhiNonShared(nn.ModuleList):
    """share_quant_resi == 0: one phi per tick (keys ``quant_resi.{k}.*``)."""


class MultiScaleQuantizer(nn.Module):
    """VAR's ``VectorQuantizer2``: same parameters and buffers (``embedding``, ``quant_resi``,
    ``ema_vocab_hit_SV``), same results."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.vocab_size = cfg.vocab_size
        self.Cvae = cfg.z_channels
        self.using_znorm = cfg.using_znorm
        self.beta = cfg.beta
        self.patch_nums: tuple[int, ...] = tuple(cfg.patch_nums)
        sn = len(self.patch_nums)

        k = cfg.share_quant_resi
        if k == 0:
            n = cfg.default_qresi_counts or sn
            self.quant_resi: nn.Module = PhiNonShared(
                [_make_phi(self.Cvae, cfg.quant_resi) for _ in range(n)]
            )
        elif k == 1:
            n = 1
            self.quant_resi = PhiShared(_make_phi(self.Cvae, cfg.quant_resi))
        else:
            n = k
            self.quant_resi = PhiPartiallyShared(
                nn.ModuleList([_make_phi(self.Cvae, cfg.quant_resi) for _ in range(k)])
            )
        self._phi_index = phi_indices(sn, n)
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(sn, self.vocab_size))
        self.record_hit = 0
        self.embedding = nn.Embedding(self.vocab_size, self.Cvae)

    # ---------------------------------------------------------------- shared helpers
    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    def phi(self, si: int) -> nn.Module:
        """The phi conv of scale ``si``."""
        return self.quant_resi[self._phi_index[si]]

    def idx_to_h(self, idx_Bl: torch.Tensor, pn: int) -> torch.Tensor:
        """Token indices (B, pn*pn) -> codebook features (B, Cvae, pn, pn)."""
        B = idx_Bl.shape[0]
        return self.embedding(idx_Bl).transpose_(1, 2).view(B, self.Cvae, pn, pn)

    def _up_phi(self, si: int, h_BChw: torch.Tensor) -> torch.Tensor:
        """phi(bicubic-to-latent-side(h)); no resize at the last scale."""
        if si != self.num_scales - 1:
            side = self.patch_nums[-1]
            h_BChw = F.interpolate(h_BChw, size=(side, side), mode="bicubic")
        return self.phi(si)(h_BChw)

    def _nearest(self, z_NC: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook entry for each row of ``z_NC`` (N, Cvae)."""
        w = self.embedding.weight.data
        if self.using_znorm:
            return torch.argmax(F.normalize(z_NC, dim=-1) @ F.normalize(w.T, dim=0), dim=1)
        d = torch.sum(z_NC.square(), dim=1, keepdim=True) + torch.sum(w.square(), dim=1, keepdim=False)
        d.addmm_(z_NC, w.T, alpha=-2, beta=1)
        return torch.argmin(d, dim=1)

    def _pool(self, f_BChw: torch.Tensor, si: int) -> torch.Tensor:
        if si == self.num_scales - 1:
            return f_BChw
        pn = self.patch_nums[si]
        return F.interpolate(f_BChw, size=(pn, pn), mode="area")

    # ---------------------------------------------------------------- tokenizer training
    def forward(self, f_BChw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantise with a straight-through estimator (tokenizer training).

        Returns ``(f_hat, vq_loss, vocab_hit_V)``: the quantised map (gradients flow to ``f``),
        the VQ + beta * commitment loss averaged over scales, and codebook hit counts.
        """
        dtype = f_BChw.dtype
        f = f_BChw.float()
        B, C, H, W = f.shape
        f_no_grad = f.detach()
        f_rest = f_no_grad.clone()
        f_hat = torch.zeros_like(f_rest)
        loss = f.new_zeros(())
        hits = torch.zeros(self.vocab_size, device=f.device)
        distributed = self.training and tdist.is_available() and tdist.is_initialized()
        for si, pn in enumerate(self.patch_nums):
            idx_N = self._nearest(self._pool(f_rest, si).permute(0, 2, 3, 1).reshape(-1, C))
            hit_V = idx_N.bincount(minlength=self.vocab_size).float()
            if distributed:
                tdist.all_reduce(hit_V)
                self._record_hits(si, hit_V)
            h = self._up_phi(si, self.embedding(idx_N.view(B, pn, pn)).permute(0, 3, 1, 2).contiguous())
            f_hat = f_hat + h
            f_rest -= h.detach()
            hits += hit_V
            loss = loss + F.mse_loss(f_hat.detach(), f).mul(self.beta) + F.mse_loss(f_hat, f_no_grad)
        loss = loss / self.num_scales
        f_hat = (f_hat.detach() - f_no_grad).add_(f)
        return f_hat.to(dtype), loss, hits

    @torch.no_grad()
    def _record_hits(self, si: int, hit_V: torch.Tensor) -> None:
        if self.record_hit == 0:
            self.ema_vocab_hit_SV[si].copy_(hit_V)
        elif self.record_hit < 100:
            self.ema_vocab_hit_SV[si].mul_(0.9).add_(hit_V.mul(0.1))
        else:
            self.ema_vocab_hit_SV[si].mul_(0.99).add_(hit_V.mul(0.01))
        self.record_hit += 1

    # ---------------------------------------------------------------- tokenisation
    @torch.no_grad()
    def f_to_idx(self, f_BChw: torch.Tensor) -> list[torch.Tensor]:
        """Feature map (B, Cvae, side, side) -> token indices per scale, each (B, pn*pn) int64."""
        return self._f_to(f_BChw, to_fhat=False)

    @torch.no_grad()
    def f_to_fhat(self, f_BChw: torch.Tensor) -> list[torch.Tensor]:
        """Feature map -> cumulative reconstructions f_hat after each scale, each (B, Cvae, side, side)."""
        return self._f_to(f_BChw, to_fhat=True)

    def _f_to(self, f_BChw: torch.Tensor, to_fhat: bool) -> list[torch.Tensor]:
        B, C, H, W = f_BChw.shape
        side = self.patch_nums[-1]
        if (H, W) != (side, side):
            raise ValueError(f"feature map is {H}x{W}, the quantizer expects {side}x{side}")
        f_rest = f_BChw.detach().float().clone()
        f_hat = torch.zeros_like(f_rest)
        out: list[torch.Tensor] = []
        for si, pn in enumerate(self.patch_nums):
            idx_N = self._nearest(self._pool(f_rest, si).permute(0, 2, 3, 1).reshape(-1, C))
            h = self.embedding(idx_N.view(B, pn, pn)).permute(0, 3, 1, 2)
            if si != self.num_scales - 1:
                h = F.interpolate(h, size=(H, W), mode="bicubic")
            h = self.phi(si)(h.contiguous())
            f_hat.add_(h)
            f_rest.sub_(h)
            out.append(f_hat.clone() if to_fhat else idx_N.reshape(B, pn * pn))
        return out

    # ---------------------------------------------------------------- teacher forcing / conditioning
    def idx_to_fhat(self, idx_list: Sequence[torch.Tensor]) -> torch.Tensor:
        """Token indices of all scales -> f_hat (B, Cvae, side, side), ready for the decoder."""
        f_hat = self._zeros_fhat(idx_list[0])
        for si, pn in enumerate(self.patch_nums):
            f_hat.add_(self._up_phi(si, self.idx_to_h(idx_list[si], pn)))
        return f_hat

    def idx_to_teacher_input(self, idx_list: Sequence[torch.Tensor]) -> torch.Tensor:
        """Teacher-forcing input (VAR's ``idxBl_to_var_input``): (B, L - pn_0^2, Cvae), float32.

        Token block si+1 is the cumulative reconstruction through scale si, area-pooled to
        scale si+1.
        """
        f_hat = self._zeros_fhat(idx_list[0])
        B, C = f_hat.shape[:2]
        out = []
        for si in range(self.num_scales - 1):
            f_hat.add_(self._up_phi(si, self.idx_to_h(idx_list[si], self.patch_nums[si])))
            pn_next = self.patch_nums[si + 1]
            out.append(
                F.interpolate(f_hat, size=(pn_next, pn_next), mode="area").view(B, C, -1).transpose(1, 2)
            )
        if not out:
            return f_hat.new_zeros(B, 0, C)
        return torch.cat(out, dim=1)

    def idx_to_condition_list(self, idx_list: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per-scale condition features of a style/content image (StyleVAR's ``msBllist_to_BlCv_list``).

        Block si is the cumulative reconstruction *through scale si*, area-pooled to scale si:
        a list of (B, pn_si^2, Cvae) float32 tensors.
        """
        f_hat = self._zeros_fhat(idx_list[0])
        B, C = f_hat.shape[:2]
        out = []
        for si, pn in enumerate(self.patch_nums):
            f_hat.add_(self._up_phi(si, self.idx_to_h(idx_list[si], pn)))
            if si == self.num_scales - 1:
                pooled = f_hat
            else:
                pooled = F.interpolate(f_hat, size=(pn, pn), mode="area")
            out.append(pooled.reshape(B, C, -1).transpose(1, 2))
        return out

    def idx_to_condition(self, idx_list: Sequence[torch.Tensor]) -> torch.Tensor:
        """All scales of :meth:`idx_to_condition_list` concatenated: (B, L, Cvae)."""
        return torch.cat(self.idx_to_condition_list(idx_list), dim=1)

    def _zeros_fhat(self, like: torch.Tensor) -> torch.Tensor:
        side = self.patch_nums[-1]
        return torch.zeros(like.shape[0], self.Cvae, side, side, device=like.device, dtype=torch.float32)

    # ---------------------------------------------------------------- autoregressive inference
    def next_input(
        self, si: int, f_hat: torch.Tensor, h_BChw: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add scale ``si``'s codes ``h_BChw`` (B, Cvae, pn, pn) to ``f_hat`` in place.

        Returns ``(f_hat, next_map)`` where ``next_map`` is f_hat area-pooled to scale si+1
        (or f_hat itself at the last scale): the input of the next step.
        """
        f_hat.add_(self._up_phi(si, h_BChw))
        if si == self.num_scales - 1:
            return f_hat, f_hat
        pn = self.patch_nums[si + 1]
        return f_hat, F.interpolate(f_hat, size=(pn, pn), mode="area")
