"""What GRPO and DPO share: a policy fine-tuned on its own scored rollouts (docs/training.md).

:class:`PolicyTrainer` is the harness's trainer (:mod:`stylevar.training.harness`: data order, atomic
checkpoints and exact resume, signals, logs, the held-out reward at the start, every ``eval_every`` steps
and at the end, ``best.pt``: the highest) for a :class:`~stylevar.models.StyleVAR` (usually an SFT
checkpoint) and a reward function. It owns:

* **the policy**: a LoRA on the transformer (the reference is the same model with the adapter off) or
  full fine-tuning of the transformer (the image encoders frozen; the reference a frozen copy);
* **a step** = :meth:`~PolicyTrainer.generate_and_score` (conditions, rollouts, rewards:
  :class:`~.rollout_scoring.RolloutScorer`) then the objective's :meth:`~PolicyTrainer.update`
  (GRPO: :mod:`.grpo`; DPO: :mod:`.dpo`), with the pieces both updates use: teacher-forced logits under
  the policy or the reference, token log-probs, gradients averaged over processes and one clipped step;
* **the reference update** (:class:`~.reference_update.ReferenceController`: reward EMA, peak snapshot,
  merges that bake the adapter into the base and move the reference with it);
* **checkpoints** (the LoRA or the trained parameters, the merged base after merges, the optimizer, the
  controller), the held-out reward, and the **export**: ``run_dir/final`` is the merged model in our
  format, ``run_dir/final_lora`` the adapter (when no merge changed the base).

Under ``torchrun`` each rank rolls out its own conditions; gradients and statistics are averaged.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from ..errors import CheckpointError, ConfigError
from ..io import save_lora, save_pretrained
from ..models import VQVAE, Conditioning, StyleVAR
from ..models.lora import (
    LoRAConfig,
    apply_lora,
    load_lora_state_dict,
    lora_disabled,
    lora_state_dict,
    merge_lora_,
    restore_lora,
    snapshot_lora,
    unload_lora,
)
from .config import GRPOConfig
from .grpo_loss import keep_mask, panw_weights, token_logprobs
from .harness import RunState, Trainer
from .reference_update import ReferenceController
from .rewards import RewardFn
from .rollout_scoring import RolloutScorer, ScoredRollouts
from .rollouts import middle_scale, rollout_seed

logger = logging.getLogger(__name__)

#: the checkpoint format of both objectives (a DPO run's checkpoints are GRPO's)
CKPT_FORMAT = "stylevar-grpo-1"
__all__ = ["CKPT_FORMAT", "PolicyState", "PolicyTrainer"]


@dataclass
class PolicyState(RunState):
    best_eval: float = -math.inf
    history: list[dict] = field(default_factory=list)


class PolicyTrainer(Trainer):
    """Fine-tuning of a :class:`StyleVAR` on its own rollouts scored by ``reward_fn``; subclasses give the
    objective (:attr:`objective`, :meth:`update`)."""

    #: the checkpoint's config key (both objectives are configured by GRPOConfig); ``label`` names the run
    name, label = "grpo", "policy"
    checkpoint_format = CKPT_FORMAT
    state_cls = PolicyState
    item_label = "conditions"
    best_metric, best_mode, best_field = "eval_reward", "max", "best_eval"
    validate_at_start, validate_at_epoch_end = True, False
    rate_key = None  # the records time rollouts, rewards and updates themselves
    objective = ""  # the GRPOConfig.objective a subclass optimises

    def __init__(
        self,
        model: StyleVAR,
        vae: VQVAE,
        train_set: Dataset,
        reward_fn: RewardFn,
        run_dir: str | os.PathLike,
        config: GRPOConfig | None = None,
        *,
        val_set: Dataset | None = None,
        device: str | torch.device = "cpu",
        info: dict | None = None,
    ):
        cfg = config or GRPOConfig()
        if cfg.objective != self.objective:
            raise ConfigError(
                f"{type(self).__name__} trains objective={self.objective!r}, not {cfg.objective!r} "
                "(grpo: stylevar.training.grpo.GRPOTrainer, dpo: stylevar.training.dpo.DPOTrainer)"
            )
        super().__init__(
            cfg,
            train_set,
            run_dir,
            val_set=val_set,
            device=device,
            micro_batch=cfg.batch_size,
            hint="lower batch_size",
        )
        self.model = model.to(self.device).eval()
        self.vae = vae.to(self.device).eval().requires_grad_(False)
        self.reward_fn = reward_fn
        self.info = dict(info or {})
        pns = model.patch_nums
        self.m = (middle_scale(pns) if cfg.vmr_scale < 0 else cfg.vmr_scale) if cfg.vmr else len(pns)
        if cfg.vmr and not 1 <= self.m < len(pns):
            raise ConfigError(f"vmr_scale must lie in [1, {len(pns) - 1}], got {self.m}")
        #: conditions, rollouts and rewards (steps 1-3 of a step, rollout_scoring.py)
        self.scorer = RolloutScorer(
            self.vae,
            reward_fn,
            cfg,
            device=self.device,
            m=self.m,
            panw=panw_weights(pns, cfg.panw_gamma).to(self.device),
        )

        gen = torch.Generator().manual_seed(cfg.seed)
        self.ref_model: StyleVAR | None = None
        if cfg.lora:
            self.lora_cfg: LoRAConfig | None = LoRAConfig(cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
            self.params = apply_lora(self.model, self.lora_cfg, generator=gen)
            self.model.to(self.device)
        else:  # full-parameter mode: the transformer trains, the image encoders stay frozen
            self.lora_cfg = None
            self.model.requires_grad_(False)
            for name, p in self.model.named_parameters():
                frozen = name.startswith(("style_encoder.", "content_encoder.", "feat_emb."))
                dead = name.endswith(("q_bias_target", "v_bias_guide"))
                p.requires_grad_(not (frozen or dead))
            self.params = [p for p in self.model.parameters() if p.requires_grad]
            self.ref_model = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.optimizer = self._new_optimizer()
        self.controller = ReferenceController(
            cfg.merge_cooldown,
            cfg.merge_min_gain,
            cfg.merge_patience,
            cfg.merge_kl_threshold,
            cfg.merge_emergency_cooldown,
            cfg.ema_decay,
        )

    def _new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.params,
            lr=self.cfg.lr,
            betas=self.cfg.betas,
            weight_decay=self.cfg.weight_decay,
            fused=True if self.device.type == "cuda" else None,
        )

    # ------------------------------------------------------------------------------ one step
    def train_step(self, group: list[dict]) -> dict:
        """One step on this process's conditions (``group``: one batch of them); the step's statistics."""
        (mb,) = group
        return self.update(self.generate_and_score(mb))

    def generate_and_score(self, mb: dict) -> ScoredRollouts:
        """Rollouts of this process's conditions and their rewards (:meth:`RolloutScorer.score`), the reward
        statistics averaged over processes; the reference controller sees the mean reward."""
        s = self.scorer.score(self.model, mb, self.state.step)
        s.reward_stats = self._all_mean(s.reward_stats.to(self.device))
        # the reference controller: EMA and peak (snapshot = the weights that made these rollouts)
        self.controller.observe(s.reward_stats[0].item(), self._snapshot if self.cfg.restore_peak else None)
        return s

    def update(self, s: ScoredRollouts) -> dict:
        """The objective's update from ``s``, one optimizer step; the step's record."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------ pieces of an update
    def _forward_logits(
        self, tokens: list[torch.Tensor], cond: Conditioning, reference: bool = False
    ) -> torch.Tensor:
        x = self.vae.quantize.idx_to_teacher_input(tokens)
        with self.scorer.amp():
            if reference:
                if self.ref_model is not None:
                    return self.ref_model(x, cond).float()
                with lora_disabled(self.model):
                    return self.model(x, cond).float()
            return self.model(x, cond).float()

    def _all_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean over processes of a 1-D float tensor (sums and counts travel together)."""
        if self.world == 1:
            return values
        t = values.detach().clone().to(self.device)
        dist.all_reduce(t)
        return t / self.world

    def _sampled_set(self, logits: torch.Tensor) -> torch.Tensor | None:
        """The sampler's top-k/top-p set at each position of ``logits`` (``logprob_dist="sampled"``), else None."""
        cfg = self.cfg
        if cfg.logprob_dist != "sampled":
            return None
        return keep_mask(logits, cfg.top_k, cfg.top_p, cfg.temperature)

    def _token_logprobs(
        self, logits: torch.Tensor, tokens: torch.Tensor, keep: torch.Tensor | None
    ) -> torch.Tensor:
        """(n, L) log-probs of ``tokens`` under ``logits`` in the distribution ``logprob_dist`` names."""
        cfg = self.cfg
        return token_logprobs(logits, tokens, dist=cfg.logprob_dist, temperature=cfg.temperature, keep=keep)

    def _merge_if_due(self, kl_raw: torch.Tensor) -> str | None:
        """The reference controller's decision for this step's raw KL, carried out (a merge), or None."""
        decision = self.controller.decide(kl_raw.item())
        if decision is not None:
            self._merge(decision)
        return decision

    def _reward_record(self, s: ScoredRollouts) -> dict:
        """The log fields every objective opens with: the step and the rollouts' reward statistics."""
        stats = s.reward_stats
        return {
            "step": s.step + 1,
            "phase": s.phase,
            "reward_mean": stats[0].item(),
            "reward_std": stats[1].item(),
            "reward_min": stats[2].item(),
            "reward_max": stats[3].item(),
            "reward_ema": self.controller.ema,
        }

    def _run_record(self, s: ScoredRollouts, decision: str | None, update_s: float) -> dict:
        """The log fields every objective closes with: merges, rollouts and the time of each part."""
        return {
            "merge": decision or "",
            "merges": len(self.controller.merges),
            "rollouts": s.num_rollouts * self.world,
            "rollout_s": s.rollout_s,
            "reward_s": s.reward_s,
            "update_s": update_s,
        }

    def _reduce_and_step(self) -> float:
        if self.world > 1:
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad /= self.world
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        if torch.isfinite(gnorm):
            self.optimizer.step()
        else:
            logger.warning("non-finite gradient norm at step %d: update skipped", self.state.step)
        self.model.refresh_static_runners()  # reduced-precision runners copy the new weights
        return float(gnorm)

    def _snapshot(self) -> dict:
        if self.cfg.lora:
            return snapshot_lora(self.model)
        return {n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def _merge(self, kind: str) -> None:
        """Bake the (peak) adapter into the base and start a fresh one; the reference moves with it."""
        ctl = self.controller
        snap = ctl.snapshot if self.cfg.restore_peak else None
        if self.cfg.lora:
            if snap is not None:
                restore_lora(self.model, snap)
            gen = torch.Generator().manual_seed(self.cfg.seed + 7 * (len(ctl.merges) + 1))
            merge_lora_(self.model, reinit=True, generator=gen)
        else:
            if snap is not None:
                with torch.no_grad():
                    params = dict(self.model.named_parameters())
                    for n, t in snap.items():
                        params[n].copy_(t)
            assert self.ref_model is not None
            self.ref_model.load_state_dict(self.model.state_dict())
        self.optimizer = self._new_optimizer()
        self.model.refresh_static_runners()
        event = ctl.merged(self.state.step + 1, kind)
        logger.info(
            "reference update (%s) at step %d: EMA %.4f, peak %.4f",
            kind,
            event["step"],
            event["ema"],
            event["peak"],
        )

    # ------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, reference: bool = False) -> dict:
        """Mean reward on the first ``eval_pairs`` held-out conditions, ``eval_samples`` fixed-seed samples each.

        ``reference=True`` scores the reference policy (LoRA off) on the same seeds.
        """
        if self.val_set is None or len(self.val_set) == 0:
            return {}
        cfg = self.cfg
        n = min(cfg.eval_pairs, len(self.val_set))
        loader = DataLoader(
            torch.utils.data.Subset(self.val_set, range(n)),
            batch_size=cfg.batch_size,
            generator=torch.Generator(),
        )  # (its own generator: evaluating draws nothing from the global RNG)
        total, count = 0.0, 0
        for mb in loader:
            cond, rb, index = self.scorer.condition(self.model, mb)
            S = cfg.eval_samples
            seeds = [rollout_seed(cfg.seed + 99, 0, i, s) for i in index for s in range(S)]
            off = reference and self.ref_model is None  # LoRA mode: the reference is the adapter switched off
            policy = self.ref_model if reference and self.ref_model is not None else self.model
            with lora_disabled(self.model) if off else contextlib.nullcontext():
                ro = self.scorer.rollouts(policy, cond.repeat_interleave(S), seeds)
            r = self.reward_fn(ro.images, rb.repeat_interleave(S)).float()
            total += r.sum().item()
            count += r.numel()
        mean = self._all_mean(torch.tensor([total / max(count, 1)], device=self.device)).item()
        return {"eval_reward": mean, "eval_n": count}

    def validate(self) -> dict:
        return self.evaluate()

    # ------------------------------------------------------------------------------ run hooks
    @property
    def history(self) -> list[dict]:
        return self.state.history

    def checkpoint_payload(self) -> dict:
        if self.cfg.lora:
            model_sd = lora_state_dict(self.model)
            base = None
            if self.controller.merges:  # the wrapped modules' base weights changed
                base = {k: v for k, v in self.model.state_dict().items() if ".base_" in k}
        else:
            model_sd = {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}
            base = self.ref_model.state_dict() if self.controller.merges else None  # type: ignore[union-attr]
        return {
            "model": model_sd,
            "base": base,
            "optimizer": self.optimizer.state_dict(),
            "controller": self.controller.state_dict(),
        }

    def load_checkpoint_payload(self, ck: dict, path: Path) -> None:
        saved = ck["config"]["grpo"]
        if bool(saved.get("lora")) != self.cfg.lora or (
            self.cfg.lora
            and (saved["lora_rank"], saved["lora_alpha"]) != (self.cfg.lora_rank, self.cfg.lora_alpha)
        ):
            raise CheckpointError(f"{path}: written with other LoRA settings; resume with the same flags")
        with torch.no_grad():
            if ck["base"] is not None:
                if self.cfg.lora:
                    self.model.load_state_dict(ck["base"], strict=False)
                else:
                    assert self.ref_model is not None
                    self.ref_model.load_state_dict(ck["base"])
            if self.cfg.lora:
                load_lora_state_dict(self.model, ck["model"])
            else:
                params = dict(self.model.named_parameters())
                for n, t in ck["model"].items():
                    params[n].copy_(t)
        self.optimizer.load_state_dict(ck["optimizer"])
        self.controller.load_state_dict(ck["controller"])
        self.model.refresh_static_runners()

    def checkpoint_config(self) -> dict:
        return {
            "stylevar": self.model.config.to_dict(),
            "vqvae": self.vae.config.to_dict(),
            "info": self.info,
        }

    def progress_postfix(self, record: dict) -> dict:
        return {
            "R": f"{record['reward_mean']:.4f}",
            "kl": f"{record['kl_raw']:.4f}",
            "merges": record["merges"],
        }

    def must_log(self, record: dict) -> bool:
        return bool(record["merge"])  # every merge is in the log

    @property
    def validate_every(self) -> int:
        return self.cfg.eval_every  # the held-out reward

    def export(self) -> Path | None:
        """Write the merged model (our format) to ``run_dir/final``; the adapter to ``final_lora`` when no
        merge changed the base. Returns ``run_dir/final`` (rank 0; the others write nothing)."""
        if self.rank != 0:
            return None
        info = {
            "trained_by": "stylevar grpo",
            "steps": self.state.step,
            "merges": len(self.controller.merges),
            **self.info,
        }
        merged = copy.deepcopy(self.model)
        if self.cfg.lora:
            if not self.controller.merges:
                save_lora(self.run_dir / "final_lora", self.model, info=info)
            unload_lora(merged)
        merged.requires_grad_(False)
        return save_pretrained(self.run_dir / "final", merged, self.vae, info=info)
