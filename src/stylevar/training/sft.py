"""Supervised fine-tuning on (content, style, target) triplets (upstream-spec §4.2-4.3), done so runs survive.

One optimizer step = ``grad_accum`` micro-batches per process; the global batch is
``micro_batch * grad_accum * world_size``. The data order is a seeded permutation per epoch, cut
into global batches, each process taking its slice, so the order does not depend on the number
of processes or on interruptions: a resumed run reads exactly the batches an uninterrupted one
would, with the same augmentations (:class:`~stylevar.data.TripletDataset` seeds them by
(seed, epoch, index)) and the same model randomness (RNG states are checkpointed).

Checkpoints (``run_dir/checkpoints``) are written atomically at optimizer-step boundaries:
``last.pt`` (every ``save_every`` steps, at each epoch end, on SIGTERM/SIGINT and at the end),
``best.pt`` (lowest validation loss) and ``step-<N>.pt`` (rolling, the newest ``keep_rolling``).
They hold the model, optimizer, grad scaler, position, RNG states and configs, and load with
``torch.load(weights_only=True)``. The finished model is also exported in our format to
``run_dir/final`` (config.json + safetensors, VQ-VAE included).

Parallelism, when a process group is initialised (``torchrun``): ``SFTConfig.parallel="ddp"``
(default) replicates the model with DDP; ``"fsdp"`` shards it with FSDP2, one unit per
transformer block plus the root (:mod:`stylevar.training.distributed`), for the large depths.
Both give the parameters of one process with accumulation on the same global batch; FSDP
checkpoints are gathered to the same full, unsharded format on rank 0, so a run resumes with
another world size, with or without FSDP (the data position is exact when
``micro_batch * grad_accum * world_size`` stays the same).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from ..checkpoints import build_stylevar, save_pretrained
from ..errors import CheckpointError, ConfigError, StyleVARError
from ..models import VQVAE, StyleVAR
from ..models.ops import autocast_to, no_autocast
from . import distributed as D
from .runs import (
    capture_rng,
    epoch_permutation,
    load_training_checkpoint,
    main_thread,
    restore_rng,
    resume_path,
    save_checkpoint,
    world,
)
from .schedule import lr_multiplier, param_groups, scale_token_weights, set_lr

logger = logging.getLogger(__name__)


class NonFiniteLossError(StyleVARError):
    """Training stopped on a NaN/inf loss (``on_nonfinite="stop"``); the last good state is saved."""


@dataclass
class SFTConfig:
    """SFT hyper-parameters. Defaults follow the published run where it is stated (§4.3)."""

    epochs: int = 11  #: passes over the training set (``max_steps`` > 0 overrides)
    max_steps: int = 0  #: stop after this many optimizer steps (0 = by epochs)
    micro_batch: int = 12  #: images per process per forward
    grad_accum: int = 4  #: micro-batches per optimizer step
    lr: float = 0.0  #: peak learning rate; 0 = base_lr * global_batch / 256 (upstream's rule)
    base_lr: float = 5e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 2.0  #: max global grad norm (0 = off)
    schedule: str = "lin0"  #: lin0 (published), step (the paper's), cosine, constant
    warmup_steps: int = -1  #: < 0: 2% of the steps (upstream: ep/50 epochs)
    label_smoothing: float = 0.0
    scale_weight_power: float = 0.0  #: per-token loss weight (h*w)^-p per scale; 0 = plain mean
    precision: str = "fp32"  #: fp32, bf16 (autocast) or fp16 (autocast + grad scaler)
    alpha_jitter: float = 0.0  #: std of Gaussian noise added to each sample's per-scale alpha
    style_noise: float = 0.0  #: gamma of Gaussian noise on the style tokens' VQ features (StyleAR)
    seed: int = 0
    val_every: int = 0  #: validate every N steps (0 = at epoch ends only)
    save_every: int = 200  #: write last.pt and a rolling step-<N>.pt every N steps
    keep_rolling: int = 5
    num_workers: int = 2
    #: BatchNorm of the ResNet encoders: ``frozen`` (running statistics, the default: per-device
    #: batches of ~12 give noisy statistics and make results depend on the GPU count) or ``train``
    #: (batch statistics, as upstream)
    encoder_bn: str = "frozen"
    on_nonfinite: str = "stop"  #: stop (save, raise) or skip (drop the step, log it)
    log_every: int = 10
    #: under a process group: ``ddp`` (replicated model) or ``fsdp`` (parameters, gradients and
    #: optimizer state sharded per transformer block; fp32 or bf16)
    parallel: str = "ddp"

    def __post_init__(self) -> None:
        if self.parallel not in ("ddp", "fsdp"):
            raise ConfigError(f"parallel must be ddp or fsdp, not {self.parallel!r}")
        if self.parallel == "fsdp" and self.precision == "fp16":
            raise ConfigError("precision fp16 is not supported with FSDP; use bf16 or fp32")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be fp32, bf16 or fp16, not {self.precision!r}")
        if self.on_nonfinite not in ("stop", "skip"):
            raise ConfigError(f"on_nonfinite must be stop or skip, not {self.on_nonfinite!r}")
        if self.encoder_bn not in ("frozen", "train"):
            raise ConfigError(f"encoder_bn must be frozen or train, not {self.encoder_bn!r}")
        if self.micro_batch < 1 or self.grad_accum < 1:
            raise ConfigError("micro_batch and grad_accum must be >= 1")
        self.betas = tuple(self.betas)  # type: ignore[assignment]

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


@dataclass
class TrainState:
    epoch: int = 0
    batch: int = 0  #: global batches of this epoch already consumed
    step: int = 0  #: optimizer steps done
    best_val: float = math.inf
    skipped_steps: int = 0
    history: list[dict] = field(default_factory=list)


class TeacherForced(torch.nn.Module):
    """Conditioning + teacher-forced forward in one call, so DDP/FSDP see every parameter used inside
    ``forward`` (FSDP gathers the encoders' and embeddings' parameters only there)."""

    def __init__(self, model: StyleVAR):
        super().__init__()
        self.model = model

    def forward(
        self,
        style: torch.Tensor,
        content: torch.Tensor,
        style_cvae: torch.Tensor,
        content_cvae: torch.Tensor,
        x_wo_first: torch.Tensor,
        alpha: torch.Tensor,
    ) -> torch.Tensor:
        """Images in [-1, 1] (B, 3, R, R), VQ features (B, L, Cvae), teacher input, alpha (B, SN) -> logits (B, L, V)."""
        cond = self.model.conditioning_from_features(style, content, style_cvae, content_cvae)
        return self.model(x_wo_first, cond, alpha)


class SFTTrainer:
    """Teacher-forced cross-entropy training of a :class:`StyleVAR` with a frozen VQ-VAE."""

    def __init__(
        self,
        model: StyleVAR,
        vae: VQVAE,
        train_set: Dataset,
        run_dir: str | os.PathLike,
        config: SFTConfig | None = None,
        *,
        val_set: Dataset | None = None,
        device: str | torch.device = "cpu",
    ):
        self.cfg = cfg = config or SFTConfig()
        self.device = torch.device(device)
        self.rank, self.world = world()
        self.model = model.to(self.device)
        self.vae = vae.to(self.device).eval().requires_grad_(False)
        self.train_set, self.val_set = train_set, val_set
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        if self.rank == 0:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.global_batch = cfg.micro_batch * cfg.grad_accum * self.world
        self.batches_per_epoch = len(train_set) // self.global_batch
        if self.batches_per_epoch < 1:
            raise ConfigError(
                f"the training set has {len(train_set)} triplets, fewer than one global batch "
                f"({self.global_batch}); lower micro_batch/grad_accum"
            )
        self.total_steps = cfg.max_steps or cfg.epochs * self.batches_per_epoch
        self.warmup = cfg.warmup_steps if cfg.warmup_steps >= 0 else max(0, round(0.02 * self.total_steps))
        self.peak_lr = cfg.lr or cfg.base_lr * self.global_batch / 256
        for block in model.blocks:  # dead upstream parameters (kept for strict loading): never trained
            block.attn.q_bias_target.requires_grad_(False)
            block.attn.v_bias_guide.requires_grad_(False)
        self._fwd = TeacherForced(model)
        self.net: torch.nn.Module = self._fwd
        self.fsdp = cfg.parallel == "fsdp" and dist.is_available() and dist.is_initialized()
        if cfg.parallel == "fsdp" and not self.fsdp:
            logger.warning("parallel='fsdp' without a process group (not under torchrun): training unsharded")
        if self.fsdp:
            D.broadcast_module(model)  # FSDP shards what each rank holds: start from rank 0's weights
            self.net = D.shard_fsdp(self._fwd, model.blocks, self.device, cfg.precision)
        elif self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DDP(self._fwd, device_ids=ids)
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            param_groups(model, cfg.weight_decay), lr=self.peak_lr, betas=cfg.betas, fused=fused or None
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.token_w = scale_token_weights(model.patch_nums, cfg.scale_weight_power).to(self.device)
        self.state = TrainState()
        self._stop_signal: int | None = None
        self._tb = None

    # ------------------------------------------------------------------------------ data
    def _epoch_order(self, epoch: int) -> list[int]:
        return epoch_permutation(len(self.train_set), self.cfg.seed, epoch)

    def _batches(self, epoch: int, start: int) -> Iterator[list[dict]]:
        """This process's micro-batches of global batches ``start..`` of ``epoch``, grouped per step."""
        cfg = self.cfg
        order = self._epoch_order(epoch)
        per_rank = cfg.micro_batch * cfg.grad_accum
        indices = []
        for b in range(start, self.batches_per_epoch):
            chunk = order[b * self.global_batch : (b + 1) * self.global_batch]
            indices.extend(chunk[self.rank * per_rank : (self.rank + 1) * per_rank])
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        loader = DataLoader(
            torch.utils.data.Subset(self.train_set, indices),
            batch_size=cfg.micro_batch,
            shuffle=False,
            num_workers=cfg.num_workers,
            generator=torch.Generator().manual_seed(cfg.seed),  # never draws from the global RNG
            persistent_workers=False,
        )
        group: list[dict] = []
        for mb in loader:
            group.append(mb)
            if len(group) == cfg.grad_accum:
                yield group
                group = []

    # ------------------------------------------------------------------------------ model step
    def _autocast(self):
        if self.cfg.precision == "fp32":
            return no_autocast(self.device)
        return autocast_to(self.device, self.cfg.precision)

    def _inputs(self, mb: dict, train: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """(targets' tokens (B, L), the arguments of :class:`TeacherForced` (images, VQ features,
        teacher input, alpha))."""
        target, style, content = (
            mb[k].to(self.device, non_blocking=True).float() for k in ("target", "style", "content")
        )
        with torch.no_grad():
            gt_idx = self.vae.img_to_idx(target)
            x_wo_first = self.vae.quantize.idx_to_teacher_input(gt_idx)
            style_cvae = self.vae.quantize.idx_to_condition(self.vae.img_to_idx(style))
            content_cvae = self.vae.quantize.idx_to_condition(self.vae.img_to_idx(content))
        if train and self.cfg.style_noise > 0:
            style_cvae = style_cvae + self.cfg.style_noise * torch.randn_like(style_cvae)
        B = target.shape[0]
        alpha = self.model.resolve_alpha(None, 0.0, B)
        if train and self.cfg.alpha_jitter > 0:
            alpha = (alpha + self.cfg.alpha_jitter * torch.randn_like(alpha)).clamp_(0.0, 1.0)
        return torch.cat(gt_idx, dim=1), (style, content, style_cvae, content_cvae, x_wo_first, alpha)

    def _loss(self, mb: dict) -> torch.Tensor:
        gt, args = self._inputs(mb, train=True)
        with self._autocast():
            logits = self.net(*args)
        ce = F.cross_entropy(
            logits.float().flatten(0, 1),
            gt.flatten(),
            label_smoothing=self.cfg.label_smoothing,
            reduction="none",
        ).view_as(gt)
        return (ce * self.token_w).sum(1).mean()

    def _train_mode(self) -> None:
        self.model.train()
        if self.cfg.encoder_bn == "frozen":
            for enc in (self.model.style_encoder, self.model.content_encoder):
                for m in enc.modules():
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                        m.eval()

    def _optimizer_step(self, group: list[dict]) -> dict | None:
        """One optimizer step over ``group``'s micro-batches; None when skipped for a non-finite loss."""
        self._train_mode()
        self.optimizer.zero_grad(set_to_none=True)
        total, n = 0.0, len(group)
        for i, mb in enumerate(group):
            sync = i == n - 1 or self.world == 1
            if self.fsdp:  # accumulate unsharded gradients, reduce-scatter them on the last micro-batch
                self.net.set_requires_gradient_sync(sync)
            ctx = (
                self.net.no_sync()
                if (not sync and hasattr(self.net, "no_sync"))
                else contextlib.nullcontext()
            )
            with ctx:
                loss = self._loss(mb)
                self.scaler.scale(loss / n).backward()
            total += loss.detach().float().item() / n
        loss_t = torch.tensor([total], device=self.device)
        if self.world > 1:
            dist.all_reduce(loss_t)
            loss_t /= self.world
        if not math.isfinite(loss_t.item()):
            self.optimizer.zero_grad(set_to_none=True)
            self.state.skipped_steps += 1
            msg = f"non-finite loss ({loss_t.item()}) at step {self.state.step}"
            if self.cfg.on_nonfinite == "stop":
                raise NonFiniteLossError(
                    f"{msg}; stopped (last good state in {self.ckpt_dir / 'last.pt'}); lower the learning rate, "
                    "use fp32/bf16, or pass on_nonfinite=skip"
                )
            logger.warning("%s: step skipped (%d so far)", msg, self.state.skipped_steps)
            return None
        lr = self.peak_lr * lr_multiplier(
            self.state.step, self.total_steps, schedule=self.cfg.schedule, warmup=self.warmup
        )
        set_lr(self.optimizer, lr)
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        # under FSDP the gradients are sharded DTensors: the norm is reduced over all shards
        gnorm = torch.nn.utils.clip_grad_norm_(
            params, self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {"loss": loss_t.item(), "lr": lr, "grad_norm": float(D.full_tensor(gnorm))}

    # ------------------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, max_batches: int | None = None) -> dict:
        """Mean CE (no smoothing), CE of the last scale, and token accuracy per scale."""
        if self.val_set is None or len(self.val_set) == 0:
            return {}
        self.model.eval()
        loader = DataLoader(self.val_set, batch_size=self.cfg.micro_batch, shuffle=False, num_workers=0)
        SN = len(self.model.patch_nums)
        ce_sum = torch.zeros((), dtype=torch.float64)
        tail_sum = torch.zeros((), dtype=torch.float64)
        hits = torch.zeros(SN, dtype=torch.float64)
        n_tok = torch.zeros(SN, dtype=torch.float64)
        count = 0
        bg_last, ed_last = self.model.begin_ends[-1]
        for bi, mb in enumerate(loader):
            if max_batches is not None and bi >= max_batches:
                break
            gt, args = self._inputs(mb, train=False)
            with self._autocast():  # every rank runs the same batches: FSDP gathers inside forward
                logits = (self.net if self.fsdp else self._fwd)(*args).float()
            ce = F.cross_entropy(logits.flatten(0, 1), gt.flatten(), reduction="none").view_as(gt)
            ce_sum += ce.mean(1).sum().double().cpu()
            tail_sum += ce[:, bg_last:ed_last].mean(1).sum().double().cpu()
            right = (logits.argmax(-1) == gt).double().cpu()
            for si, (bg, ed) in enumerate(self.model.begin_ends):
                hits[si] += right[:, bg:ed].sum()
                n_tok[si] += right[:, bg:ed].numel()
            count += gt.shape[0]
        self._train_mode()
        out = {
            "val_loss": (ce_sum / count).item(),
            "val_tail_loss": (tail_sum / count).item(),
            "val_acc": (hits.sum() / n_tok.sum()).item(),
            "val_acc_per_scale": (hits / n_tok).tolist(),
        }
        return out

    # ------------------------------------------------------------------------------ checkpoints
    def _checkpoint(self) -> dict:
        """The checkpoint dict (rank 0). Under FSDP every rank calls this: it gathers the shards."""
        if self.fsdp:
            model_sd = D.full_state_dict(self.model, self.rank)
            optim_sd = D.full_optimizer_state(self.optimizer, self.rank)
        else:
            model_sd, optim_sd = self.model.state_dict(), self.optimizer.state_dict()
        return {
            "format": "stylevar-sft-1",
            "model": model_sd,
            "optimizer": optim_sd,
            "scaler": self.scaler.state_dict(),
            "state": dataclasses.asdict(self.state),
            "rng": capture_rng(),
            "config": {
                "sft": self.cfg.to_dict(),
                "stylevar": self.model.config.to_dict(),
                "vqvae": self.vae.config.to_dict(),
                "world_size": self.world,
                "parallel": "fsdp" if self.fsdp else ("ddp" if self.world > 1 else "none"),
            },
        }

    def save(self, kind: str = "last") -> Path | None:
        """Write ``last``/``best``/rolling checkpoints (rank 0), atomically. Every rank calls it under FSDP."""
        if self.rank != 0 and not self.fsdp:
            return None
        ck = self._checkpoint()
        if self.rank != 0:
            return None
        return save_checkpoint(
            self.ckpt_dir, ck, kind, step=self.state.step, keep_rolling=self.cfg.keep_rolling
        )

    def resume(self, path: str | os.PathLike | None = None) -> bool:
        """Load ``path`` (default ``checkpoints/last.pt`` when present); False when there is nothing to resume."""
        p = resume_path(path, self.ckpt_dir)
        if p is None:
            return False
        ck = load_training_checkpoint(p, "stylevar-sft-1", "SFT training")
        if ck["config"]["stylevar"] != self.model.config.to_dict():
            raise CheckpointError(f"{p}: written for another model configuration; resume with the same model")
        if self.fsdp:
            D.load_full_state_dict(self.model, ck["model"])
            D.load_full_optimizer_state(self.optimizer, ck["optimizer"])
        else:
            self.model.load_state_dict(ck["model"])
            self.optimizer.load_state_dict(ck["optimizer"])
        self.scaler.load_state_dict(ck["scaler"])
        self.state = TrainState(**ck["state"])
        restore_rng(ck["rng"])
        logger.info(
            "resumed from %s at epoch %d, batch %d, step %d",
            p,
            self.state.epoch,
            self.state.batch,
            self.state.step,
        )
        return True

    # ------------------------------------------------------------------------------ loop
    def _log(self, rec: dict) -> None:
        if self.rank != 0:
            return
        self.state.history.append(rec)
        with (self.run_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(rec) + "\n")
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tb"))
            except Exception:  # tensorboard not installed
                self._tb = False
        if self._tb:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, rec["step"])

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        self._stop_signal = signum

    def _stop_requested(self) -> bool:
        """A signal arrived on any rank (all ranks stop after the same step, so their collectives match)."""
        flag = self._stop_signal is not None
        if self.world > 1:
            t = torch.tensor([float(flag)], device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = t.item() > 0
            if flag and self._stop_signal is None:
                self._stop_signal = signal.SIGTERM
        return flag

    def fit(self, *, progress: bool = True, stop_after: int | None = None) -> TrainState:
        """Train to the end (or ``stop_after`` more steps), saving as configured; returns the state."""
        cfg = self.cfg
        old = (
            {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
            if main_thread()
            else {}
        )
        bar = None
        if progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=self.state.step, desc="sft", dynamic_ncols=True)
        if self.state.step == 0 and self.state.batch == 0 and self.state.epoch == 0:
            # a fresh run: model randomness (drop path, alpha jitter, style noise) from the seed alone
            torch.manual_seed(cfg.seed * 1000 + self.rank)
            random.seed(cfg.seed * 1000 + self.rank)
        done_here = 0
        try:
            while self.state.step < self.total_steps:
                epoch = self.state.epoch
                t0, imgs = time.perf_counter(), 0
                for group in self._batches(epoch, self.state.batch):
                    rec = self._optimizer_step(group)
                    self.state.batch += 1
                    if rec is not None:
                        self.state.step += 1
                        imgs += self.global_batch
                        rec.update(
                            step=self.state.step, epoch=epoch, imgs_per_s=imgs / (time.perf_counter() - t0)
                        )
                        if self.state.step % cfg.log_every == 0 or self.state.step == self.total_steps:
                            self._log(rec)
                        if bar is not None:
                            bar.update(1)
                            bar.set_postfix(
                                loss=f"{rec['loss']:.4f}",
                                lr=f"{rec['lr']:.2e}",
                                ips=f"{rec['imgs_per_s']:.1f}",
                            )
                    done_here += 1
                    if cfg.val_every and self.state.step % cfg.val_every == 0:
                        self._validate_and_keep_best()
                    if cfg.save_every and self.state.step % cfg.save_every == 0:
                        self.save("last")
                        self.save("rolling")
                    if self._stop_requested():
                        self.save("last")
                        logger.warning(
                            "signal %d: saved %s and stopped", self._stop_signal, self.ckpt_dir / "last.pt"
                        )
                        return self.state
                    if self.state.step >= self.total_steps or (
                        stop_after is not None and done_here >= stop_after
                    ):
                        break
                if self.state.batch >= self.batches_per_epoch:
                    self.state.epoch += 1
                    self.state.batch = 0
                    self._validate_and_keep_best()
                self.save("last")
                if stop_after is not None and done_here >= stop_after:
                    return self.state
        finally:
            if bar is not None:
                bar.close()
            for s, h in old.items():
                signal.signal(s, h)
        final_model: torch.nn.Module = self.model
        if self.fsdp:  # gather the shards into a plain model on rank 0's CPU
            sd = D.full_state_dict(self.model, self.rank)
            final_model = build_stylevar(self.model.config, sd, "final") if self.rank == 0 else None
        if self.rank == 0:
            save_pretrained(
                self.run_dir / "final",
                final_model,
                self.vae,
                info={"trained_by": "stylevar sft", "steps": self.state.step},
            )
        return self.state

    def _validate_and_keep_best(self) -> None:
        metrics = self.validate()
        if self.world > 1:  # one decision for all ranks (saving is a collective under FSDP)
            metrics = D.broadcast_object(metrics)
        if not metrics:
            return
        self._log(
            {
                "step": self.state.step,
                "epoch": self.state.epoch,
                **{k: v for k, v in metrics.items() if k != "val_acc_per_scale"},
            }
        )
        if metrics["val_loss"] < self.state.best_val:
            self.state.best_val = metrics["val_loss"]
            self.save("best")
