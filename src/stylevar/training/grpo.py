"""GRPO reinforcement fine-tuning (docs/upstream.md §6, the paper's stage 2), batched and done right.

One optimizer step (per process) is two hooks: :meth:`~.policy.PolicyTrainer.generate_and_score` (steps
1-3, :mod:`.rollout_scoring`, which :class:`~stylevar.training.dpo.DPOTrainer` shares) and
:meth:`GRPOTrainer.update` (4-6, GRPO's own, in this module):

1. ``batch_size`` (content, style, target) conditions, encoded once;
2. **rollouts**: ``group_size`` samples per condition, generated *together* by the model's own
   :meth:`~stylevar.models.StyleVAR.generate` (correct KV cache) with one seed per rollout derived
   from (seed, step, dataset index, g), so a rollout's tokens do not depend on batching or ranks;
3. **rewards** from a plain function (images in [0, 1], batch) -> (N,) (:mod:`.rewards`);
4. **advantages** normalised per group (std floor);
5. ``ppo_epochs`` passes of teacher-forced log-probs over the sampled tokens, in micro-batches:
   PPO clipped surrogate + beta * k3 KL to the reference (the same model with LoRA off), with
   PANW per-token weights; a rollout with a non-finite loss or a KL spike is dropped alone.
   The first pass's log-probs are the behaviour policy's (``old``), so the ratio starts at 1
   and clipping acts from the second pass on (docs/upstream.md B3);
6. clip, AdamW step; the **reference update** controller (reward EMA, peak snapshot, merges).

Which distribution the objective scores (``logprob_dist``): ``full`` -- the model's full softmax,
as the paper (the tokens were drawn from the top-k/top-p-truncated one, which is then an
off-policy proposal); ``sampled`` -- the distribution the tokens were drawn from: logits /
temperature renormalised over the sampler's top-k/top-p set, that set taken from the behaviour
policy and reused for new and reference log-probs (packed 1 bit per entry between passes).

VAR RL Done Right (arXiv 2601.02256), as options:

* **Value as Middle Return** (``vmr``): scales are split at ``vmr_scale`` m. A *prefix* step
  samples G prefixes (scales < m) per condition and K continuations of each; the prefix's value
  V_m is the mean (or soft value, ``vmr_tau``) of its continuations' rewards, group-normalised
  over the G prefixes, and only prefix tokens are optimised. A *suffix* step is a plain step
  whose loss covers scales >= m only. ``vmr_prefix_updates`` prefix steps alternate with one
  suffix step (the paper: 3:1). Cost of a prefix step: G*K rollouts per condition instead of G
  (the teacher-forced passes stay G per condition).
* **Mask Propagation** (``mask_propagation``): a reward-relevance map on each generated image --
  |dR/dx| summed over channels (``reward_grad``) or the pixel error against the target
  (``error``) -- area-pooled down to every scale's grid, normalised per scale, weights the policy
  term's tokens (:func:`~.grpo_loss.relevance_token_weights`). The KL term keeps PANW's weights.

Everything around the step (LoRA or full fine-tuning, the reference controller and its merges, the
held-out reward, checkpoints and exact resume, torchrun, the export) is :class:`~.policy.PolicyTrainer`'s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .grpo_loss import LossOutput, group_advantages, grpo_loss, pack_mask, scale_entropy, unpack_mask
from .policy import PolicyTrainer
from .rollout_scoring import ScoredRollouts

__all__ = ["GRPOTrainer", "PassStats"]


@dataclass
class PassStats:
    """What GRPO's optimisation passes measured: the last pass's loss terms, the behaviour policy's
    per-scale entropy (first pass), each rollout's raw KL and kept flag (last pass), the last grad norm."""

    entropy: torch.Tensor  # (SN,)
    kl_raw: torch.Tensor  # (N,)
    kept: torch.Tensor  # (N,) bool: False where the rollout's loss was non-finite or its KL spiked
    terms: dict[str, float] = field(default_factory=dict)  # policy, kl, clip_frac, ratio_mean, ratio_max
    grad_norm: float = 0.0

    def add(self, out: LossOutput, rows: list[int], frac: float) -> None:
        """Accumulate one micro-batch (``rows``, a fraction ``frac`` of the rollouts) of the current pass."""
        self.terms["policy"] += out.policy
        self.terms["kl"] += out.kl
        self.terms["clip_frac"] += out.clip_frac * frac
        self.terms["ratio_mean"] += out.ratio_mean * frac
        self.terms["ratio_max"] = max(self.terms["ratio_max"], out.ratio_max)
        self.kl_raw[rows] = out.kl_raw
        self.kept[rows] = out.kept


class GRPOTrainer(PolicyTrainer):
    """GRPO fine-tuning of a :class:`~stylevar.models.StyleVAR` (usually an SFT checkpoint) against
    ``reward_fn``; the arguments are :class:`~stylevar.training.policy.PolicyTrainer`'s."""

    label = "GRPO"
    objective = "grpo"

    def update(self, s: ScoredRollouts) -> dict:
        """GRPO's update (steps 4-6): group-normalised advantages, the optimisation passes, the reference
        update; the step's record."""
        cfg = self.cfg
        t0 = time.perf_counter()
        adv = group_advantages(s.returns.view(-1, cfg.group_size), cfg.std_floor).flatten()
        passes = self._ppo_passes(s, adv)
        t_upd = time.perf_counter() - t0
        kept = passes.kept
        kl_raw = self._all_mean(
            torch.stack([torch.where(kept, passes.kl_raw, 0).sum() / kept.sum().clamp_min(1)])
        )
        decision = self._merge_if_due(kl_raw)
        rec = {
            **self._reward_record(s),
            "adv_mean": adv.mean().item(),
            "adv_abs_mean": adv.abs().mean().item(),
            "kl_raw": kl_raw.item(),
            "kl_weighted": passes.terms["kl"],
            "policy_loss": passes.terms["policy"],
            "clip_frac": passes.terms["clip_frac"],
            "ratio_mean": passes.terms["ratio_mean"],
            "ratio_max": passes.terms["ratio_max"],
            "dropped_rollouts": int((~kept).sum().item()),
            "grad_norm": passes.grad_norm,
            **self._run_record(s, decision, t_upd),
        }
        for si, e in enumerate(passes.entropy.tolist()):
            rec[f"entropy/scale{si}"] = e
        return rec

    def _ppo_passes(self, s: ScoredRollouts, adv: torch.Tensor) -> PassStats:
        """``ppo_epochs`` passes over the rollouts in micro-batches, one optimizer step each: PPO's clipped
        surrogate + beta * k3 KL to the reference (:func:`~.grpo_loss.grpo_loss`). The first pass's
        log-probs are the behaviour policy's (``old``) and, with ``beta > 0``, the reference's."""
        cfg = self.cfg
        N = adv.shape[0]
        flat = torch.cat(s.tokens, dim=1)
        old_lp = torch.empty(N, flat.shape[1], device=self.device)
        ref_lp = torch.empty_like(old_lp) if cfg.beta > 0 else None
        keeps: list[torch.Tensor | None] = [None] * N
        mbs = [list(range(a, min(N, a + cfg.micro_batch))) for a in range(0, N, cfg.micro_batch)]
        ps = PassStats(
            entropy=torch.zeros(len(self.model.patch_nums)),
            kl_raw=torch.zeros(N, device=self.device),
            kept=torch.ones(N, dtype=torch.bool, device=self.device),
        )
        for pass_i in range(cfg.ppo_epochs):
            first = pass_i == 0
            self.optimizer.zero_grad(set_to_none=True)
            ps.terms = {"policy": 0.0, "kl": 0.0, "clip_frac": 0.0, "ratio_mean": 0.0, "ratio_max": 0.0}
            for rows in mbs:
                idx = torch.tensor(rows, device=self.device)
                tok = [t[rows] for t in s.tokens]
                c = s.cond.index_select(idx)
                logits = self._forward_logits(tok, c)
                keep = self._behaviour_set(logits, rows, keeps, first)
                lp = self._token_logprobs(logits, flat[rows], keep)
                if first:
                    old_lp[rows] = lp.detach()
                    ps.entropy += torch.tensor(scale_entropy(logits, self.model.begin_ends)) * len(rows) / N
                    if ref_lp is not None:
                        with torch.no_grad():
                            rl = self._forward_logits(tok, c, reference=True)
                            ref_lp[rows] = self._token_logprobs(rl, flat[rows], keep)
                del logits
                out = grpo_loss(
                    lp,
                    old_lp[rows],
                    None if ref_lp is None else ref_lp[rows],
                    adv[rows],
                    s.token_weights,
                    policy_weights=None if s.policy_weights is None else s.policy_weights[rows],
                    beta=cfg.beta,
                    clip_eps=cfg.clip_eps,
                    kl_direction=cfg.kl_direction,
                    log_ratio_clamp=cfg.log_ratio_clamp,
                    kl_spike=cfg.kl_spike,
                    normaliser=N,
                )
                out.loss.backward()
                ps.add(out, rows, len(rows) / N)
            ps.grad_norm = self._reduce_and_step()
        return ps

    def _behaviour_set(
        self, logits: torch.Tensor, rows: list[int], keeps: list[torch.Tensor | None], first: bool
    ) -> torch.Tensor | None:
        """:meth:`_sampled_set` of the behaviour policy: taken on the first pass and, when passes follow,
        kept in ``keeps`` (1 bit per entry) for them."""
        if not first:
            if self.cfg.logprob_dist != "sampled":
                return None
            return torch.stack([unpack_mask(keeps[r], logits.shape[-1]) for r in rows])
        keep = self._sampled_set(logits)
        if keep is not None and self.cfg.ppo_epochs > 1:
            for r, packed in zip(rows, pack_mask(keep)):
                keeps[r] = packed
        return keep
