"""Training the multi-scale VQ-VAE (the tokenizer) for other domains or resolutions.

Objective per image batch ``x`` in [-1, 1] (B, 3, R, R)::

    loss = recon(x_hat, x) + vq_weight * vq + perceptual_weight * lpips_vgg(x_hat, x)

* ``recon``: L1, L2 (MSE) or their sum on the unclamped reconstruction, in [-1, 1] units;
* ``vq``: the quantizer's codebook + ``beta`` * commitment term averaged over scales
  (:meth:`MultiScaleQuantizer.forward`, ``beta`` from :class:`~stylevar.config.VQVAEConfig`);
* ``lpips_vgg`` (optional): an LPIPS-style distance on torchvision's VGG16 (uniform channel weights,
  LPIPS's "baseline" form, no learned linear layers), weights only from a file the user gives.

The optimiser is AdamW with betas (0.5, 0.9), the VQGAN (taming-transformers) choice for
autoencoders, no weight decay by default (never on biases, norms or the codebook), a warm-up and
the schedules of :mod:`stylevar.training.schedule`. The quantizer always runs in fp32 (nearest
neighbours in bf16 pick wrong codes); encoder and decoder follow ``precision``.

Codebook usage is tracked every step from the hit counts: the fraction of the vocabulary used
and the perplexity ``exp(H(p))`` of the code distribution over all scales. Optionally, codes unused
for ``dead_code_steps`` optimizer steps are restarted from random residual vectors the quantizer
saw in the current batch (``revived`` in the logs).

The run itself (data order, checkpoints and bit-exact resume, signals, the non-finite policy, logs,
validation cadence) is the harness's (:mod:`stylevar.training.harness`); this trainer adds its step,
its validation, the codebook ages in its checkpoints, and its export: the tokenizer folder
``run_dir/final`` (``config.json`` + ``vqvae.safetensors``, :func:`stylevar.io.save_vqvae`), which
:func:`stylevar.io.load_vqvae` reads back. Under ``torchrun`` training is data-parallel (DDP; gloo on
CPU, NCCL on GPU), like SFT.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from .. import threads
from ..config import VQVAEConfig
from ..data import folders
from ..errors import CheckpointError, ConfigError
from ..files import atomic_write_json
from ..io import load_training_checkpoint
from ..io import vqvae as vqvae_files
from ..models import VQVAE
from ..models.ops import autocast_to, no_autocast
from ..perceptual import vgg
from .config import TokenizerConfig
from .distributed import launch
from .harness import RunState, Trainer
from .schedule import lr_multiplier, set_lr

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = vqvae_files.TOKENIZER_TRAINING_FORMAT


@dataclass
class TokenizerState(RunState):
    """Where a run stands (saved in every checkpoint)."""

    best_val: float = math.inf
    revived_codes: int = 0  #: codebook entries restarted so far


# ---------------------------------------------------------------------------------------- codebook
def codebook_stats(hits: torch.Tensor) -> tuple[float, float]:
    """``(usage, perplexity)`` of code hit counts (V,): fraction of codes hit, ``exp(entropy)`` of the hits."""
    hits = hits.double().cpu()
    total = hits.sum()
    if total <= 0:
        return 0.0, 0.0
    p = hits[hits > 0] / total
    return (hits > 0).double().mean().item(), math.exp(-(p * p.log()).sum().item())


def residual_vectors(quantize: nn.Module, f_BChw: torch.Tensor) -> torch.Tensor:
    """Every vector the quantizer matches against the codebook for features ``f`` (B, Cvae, h, w):
    the residual before each scale, area-pooled to that scale; (N, Cvae) float32, N = B * sum(pn^2)."""
    f = f_BChw.detach().float()
    fhats = quantize.f_to_fhat(f)
    out = []
    for si, pn in enumerate(quantize.patch_nums):
        rest = f if si == 0 else f - fhats[si - 1]
        if si != len(quantize.patch_nums) - 1:
            rest = F.interpolate(rest, size=(pn, pn), mode="area")
        out.append(rest.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
    return torch.cat(out)


def _images(mb: Any) -> torch.Tensor:
    """The image tensor of a collated batch: a tensor, the first item of a tuple, or dict['image'/'target']."""
    if torch.is_tensor(mb):
        return mb
    if isinstance(mb, dict):
        for k in ("image", "target"):
            if k in mb:
                return mb[k]
    if isinstance(mb, (list, tuple)) and mb and torch.is_tensor(mb[0]):
        return mb[0]
    raise ConfigError(
        "the training dataset must yield image tensors (3, R, R) in [-1, 1], (image, ...) tuples or "
        "dicts with an 'image' key"
    )


class _TrainForward(nn.Module):
    """The VQ-VAE's training forward as one module (DDP needs a single forward): encoder and decoder
    under ``precision``'s autocast, the quantizer in fp32. Returns (recon [-1,1] unclamped fp32,
    vq_loss, hits (V,), encoder features f (B, Cvae, h, w) detached)."""

    def __init__(self, vae: VQVAE, precision: str):
        super().__init__()
        self.vae, self.precision = vae, precision

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        vae, dev = self.vae, img.device
        amp = (
            (lambda: no_autocast(dev))
            if self.precision == "fp32"
            else (lambda: autocast_to(dev, self.precision))
        )
        with amp():
            f = vae.encode_f(img)
        with no_autocast(dev):
            f_hat, vq, hits = vae.quantize(f.float())
        with amp():
            recon = vae.decoder(vae.post_quant_conv(f_hat))
        return recon.float(), vq, hits, f.detach().float()


class TokenizerTrainer(Trainer):
    """Trains a :class:`VQVAE` on images in [-1, 1] (see the module docstring for the objective).

    Args:
        vae: the model to train (fresh, or loaded with :func:`stylevar.io.load_vqvae`); moved to ``device``.
        train_set: yields (3, R, R) tensors in [-1, 1] with R = ``vae.config.resolution``
            (e.g. :class:`~stylevar.data.ImageFolderDataset`), or tuples/dicts holding one;
            ``set_epoch`` is called when present.
        run_dir: checkpoints, ``metrics.jsonl``, ``tb/`` and ``final/`` go here.
        val_set: optional; validated at epoch ends (and every ``val_every`` steps).
        vgg_weights: torchvision ``vgg16-397923af.pth`` for ``perceptual_weight`` > 0.
    """

    name = label = "tokenizer"
    checkpoint_format = CHECKPOINT_FORMAT
    model_config_key, model_config_label = "vqvae", "VQ-VAE"
    state_cls = TokenizerState
    item_label = "images"

    def __init__(
        self,
        vae: VQVAE,
        train_set: Dataset,
        run_dir: str | os.PathLike,
        config: TokenizerConfig | None = None,
        *,
        val_set: Dataset | None = None,
        device: str | torch.device = "cpu",
        vgg_weights: str | os.PathLike | None = None,
    ):
        cfg = config or TokenizerConfig()
        super().__init__(
            cfg,
            train_set,
            run_dir,
            val_set=val_set,
            device=device,
            micro_batch=cfg.batch,
            grad_accum=cfg.grad_accum,
            hint="lower batch/grad_accum or add images",
        )
        self.vae = vae.to(self.device).float().train().requires_grad_(True)
        if cfg.channels_last:  # the conv weights; the images follow in _loss (export restores the layout)
            self.vae.to(memory_format=torch.channels_last)
        self.resolution = vae.config.resolution
        self.warmup = cfg.warmup_steps if cfg.warmup_steps >= 0 else max(0, round(0.02 * self.total_steps))
        # 1. perceptual loss (frozen VGG16, outside the trained model and its checkpoints)
        self.perceptual: vgg.VGGPerceptualLoss | None = None
        if cfg.perceptual_weight > 0:
            if vgg_weights is None:
                raise CheckpointError(
                    f"perceptual_weight={cfg.perceptual_weight} needs VGG16 weights: download torchvision's "
                    f"{vgg.VGG16_FILENAME} ({vgg.VGG16_URL}) and pass its path (--vgg-weights PATH)"
                )
            if self.resolution < 16:
                raise ConfigError(
                    f"the perceptual loss needs images of at least 16 px (VGG16 pools 4 times), not {self.resolution}"
                )
            self.perceptual = vgg.VGGPerceptualLoss(vgg_weights).to(self.device)
        elif vgg_weights is not None:
            logger.warning("perceptual_weight is 0: the VGG16 weights %s are not used", vgg_weights)
        # 2. model step (DDP under torchrun)
        self.forward_module = _TrainForward(self.vae, cfg.precision)
        q = self.vae.quantize  # with few scales some of the shared phi convs are never used
        used = {id(q.phi(si)) for si in range(q.num_scales)}
        unused = any(id(m) not in used for m in q.quant_resi.modules() if isinstance(m, nn.Conv2d))
        self.net: nn.Module = self.data_parallel(self.forward_module, find_unused_parameters=unused)
        # 3. optimizer: no decay for biases, norms and the codebook
        decay, no_decay = [], []
        for name, p in self.vae.named_parameters():
            (decay if p.ndim > 1 and "embedding" not in name else no_decay).append(p)
        groups = [
            {"params": decay, "weight_decay": cfg.weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
        ]
        self.optimizer = torch.optim.AdamW(
            groups, lr=cfg.lr, betas=cfg.betas, fused=(self.device.type == "cuda") or None
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        #: optimizer steps since each code was last hit
        self.codebook_age = torch.zeros(vae.config.vocab_size, dtype=torch.long)

    def cpu_threads(self) -> int:
        """On the CPU a small VQ-VAE trains on one thread: its parallel regions are too short to share, and
        next to another busy process two threads made the demo's tokenizer steps 78x slower (docs/speed.md,
        "On a shared machine")."""
        if self.device.type != "cpu":
            return torch.get_num_threads()
        return threads.threads_for(self.micro_batch * self.vae.config.ch * self.resolution**2)

    # ------------------------------------------------------------------------------ model step
    def _recon_loss(self, recon: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        kind = self.cfg.recon_loss
        loss = recon.new_zeros(())
        if kind in ("l1", "l1+l2"):
            loss = loss + F.l1_loss(recon, img)
        if kind in ("l2", "l1+l2"):
            loss = loss + F.mse_loss(recon, img)
        return loss

    def _loss(
        self, net: nn.Module, img: torch.Tensor
    ) -> tuple[torch.Tensor, dict, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(total loss, {recon, vq[, perceptual]} detached, hits (V,), features, reconstruction) of a micro-batch."""
        img = img.to(self.device, non_blocking=True).float()
        if self.cfg.channels_last:
            img = img.contiguous(memory_format=torch.channels_last)
        R = self.resolution
        if tuple(img.shape[-3:]) != (3, R, R):
            raise ConfigError(
                f"images are {tuple(img.shape[-3:])}, the VQ-VAE expects (3, {R}, {R}) "
                f"(patch_nums[-1] x {self.vae.config.downsample}); resize the data to {R} px"
            )
        recon, vq, hits, f = net(img)
        rec = self._recon_loss(recon, img)
        loss = rec + self.cfg.vq_weight * vq
        parts = {"recon": rec.detach(), "vq": vq.detach()}
        if self.perceptual is not None:
            amp = (
                no_autocast(self.device)
                if self.cfg.precision == "fp32"
                else autocast_to(self.device, self.cfg.precision)
            )
            with amp:
                perc = self.perceptual(recon, img)
            loss = loss + self.cfg.perceptual_weight * perc
            parts["perceptual"] = perc.detach()
        return loss, parts, hits, f, recon

    def train_step(self, group: list) -> dict | None:
        """One optimizer step over ``group``; None when skipped for a non-finite loss."""
        self.vae.train()
        self.optimizer.zero_grad(set_to_none=True)
        n = len(group)
        sums: dict[str, torch.Tensor] = {}
        hits = torch.zeros(self.vae.config.vocab_size, device=self.device)
        f = torch.empty(0)
        for i, img in enumerate(_images(mb) for mb in group):
            sync = i == n - 1 or self.world == 1
            ctx = (
                self.net.no_sync()
                if (not sync and hasattr(self.net, "no_sync"))
                else contextlib.nullcontext()
            )
            with ctx:
                loss, parts, h, feats, _ = self._loss(self.net, img)
                self.scaler.scale(loss / n).backward()
            if i == 0:  # code restarts draw from the first micro-batch: rank 0's share under DDP
                f = feats
            for k, v in {"loss": loss.detach(), **parts}.items():
                sums[k] = sums.get(k, 0) + v.float() / n
            hits += h
        names = list(sums)
        vals = torch.stack([sums[k] for k in names])
        if self.world > 1:  # hits are already global (the quantizer all-reduces them in training)
            dist.all_reduce(vals)
            vals /= self.world
        rec = dict(zip(names, vals.tolist()))
        if not self.check_finite(rec["loss"]):
            return None
        lr = self.cfg.lr * lr_multiplier(
            self.state.step, self.total_steps, schedule=self.cfg.schedule, warmup=self.warmup
        )
        set_lr(self.optimizer, lr)
        self.scaler.unscale_(self.optimizer)
        gnorm = torch.nn.utils.clip_grad_norm_(
            self.vae.parameters(), self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        usage, ppl = codebook_stats(hits)
        rec.update(usage=usage, perplexity=ppl, lr=lr, grad_norm=float(gnorm))
        revived = self._restart_dead_codes(hits.cpu(), f)
        if self.cfg.dead_code_steps:
            rec["revived"] = revived
        return rec

    @torch.no_grad()
    def _restart_dead_codes(self, hits: torch.Tensor, f: torch.Tensor) -> int:
        """Age the codes; re-initialise those unused for ``dead_code_steps`` steps from random
        residual vectors of this batch (same on every process). Returns how many were restarted."""
        age = self.codebook_age
        age += 1
        age[hits > 0] = 0
        steps = self.cfg.dead_code_steps
        dead = (age >= steps).nonzero().flatten() if steps > 0 else age.new_zeros(0)
        if dead.numel() == 0:
            return 0
        cand = residual_vectors(self.vae.quantize, f)
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.state.step)
        N, k = cand.shape[0], dead.numel()
        pick = torch.randperm(N, generator=g)[:k] if N >= k else torch.randint(N, (k,), generator=g)
        rows = cand[pick.to(cand.device)].contiguous()
        if self.world > 1:
            dist.broadcast(rows, src=0)
        emb = self.vae.quantize.embedding.weight
        idx = dead.to(emb.device)
        emb.data[idx] = rows.to(emb.dtype)
        for v in self.optimizer.state.get(emb, {}).values():  # fresh Adam moments for the new codes
            if torch.is_tensor(v) and v.shape == emb.shape:
                v[idx] = 0
        age[dead] = 0
        self.state.revived_codes += k
        return k

    # ------------------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict:
        """On the validation set: ``val_loss`` (the training objective), ``val_l1``/``val_mse`` of the
        clamped reconstruction in [-1, 1] units, ``val_psnr`` (dB, on [0, 1] images, mean over
        images), ``val_usage`` and ``val_perplexity`` of the codes. Empty without a validation set."""
        if self.val_set is None or len(self.val_set) == 0:
            return {}
        self.vae.eval()
        loader = DataLoader(
            self.val_set, batch_size=self.cfg.batch, shuffle=False, num_workers=0, generator=torch.Generator()
        )  # (its own generator: validating draws nothing from the global RNG)
        tot = dict.fromkeys(("val_loss", "val_l1", "val_mse", "val_psnr"), 0.0)
        hits = torch.zeros(self.vae.config.vocab_size, device=self.device)
        count = 0
        for mb in loader:
            img = _images(mb).to(self.device).float()
            B = img.shape[0]
            loss, _, h, _, recon = self._loss(self.forward_module, img)
            err = recon.clamp(-1, 1) - img
            mse01 = err.div(2).square().flatten(1).mean(1).clamp_min(1e-10)  # [0, 1] scale
            tot["val_loss"] += loss.item() * B
            tot["val_l1"] += err.abs().mean().item() * B
            tot["val_mse"] += err.square().mean().item() * B
            tot["val_psnr"] += (10 * torch.log10(1 / mse01)).sum().item()
            hits += h
            count += B
        self.vae.train()
        out = {k: v / count for k, v in tot.items()}
        out["val_usage"], out["val_perplexity"] = codebook_stats(hits)
        return out

    # ------------------------------------------------------------------------------ run hooks
    def checkpoint_payload(self) -> dict:
        return {
            "model": self.vae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "codebook_age": self.codebook_age.clone(),
            "quantizer_record_hit": int(self.vae.quantize.record_hit),
        }

    def load_checkpoint_payload(self, ck: dict, path: Path) -> None:
        self.vae.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scaler.load_state_dict(ck["scaler"])
        self.codebook_age = ck["codebook_age"].clone().long()
        self.vae.quantize.record_hit = int(ck.get("quantizer_record_hit", 0))

    def checkpoint_config(self) -> dict:
        return {"vqvae": self.vae.config.to_dict()}

    def progress_postfix(self, record: dict) -> dict:
        return {
            "loss": f"{record['loss']:.4f}",
            "lr": f"{record['lr']:.2e}",
            "use": f"{record['usage']:.0%}",
            "ips": f"{record['imgs_per_s']:.1f}",
        }

    def export(self) -> Path | None:
        """The tokenizer folder ``run_dir/final`` (:func:`stylevar.io.save_vqvae`), with the run's facts."""
        if self.cfg.channels_last:  # hand the model on in the usual layout
            self.vae.to(memory_format=torch.contiguous_format)
        if self.rank != 0:
            return None
        info = {
            "trained_by": "stylevar train-tokenizer",
            "steps": self.state.step,
            "epochs": self.state.epoch,
            "resolution": self.resolution,
            "tokenizer": self.cfg.to_dict(),
        }
        if self.history and any(k.startswith("val_") for k in self.history[-1]):
            info["val"] = {k: v for k, v in self.history[-1].items() if k.startswith("val_")}
        return vqvae_files.save_vqvae(self.run_dir / "final", self.vae, info=info)


# ---------------------------------------------------------------------------------------- one call (CLI)
def train_tokenizer(
    data: Sequence[str | os.PathLike],
    run_dir: str | os.PathLike,
    *,
    config: dict[str, Any] | None = None,
    vqvae: dict[str, Any] | None = None,
    resolution: int | None = None,
    init: str | os.PathLike | None = None,
    resume: bool = False,
    triplets: bool = False,
    recursive: bool = False,
    val_fraction: float = 0.02,
    fit: str = "squash",
    hflip: bool = False,
    on_bad: str = "fail",
    vgg_weights: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    allow_pickle: bool = False,
) -> TokenizerTrainer:
    """Collect images, build or load the VQ-VAE, train (or continue) a run in ``run_dir``.

    Args:
        data: image files/folders and triplet sources (:func:`stylevar.data.collect_images`).
        config: :class:`TokenizerConfig` fields to set; with ``resume`` they override the run's own.
        vqvae: :class:`VQVAEConfig` fields of a new model (``patch_nums`` also re-scales ``init``);
            with ``resume``/``init`` other fields must agree with the stored model.
        resolution: image side; checked against the VQ-VAE (patch_nums[-1] x downsampling).
        init: start from this VQ-VAE (:func:`stylevar.io.load_vqvae`: tokenizer folder, checkpoint folder, .pth).
        resume: continue ``run_dir/checkpoints/last.pt``; without it an existing run is refused.
        val_fraction: share of the images held out for validation (seeded by ``config['seed']``).
    Returns the trainer after :meth:`TokenizerTrainer.fit` (``final_dir``, ``stopped_by``, ``state``).
    """
    run = Path(run_dir).expanduser()
    last = run / "checkpoints" / "last.pt"
    config, vqvae = dict(config or {}), dict(vqvae or {})
    if last.exists() and not resume:
        raise ConfigError(
            f"{run} already holds a run ({last}); pass --resume to continue it or choose a new RUN_DIR"
        )
    if resume and not last.exists():
        raise ConfigError(f"nothing to resume: {last} not found; drop --resume to start a new run in {run}")
    if resume and init is not None:
        raise ConfigError("--init starts a new run; drop it when resuming with --resume")

    if resume:
        ck = load_training_checkpoint(last, CHECKPOINT_FORMAT, "tokenizer training")
        vcfg = VQVAEConfig.from_dict(ck["config"]["vqvae"])
        tcfg = TokenizerConfig.from_dict({**ck["config"]["tokenizer"], **config})
        del ck
        _check_fixed(vcfg, vqvae, "--resume continues the run's model")
        vae = VQVAE(vcfg)
    elif init is not None:
        tcfg = TokenizerConfig.from_dict(config)
        vae = vqvae_files.load_vqvae(
            init, patch_nums=vqvae.pop("patch_nums", None), allow_pickle=allow_pickle
        )
        _check_fixed(vae.config, vqvae, f"--init {init} fixes the architecture")
    else:
        tcfg = TokenizerConfig.from_dict(config)
        try:
            vcfg = VQVAEConfig(**vqvae)
        except TypeError as e:
            raise ConfigError(f"invalid VQ-VAE setting: {e}") from None
        torch.manual_seed(tcfg.seed)
        vae = VQVAE(vcfg)
    R, down = vae.config.resolution, vae.config.downsample
    if resolution is not None and resolution != R:
        hint = (
            f"pass --patch-nums ending in {resolution // down}"
            if resolution % down == 0
            else f"use a multiple of {down} px"
        )
        raise ConfigError(
            f"--resolution {resolution} does not fit the VQ-VAE: its last scale of {vae.config.patch_nums[-1]} tokens "
            f"x {down} px gives {R} px; {hint}"
        )

    paths = folders.collect_images(data, triplets=triplets, recursive=recursive)
    train_paths, val_paths = folders.split_images(paths, val_fraction, seed=tcfg.seed)
    train_set = folders.ImageFolderDataset(
        train_paths, R, fit=fit, hflip=hflip, seed=tcfg.seed, on_bad=on_bad
    )
    val_set = folders.ImageFolderDataset(val_paths, R, fit=fit, on_bad=on_bad) if val_paths else None

    def body(dev: torch.device, rank: int, world: int) -> TokenizerTrainer:
        trainer = TokenizerTrainer(
            vae, train_set, run, tcfg, val_set=val_set, device=dev, vgg_weights=vgg_weights
        )
        data_file = run / "tokenizer_data.json"
        listing = {"train": [str(p) for p in train_paths], "val": [str(p) for p in val_paths]}
        if resume:
            trainer.resume(last)
            if data_file.exists() and json.loads(data_file.read_text()) != listing:
                logger.warning(
                    "the images differ from the run's first start (%s): the data order changes", data_file
                )
        elif rank == 0:
            atomic_write_json(data_file, listing, indent=1)
        trainer.fit(progress=progress)
        return trainer

    return launch(body, device)


def _check_fixed(cfg: VQVAEConfig, given: dict[str, Any], why: str) -> None:
    have = cfg.to_dict()
    for k, v in given.items():
        if k not in have:
            raise ConfigError(f"unknown VQ-VAE setting {k!r}")
        if (list(v) if isinstance(v, tuple) else v) != have[k]:
            raise ConfigError(f"{why} ({k}={have[k]}); drop --{k.replace('_', '-')} {v}")
