"""GRPO reinforcement fine-tuning (docs/upstream.md §6, the paper's stage 2), batched and done right.

One optimizer step (per process):

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

The run is the harness's (:mod:`stylevar.training.harness`): data order, atomic checkpoints and exact
resume, signals, logs, the held-out reward at the start, every ``eval_every`` steps and at the end
(``best.pt``: the highest). This trainer's checkpoints hold the LoRA (and, after merges, the merged
base weights), the optimizer and the controller state with its snapshot. ``run_dir/final`` is the
merged model in our format; ``run_dir/final_lora`` the adapter (when no merge changed the base).
Under ``torchrun`` each rank rolls out its own conditions; gradients and statistics are averaged.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from ..config import Sampling
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
from ..models.ops import autocast_to, no_autocast
from .config import MP_MODES, GRPOConfig
from .grpo_loss import (
    dpo_loss,
    group_advantages,
    grpo_loss,
    keep_mask,
    pack_mask,
    panw_weights,
    preference_pairs,
    relevance_token_weights,
    scale_entropy,
    scale_mask,
    soft_value,
    token_logprobs,
    unpack_mask,
)
from .harness import RunState, Trainer
from .reference_update import ReferenceController
from .rewards import RewardBatch, RewardFn
from .rollouts import Rollouts, generate_rollouts, middle_scale, rollout_seed

logger = logging.getLogger(__name__)

CKPT_FORMAT = "stylevar-grpo-1"
__all__ = [
    "MP_MODES",
    "GRPOConfig",
    "GRPOState",
    "GRPOTrainer",
    "ReferenceController",
    "Rollouts",
    "generate_rollouts",
    "middle_scale",
    "rollout_seed",
]


@dataclass
class GRPOState(RunState):
    best_eval: float = -math.inf
    history: list[dict] = field(default_factory=list)


# ============================================================================================ trainer
class GRPOTrainer(Trainer):
    """GRPO fine-tuning of a :class:`StyleVAR` (usually an SFT checkpoint) against ``reward_fn``."""

    name, label = "grpo", "GRPO"
    checkpoint_format = CKPT_FORMAT
    state_cls = GRPOState
    item_label = "conditions"
    best_metric, best_mode, best_field = "eval_reward", "max", "best_eval"
    validate_at_start, validate_at_epoch_end = True, False
    rate_key = None  # the records time rollouts, rewards and updates themselves

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
        self.panw = panw_weights(pns, cfg.panw_gamma).to(self.device)
        self.dtype = torch.bfloat16 if cfg.precision == "bf16" else None
        #: how rollouts are sampled (the config's filters, the run's precision)
        self.sampling = Sampling(
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            temperature=cfg.temperature,
            dtype="bf16" if cfg.precision == "bf16" else "fp32",
            cuda_graphs=cfg.cuda_graphs,
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

    # ------------------------------------------------------------------------------ pieces of a step
    def _amp(self):
        return autocast_to(self.device, self.dtype) if self.dtype is not None else no_autocast(self.device)

    def _rollouts(
        self, cond: Conditioning, seeds: list[int], model: StyleVAR | None = None, **kw
    ) -> Rollouts:
        cfg = self.cfg
        return generate_rollouts(
            model or self.model,
            self.vae,
            cond,
            seeds,
            self.sampling,
            chunk=cfg.rollout_batch,
            **kw,
        )

    def _rewards(self, images: torch.Tensor, rb: RewardBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
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

    def _cond(self, mb: dict) -> tuple[Conditioning, RewardBatch, list[int]]:
        dev = self.device
        style, content = mb["style"].to(dev).float(), mb["content"].to(dev).float()
        target = mb["target"].to(dev).float() if "target" in mb else None
        with torch.no_grad(), self._amp():
            cond = self.model.conditioning(self.vae, style, content)

        def unit(x):
            return None if x is None else x.add(1).mul(0.5).clamp(0, 1)

        rb = RewardBatch(target=unit(target), content=unit(content), style=unit(style))
        return cond, rb, [int(i) for i in mb["index"]]

    def _phase(self, step: int) -> str:
        if not self.cfg.vmr:
            return "full"
        k = self.cfg.vmr_prefix_updates
        return "prefix" if step % (k + 1) < k else "suffix"

    def _forward_logits(
        self, tokens: list[torch.Tensor], cond: Conditioning, reference: bool = False
    ) -> torch.Tensor:
        x = self.vae.quantize.idx_to_teacher_input(tokens)
        with self._amp():
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

    # ------------------------------------------------------------------------------ one step
    def train_step(self, group: list[dict]) -> dict:
        """One GRPO step on this process's conditions (``group``: one batch of them); the step's statistics."""
        (mb,) = group
        cfg = self.cfg
        step = self.state.step
        phase = self._phase(step)
        G, K, SN = cfg.group_size, cfg.vmr_k, len(self.model.patch_nums)
        t0 = time.perf_counter()
        cond, rb, index = self._cond(mb)
        B = cond.batch_size
        # 1. rollouts ---------------------------------------------------------------------------
        seeds = [rollout_seed(cfg.seed, step, i, g) for i in index for g in range(G)]
        cond_g = cond.repeat_interleave(G)  # condition-major: b0g0 .. b0g(G-1), b1g0 ..
        if phase == "prefix":
            pre = self._rollouts(cond_g, seeds, num_scales=self.m)
            cond_gk = cond_g.repeat_interleave(K)
            seeds_k = [rollout_seed(cfg.seed + 1, step, i, g) for i in index for g in range(G * K)]
            ro = self._rollouts(cond_gk, seeds_k, prefix=[t.repeat_interleave(K, 0) for t in pre.tokens])
            rb_roll = rb.repeat_interleave(G * K)
        else:
            ro = self._rollouts(cond_g, seeds)
            rb_roll = rb.repeat_interleave(G)
        t_roll = time.perf_counter() - t0
        # 2. rewards and advantages ---------------------------------------------------------------
        t0 = time.perf_counter()
        rewards, relevance = self._rewards(ro.images, rb_roll)
        if phase == "prefix":
            values = soft_value(rewards.view(B * G, K), cfg.vmr_tau)
            adv = group_advantages(values.view(B, G), cfg.std_floor).flatten()
            tokens = [
                t[::K] for t in ro.tokens
            ]  # one sequence per prefix (prefix log-probs ignore the suffix)
            if relevance is not None:
                relevance = relevance.view(B * G, K, *relevance.shape[1:]).mean(1)
        else:
            adv = group_advantages(rewards.view(B, G), cfg.std_floor).flatten()
            tokens = ro.tokens
        N = adv.shape[0]
        if phase == "prefix":
            tw = self.panw * scale_mask(self.model.patch_nums, range(self.m)).to(self.device)
        elif phase == "suffix":
            tw = self.panw * scale_mask(self.model.patch_nums, range(self.m, SN)).to(self.device)
        else:
            tw = self.panw
        tw = tw / tw.sum()
        pw = None
        if relevance is not None:
            pw = tw * relevance_token_weights(relevance, self.model.patch_nums, cfg.mp_mix).to(self.device)
        t_rew = time.perf_counter() - t0
        # 3. reference controller: EMA and peak (snapshot = the weights that made these rollouts)
        stats = self._all_mean(
            torch.stack([rewards.mean(), rewards.std(), rewards.min(), rewards.max()]).to(self.device)
        )
        take = self._snapshot if cfg.restore_peak else None
        self.controller.observe(stats[0].item(), take)
        if cfg.objective == "dpo":
            return self._dpo_update(
                step, phase, tokens, cond_g, rewards, tw, stats, ro.images.shape[0], t_roll, t_rew
            )
        # 4. optimisation passes ------------------------------------------------------------------
        t0 = time.perf_counter()
        flat = torch.cat(tokens, dim=1)
        old_lp = torch.empty(N, flat.shape[1], device=self.device)
        ref_lp = torch.empty_like(old_lp) if cfg.beta > 0 else None
        keeps: list[torch.Tensor | None] = [None] * N
        entropy = torch.zeros(SN)
        mbs = [list(range(a, min(N, a + cfg.micro_batch))) for a in range(0, N, cfg.micro_batch)]
        agg: dict[str, float] = {}
        kl_raw_all = torch.zeros(N, device=self.device)
        kept_all = torch.ones(N, dtype=torch.bool, device=self.device)
        gnorm = 0.0
        for pass_i in range(cfg.ppo_epochs):
            self.optimizer.zero_grad(set_to_none=True)
            agg = {"policy": 0.0, "kl": 0.0, "clip_frac": 0.0, "ratio_mean": 0.0, "ratio_max": 0.0}
            for rows in mbs:
                idx = torch.tensor(rows, device=self.device)
                tok = [t[rows] for t in tokens]
                c = cond_g.index_select(idx)
                logits = self._forward_logits(tok, c)
                keep = None
                if cfg.logprob_dist == "sampled":
                    if pass_i == 0:
                        keep = keep_mask(logits, cfg.top_k, cfg.top_p, cfg.temperature)
                        if cfg.ppo_epochs > 1:
                            packed = pack_mask(keep)  # 1 bit per entry, kept for the later passes
                            for j, r in enumerate(rows):
                                keeps[r] = packed[j]
                    else:
                        keep = torch.stack([unpack_mask(keeps[r], logits.shape[-1]) for r in rows])
                lp = token_logprobs(
                    logits, flat[rows], dist=cfg.logprob_dist, temperature=cfg.temperature, keep=keep
                )
                if pass_i == 0:
                    old_lp[rows] = lp.detach()
                    entropy += torch.tensor(scale_entropy(logits, self.model.begin_ends)) * len(rows) / N
                    if ref_lp is not None:
                        with torch.no_grad():
                            rl = self._forward_logits(tok, c, reference=True)
                            ref_lp[rows] = token_logprobs(
                                rl, flat[rows], dist=cfg.logprob_dist, temperature=cfg.temperature, keep=keep
                            )
                del logits
                out = grpo_loss(
                    lp,
                    old_lp[rows],
                    None if ref_lp is None else ref_lp[rows],
                    adv[rows],
                    tw,
                    policy_weights=None if pw is None else pw[rows],
                    beta=cfg.beta,
                    clip_eps=cfg.clip_eps,
                    kl_direction=cfg.kl_direction,
                    log_ratio_clamp=cfg.log_ratio_clamp,
                    kl_spike=cfg.kl_spike,
                    normaliser=N,
                )
                out.loss.backward()
                frac = len(rows) / N
                agg["policy"] += out.policy
                agg["kl"] += out.kl
                agg["clip_frac"] += out.clip_frac * frac
                agg["ratio_mean"] += out.ratio_mean * frac
                agg["ratio_max"] = max(agg["ratio_max"], out.ratio_max)
                kl_raw_all[rows] = out.kl_raw
                kept_all[rows] = out.kept
            gnorm = self._reduce_and_step()
        t_upd = time.perf_counter() - t0
        # 5. merges -------------------------------------------------------------------------------
        kl_raw = self._all_mean(
            torch.stack([torch.where(kept_all, kl_raw_all, 0).sum() / kept_all.sum().clamp_min(1)])
        )
        decision = self._merge_if_due(kl_raw)
        rec = {
            **self._reward_record(step, phase, stats),
            "adv_mean": adv.mean().item(),
            "adv_abs_mean": adv.abs().mean().item(),
            "kl_raw": kl_raw.item(),
            "kl_weighted": agg["kl"],
            "policy_loss": agg["policy"],
            "clip_frac": agg["clip_frac"],
            "ratio_mean": agg["ratio_mean"],
            "ratio_max": agg["ratio_max"],
            "dropped_rollouts": int((~kept_all).sum().item()),
            "grad_norm": gnorm,
            "merge": decision or "",
            "merges": len(self.controller.merges),
            "rollouts": ro.images.shape[0] * self.world,
            "rollout_s": t_roll,
            "reward_s": t_rew,
            "update_s": t_upd,
        }
        for si, e in enumerate(entropy.tolist()):
            rec[f"entropy/scale{si}"] = e
        return rec

    def _dpo_update(
        self, step, phase, tokens, cond_g, rewards, tw, stats, n_rollouts, t_roll, t_rew
    ) -> dict:  # fmt: skip
        """DPO's update (``objective="dpo"``): each condition's best and worst rollout by reward form a
        preference pair; sequence log-probs (token log-probs weighted like GRPO's, PANW summing to the
        number of tokens) under the policy and the LoRA-off reference; the DPO loss; one optimizer step.
        The loss couples a pair's two rollouts, so it is computed from no-grad sequence log-probs and its
        gradient applied through d(loss)/d(log-prob) per rollout, micro-batch by micro-batch: exactly
        DPO's gradient at these weights, with the memory of one micro-batch."""
        cfg = self.cfg
        t0 = time.perf_counter()
        G = cfg.group_size
        chosen, rejected = preference_pairs(rewards.view(-1, G).to(self.device))
        sel = torch.cat((chosen, rejected)).tolist()
        P = len(chosen)
        flat = torch.cat(tokens, dim=1)
        L = flat.shape[1]
        w = (tw / tw.sum()) * L  # a sequence's log-prob: its tokens', PANW-weighted, summing to L weights

        def seq_logp(rows: list[int], reference: bool = False) -> torch.Tensor:
            idx = torch.tensor(rows, device=self.device)
            logits = self._forward_logits(
                [t[rows] for t in tokens], cond_g.index_select(idx), reference=reference
            )
            keep = (
                keep_mask(logits, cfg.top_k, cfg.top_p, cfg.temperature)
                if cfg.logprob_dist == "sampled"
                else None
            )
            lp = token_logprobs(
                logits, flat[rows], dist=cfg.logprob_dist, temperature=cfg.temperature, keep=keep
            )
            return (w * lp).sum(1)

        mbs = [sel[a : a + cfg.micro_batch] for a in range(0, len(sel), cfg.micro_batch)]
        pol = torch.zeros(len(rewards), device=self.device)
        ref = torch.zeros_like(pol)
        stats_dpo = {"dpo_loss": 0.0, "dpo_margin": 0.0, "dpo_acc": 0.0}
        gnorm = 0.0
        self.optimizer.zero_grad(set_to_none=True)
        if P:
            with torch.no_grad():
                for rows in mbs:
                    pol[rows] = seq_logp(rows)
                    ref[rows] = seq_logp(rows, reference=True)
            s = pol.detach().clone().requires_grad_(True)
            loss, stats_dpo = dpo_loss(s[chosen], s[rejected], ref[chosen], ref[rejected], cfg.dpo_beta)
            (coef,) = torch.autograd.grad(loss, s)  # d loss / d sequence log-prob, per rollout
            for rows in mbs:
                (coef[rows] * seq_logp(rows)).sum().backward()
        if P or self.world > 1:  # every process joins the gradient all-reduce, with or without pairs
            gnorm = self._reduce_and_step()
        t_upd = time.perf_counter() - t0
        log_ratio = ((pol - ref)[sel].abs().mean() / L) if P else torch.zeros((), device=self.device)
        kl_raw = self._all_mean(log_ratio.reshape(1))
        decision = self._merge_if_due(kl_raw)
        return {
            **self._reward_record(step, phase, stats),
            "pairs": P,
            **stats_dpo,
            "kl_raw": kl_raw.item(),
            "grad_norm": gnorm,
            "merge": decision or "",
            "merges": len(self.controller.merges),
            "rollouts": n_rollouts * self.world,
            "rollout_s": t_roll,
            "reward_s": t_rew,
            "update_s": t_upd,
        }

    def _merge_if_due(self, kl_raw: torch.Tensor) -> str | None:
        """The reference controller's decision for this step's raw KL, carried out (a merge), or None."""
        decision = self.controller.decide(kl_raw.item())
        if decision is not None:
            self._merge(decision)
        return decision

    def _reward_record(self, step: int, phase: str, stats: torch.Tensor) -> dict:
        """The log fields every objective shares: the step and the rollouts' reward statistics."""
        return {
            "step": step + 1,
            "phase": phase,
            "reward_mean": stats[0].item(),
            "reward_std": stats[1].item(),
            "reward_min": stats[2].item(),
            "reward_max": stats[3].item(),
            "reward_ema": self.controller.ema,
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
            cond, rb, index = self._cond(mb)
            S = cfg.eval_samples
            seeds = [rollout_seed(cfg.seed + 99, 0, i, s) for i in index for s in range(S)]
            off = reference and self.ref_model is None  # LoRA mode: the reference is the adapter switched off
            policy = self.ref_model if reference and self.ref_model is not None else self.model
            with lora_disabled(self.model) if off else contextlib.nullcontext():
                ro = self._rollouts(cond.repeat_interleave(S), seeds, model=policy)
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
