"""Supervised fine-tuning on (content, style, target) triplets (docs/upstream.md §5), done so runs survive.

One optimizer step = ``grad_accum`` micro-batches per process; the global batch is
``micro_batch * grad_accum * world_size``. The run -- data order independent of the number of
processes and of interruptions, atomic ``last``/``best``/rolling checkpoints with exact resume
(augmentations are seeded by (seed, epoch, index) in :class:`~stylevar.data.TripletDataset`, RNG
states are checkpointed), stop signals, the non-finite policy, logs -- is the harness's
(:mod:`stylevar.training.harness`). This trainer adds the teacher-forced cross-entropy step, its
validation (loss and token accuracy per scale), DDP/FSDP, and its export: the finished model in our
format in ``run_dir/final`` (config.json + safetensors, VQ-VAE included).

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
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from ..io import build_stylevar, save_pretrained
from ..models import VQVAE, StyleVAR
from ..models.ops import autocast_to, no_autocast
from . import distributed as D
from .config import SFTConfig
from .harness import RunState, Trainer
from .schedule import lr_multiplier, param_groups, scale_token_weights, set_lr

logger = logging.getLogger(__name__)


@dataclass
class SFTState(RunState):
    best_val: float = math.inf
    history: list[dict] = field(default_factory=list)


TrainState = SFTState  # the former name


class TeacherForced(torch.nn.Module):
    """Conditioning + teacher-forced forward in one call, so DDP/FSDP see every parameter used inside
    ``forward`` (FSDP gathers the encoders' and embeddings' parameters only there)."""

    def __init__(self, model: StyleVAR, style_noise: float = 0.0):
        super().__init__()
        self.model = model
        #: in training, Gaussian noise of this std on a ``clip_resampler`` model's style tokens (StyleAR's
        #: s + gamma * n; the VQ features get theirs in :meth:`SFTTrainer._inputs`)
        self.style_noise = style_noise

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
        if self.model.training and self.style_noise > 0 and self.model.has_style_tokens:
            cond.style_feat = cond.style_feat + self.style_noise * torch.randn_like(cond.style_feat)
        return self.model(x_wo_first, cond, alpha)


class SFTTrainer(Trainer):
    """Teacher-forced cross-entropy training of a :class:`StyleVAR` with a frozen VQ-VAE."""

    name, label = "sft", "SFT"
    checkpoint_format = "stylevar-sft-1"
    state_cls = SFTState
    item_label = "triplets"

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
        cfg = config or SFTConfig()
        super().__init__(
            cfg,
            train_set,
            run_dir,
            val_set=val_set,
            device=device,
            micro_batch=cfg.micro_batch,
            grad_accum=cfg.grad_accum,
            hint="lower micro_batch/grad_accum",
        )
        self.model = model.to(self.device)
        self.vae = vae.to(self.device).eval().requires_grad_(False)
        self.warmup = cfg.warmup_steps if cfg.warmup_steps >= 0 else max(0, round(0.02 * self.total_steps))
        self.peak_lr = cfg.lr or cfg.base_lr * self.global_batch / 256
        for block in model.blocks:  # dead upstream parameters (kept for strict loading): never trained
            block.attn.q_bias_target.requires_grad_(False)
            block.attn.v_bias_guide.requires_grad_(False)
        self._fwd = TeacherForced(model, cfg.style_noise)
        self.net: torch.nn.Module = self._fwd
        self.fsdp = cfg.parallel == "fsdp" and dist.is_available() and dist.is_initialized()
        if cfg.parallel == "fsdp" and not self.fsdp:
            logger.warning("parallel='fsdp' without a process group (not under torchrun): training unsharded")
        if self.fsdp:
            D.broadcast_module(model)  # FSDP shards what each rank holds: start from rank 0's weights
            self.net = D.shard_fsdp(self._fwd, model.blocks, self.device, cfg.precision)
        else:
            self.net = self.data_parallel(self._fwd)
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            param_groups(model, cfg.weight_decay), lr=self.peak_lr, betas=cfg.betas, fused=fused or None
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.token_w = scale_token_weights(model.patch_nums, cfg.scale_weight_power).to(self.device)
        self._token_cache: dict[Path, torch.Tensor] = {}  # cache_tokens: file -> its tokens (L,)

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
        dataset = self.train_set if train else self.val_set
        with torch.no_grad():
            gt_idx = self._tokens(dataset, mb, "target", target)
            x_wo_first = self.vae.quantize.idx_to_teacher_input(gt_idx)
            style_cvae = self.vae.quantize.idx_to_condition(self._tokens(dataset, mb, "style", style))
            content_cvae = self.vae.quantize.idx_to_condition(self._tokens(dataset, mb, "content", content))
        if train and self.cfg.style_noise > 0:
            style_cvae = style_cvae + self.cfg.style_noise * torch.randn_like(style_cvae)
        B = target.shape[0]
        alpha = self.model.resolve_alpha(None, 0.0, B)
        if train and self.cfg.alpha_jitter > 0:
            alpha = (alpha + self.cfg.alpha_jitter * torch.randn_like(alpha)).clamp_(0.0, 1.0)
        return torch.cat(gt_idx, dim=1), (style, content, style_cvae, content_cvae, x_wo_first, alpha)

    def _cacheable(self, dataset: Dataset | None) -> bool:
        """Tokens may be cached for ``dataset``: asked for, and its images are the files' own
        (a :class:`~stylevar.data.TripletDataset` without augmentations in use)."""
        if not self.cfg.cache_tokens or dataset is None or not hasattr(dataset, "triplets"):
            return False
        augmented = getattr(dataset, "train", False) and getattr(dataset.transform, "augments", True)
        return not augmented

    def _tokens(
        self, dataset: Dataset | None, mb: dict, role: str, images: torch.Tensor
    ) -> list[torch.Tensor]:
        """The frozen VQ-VAE's tokens of a batch's ``role`` images, per scale (B, pn*pn) int64.

        With ``cache_tokens`` each file is tokenized once, on first use (keyed by its path: a style
        shared by many triplets costs one encoding); the cache holds int16/int32 tokens on the CPU.
        """
        if not self._cacheable(dataset) or "index" not in mb:
            return self.vae.img_to_idx(images)
        paths = [getattr(dataset.triplets[int(i)], role) for i in mb["index"]]
        first: dict[Path, int] = {}  # each missing file once, even when the batch holds it twice
        for j, p in enumerate(paths):
            if p not in self._token_cache:
                first.setdefault(p, j)
        if first:
            fresh = torch.cat(self.vae.img_to_idx(images[list(first.values())]), dim=1).cpu()
            dtype = torch.int16 if self.vae.config.vocab_size <= 2**15 else torch.int32
            for p, row in zip(first, fresh.to(dtype)):
                self._token_cache[p] = row
        flat = torch.stack([self._token_cache[p] for p in paths]).to(self.device, torch.long)
        return list(flat.split([pn * pn for pn in self.vae.patch_nums], dim=1))

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

    def train_step(self, group: list[dict]) -> dict | None:
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
        if not self.check_finite(loss_t.item()):
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
        loader = DataLoader(
            self.val_set,
            batch_size=self.cfg.micro_batch,
            shuffle=False,
            num_workers=0,
            generator=torch.Generator(),
        )  # (its own generator: validating draws nothing from the global RNG)
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
        return {
            "val_loss": (ce_sum / count).item(),
            "val_tail_loss": (tail_sum / count).item(),
            "val_acc": (hits.sum() / n_tok.sum()).item(),
            "val_acc_per_scale": (hits / n_tok).tolist(),
        }

    # ------------------------------------------------------------------------------ run hooks
    @property
    def history(self) -> list[dict]:
        return self.state.history

    @property
    def collective_save(self) -> bool:
        return self.fsdp  # gathering the shards is a collective

    def checkpoint_payload(self) -> dict:
        if self.fsdp:
            model_sd = D.full_state_dict(self.model, self.rank)
            optim_sd = D.full_optimizer_state(self.optimizer, self.rank)
        else:
            model_sd, optim_sd = self.model.state_dict(), self.optimizer.state_dict()
        return {"model": model_sd, "optimizer": optim_sd, "scaler": self.scaler.state_dict()}

    def load_checkpoint_payload(self, ck: dict, path: Path) -> None:
        if self.fsdp:
            D.load_full_state_dict(self.model, ck["model"])
            D.load_full_optimizer_state(self.optimizer, ck["optimizer"])
        else:
            self.model.load_state_dict(ck["model"])
            self.optimizer.load_state_dict(ck["optimizer"])
        self.scaler.load_state_dict(ck["scaler"])

    def checkpoint_config(self) -> dict:
        return {
            "stylevar": self.model.config.to_dict(),
            "vqvae": self.vae.config.to_dict(),
            "parallel": "fsdp" if self.fsdp else ("ddp" if self.world > 1 else "none"),
        }

    def progress_postfix(self, record: dict) -> dict:
        return {
            "loss": f"{record['loss']:.4f}",
            "lr": f"{record['lr']:.2e}",
            "ips": f"{record['imgs_per_s']:.1f}",
        }

    def export(self) -> Path | None:
        """The finished model in our format, ``run_dir/final`` (under FSDP the shards are gathered first)."""
        final_model: torch.nn.Module | None = self.model
        if self.fsdp:  # gather the shards into a plain model on rank 0's CPU
            sd = D.full_state_dict(self.model, self.rank)
            final_model = build_stylevar(self.model.config, sd, "final") if self.rank == 0 else None
        if self.rank != 0:
            return None
        return save_pretrained(
            self.run_dir / "final",
            final_model,
            self.vae,
            info={"trained_by": "stylevar sft", "steps": self.state.step},
        )
