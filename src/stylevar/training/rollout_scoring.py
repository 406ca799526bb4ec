"""Steps 1-3 of an RL fine-tuning step, shared by GRPO and DPO: condition a batch, sample rollouts, score them.

:class:`RolloutScorer` holds what scoring needs (the frozen VQ-VAE, the reward function, the sampling
settings, the run's precision) and nothing of the optimisation; :class:`ScoredRollouts` is what it hands
to an objective's update. VMR's phases (docs/training.md) decide which scales a step samples and scores:

* ``full`` / ``suffix``: ``group_size`` rollouts per condition, each scored by the reward;
* ``prefix``: ``group_size`` prefixes (scales < m) per condition, ``vmr_k`` continuations of each; a
  prefix's return is the (soft) mean of its continuations' rewards, and one sequence per prefix is kept.

Seeds come from (seed, step, dataset index, g) (:func:`~.rollouts.rollout_seed`), so a rollout's tokens do
not depend on batching or ranks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from ..config import Sampling
from ..errors import ConfigError
from ..models import VQVAE, Conditioning, StyleVAR
from ..models.ops import autocast_to, no_autocast
from .config import GRPOConfig
from .grpo_loss import relevance_token_weights, scale_mask, soft_value
from .rewards import RewardBatch, RewardFn
from .rollouts import Rollouts, generate_rollouts, rollout_seed

logger = logging.getLogger(__name__)

__all__ = ["RolloutScorer", "ScoredRollouts"]


@dataclass
class ScoredRollouts:
    """One step's rollouts and rewards on this process: what an objective's ``update`` uses.

    ``N`` sequences are optimised, condition-major, ``group_size`` per condition (in a VMR prefix step,
    one per prefix: its continuations are only scored).
    """

    step: int
    phase: str  # "full", or VMR's "prefix" / "suffix"
    cond: Conditioning  # N rows: each sequence's condition
    tokens: list[torch.Tensor]  # per scale (N, pn*pn): the sampled token indices
    returns: torch.Tensor  # (N,) each sequence's reward (a prefix's: VMR's value of its continuations)
    #: (4,) mean, std, min, max of the rollouts' rewards: this process's from :meth:`RolloutScorer.score`,
    #: averaged over processes by the trainer
    reward_stats: torch.Tensor
    token_weights: torch.Tensor  # (L,) PANW over the phase's scales, summing to 1
    policy_weights: torch.Tensor | None  # (N, L) Mask Propagation's weights of the policy term, or None
    num_rollouts: int  # images generated on this process (G*K per condition in a prefix step)
    rollout_s: float
    reward_s: float


class RolloutScorer:
    """Conditions, rollouts and rewards of one process, for a policy given at each call.

    ``m``: VMR's middle scale (the number of scales a prefix has); ``panw``: PANW's per-token weights (L,).
    """

    def __init__(
        self,
        vae: VQVAE,
        reward_fn: RewardFn,
        cfg: GRPOConfig,
        *,
        device: torch.device,
        m: int,
        panw: torch.Tensor,
    ):
        self.vae, self.reward_fn, self.cfg, self.device = vae, reward_fn, cfg, device
        self.m, self.panw = m, panw
        self.dtype = torch.bfloat16 if cfg.precision == "bf16" else None
        #: how rollouts are sampled (the config's filters, the run's precision)
        self.sampling = Sampling(
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            temperature=cfg.temperature,
            dtype="bf16" if cfg.precision == "bf16" else "fp32",
            cuda_graphs=cfg.cuda_graphs,
        )

    def amp(self):
        """The run's autocast (bf16) or none."""
        return autocast_to(self.device, self.dtype) if self.dtype is not None else no_autocast(self.device)

    def phase(self, step: int) -> str:
        """``full`` without VMR; else ``vmr_prefix_updates`` prefix steps, then one suffix step."""
        if not self.cfg.vmr:
            return "full"
        k = self.cfg.vmr_prefix_updates
        return "prefix" if step % (k + 1) < k else "suffix"

    def token_weights(self, phase: str, patch_nums) -> torch.Tensor:
        """PANW's per-token weights (L,) over the scales this phase optimises (VMR), summing to 1."""
        if phase == "prefix":
            tw = self.panw * scale_mask(patch_nums, range(self.m)).to(self.device)
        elif phase == "suffix":
            tw = self.panw * scale_mask(patch_nums, range(self.m, len(patch_nums))).to(self.device)
        else:
            tw = self.panw
        return tw / tw.sum()

    def condition(self, model: StyleVAR, mb: dict) -> tuple[Conditioning, RewardBatch, list[int]]:
        """A batch's conditioning (encoded once), its images in [0, 1] for the reward, its dataset indices."""
        dev = self.device
        style, content = mb["style"].to(dev).float(), mb["content"].to(dev).float()
        target = mb["target"].to(dev).float() if "target" in mb else None
        with torch.no_grad(), self.amp():
            cond = model.conditioning(self.vae, style, content)

        def unit(x):
            return None if x is None else x.add(1).mul(0.5).clamp(0, 1)

        rb = RewardBatch(target=unit(target), content=unit(content), style=unit(style))
        return cond, rb, [int(i) for i in mb["index"]]

    def rollouts(self, model: StyleVAR, cond: Conditioning, seeds: list[int], **kw) -> Rollouts:
        """``model``'s samples for ``cond``, one per seed, ``rollout_batch`` at a time."""
        return generate_rollouts(
            model, self.vae, cond, seeds, self.sampling, chunk=self.cfg.rollout_batch, **kw
        )

    def rewards(self, images: torch.Tensor, rb: RewardBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rewards (N,) and, for Mask Propagation, the relevance map (N, H, W) of each image."""
        mode = self.cfg.mask_propagation
        if mode == "reward_grad":
            x = images.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                r = self.reward_fn(x, rb)
                if r.requires_grad:
                    (g,) = torch.autograd.grad(r.sum(), x)
                    return r.detach().float(), g.abs().sum(1)
            logger.warning(
                "mask_propagation=reward_grad: the reward is not differentiable; using the error map"
            )
            mode = "error"
        with torch.no_grad():
            r = self.reward_fn(images, rb).float()
        if mode == "error":
            if rb.target is None:
                raise ConfigError("mask_propagation=error needs targets (paired data)")
            return r, (images - rb.target).abs().mean(1)
        return r, None

    def score(self, model: StyleVAR, mb: dict, step: int) -> ScoredRollouts:
        """Rollouts of ``mb``'s conditions by ``model`` at ``step``, their rewards (VMR: the prefixes'
        values) and this phase's token weights."""
        cfg = self.cfg
        phase = self.phase(step)
        G, K = cfg.group_size, cfg.vmr_k
        t0 = time.perf_counter()
        cond, rb, index = self.condition(model, mb)
        B = cond.batch_size
        seeds = [rollout_seed(cfg.seed, step, i, g) for i in index for g in range(G)]
        cond_g = cond.repeat_interleave(G)  # condition-major: b0g0 .. b0g(G-1), b1g0 ..
        if phase == "prefix":
            pre = self.rollouts(model, cond_g, seeds, num_scales=self.m)
            cond_gk = cond_g.repeat_interleave(K)
            seeds_k = [rollout_seed(cfg.seed + 1, step, i, g) for i in index for g in range(G * K)]
            prefix = [t.repeat_interleave(K, 0) for t in pre.tokens]
            ro = self.rollouts(model, cond_gk, seeds_k, prefix=prefix)
            rb_roll = rb.repeat_interleave(G * K)
        else:
            ro = self.rollouts(model, cond_g, seeds)
            rb_roll = rb.repeat_interleave(G)
        t_roll = time.perf_counter() - t0
        t0 = time.perf_counter()
        rewards, relevance = self.rewards(ro.images, rb_roll)
        tokens, returns = ro.tokens, rewards
        if phase == "prefix":  # one sequence per prefix (prefix log-probs ignore the suffix), valued by VMR
            returns = soft_value(rewards.view(B * G, K), cfg.vmr_tau)
            tokens = [t[::K] for t in ro.tokens]
            if relevance is not None:
                relevance = relevance.view(B * G, K, *relevance.shape[1:]).mean(1)
        tw = self.token_weights(phase, model.patch_nums)
        pw = None
        if relevance is not None:
            pw = tw * relevance_token_weights(relevance, model.patch_nums, cfg.mp_mix).to(self.device)
        return ScoredRollouts(
            step=step,
            phase=phase,
            cond=cond_g,
            tokens=tokens,
            returns=returns,
            reward_stats=torch.stack([rewards.mean(), rewards.std(), rewards.min(), rewards.max()]),
            token_weights=tw,
            policy_weights=pw,
            num_rollouts=ro.images.shape[0],
            rollout_s=t_roll,
            reward_s=time.perf_counter() - t0,
        )
