"""GRPO reinforcement fine-tuning (docs/upstream.md §6, the paper's stage 2), batched and done right.

One optimizer step (per process) is two hooks: :meth:`GRPOTrainer.generate_and_score` (steps 1-3,
which :class:`~stylevar.training.dpo.DPOTrainer` shares) and :meth:`GRPOTrainer.update` (4-6, GRPO's own):

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
    LossOutput,
    group_advantages,
    grpo_loss,
    keep_mask,
    pack_mask,
    panw_weights,
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
    "PassStats",
    "ReferenceController",
    "Rollouts",
    "ScoredRollouts",
    "generate_rollouts",
    "middle_scale",
    "rollout_seed",
]


@dataclass
class GRPOState(RunState):
    best_eval: float = -math.inf
    history: list[dict] = field(default_factory=list)


@dataclass
class ScoredRollouts:
    """One step's rollouts and rewards on this process: what an objective's :meth:`~GRPOTrainer.update` uses.

    ``N`` sequences are optimised, condition-major, ``group_size`` per condition (in a VMR prefix step,
    one per prefix: its continuations are only scored).
    """

    step: int
    phase: str  # "full", or VMR's "prefix" / "suffix"
    cond: Conditioning  # N rows: each sequence's condition
    tokens: list[torch.Tensor]  # per scale (N, pn*pn): the sampled token indices
    returns: torch.Tensor  # (N,) each sequence's reward (a prefix's: VMR's value of its continuations)
    token_weights: torch.Tensor  # (L,) PANW over the phase's scales, summing to 1
    policy_weights: torch.Tensor | None  # (N, L) Mask Propagation's weights of the policy term, or None
    reward_stats: torch.Tensor  # (4,) mean, std, min, max of all rollouts' rewards, over processes
    num_rollouts: int  # images generated on this process (G*K per condition in a prefix step)
    rollout_s: float
    reward_s: float


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
    objective = "grpo"  # the GRPOConfig.objective this trainer optimises

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
                "(dpo: stylevar.training.dpo.DPOTrainer)"
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

    def _token_weights(self, phase: str) -> torch.Tensor:
        """PANW's per-token weights (L,) over the scales this phase optimises (VMR), summing to 1."""
        pns = self.model.patch_nums
        if phase == "prefix":
            tw = self.panw * scale_mask(pns, range(self.m)).to(self.device)
        elif phase == "suffix":
            tw = self.panw * scale_mask(pns, range(self.m, len(pns))).to(self.device)
        else:
            tw = self.panw
        return tw / tw.sum()

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

    # ------------------------------------------------------------------------------ one step
    def train_step(self, group: list[dict]) -> dict:
        """One step on this process's conditions (``group``: one batch of them); the step's statistics."""
        (mb,) = group
        return self.update(self.generate_and_score(mb))

    def generate_and_score(self, mb: dict) -> ScoredRollouts:
        """Steps 1-3 of the module docstring: rollouts of this process's conditions, their rewards (VMR:
        the prefixes' values), this phase's token weights; the reference controller sees the mean reward."""
        cfg = self.cfg
        step = self.state.step
        phase = self._phase(step)
        G, K = cfg.group_size, cfg.vmr_k
        t0 = time.perf_counter()
        cond, rb, index = self._cond(mb)
        B = cond.batch_size
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
        t0 = time.perf_counter()
        rewards, relevance = self._rewards(ro.images, rb_roll)
        tokens, returns = ro.tokens, rewards
        if phase == "prefix":  # one sequence per prefix (prefix log-probs ignore the suffix), valued by VMR
            returns = soft_value(rewards.view(B * G, K), cfg.vmr_tau)
            tokens = [t[::K] for t in ro.tokens]
            if relevance is not None:
                relevance = relevance.view(B * G, K, *relevance.shape[1:]).mean(1)
        tw = self._token_weights(phase)
        pw = None
        if relevance is not None:
            pw = tw * relevance_token_weights(relevance, self.model.patch_nums, cfg.mp_mix).to(self.device)
        t_rew = time.perf_counter() - t0
        # the reference controller: EMA and peak (snapshot = the weights that made these rollouts)
        stats = self._all_mean(
            torch.stack([rewards.mean(), rewards.std(), rewards.min(), rewards.max()]).to(self.device)
        )
        take = self._snapshot if cfg.restore_peak else None
        self.controller.observe(stats[0].item(), take)
        return ScoredRollouts(
            step=step,
            phase=phase,
            cond=cond_g,
            tokens=tokens,
            returns=returns,
            token_weights=tw,
            policy_weights=pw,
            reward_stats=stats,
            num_rollouts=ro.images.shape[0],
            rollout_s=t_roll,
            reward_s=t_rew,
        )

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
