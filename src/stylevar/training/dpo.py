"""DPO post-training on the model's own rollouts (StyleAR; ``stylevar dpo``).

A step starts as GRPO's, up to the rewards (:meth:`PolicyTrainer.generate_and_score
<stylevar.training.policy.PolicyTrainer.generate_and_score>`: ``group_size`` rollouts per condition, seeded
and scored the same way); then each condition's best and worst rollout by reward form a preference pair
(:func:`~.grpo_loss.preference_pairs`; a group whose rewards are all equal gives none) and DPO's loss
(:func:`~.grpo_loss.dpo_loss`, ``dpo_beta``) on their sequence log-probs against the reference (the
model with LoRA off) makes one optimizer step.

Everything else is :class:`~.policy.PolicyTrainer`'s, shared with GRPO: LoRA or full fine-tuning, the reference controller and its
merges, the held-out reward, checkpoints (GRPO's format) and exact resume, torchrun, the export. The
configuration is :class:`~.config.GRPOConfig` with ``objective="dpo"`` (no VMR: DPO ranks whole rollouts).
"""

from __future__ import annotations

import time

import torch

from .grpo_loss import dpo_loss, preference_pairs
from .policy import PolicyTrainer
from .rollout_scoring import ScoredRollouts

__all__ = ["DPOTrainer"]


class DPOTrainer(PolicyTrainer):
    """DPO fine-tuning of a :class:`~stylevar.models.StyleVAR` on preference pairs that ``reward_fn`` ranks
    among its own rollouts; the arguments are :class:`~stylevar.training.policy.PolicyTrainer`'s, with a
    config whose ``objective`` is ``"dpo"``."""

    label = "DPO"
    objective = "dpo"

    def update(self, s: ScoredRollouts) -> dict:
        """DPO's update: preference pairs, the loss's gradient, one optimizer step, the reference update."""
        cfg = self.cfg
        t0 = time.perf_counter()
        chosen, rejected = preference_pairs(s.returns.view(-1, cfg.group_size).to(self.device))
        P = len(chosen)
        L = sum(t.shape[1] for t in s.tokens)
        tw = s.token_weights
        weights = (tw / tw.sum()) * L  # a sequence's log-prob: its tokens', PANW-weighted, summing to L
        stats = {"dpo_loss": 0.0, "dpo_margin": 0.0, "dpo_acc": 0.0}
        log_ratio = torch.zeros((), device=self.device)  # mean |policy - reference| per token, of the pairs
        grad_norm = 0.0
        self.optimizer.zero_grad(set_to_none=True)
        if P:
            pol, ref, stats = self._pair_gradients(s, chosen, rejected, weights)
            sel = torch.cat((chosen, rejected)).tolist()
            log_ratio = (pol - ref)[sel].abs().mean() / L
        if P or self.world > 1:  # every process joins the gradient all-reduce, with or without pairs
            grad_norm = self._reduce_and_step()
        t_upd = time.perf_counter() - t0
        kl_raw = self._all_mean(log_ratio.reshape(1))
        decision = self._merge_if_due(kl_raw)
        return {
            **self._reward_record(s),
            "pairs": P,
            **stats,
            "kl_raw": kl_raw.item(),
            "grad_norm": grad_norm,
            **self._run_record(s, decision, t_upd),
        }

    def _pair_gradients(
        self,
        s: ScoredRollouts,
        chosen: torch.Tensor,
        rejected: torch.Tensor,
        weights: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """DPO's gradient at these weights, accumulated in the parameters. Returns the sequence log-probs
        (N,) under the policy and the reference (0 outside the pairs) and the loss's statistics.

        The loss couples a pair's two rollouts, so it is computed from no-grad
        sequence log-probs and its gradient applied through d(loss)/d(log-prob) per rollout, micro-batch
        by micro-batch: exactly DPO's gradient, with the memory of one micro-batch.
        """
        cfg = self.cfg
        sel = torch.cat((chosen, rejected)).tolist()
        mbs = [sel[a : a + cfg.micro_batch] for a in range(0, len(sel), cfg.micro_batch)]
        pol = torch.zeros(len(s.returns), device=self.device)
        ref = torch.zeros_like(pol)
        with torch.no_grad():
            for rows in mbs:
                pol[rows] = self._sequence_logprobs(s, rows, weights)
                ref[rows] = self._sequence_logprobs(s, rows, weights, reference=True)
        seq = pol.detach().clone().requires_grad_(True)
        loss, stats = dpo_loss(seq[chosen], seq[rejected], ref[chosen], ref[rejected], cfg.dpo_beta)
        (coef,) = torch.autograd.grad(loss, seq)  # d loss / d sequence log-prob, per rollout
        for rows in mbs:
            (coef[rows] * self._sequence_logprobs(s, rows, weights)).sum().backward()
        return pol, ref, stats

    def _sequence_logprobs(
        self, s: ScoredRollouts, rows: list[int], weights: torch.Tensor, reference: bool = False
    ) -> torch.Tensor:
        """(len(rows),) log-prob of each sequence ``rows``: its token log-probs weighted by ``weights`` (L,),
        under the policy or (``reference``) the reference."""
        tokens = [t[rows] for t in s.tokens]
        idx = torch.tensor(rows, device=self.device)
        logits = self._forward_logits(tokens, s.cond.index_select(idx), reference=reference)
        lp = self._token_logprobs(logits, torch.cat(tokens, dim=1), self._sampled_set(logits))
        return (weights * lp).sum(1)
