"""GRPO reinforcement fine-tuning (upstream-spec §5, the paper's stage 2), batched and done right.

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
   and clipping acts from the second pass on (§7 B3);
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

Runs: checkpoints ``run_dir/checkpoints/{last,best}.pt`` and rolling ``step-<N>.pt`` (atomic,
``weights_only`` loading) with LoRA (and, after merges, the merged base weights), optimizer,
controller state with its snapshot, data position and RNG states, so a resumed run continues
exactly; ``metrics.jsonl`` + TensorBoard; SIGTERM/SIGINT save and stop. ``run_dir/final`` is the
merged model in our format; ``run_dir/final_lora`` the adapter (when no merge changed the base).
Under ``torchrun`` each rank rolls out its own conditions; gradients and statistics are averaged.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from ..checkpoints import save_pretrained
from ..errors import CheckpointError, ConfigError
from ..models import VQVAE, StyleVAR
from ..models.lora import (
    LoRAConfig,
    apply_lora,
    load_lora_state_dict,
    lora_disabled,
    lora_state_dict,
    merge_lora_,
    restore_lora,
    save_lora,
    snapshot_lora,
    unload_lora,
)
from ..models.ops import autocast_to, no_autocast
from ..models.stylevar import Conditioning
from .grpo_loss import (
    KL_DIRECTIONS,
    LOGPROB_DISTS,
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
from .rewards import RewardBatch, RewardFn
from .runs import (
    RunLogger,
    StopSignals,
    capture_rng,
    epoch_permutation,
    load_training_checkpoint,
    restore_rng,
    resume_path,
    save_checkpoint,
    world,
)

logger = logging.getLogger(__name__)

MP_MODES = ("off", "reward_grad", "error")
CKPT_FORMAT = "stylevar-grpo-1"


# ============================================================================================ config
@dataclass
class GRPOConfig:
    """GRPO hyper-parameters. Defaults: the paper / published v5 run (upstream-spec §5.5 table)."""

    # --- steps and data
    epochs: int = 3  #: passes over the training conditions (``max_steps`` > 0 overrides)
    max_steps: int = 0  #: stop after this many optimizer steps (0 = by epochs)
    batch_size: int = 16  #: conditions (content, style, target) per process per step
    group_size: int = 16  #: G rollouts per condition
    micro_batch: int = 16  #: rollouts per teacher-forced forward/backward
    rollout_batch: int = 0  #: rollouts per generate call (0 = all of the step's at once)
    ppo_epochs: int = 1  #: optimisation passes per rollout batch (> 1 lets the clip act, §7 B3)
    num_workers: int = 2  #: data-loading processes
    # --- optimizer (LoRA parameters, or all trainable ones without LoRA)
    lr: float = 1e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  #: max gradient norm (0 = off)
    # --- objective
    beta: float = 0.1  #: KL coefficient
    kl_direction: str = "ref/policy"  #: k3 with ref/pi (DeepSeek, default) or pi/ref (published, §7 B5)
    clip_eps: float = 0.2  #: PPO clip range
    log_ratio_clamp: float = 10.0  #: clamp of log-ratios inside the ratio and the KL
    std_floor: float = 0.01  #: advantages divide by max(group std, floor)
    panw_gamma: float = 0.7  #: PANW exponent: token weight (h*w)^-gamma (0 = plain mean)
    kl_spike: float = 5.0  #: drop a rollout whose weighted raw KL exceeds this (0 = never)
    logprob_dist: str = "full"  #: full softmax (paper) or the ``sampled`` truncated distribution
    # --- sampling of rollouts
    top_k: int = 900
    top_p: float = 0.96
    temperature: float = 1.0
    # --- LoRA (paper: r 256, alpha/r 2 on guide/target QKV, proj, fc1, fc2)
    lora: bool = True  #: False: train all transformer parameters against a frozen copy
    lora_rank: int = 256
    lora_alpha: float = 512.0
    lora_targets: tuple[str, ...] = (
        "attn.mat_qkv_guide",
        "attn.mat_qkv_target",
        "attn.proj",
        "ffn.fc1",
        "ffn.fc2",
    )
    # --- iterative reference update (§5.5; merge_cooldown 0 = off)
    ema_decay: float = 0.99  #: reward EMA: ema = d * ema + (1 - d) * mean reward
    merge_cooldown: int = 300  #: steps since the last merge before a normal merge
    merge_min_gain: float = 0.05  #: peak EMA - EMA at the last merge needed to merge
    merge_patience: int = 50  #: steps without a new peak before merging
    merge_kl_threshold: float = 2.0  #: emergency merge when the raw KL exceeds this (0 = off)
    merge_emergency_cooldown: int = 50
    restore_peak: bool = True  #: merge the peak's LoRA snapshot rather than the current one
    # --- VAR RL Done Right
    vmr: bool = False  #: Value as Middle Return
    vmr_scale: int = -1  #: m: index of the first suffix scale (-1: the middle resolution)
    vmr_k: int = 4  #: continuations per prefix for its value
    vmr_prefix_updates: int = 3  #: prefix steps per suffix step
    vmr_tau: float = 0.0  #: 0: value = mean continuation reward; > 0: tau log mean exp(R / tau)
    mask_propagation: str = "off"  #: off, reward_grad (|dR/dx|) or error (|x - target|)
    mp_mix: float = 0.5  #: token multiplier = (1 - mix) + mix * relevance
    # --- numerics, runs
    precision: str = "fp32"  #: fp32 (paper) or bf16 (rollouts and forward under bf16 autocast)
    cuda_graphs: bool = False  #: rollouts replay per-scale CUDA graphs (GPU)
    seed: int = 42
    save_every: int = 100  #: write last.pt and a rolling step-<N>.pt every N steps (0 = at the end)
    keep_rolling: int = 5
    log_every: int = 1
    eval_every: int = 0  #: held-out reward every N steps (0 = at start and end only)
    eval_pairs: int = 32  #: held-out conditions evaluated (first N of the validation set)
    eval_samples: int = 2  #: samples per held-out condition (fixed seeds)

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        self.lora_targets = tuple(self.lora_targets)
        checks = [
            (self.kl_direction in KL_DIRECTIONS, f"kl_direction must be one of {KL_DIRECTIONS}"),
            (self.logprob_dist in LOGPROB_DISTS, f"logprob_dist must be one of {LOGPROB_DISTS}"),
            (self.mask_propagation in MP_MODES, f"mask_propagation must be one of {MP_MODES}"),
            (self.precision in ("fp32", "bf16"), "precision must be fp32 or bf16"),
            (self.group_size >= 2, "group_size must be >= 2 (advantages are relative within a group)"),
            (
                min(self.batch_size, self.micro_batch, self.ppo_epochs) >= 1,
                "batch sizes and ppo_epochs must be >= 1",
            ),
            (self.vmr_k >= 1 and self.vmr_prefix_updates >= 1, "vmr_k and vmr_prefix_updates must be >= 1"),
            (0.0 <= self.mp_mix <= 1.0, "mp_mix must lie in [0, 1]"),
            (0.0 <= self.ema_decay < 1.0, "ema_decay must lie in [0, 1)"),
            (self.lr > 0 and self.beta >= 0 and self.clip_eps > 0, "lr and clip_eps must be > 0, beta >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def middle_scale(patch_nums: Sequence[int]) -> int:
    """Default VMR split: the first scale whose side reaches half the last side (16 -> 8: index 6)."""
    half = patch_nums[-1] / 2
    return next(i for i, pn in enumerate(patch_nums) if pn >= half)


# ============================================================================================ rollouts
@dataclass
class Rollouts:
    """Sampled stylizations: tokens per scale (N, pn*pn) int64, images (N, 3, R, R) in [0, 1]."""

    tokens: list[torch.Tensor]
    images: torch.Tensor
    seeds: list[int]

    @property
    def flat(self) -> torch.Tensor:
        """All scales' tokens concatenated, (N, L)."""
        return torch.cat(self.tokens, dim=1)


def rollout_seed(seed: int, step: int, index: int, g: int) -> int:
    """Seed of rollout ``g`` of dataset item ``index`` at ``step``: independent of batching and ranks."""
    return (seed * 1_000_003 + step * 7_919_993 + index * 10_007 + g) % (2**31 - 1)


@torch.no_grad()
def generate_rollouts(
    model: StyleVAR,
    vae: VQVAE,
    cond: Conditioning,
    seeds: Sequence[int],
    *,
    top_k: int = 900,
    top_p: float = 0.96,
    temperature: float = 1.0,
    chunk: int = 0,
    serial: bool = False,
    dtype: torch.dtype | None = None,
    cuda_graphs: bool = False,
    prefix: Sequence[torch.Tensor] | None = None,
    num_scales: int | None = None,
) -> Rollouts:
    """Sample one rollout per row of ``cond`` (N rows: repeat a condition for a group) with ``seeds[i]``.

    Batched (default): ``generate`` runs on ``chunk`` rows at a time (0 = all N); every row has its
    own generator, so the tokens equal those of ``serial=True`` (one row per call, the published
    loop) up to float rounding. ``prefix``/``num_scales``: see :meth:`StyleVAR.generate`.
    """
    N = cond.batch_size
    if len(seeds) != N:
        raise ValueError(f"{len(seeds)} seeds for {N} rollouts")
    step = 1 if serial else (chunk or N)
    toks: list[list[torch.Tensor]] = []
    imgs: list[torch.Tensor] = []
    for a in range(0, N, step):
        rows = list(range(a, min(N, a + step)))
        sub = cond.index_select(rows) if len(rows) != N else cond
        out = model.generate(
            vae,
            sub,
            seed=[int(seeds[i]) for i in rows],
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            dtype=dtype,
            cuda_graphs=cuda_graphs,
            prefix=None if prefix is None else [p[a : a + len(rows)] for p in prefix],
            num_scales=num_scales,
        )
        toks.append(out.tokens)
        imgs.append(out.images)
    tokens = [torch.cat([t[si] for t in toks]) for si in range(len(toks[0]))]
    return Rollouts(tokens, torch.cat(imgs), [int(s) for s in seeds])


# ============================================================================================ reference update
@dataclass
class ReferenceController:
    """Iterative reference update (upstream-spec §5.5): reward EMA, peak snapshot, normal and emergency merges.

    Call :meth:`observe` with the step's mean reward *before* the optimizer step (a new peak
    snapshots the weights that produced those rollouts), then :meth:`decide` with the step's raw
    KL after it. Its state (with the snapshot) goes into checkpoints, so a resumed run merges
    exactly when an uninterrupted one would (upstream forgot it, §7).
    """

    cooldown: int = 300
    min_gain: float = 0.05
    patience: int = 50
    kl_threshold: float = 2.0
    emergency_cooldown: int = 50
    ema_decay: float = 0.99
    ema: float | None = None
    ref_ema: float | None = None
    peak: float = -math.inf
    steps_since_merge: int = 0
    steps_at_peak: int = 0
    merges: list[dict] = field(default_factory=list)
    snapshot: dict | None = None  #: LoRA (A, B) per module at the peak

    @property
    def enabled(self) -> bool:
        return self.cooldown > 0

    def observe(self, mean_reward: float, take_snapshot: Callable[[], dict] | None = None) -> bool:
        """Update the EMA and the peak; True when this is a new peak (snapshot taken)."""
        self.ema = (
            mean_reward
            if self.ema is None
            else self.ema_decay * self.ema + (1 - self.ema_decay) * mean_reward
        )
        if self.ref_ema is None:
            self.ref_ema = self.ema
        self.steps_since_merge += 1
        if self.ema > self.peak:
            self.peak = self.ema
            self.steps_at_peak = 0
            if self.enabled and take_snapshot is not None:
                self.snapshot = take_snapshot()
            return True
        self.steps_at_peak += 1
        return False

    def decide(self, raw_kl: float) -> str | None:
        """``"merge"``, ``"emergency"`` or None for this step."""
        if not self.enabled or self.ref_ema is None:
            return None
        if (
            self.steps_since_merge >= self.cooldown
            and self.peak - self.ref_ema >= self.min_gain
            and self.steps_at_peak >= self.patience
        ):
            return "merge"
        if (
            self.kl_threshold > 0
            and raw_kl > self.kl_threshold
            and self.steps_since_merge >= self.emergency_cooldown
            and self.snapshot is not None
        ):
            return "emergency"
        return None

    def merged(self, step: int, kind: str) -> dict:
        """Record a merge: the peak becomes the new baseline; counters and snapshot reset."""
        event = {
            "step": step,
            "kind": kind,
            "ema": self.ema,
            "ref_ema_before": self.ref_ema,
            "peak": self.peak,
        }
        self.merges.append(event)
        self.ref_ema = self.peak if math.isfinite(self.peak) else self.ema
        self.peak = -math.inf
        self.steps_since_merge = 0
        self.steps_at_peak = 0
        self.snapshot = None
        return event

    def state_dict(self) -> dict:
        return {
            k: getattr(self, k)
            for k in ("ema", "ref_ema", "peak", "steps_since_merge", "steps_at_peak", "merges", "snapshot")
        }

    def load_state_dict(self, d: dict) -> None:
        for k, v in d.items():
            setattr(self, k, v)


@dataclass
class GRPOState:
    epoch: int = 0
    batch: int = 0  #: global batches of this epoch consumed
    step: int = 0
    best_eval: float = -math.inf
    history: list[dict] = field(default_factory=list)


# ============================================================================================ trainer
class GRPOTrainer:
    """GRPO fine-tuning of a :class:`StyleVAR` (usually an SFT checkpoint) against ``reward_fn``."""

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
        self.cfg = cfg = config or GRPOConfig()
        self.device = torch.device(device)
        self.rank, self.world = world()
        self.model = model.to(self.device).eval()
        self.vae = vae.to(self.device).eval().requires_grad_(False)
        self.reward_fn = reward_fn
        self.train_set, self.val_set = train_set, val_set
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.info = dict(info or {})
        self.global_batch = cfg.batch_size * self.world
        self.batches_per_epoch = len(train_set) // self.global_batch
        if self.batches_per_epoch < 1:
            raise ConfigError(
                f"the training set has {len(train_set)} conditions, fewer than one global batch "
                f"({self.global_batch}); lower batch_size"
            )
        self.total_steps = cfg.max_steps or cfg.epochs * self.batches_per_epoch
        pns = model.patch_nums
        self.m = (middle_scale(pns) if cfg.vmr_scale < 0 else cfg.vmr_scale) if cfg.vmr else len(pns)
        if cfg.vmr and not 1 <= self.m < len(pns):
            raise ConfigError(f"vmr_scale must lie in [1, {len(pns) - 1}], got {self.m}")
        self.panw = panw_weights(pns, cfg.panw_gamma).to(self.device)
        self.dtype = torch.bfloat16 if cfg.precision == "bf16" else None

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
        self.state = GRPOState()
        self.log = RunLogger(self.run_dir, self.rank)
        if self.rank == 0:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)

    def _new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.params,
            lr=self.cfg.lr,
            betas=self.cfg.betas,
            weight_decay=self.cfg.weight_decay,
            fused=True if self.device.type == "cuda" else None,
        )

    # ------------------------------------------------------------------------------ data
    def _batches(self, epoch: int, start: int) -> Iterator[dict]:
        """This process's conditions of global batches ``start..`` of ``epoch``."""
        cfg = self.cfg
        order = epoch_permutation(len(self.train_set), cfg.seed, epoch)
        indices: list[int] = []
        for b in range(start, self.batches_per_epoch):
            chunk = order[b * self.global_batch : (b + 1) * self.global_batch]
            indices.extend(chunk[self.rank * cfg.batch_size : (self.rank + 1) * cfg.batch_size])
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        loader = DataLoader(
            torch.utils.data.Subset(self.train_set, indices),
            batch_size=cfg.batch_size,
            shuffle=False,
            num_workers=cfg.num_workers,
            persistent_workers=False,
        )
        yield from loader

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
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            temperature=cfg.temperature,
            chunk=cfg.rollout_batch,
            dtype=self.dtype,
            cuda_graphs=cfg.cuda_graphs,
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
    def train_step(self, mb: dict) -> dict:
        """One GRPO step on this process's conditions ``mb``; returns the step's statistics."""
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
        decision = self.controller.decide(kl_raw.item())
        if decision is not None:
            self._merge(decision)
        rec = {
            "step": step + 1,
            "phase": phase,
            "reward_mean": stats[0].item(),
            "reward_std": stats[1].item(),
            "reward_min": stats[2].item(),
            "reward_max": stats[3].item(),
            "reward_ema": self.controller.ema,
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
        self._refresh_runners()
        return float(gnorm)

    def _refresh_runners(self) -> None:
        for runner in self.model.__dict__.get("_static_runners", {}).values():
            runner.refresh_weights()

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
        self._refresh_runners()
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
        loader = DataLoader(torch.utils.data.Subset(self.val_set, range(n)), batch_size=cfg.batch_size)
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

    # ------------------------------------------------------------------------------ checkpoints
    def _checkpoint(self) -> dict:
        if self.cfg.lora:
            model_sd = lora_state_dict(self.model)
            base = None
            if self.controller.merges:  # the wrapped modules' base weights changed
                base = {k: v for k, v in self.model.state_dict().items() if ".base_" in k}
        else:
            model_sd = {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}
            base = self.ref_model.state_dict() if self.controller.merges else None  # type: ignore[union-attr]
        return {
            "format": CKPT_FORMAT,
            "model": model_sd,
            "base": base,
            "optimizer": self.optimizer.state_dict(),
            "controller": self.controller.state_dict(),
            "state": dataclasses.asdict(self.state),
            "rng": capture_rng(),
            "config": {
                "grpo": self.cfg.to_dict(),
                "stylevar": self.model.config.to_dict(),
                "vqvae": self.vae.config.to_dict(),
                "world_size": self.world,
                "info": self.info,
            },
        }

    def save(self, kind: str = "last") -> Path | None:
        if self.rank != 0:
            return None
        return save_checkpoint(
            self.ckpt_dir, self._checkpoint(), kind, step=self.state.step, keep_rolling=self.cfg.keep_rolling
        )

    def resume(self, path: str | os.PathLike | None = None) -> bool:
        """Continue from ``path`` (default ``checkpoints/last.pt`` when present); False when there is none.

        The trainer must have been built on the same starting model (the run's ``--init``).
        """
        p = resume_path(path, self.ckpt_dir)
        if p is None:
            return False
        ck = load_training_checkpoint(p, CKPT_FORMAT, "GRPO training")
        if ck["config"]["stylevar"] != self.model.config.to_dict():
            raise CheckpointError(
                f"{p}: written for another model configuration; resume with the same --init"
            )
        saved = ck["config"]["grpo"]
        if bool(saved.get("lora")) != self.cfg.lora or (
            self.cfg.lora
            and (saved["lora_rank"], saved["lora_alpha"]) != (self.cfg.lora_rank, self.cfg.lora_alpha)
        ):
            raise CheckpointError(f"{p}: written with other LoRA settings; resume with the same flags")
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
        self.state = GRPOState(**ck["state"])
        restore_rng(ck["rng"])
        self._refresh_runners()
        logger.info("resumed from %s at step %d", p, self.state.step)
        return True

    def export(self) -> Path:
        """Write the merged model (our format) to ``run_dir/final``; the adapter to ``final_lora`` when no
        merge changed the base. Returns ``run_dir/final``."""
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

    # ------------------------------------------------------------------------------ loop
    def fit(self, *, progress: bool = True, stop_after: int | None = None) -> GRPOState:
        """Train to the end (or ``stop_after`` more steps), saving, logging and evaluating as configured."""
        cfg = self.cfg
        bar = None
        if progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=self.state.step, desc="grpo", dynamic_ncols=True)
        if self.state.step == 0 and not self.state.history and self.val_set is not None:
            ev = self.evaluate()
            if ev:
                self._log({"step": 0, **ev})
        done = 0
        try:
            with StopSignals() as stop:
                while self.state.step < self.total_steps:
                    for mb in self._batches(self.state.epoch, self.state.batch):
                        rec = self.train_step(mb)
                        self.state.batch += 1
                        self.state.step += 1
                        rec["epoch"] = self.state.epoch
                        done += 1
                        if self.state.step % cfg.log_every == 0 or rec["merge"]:
                            self._log(rec)
                        if bar is not None:
                            bar.update(1)
                            bar.set_postfix(
                                R=f"{rec['reward_mean']:.4f}", kl=f"{rec['kl_raw']:.4f}", merges=rec["merges"]
                            )
                        final = self.state.step >= self.total_steps
                        if cfg.eval_every and self.state.step % cfg.eval_every == 0 and not final:
                            self._eval_and_keep_best()
                        if cfg.save_every and self.state.step % cfg.save_every == 0:
                            self.save("last")
                            self.save("rolling")
                        if self._stop_requested(stop):
                            self.save("last")
                            logger.warning("signal: saved %s and stopped", self.ckpt_dir / "last.pt")
                            return self.state
                        if final or (stop_after is not None and done >= stop_after):
                            break
                    if self.state.batch >= self.batches_per_epoch:
                        self.state.epoch += 1
                        self.state.batch = 0
                    if stop_after is not None and done >= stop_after and self.state.step < self.total_steps:
                        self.save("last")
                        return self.state
        finally:
            if bar is not None:
                bar.close()
        self._eval_and_keep_best()
        self.save("last")
        if self.rank == 0:
            self.export()
        self.log.close()
        return self.state

    def _stop_requested(self, stop: StopSignals) -> bool:
        flag = stop.received is not None
        if self.world > 1:
            t = torch.tensor([float(flag)], device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = t.item() > 0
        return flag

    def _eval_and_keep_best(self) -> None:
        ev = self.evaluate()
        if not ev:
            return
        self._log({"step": self.state.step, **ev})
        if ev["eval_reward"] > self.state.best_eval:
            self.state.best_eval = ev["eval_reward"]
            self.save("best")

    def _log(self, rec: dict) -> None:
        if self.rank == 0:
            self.state.history.append(rec)
            self.log.log(rec)
