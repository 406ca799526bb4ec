"""The GRPO objective as pure functions (no trainer, no model): testable one piece at a time.

Shapes: N rollouts, L tokens per rollout (all scales, coarse to fine), V vocabulary, B conditions
of G rollouts each. Log-probabilities are natural logs, float32.

* :func:`group_advantages` -- (R - mean) / (max(std, floor) + eps) per group (docs/upstream.md §6.4).
* :func:`panw_weights` -- PANW per-token weights (h*w)^-gamma, normalised to sum 1 over L.
* :func:`k3_kl` -- the k3 estimator, in DeepSeek-GRPO's direction (``"ref/policy"``, the default:
  exp(ref - logp) - (ref - logp) - 1, an unbiased, non-negative estimate of KL(pi || ref) under
  samples of pi) or upstream's (``"policy/ref"``, docs/upstream.md B5).
* :func:`clipped_surrogate` -- PPO's clipped policy term per token.
* :func:`token_logprobs` -- log pi(token) under the full softmax (the paper) or under the
  temperature-scaled, top-k/top-p-truncated distribution the tokens were drawn from.
* :func:`grpo_loss` -- the per-token terms weighted, per-rollout KL-spike / non-finite guards
  (a bad rollout is dropped alone, docs/upstream.md B6), reduced to a scalar plus statistics.
* :func:`relevance_token_weights` -- Mask Propagation: a relevance map on the output image pooled
  down the scale hierarchy into per-token multipliers.
* :func:`soft_value` -- the middle return V_m of a prefix from K continuation rewards.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..models.sampling import filter_logits_

KL_DIRECTIONS = ("ref/policy", "policy/ref")
LOGPROB_DISTS = ("full", "sampled")


# ------------------------------------------------------------------------------------ advantages
def group_advantages(
    rewards_BG: torch.Tensor, std_floor: float = 0.01, eps: float = 1e-8, unbiased: bool = True
) -> torch.Tensor:
    """Group-normalised advantages (B, G): (R - mean_g R) / (max(std_g R, std_floor) + eps).

    ``std_floor`` keeps a group whose rewards are (nearly) equal from turning float noise into
    large advantages; ``unbiased`` uses the n-1 standard deviation (``torch.std``, as upstream).
    A group of one gets advantage 0.
    """
    r = rewards_BG.float()
    mean = r.mean(dim=1, keepdim=True)
    if r.shape[1] < 2:
        return torch.zeros_like(r)
    std = r.std(dim=1, keepdim=True, unbiased=unbiased)
    return (r - mean) / (std.clamp_min(std_floor) + eps)


# ------------------------------------------------------------------------------------ token weights
def panw_weights(patch_nums: Sequence[int], gamma: float) -> torch.Tensor:
    """PANW per-token weights (L,): each token of an h x w scale gets (h*w)^-gamma, normalised to sum 1.

    gamma = 0 is the plain mean over tokens (1/L each). At gamma = 0.7 on the ten default scales
    the per-token weights are the paper's Table 1 (x1e-2): 3.37 1.28 0.72 0.48 0.35 0.27 0.18 0.13
    0.09 0.07.
    """
    w = torch.cat(
        [torch.full((pn * pn,), float(pn * pn) ** -gamma, dtype=torch.float64) for pn in patch_nums]
    )
    return (w / w.sum()).float()


def scale_mask(patch_nums: Sequence[int], scales: Sequence[int] | range) -> torch.Tensor:
    """(L,) float mask: 1 on the tokens of the given scale indices, 0 elsewhere."""
    keep = set(scales)
    return torch.cat([torch.full((pn * pn,), 1.0 if si in keep else 0.0) for si, pn in enumerate(patch_nums)])


# ------------------------------------------------------------------------------------ KL, surrogate
def k3_kl(
    logp: torch.Tensor, ref_logp: torch.Tensor, direction: str = "ref/policy", clamp: float = 10.0
) -> torch.Tensor:
    """Per-token k3 KL estimate exp(d) - d - 1 >= 0 (same shape as the inputs).

    ``direction="ref/policy"``: d = log ref - log pi (Schulman's k3 / DeepSeek-GRPO; its mean
    under samples of pi is KL(pi || ref)). ``"policy/ref"``: d = log pi - log ref (the published
    code, docs/upstream.md B5; its mean is chi^2-like, not KL). d is clamped to +-``clamp``.
    """
    if direction == "ref/policy":
        d = ref_logp - logp
    elif direction == "policy/ref":
        d = logp - ref_logp
    else:
        raise ValueError(f"direction must be one of {KL_DIRECTIONS}, not {direction!r}")
    d = d.clamp(-clamp, clamp)
    return torch.exp(d) - d - 1


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float = 0.2,
    log_ratio_clamp: float = 10.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped policy loss per token: -min(r A, clip(r, 1 +- eps) A), r = exp(logp - old).

    ``advantages`` broadcasts against ``logp`` (one value per rollout: shape (N, 1)). Returns
    (loss per token, ratio, clipped) where ``clipped`` marks tokens whose clipped branch is
    active (the gradient is zero there).
    """
    log_ratio = (logp - old_logp).clamp(-log_ratio_clamp, log_ratio_clamp)
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped_val = ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages
    loss = -torch.minimum(unclipped, clipped_val)
    clipped = (clipped_val < unclipped).detach()
    return loss, ratio, clipped


# ------------------------------------------------------------------------------------ log-probs
def keep_mask(
    logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0, temperature: float = 1.0
) -> torch.Tensor:
    """Bool (..., V): the tokens the sampler may draw from these logits (top-k, then top-p after temperature)."""
    z = logits.detach().float() / temperature
    return torch.isfinite(filter_logits_(z, top_k, top_p))


def token_logprobs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    *,
    dist: str = "full",
    temperature: float = 1.0,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """log pi(token) (N, L) from logits (N, L, V) and tokens (N, L).

    ``dist="full"``: log_softmax over the whole vocabulary, no temperature (the paper, upstream).
    ``dist="sampled"``: the distribution the tokens were drawn from: logits / temperature,
    renormalised over ``keep`` (bool (N, L, V), the sampler's top-k/top-p set, from
    :func:`keep_mask` on the behaviour policy's logits). Old, new and reference log-probs must
    use the same ``keep`` so their ratios compare one support; the drawn token is always kept.
    """
    logits = logits.float()
    if dist == "full":
        return logits.log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    if dist != "sampled":
        raise ValueError(f"dist must be one of {LOGPROB_DISTS}, not {dist!r}")
    if keep is None:
        raise ValueError("dist='sampled' needs the sampler's keep mask")
    keep = keep.scatter(-1, tokens.unsqueeze(-1), True)
    z = (logits / temperature).masked_fill(~keep, -torch.inf)
    return z.log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Bool (..., V) -> uint8 (..., ceil(V/8)): eight entries per byte (keep masks across PPO passes)."""
    V = mask.shape[-1]
    pad = (-V) % 8
    if pad:
        mask = F.pad(mask, (0, pad))
    bits = mask.reshape(*mask.shape[:-1], -1, 8).to(torch.uint8)
    shifts = torch.arange(8, device=mask.device, dtype=torch.uint8)
    return (bits << shifts).sum(-1, dtype=torch.uint8)


def unpack_mask(packed: torch.Tensor, V: int) -> torch.Tensor:
    """Inverse of :func:`pack_mask`: uint8 (..., ceil(V/8)) -> bool (..., V)."""
    shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(*packed.shape[:-1], -1)[..., :V].bool()


def scale_entropy(logits: torch.Tensor, begin_ends: Sequence[tuple[int, int]]) -> list[float]:
    """Mean entropy (nats) of the full softmax per scale, from logits (N, L, V)."""
    with torch.no_grad():
        lp = logits.float().log_softmax(-1)
        ent = -(lp.exp() * lp).sum(-1)  # (N, L)
        return [ent[:, bg:ed].mean().item() for bg, ed in begin_ends]


# ------------------------------------------------------------------------------------ the loss
@dataclass
class LossOutput:
    loss: torch.Tensor  #: scalar to backpropagate (already divided by ``normaliser``)
    policy: float  #: weighted policy term, summed over the kept rollouts / normaliser
    kl: float  #: beta * weighted KL, same reduction
    kl_raw: torch.Tensor  #: (N,) weighted k3 KL per rollout (before beta), detached
    clip_frac: float  #: share of (weighted-in) tokens with an active clip
    ratio_mean: float
    ratio_max: float
    kept: torch.Tensor  #: (N,) bool, rollouts that contributed


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    token_weights: torch.Tensor,
    *,
    policy_weights: torch.Tensor | None = None,
    beta: float = 0.1,
    clip_eps: float = 0.2,
    kl_direction: str = "ref/policy",
    log_ratio_clamp: float = 10.0,
    kl_spike: float = 5.0,
    normaliser: float | None = None,
) -> LossOutput:
    """GRPO's loss over N rollouts: sum_i kept_i * sum_t w_t (PG_it + beta KL_it) / normaliser.

    Args:
        logp, old_logp, ref_logp: (N, L) log-probs under the current, behaviour and reference
            policies (``ref_logp`` None: no KL term).
        advantages: (N,) one advantage per rollout (every token of a rollout shares it).
        token_weights: (L,) or (N, L) weights of the KL term and, without ``policy_weights``, of the
            policy term; PANW's sum to 1 per rollout (zeros leave tokens out: VMR's prefix/suffix).
        policy_weights: (N, L) weights of the policy term when they differ (Mask Propagation).
        kl_spike: a rollout whose weighted raw KL exceeds this (0 = never), or whose loss is not
            finite, is left out of the sum alone; the other rollouts keep their gradients
            (upstream discarded everything accumulated so far, docs/upstream.md B6).
        normaliser: divide the sum by this (default N): with micro-batches pass the total
            number of rollouts of the optimizer step.
    """
    N = logp.shape[0]
    w_kl = token_weights.expand_as(logp) if token_weights.ndim == 1 else token_weights
    w_pg = w_kl if policy_weights is None else policy_weights
    pg_tok, ratio, clipped = clipped_surrogate(
        logp, old_logp, advantages.view(N, 1), clip_eps, log_ratio_clamp
    )
    pg = (w_pg * pg_tok).sum(1)
    if ref_logp is not None:
        kl_tok = k3_kl(logp, ref_logp, kl_direction, log_ratio_clamp)
        kl_raw = (w_kl * kl_tok).sum(1)
    else:
        kl_raw = torch.zeros(N, device=logp.device)
    per = pg + beta * kl_raw
    kept = torch.isfinite(per.detach())
    if kl_spike > 0:
        kept &= kl_raw.detach() <= kl_spike
    norm = float(N if normaliser is None else normaliser)
    zero = torch.zeros((), device=logp.device)
    loss = torch.where(kept, per, zero).sum() / norm
    with torch.no_grad():
        active = (w_pg > 0) & kept.view(N, 1)
        n_act = active.sum().clamp_min(1)
        pg_sum = torch.where(kept, pg, zero).sum().item() / norm
        kl_sum = torch.where(kept, beta * kl_raw, zero).sum().item() / norm
        r_act = ratio[active] if active.any() else ratio.new_ones(1)
    return LossOutput(
        loss=loss,
        policy=pg_sum,
        kl=kl_sum,
        kl_raw=kl_raw.detach(),
        clip_frac=(clipped & active).sum().item() / n_act.item(),
        ratio_mean=r_act.mean().item(),
        ratio_max=r_act.max().item(),
        kept=kept,
    )


# ------------------------------------------------------------------------------------ DPO
def preference_pairs(rewards_BG: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) rollout indices (flat, condition-major) of each condition's best and worst
    rollout; conditions whose rollouts all scored the same give no pair."""
    B, G = rewards_BG.shape
    base = torch.arange(B, device=rewards_BG.device) * G
    valid = rewards_BG.max(1).values > rewards_BG.min(1).values
    return (base + rewards_BG.argmax(1))[valid], (base + rewards_BG.argmin(1))[valid]


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO (Rafailov et al. 2023) over P preference pairs of sequence log-probs, each (P,):
    mean_p -log sigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected))). Returns the loss and
    its statistics (the reward margin, the share of pairs already ranked right)."""
    z = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    loss = F.softplus(-z).mean()
    with torch.no_grad():
        stats = {
            "dpo_loss": loss.item(),
            "dpo_margin": (z / beta).mean().item(),
            "dpo_acc": (z > 0).float().mean().item(),
        }
    return loss, stats


# ------------------------------------------------------------------------------------ VAR RL Done Right
def relevance_token_weights(
    relevance_NHW: torch.Tensor, patch_nums: Sequence[int], mix: float = 1.0, eps: float = 1e-8
) -> torch.Tensor:
    """Mask Propagation: per-token multipliers (N, L) from a non-negative relevance map (N, H, W).

    The map is area-pooled to every scale's pn x pn grid (fine to coarse: a coarse token covers
    the image region its finer descendants cover), then each scale's values are divided by their
    mean, so a scale's total weight is unchanged (PANW still sets the balance between scales) and
    only its distribution over positions follows the relevance. ``mix`` blends with uniform
    weights: m = (1 - mix) + mix * m_rel (0 = off, 1 = relevance only).
    """
    rel = relevance_NHW.detach().float().clamp_min(0).unsqueeze(1)
    out = []
    for pn in patch_nums:
        r = F.adaptive_avg_pool2d(rel, pn).flatten(1)  # (N, pn*pn)
        r = r / (r.mean(1, keepdim=True) + eps)
        r = torch.where(r.sum(1, keepdim=True) > 0, r, torch.ones_like(r))
        out.append((1 - mix) + mix * r)
    return torch.cat(out, dim=1)


def soft_value(rewards_NK: torch.Tensor, tau: float = 0.0) -> torch.Tensor:
    """Middle return of N prefixes from K continuation rewards each (N, K) -> (N,).

    tau = 0: the mean (the expected final reward of the prefix under the current policy);
    tau > 0: the soft (KL-regularised) value tau * log mean_k exp(R_k / tau), which leans toward
    the best continuations as tau shrinks.
    """
    r = rewards_NK.float()
    if tau <= 0:
        return r.mean(1)
    return tau * (torch.logsumexp(r / tau, dim=1) - math.log(r.shape[1]))
