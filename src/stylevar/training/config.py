"""The trainers' configurations: one dataclass each, validated on creation, with their help texts.

Each field carries its help text (:func:`stylevar.config.option`); ``stylevar train-tokenizer``,
``stylevar sft`` and ``stylevar grpo`` make their flags from these fields, so a default or a help text
lives in one place. The configs are stored in every training checkpoint (``to_dict``) and read back
with ``from_dict``. This module imports no torch (the command line builds ``--help`` from it).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Serialisable, option
from ..errors import ConfigError

SCHEDULES = ("lin0", "step", "cosine", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")
NONFINITE = ("stop", "skip")
RECON_LOSSES = ("l1", "l2", "l1+l2")
KL_DIRECTIONS = ("ref/policy", "policy/ref")
LOGPROB_DISTS = ("full", "sampled")
MP_MODES = ("off", "reward_grad", "error")
PARALLEL = ("ddp", "fsdp")
ENCODER_BN = ("frozen", "train")


def _one_of(value: object, allowed: tuple, name: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, allowed))}, not {value!r}")


# ============================================================================================ tokenizer
@dataclass
class TokenizerConfig(Serialisable):
    """Tokenizer (VQ-VAE) training hyper-parameters."""

    epochs: int = option(10, "passes over the training images (--max-steps overrides)")
    max_steps: int = option(0, "stop after this many optimizer steps (0 = by epochs)")
    batch: int = option(16, "images per process per forward (micro-batch)")
    grad_accum: int = option(1, "micro-batches per optimizer step; global batch = batch x accum x processes")
    lr: float = option(1e-4, "peak learning rate, AdamW")
    betas: tuple[float, float] = option((0.5, 0.9), "AdamW betas (VQGAN's choice for autoencoders)")
    weight_decay: float = option(0.0, "AdamW decay of conv weights (never biases, norms, the codebook)")
    schedule: str = option("cosine", "learning-rate schedule", choices=SCHEDULES)
    warmup_steps: int = option(-1, "linear warm-up steps (< 0: 2% of the steps)")
    grad_clip: float = option(1.0, "max global gradient norm (0 = off)")
    precision: str = option(
        "fp32", "encoder/decoder precision; the quantizer is always fp32", choices=PRECISIONS
    )
    channels_last: bool = option(
        False,
        "train the convolutions in channels-last layout (1.1x per step in bf16, 1.2x in fp32 on a Zen 4 CPU)",
    )
    recon_loss: str = option("l1", "reconstruction loss on [-1, 1] images", choices=RECON_LOSSES)
    vq_weight: float = option(1.0, "weight of the quantizer's codebook + beta x commitment loss")
    perceptual_weight: float = option(
        0.0, "weight of the VGG16 perceptual loss (0 = off; > 0 needs --vgg-weights, which sets 1 by default)"
    )
    dead_code_steps: int = option(0, "restart codes unused for N steps from batch features (0 = off)")
    seed: int = option(0, "seed of data order, split, flips, code restarts and initialisation")
    val_every: int = option(0, "validate every N steps (0 = at epoch ends only)")
    save_every: int = option(500, "write last.pt and a rolling step-N.pt every N steps (0 = at epoch ends)")
    keep_rolling: int = option(3, "rolling checkpoints kept")
    log_every: int = option(10, "write a metrics.jsonl record every N steps")
    num_workers: int = option(2, "data loader processes")
    on_nonfinite: str = option(
        "stop", "a NaN/inf loss: stop (save, exit 1) or skip the step", choices=NONFINITE
    )

    def __post_init__(self) -> None:
        _one_of(self.precision, PRECISIONS, "precision")
        _one_of(self.recon_loss, RECON_LOSSES, "recon_loss")
        _one_of(self.on_nonfinite, NONFINITE, "on_nonfinite")
        _one_of(self.schedule, SCHEDULES, "schedule")
        if self.batch < 1 or self.grad_accum < 1:
            raise ConfigError("batch and grad_accum must be >= 1")
        if self.epochs < 1 and self.max_steps < 1:
            raise ConfigError("set epochs >= 1 or max_steps >= 1")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if min(self.vq_weight, self.perceptual_weight, self.weight_decay, self.grad_clip) < 0:
            raise ConfigError("vq_weight, perceptual_weight, weight_decay and grad_clip must be >= 0")
        if self.dead_code_steps < 0 or self.save_every < 0 or self.val_every < 0:
            raise ConfigError("dead_code_steps, save_every and val_every must be >= 0")
        if self.keep_rolling < 1 or self.log_every < 1 or self.num_workers < 0:
            raise ConfigError("keep_rolling and log_every must be >= 1, num_workers >= 0")
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas}")


# ============================================================================================ SFT
@dataclass
class SFTConfig(Serialisable):
    """SFT hyper-parameters. Defaults follow the published run where it is stated (docs/upstream.md §5.3)."""

    epochs: int = option(11, "passes over the training set (--max-steps overrides)")
    max_steps: int = option(0, "stop after this many optimizer steps (0 = by epochs)")
    micro_batch: int = option(12, "images per process per forward")
    grad_accum: int = option(4, "micro-batches per optimizer step; global batch = micro x accum x processes")
    lr: float = option(0.0, "peak learning rate (0 = base-lr x global batch / 256, upstream's rule)")
    base_lr: float = option(5e-4, "learning rate per 256 images when --lr is 0 (upstream's tblr)")
    weight_decay: float = option(0.05, "AdamW weight decay (not on biases, norms, embeddings)")
    betas: tuple[float, float] = option((0.9, 0.95), "AdamW betas", flag=False)
    grad_clip: float = option(2.0, "max global gradient norm (0 = off)")
    schedule: str = option(
        "lin0",
        "lr schedule: lin0 (published), step (the paper's 1/5 drop at 60%), cosine, constant",
        choices=SCHEDULES,
    )
    warmup_steps: int = option(-1, "linear warm-up steps (< 0: 2% of the steps)")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy")
    scale_weight_power: float = option(
        0.0, "per-token loss weight (h*w)^-p per scale (0 = plain mean, 0.7 = PANW)"
    )
    precision: str = option(
        "fp32", "fp32, bf16 (autocast) or fp16 (autocast + grad scaler; not with --fsdp)", choices=PRECISIONS
    )
    alpha_jitter: float = option(0.0, "std of Gaussian noise on each sample's per-scale alpha")
    style_noise: float = option(
        0.0, "std of Gaussian noise on the style's VQ features and style tokens (StyleAR)"
    )
    seed: int = option(0, "seed of the data order, augmentations, model randomness and a new model's init")
    cache_tokens: bool = option(
        False,
        "tokenize each image file once and keep its tokens in memory (about 2 x L bytes per file); "
        "used only where no augmentation changes the images",
    )
    val_every: int = option(0, "validate every N steps (0 = at epoch ends)")
    save_every: int = option(200, "write checkpoints/last.pt and a rolling step-N.pt every N steps")
    keep_rolling: int = option(5, "rolling checkpoints kept")
    num_workers: int = option(2, "data-loading worker processes per training process")
    #: BatchNorm of the ResNet encoders: ``frozen`` (running statistics, the default: per-device
    #: batches of ~12 give noisy statistics and make results depend on the GPU count) or ``train``
    #: (batch statistics, as upstream)
    encoder_bn: str = option(
        "frozen",
        "ResNet BatchNorm: frozen running statistics, or train (batch statistics, as upstream)",
        choices=ENCODER_BN,
    )
    on_nonfinite: str = option(
        "stop", "a NaN/inf loss: stop (save, exit 1) or skip the step", choices=NONFINITE
    )
    log_every: int = option(10, "write metrics.jsonl every N steps")
    #: under a process group: ``ddp`` (replicated model) or ``fsdp`` (parameters, gradients and
    #: optimizer state sharded per transformer block; fp32 or bf16); the command line's --fsdp
    parallel: str = option(
        "ddp", "ddp (replicated model) or fsdp (sharded per block)", choices=PARALLEL, flag=False
    )

    def __post_init__(self) -> None:
        if self.parallel not in PARALLEL:
            raise ConfigError(f"parallel must be ddp or fsdp, not {self.parallel!r}")
        if self.parallel == "fsdp" and self.precision == "fp16":
            raise ConfigError("precision fp16 is not supported with FSDP; use bf16 or fp32")
        _one_of(self.precision, PRECISIONS, "precision")
        _one_of(self.on_nonfinite, NONFINITE, "on_nonfinite")
        _one_of(self.encoder_bn, ENCODER_BN, "encoder_bn")
        _one_of(self.schedule, SCHEDULES, "schedule")
        if self.micro_batch < 1 or self.grad_accum < 1:
            raise ConfigError("micro_batch and grad_accum must be >= 1")
        self.betas = tuple(self.betas)  # type: ignore[assignment]


# ============================================================================================ GRPO
DEFAULT_LORA_TARGETS = ("attn.mat_qkv_guide", "attn.mat_qkv_target", "attn.proj", "ffn.fc1", "ffn.fc2")


@dataclass
class GRPOConfig(Serialisable):
    """GRPO hyper-parameters. Defaults: the paper / the published v5 run (docs/upstream.md §6)."""

    # --- steps and data
    epochs: int = option(3, "passes over the training conditions (--max-steps overrides)")
    max_steps: int = option(0, "stop after this many steps (0 = by epochs)")
    batch_size: int = option(16, "conditions (content, style, target) per process per step")
    group_size: int = option(16, "G rollouts per condition")
    micro_batch: int = option(16, "rollouts per teacher-forced forward/backward")
    rollout_batch: int = option(0, "rollouts per generate call (0 = all of a step's)")
    ppo_epochs: int = option(1, "optimisation passes per rollout batch (> 1 lets the PPO clip act)")
    num_workers: int = option(2, "data-loading processes")
    # --- optimizer (LoRA parameters, or all trainable ones without LoRA)
    lr: float = option(1e-5, "AdamW learning rate (constant)")
    weight_decay: float = option(0.01, "AdamW weight decay")
    betas: tuple[float, float] = option((0.9, 0.95), "AdamW betas", flag=False)
    grad_clip: float = option(1.0, "max gradient norm (0 = off)")
    # --- objective
    objective: str = option(
        "grpo",
        "grpo, or dpo: each condition's best and worst rollout by reward as a preference pair, DPO's loss "
        "against the LoRA-off reference (stylevar dpo)",
        choices=("grpo", "dpo"),
    )
    dpo_beta: float = option(0.1, "DPO: beta of the preference logit (sequence log-ratios)")
    beta: float = option(0.1, "KL coefficient")
    kl_direction: str = option(
        "ref/policy",
        "k3 estimator direction: ref/policy (DeepSeek) or policy/ref (published)",
        choices=KL_DIRECTIONS,
    )
    clip_eps: float = option(0.2, "PPO clip range")
    log_ratio_clamp: float = option(10.0, "clamp of log-ratios inside the ratio and the KL", flag=False)
    std_floor: float = option(0.01, "advantages divide by max(group std, floor)")
    panw_gamma: float = option(0.7, "PANW exponent: token weight (h*w)^-gamma (0 = plain mean)")
    kl_spike: float = option(5.0, "drop a rollout whose weighted raw KL exceeds this (0 = never)")
    logprob_dist: str = option(
        "full",
        "score the full softmax (paper) or the sampled (top-k/top-p, temperature) distribution",
        choices=LOGPROB_DISTS,
    )
    # --- sampling of rollouts
    top_k: int = option(900, "rollout top-k (0 = off)")
    top_p: float = option(0.96, "rollout top-p (0 = off)")
    temperature: float = option(1.0, "rollout temperature")
    # --- LoRA (paper: r 256, alpha/r 2 on guide/target QKV, proj, fc1, fc2)
    lora: bool = option(
        True, "LoRA adapters (False: train all transformer weights; --full-finetune)", flag=False
    )
    lora_rank: int = option(256, "LoRA rank")
    lora_alpha: float = option(512.0, "LoRA alpha (scaling alpha/rank)")
    lora_targets: tuple[str, ...] = option(DEFAULT_LORA_TARGETS, "modules wrapped in every block", flag=False)
    # --- iterative reference update (docs/upstream.md §6.5; merge_cooldown 0 = off)
    ema_decay: float = option(0.99, "reward EMA decay")
    merge_cooldown: int = option(300, "steps before a normal merge (0 = no iterative reference update)")
    merge_min_gain: float = option(0.05, "reward-EMA gain over the last merge needed to merge")
    merge_patience: int = option(50, "steps without a new EMA peak before merging")
    merge_kl_threshold: float = option(2.0, "emergency merge above this raw KL (0 = off)")
    merge_emergency_cooldown: int = option(50, "steps between emergency merges")
    restore_peak: bool = option(
        True, "merge the peak's LoRA snapshot (--no-restore-peak: the current one)", flag=False
    )
    # --- VAR RL Done Right
    vmr: bool = option(False, "Value as Middle Return (--vmr)", flag=False)
    vmr_scale: int = option(-1, "VMR: first suffix scale index (-1 = the middle resolution)")
    vmr_k: int = option(4, "VMR: continuations per prefix")
    vmr_prefix_updates: int = option(3, "VMR: prefix steps per suffix step")
    vmr_tau: float = option(
        0.0, "VMR: 0 = mean continuation reward, > 0 = soft value tau log mean exp(R/tau)"
    )
    mask_propagation: str = option(
        "off", "off, reward_grad (|dR/dx|) or error (|x - target|) token weighting", choices=MP_MODES
    )
    mp_mix: float = option(0.5, "Mask Propagation: multiplier = (1 - mix) + mix * relevance")
    # --- numerics, runs
    precision: str = option(
        "fp32", "fp32 (paper) or bf16 autocast for rollouts and forward", choices=("fp32", "bf16")
    )
    cuda_graphs: bool = option(False, "rollouts replay per-scale CUDA graphs (--cuda-graphs)", flag=False)
    seed: int = option(42, "seed of the data order, rollouts and LoRA init")
    save_every: int = option(
        100, "checkpoints/last.pt and a rolling step-N.pt every N steps (0 = at the end)"
    )
    keep_rolling: int = option(5, "rolling checkpoints kept")
    log_every: int = option(1, "metrics.jsonl every N steps")
    eval_every: int = option(0, "held-out reward every N steps (0 = at start and end)")
    eval_pairs: int = option(32, "held-out conditions in the evaluation")
    eval_samples: int = option(2, "samples per held-out condition")

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
            (self.objective in ("grpo", "dpo"), "objective must be grpo or dpo"),
            (not (self.objective == "dpo" and self.vmr), "DPO ranks whole rollouts: leave --vmr out"),
            (self.dpo_beta > 0, "dpo_beta must be > 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
