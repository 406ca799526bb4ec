"""Learning-rate schedules and the optimizer's parameter groups (docs/upstream.md §5.3, the paper's steps)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from ..errors import ConfigError

SCHEDULES = ("lin0", "step", "cosine", "constant")

#: names whose parameters get no weight decay (upstream's list), besides 1-D tensors and biases
NO_DECAY_NAMES = (
    "cls_token",
    "start_token",
    "task_token",
    "cfg_uncond",
    "pos_embed",
    "pos_1LC",
    "pos_start",
    "start_pos",
    "lvl_embed",
    "gamma",
    "beta",
    "ada_gss",
    "moe_bias",
    "scale_mul",
)


def lr_multiplier(
    it: int,
    total: int,
    *,
    schedule: str = "lin0",
    warmup: int = 0,
    warmup_start: float = 0.005,
    final: float = 0.01,
    step_at: float = 0.6,
    step_factor: float = 0.2,
) -> float:
    """Multiplier of the peak learning rate at optimizer step ``it`` of ``total``.

    * warm-up: linear from ``warmup_start`` to 1 over ``warmup`` steps (all schedules);
    * ``lin0`` (upstream's): 1 for the first 5% of the post-warm-up steps, then linear to ``final``;
    * ``step`` (the paper's: 5e-4 for epochs 1-6, 1e-4 for 7-10): 1, then ``step_factor`` from
      ``step_at`` of training on;
    * ``cosine``: half a cosine from 1 to ``final``; ``constant``: 1.
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if warmup > 0 and it < warmup:
        return warmup_start + (1 - warmup_start) * it / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return 1.0 if it < step_at * total else step_factor
    p = (it - warmup) / max(1, total - 1 - warmup)
    p = min(max(p, 0.0), 1.0)
    if schedule == "cosine":
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * p))
    if p < 0.05:
        return 1.0
    return final + (1 - final) * (1 - p) / 0.95


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay for 1-D tensors, biases and upstream's named embeddings/scales."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith("bias") or any(k in name for k in NO_DECAY_NAMES):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "name": "no_decay"})
    return groups


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


def scale_token_weights(patch_nums: Iterable[int], power: float) -> torch.Tensor:
    """Per-token loss weights (L,), summing to 1: each scale's tokens weighted by (h*w)^-power.

    ``power`` 0 is the published plain mean over tokens; 0.7 is the paper's PANW exponent.
    """
    pns = list(patch_nums)
    w = torch.cat([torch.full((pn * pn,), float(pn * pn) ** -power) for pn in pns])
    return w / w.sum()
