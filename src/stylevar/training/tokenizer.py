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

Runs survive like SFT's (see :mod:`stylevar.training.runs`): atomic ``last``/``best``/rolling
checkpoints in ``run_dir/checkpoints`` (``weights_only``-loadable), bit-exact resume (model,
optimiser, scaler, position, codebook ages, RNG), SIGTERM/SIGINT save and stop, a non-finite loss
stops or skips the step with a logged reason, ``metrics.jsonl`` + TensorBoard. The finished
tokenizer is exported to ``run_dir/final`` (``config.json`` + ``vqvae.safetensors``);
:func:`load_vqvae` reads it back (and upstream ``.pth`` files and our full checkpoint folders).
Under ``torchrun`` training is data-parallel (DDP; gloo on CPU, NCCL on GPU), like SFT.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from ..checkpoints import (
    CONFIG_NAME,
    FORMAT_NAME,
    VAE_FILENAME,
    VAE_WEIGHTS,
    build_vqvae,
    classify,
    extract_state_dict,
    infer_vqvae_config,
    read_file,
    write_weights_dir,
)
from ..config import DEFAULT_PATCH_NUMS, VQVAEConfig
from ..errors import CheckpointError, ConfigError, DataError, ImageError, StyleVARError
from ..images import IMAGE_EXTENSIONS, load_image
from ..models import VQVAE
from ..models.ops import autocast_to, no_autocast
from .distributed import destroy
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
from .schedule import SCHEDULES, lr_multiplier, set_lr

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "stylevar-tokenizer-1"
VQVAE_FORMAT = "stylevar-vqvae"
VQVAE_FORMAT_VERSION = 1
VGG_FILENAME = "vgg16-397923af.pth"
VGG_URL = f"https://download.pytorch.org/models/{VGG_FILENAME}"
RECON_LOSSES = ("l1", "l2", "l1+l2")


class NonFiniteLossError(StyleVARError):
    """Tokenizer training stopped on a NaN/inf loss (``on_nonfinite="stop"``); the last good state is saved."""


# ---------------------------------------------------------------------------------------- config
@dataclass
class TokenizerConfig:
    """Tokenizer (VQ-VAE) training hyper-parameters."""

    epochs: int = 10  #: passes over the training set (``max_steps`` > 0 overrides)
    max_steps: int = 0  #: stop after this many optimizer steps (0 = by epochs)
    batch: int = 16  #: images per process per forward (micro-batch)
    grad_accum: int = 1  #: micro-batches per optimizer step; global batch = batch * grad_accum * processes
    lr: float = 1e-4  #: peak learning rate (AdamW)
    betas: tuple[float, float] = (0.5, 0.9)  #: AdamW betas (VQGAN's choice for autoencoders)
    weight_decay: float = 0.0  #: AdamW decay of conv weights (never biases, norms, the codebook)
    schedule: str = "cosine"  #: lin0, step, cosine or constant (stylevar.training.schedule)
    warmup_steps: int = -1  #: linear warm-up steps; < 0: 2% of the steps
    grad_clip: float = 1.0  #: max global grad norm (0 = off)
    precision: str = "fp32"  #: fp32, bf16 (autocast) or fp16 (autocast + grad scaler); quantizer always fp32
    recon_loss: str = "l1"  #: reconstruction loss on [-1, 1] images: l1, l2 or l1+l2
    vq_weight: float = 1.0  #: weight of the quantizer's codebook + beta * commitment loss
    perceptual_weight: float = 0.0  #: weight of the LPIPS-style VGG16 loss (0 = off; > 0 needs vgg_weights)
    dead_code_steps: int = 0  #: restart codes unused for this many optimizer steps (0 = off)
    seed: int = 0  #: data order, augmentation, code restarts and (fresh runs) model randomness
    val_every: int = 0  #: validate every N steps (0 = at epoch ends only)
    save_every: int = 500  #: write last.pt and a rolling step-<N>.pt every N steps (0 = epoch ends only)
    keep_rolling: int = 3  #: rolling checkpoints kept
    log_every: int = 10  #: write a metrics record every N steps
    num_workers: int = 2  #: DataLoader worker processes
    on_nonfinite: str = "stop"  #: stop (save, raise) or skip (drop the step, log it)

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be fp32, bf16 or fp16, not {self.precision!r}")
        if self.recon_loss not in RECON_LOSSES:
            raise ConfigError(f"recon_loss must be one of {', '.join(RECON_LOSSES)}, not {self.recon_loss!r}")
        if self.on_nonfinite not in ("stop", "skip"):
            raise ConfigError(f"on_nonfinite must be stop or skip, not {self.on_nonfinite!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
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

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenizerConfig:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"TokenizerConfig: unknown field(s) {sorted(unknown)}")
        return cls(**d)


@dataclass
class TokenizerState:
    """Where a run stands (saved in every checkpoint)."""

    epoch: int = 0
    batch: int = 0  #: global batches of this epoch already consumed
    step: int = 0  #: optimizer steps done
    best_val: float = math.inf
    skipped_steps: int = 0
    revived_codes: int = 0  #: codebook entries restarted so far


# ---------------------------------------------------------------------------------------- data
def _images_in(folder: Path, recursive: bool) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in it
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    )


def collect_images(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    triplets: bool = False,
    recursive: bool = False,
) -> list[Path]:
    """Image files from files, folders and triplet datasets, in order, duplicates dropped.

    Each source is an image file; a folder of images (directly inside, or at any depth with
    ``recursive``); or a triplet source that :func:`stylevar.data.scan` reads (OmniStyle or
    ImagePulse root, CSV/JSONL manifest), from which the target images are taken -- all three
    images of each triplet with ``triplets=True`` (folders are then read as triplet sources
    first). Raises :class:`DataError` naming the source when nothing usable is found.
    """
    from ..data import scan

    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    out: list[Path] = []
    for src in sources:
        p = Path(src).expanduser()
        if not p.exists():
            raise DataError(f"image source not found: {p}")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            out.append(p)
            continue
        imgs = _images_in(p, recursive) if p.is_dir() else []
        if imgs and not triplets:
            out.extend(imgs)
            continue
        try:
            found = scan(p)
        except DataError as e:
            if imgs:
                out.extend(imgs)
                continue
            where = (
                "inside it or its subfolders"
                if recursive
                else "directly inside it (pass --recursive for subfolders)"
            )
            raise DataError(f"{p}: no image files {where}, and not a triplet dataset ({e})") from None
        for t in found:
            out.extend([t.content, t.style, t.target] if triplets else [t.target])
    files = list(dict.fromkeys(out))
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} listed image file(s) do not exist, e.g. {missing[0]}; fix the dataset"
        )
    if not files:
        raise DataError("no training images found in " + ", ".join(str(s) for s in sources))
    return files


def split_images(paths: Sequence[Path], val_fraction: float, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Seeded split: ``round(n * val_fraction)`` files (at least 1 when the fraction is > 0 and n >= 2)
    for validation, the rest (in their order) for training."""
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(paths)
    n_val = min(n - 1, max(1, round(n * val_fraction))) if val_fraction > 0 and n >= 2 else 0
    picked = set(random.Random(seed).sample(range(n), n_val))
    train = [p for i, p in enumerate(paths) if i not in picked]
    val = [p for i, p in enumerate(paths) if i in picked]
    return train, val


class ImageFolderDataset(Dataset):
    """Images as (3, R, R) float32 tensors in [-1, 1].

    Args:
        paths_or_folders: image files and/or folders (see :func:`collect_images`; triplet
            sources give their targets).
        resolution: side R in pixels (the VQ-VAE's ``config.resolution``).
        fit: ``squash`` (whole image, aspect not kept: the published transform) or ``crop``
            (centred square); LANCZOS, exactly :meth:`stylevar.data.TripletTransform.to_tensor`.
        hflip: random horizontal flips, decided by (seed, epoch, index) only (see :meth:`set_epoch`).
        on_bad: a file that fails to load: ``fail`` raises :class:`DataError`; ``skip`` serves
            the next image instead and counts it (``load_failures``).
    """

    def __init__(
        self,
        paths_or_folders: str | os.PathLike | Sequence[str | os.PathLike],
        resolution: int,
        *,
        fit: str = "squash",
        hflip: bool = False,
        seed: int = 0,
        recursive: bool = False,
        on_bad: str = "fail",
    ):
        from ..data import TripletTransform

        self.files = collect_images(paths_or_folders, recursive=recursive)
        self.transform = TripletTransform(resolution=resolution, fit=fit)
        self.hflip, self.seed, self.epoch = hflip, seed, 0
        if on_bad not in ("fail", "skip"):
            raise ConfigError(f"on_bad must be fail or skip, not {on_bad!r}")
        self.on_bad = on_bad
        self.load_failures = 0

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        """Flips of item i depend on (seed, epoch, i) only."""
        self.epoch = epoch

    def _load(self, index: int) -> torch.Tensor:
        x = self.transform.to_tensor(load_image(self.files[index]))
        if self.hflip and random.Random(f"{self.seed}/{self.epoch}/{index}").random() < 0.5:
            x = x.flip(-1)
        return x

    def __getitem__(self, index: int) -> torch.Tensor:
        for attempt in range(len(self.files)):
            i = (index + attempt) % len(self.files)
            try:
                return self._load(i)
            except ImageError as e:
                if self.on_bad != "skip":
                    raise DataError(
                        f"{e}; remove the file or pass on_bad='skip' (--on-bad-file skip)"
                    ) from None
                self.load_failures += 1
                logger.warning("skipping image %s: %s", self.files[i], e)
        raise DataError("no image of the dataset could be loaded")


# ---------------------------------------------------------------------------------------- perceptual loss
class VGGPerceptualLoss(nn.Module):
    """LPIPS-style distance on torchvision's VGG16 features (no learned linear layers).

    Inputs are images in [-1, 1] (B, 3, H, W); they are mapped to [0, 1] and normalised with the
    ImageNet mean/std that torchvision's VGG16 was trained with. At relu1_2, relu2_2, relu3_3,
    relu4_3 and relu5_3 the features are unit-normalised over channels, and the squared
    difference is summed over channels and averaged over positions; the layers are summed.
    Returns the batch mean (a scalar). The network is frozen.

    ``weights``: a torchvision VGG16 state dict file (``vgg16-397923af.pth``, loaded with
    ``weights_only=True``); only its ``features.*`` tensors are used.
    """

    TAPS = (3, 8, 15, 22, 29)  # indices in vgg16().features of relu1_2 ... relu5_3

    def __init__(self, weights: str | os.PathLike):
        super().__init__()
        from torchvision.models import vgg16

        p = Path(weights).expanduser()
        if not p.is_file():
            raise CheckpointError(
                f"VGG16 weights not found: {p}; download torchvision's {VGG_FILENAME} ({VGG_URL}) and pass its path"
            )
        sd = extract_state_dict(read_file(p), p)
        with torch.device("meta"):  # no wasted initialisation; the file supplies every tensor
            net = vgg16(weights=None).features[: self.TAPS[-1] + 1]
        feats = {k[len("features.") :]: v for k, v in sd.items() if k.startswith("features.")}
        own = net.state_dict()
        bad = [k for k in own if k not in feats or tuple(feats[k].shape) != tuple(own[k].shape)]
        if bad:
            raise CheckpointError(
                f"{p} is not a torchvision VGG16 state dict (features.{bad[0]} missing or of another shape); "
                f"download {VGG_FILENAME} ({VGG_URL})"
            )
        net.load_state_dict({k: feats[k].float() for k in own}, strict=True, assign=True)
        self.net = net.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> VGGPerceptualLoss:  # always eval (no dropout/BN anyway)
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, y]).add(1).mul(0.5).sub(self.mean).div(self.std)  # [-1,1] -> [0,1] -> ImageNet
        B = x.shape[0]
        d = h.new_zeros(B, dtype=torch.float32)
        for i, layer in enumerate(self.net):
            h = layer(h)
            if i in self.TAPS:
                a, b = h.float().split(B)
                a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
                b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
                d = d + (a - b).square().sum(1).mean((1, 2))
        return d.mean()


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


# ---------------------------------------------------------------------------------------- export / load
def save_vqvae(out_dir: str | os.PathLike, vae: VQVAE, *, info: dict[str, Any] | None = None) -> Path:
    """Write a tokenizer folder: ``vqvae.safetensors`` + ``config.json``
    (``{"format": "stylevar-vqvae", "format_version": 1, "vqvae": {...}, "info": {...}}``), atomically
    (a temporary sibling folder replaces ``out_dir`` only when complete)."""
    config = {
        "format": VQVAE_FORMAT,
        "format_version": VQVAE_FORMAT_VERSION,
        "vqvae": vae.config.to_dict(),
        "info": info or {},
    }
    return write_weights_dir(out_dir, {VAE_WEIGHTS: vae}, config, kind="stylevar tokenizer folder")


def _with_patch_nums(cfg: VQVAEConfig, patch_nums: Sequence[int] | None) -> VQVAEConfig:
    return cfg if patch_nums is None else dataclasses.replace(cfg, patch_nums=tuple(patch_nums))


def _load_vqvae_dir(d: Path, patch_nums: Sequence[int] | None, allow_pickle: bool) -> VQVAE:
    cfg_file = d / CONFIG_NAME
    if not cfg_file.exists():
        if (d / VAE_FILENAME).exists():
            return load_vqvae(d / VAE_FILENAME, patch_nums=patch_nums, allow_pickle=allow_pickle)
        raise CheckpointError(
            f"{d} holds neither {CONFIG_NAME} (a stylevar tokenizer or checkpoint folder) nor {VAE_FILENAME}"
        )
    try:
        raw = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {cfg_file}: {e}") from None
    fmt = raw.get("format") if isinstance(raw, dict) else None
    if fmt not in (VQVAE_FORMAT, FORMAT_NAME):
        raise CheckpointError(
            f'{cfg_file} is not a stylevar config ("format" is {fmt!r}, expected {VQVAE_FORMAT!r})'
        )
    if int(raw.get("format_version", 0)) > VQVAE_FORMAT_VERSION:
        raise CheckpointError(
            f"{d} was written by a newer stylevar (format {raw['format_version']}); upgrade stylevar"
        )
    try:
        cfg = _with_patch_nums(VQVAEConfig.from_dict(raw["vqvae"]), patch_nums)
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{cfg_file}: invalid VQ-VAE configuration ({e})") from None
    weights = d / VAE_WEIGHTS
    if not weights.exists():
        raise CheckpointError(f"{weights} is missing; the folder is incomplete")
    return build_vqvae(cfg, read_file(weights), weights)


def load_vqvae(
    path: str | os.PathLike, *, patch_nums: Sequence[int] | None = None, allow_pickle: bool = False
) -> VQVAE:
    """Load a VQ-VAE (float32, CPU, eval mode) from any of:

    * a tokenizer folder written by :func:`save_vqvae` (``run_dir/final`` of ``stylevar train-tokenizer``);
    * our full checkpoint folder (``config.json`` with ``"format": "stylevar"``): its VQ-VAE;
    * an upstream VQ-VAE file (``vae_ch160v4096z32.pth``, a plain state dict; configuration read
      off the tensor shapes, ``patch_nums`` default VAR's 256 px scales), or a folder holding it;
    * a tokenizer training checkpoint (``checkpoints/last.pt``).

    ``patch_nums`` replaces the stored scales (the weights do not depend on them). Errors are
    one-line :class:`CheckpointError` messages naming the file.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"VQ-VAE not found: {p}")
    if p.is_dir():
        return _load_vqvae_dir(p, patch_nums, allow_pickle)
    obj = read_file(p, allow_pickle=allow_pickle)
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        cfg = _with_patch_nums(VQVAEConfig.from_dict(obj["config"]["vqvae"]), patch_nums)
        return build_vqvae(cfg, obj["model"], p).float()
    trainer = obj.get("trainer") if isinstance(obj, dict) else None
    if isinstance(trainer, dict) and isinstance(trainer.get("vae_local"), dict):  # upstream SFT trainer file
        sd = extract_state_dict(trainer["vae_local"], p)
    else:
        sd = extract_state_dict(obj, p)
    kind = classify(sd)
    if kind != "vqvae":
        raise CheckpointError(
            f"{p} is not a VQ-VAE checkpoint (its weights look like: {kind}); give a tokenizer folder, "
            f"a stylevar checkpoint folder or a VQ-VAE file such as {VAE_FILENAME}"
        )
    cfg = infer_vqvae_config(sd, tuple(patch_nums) if patch_nums is not None else DEFAULT_PATCH_NUMS)
    return build_vqvae(cfg, sd, p).float()


# ---------------------------------------------------------------------------------------- trainer
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


class TokenizerTrainer:
    """Trains a :class:`VQVAE` on images in [-1, 1] (see the module docstring for the objective).

    Args:
        vae: the model to train (fresh, or loaded with :func:`load_vqvae`); moved to ``device``.
        train_set: yields (3, R, R) tensors in [-1, 1] with R = ``vae.config.resolution``
            (e.g. :class:`ImageFolderDataset`), or tuples/dicts holding one; ``set_epoch`` is
            called when present.
        run_dir: checkpoints, ``metrics.jsonl``, ``tb/`` and ``final/`` go here.
        val_set: optional; validated at epoch ends (and every ``val_every`` steps).
        vgg_weights: torchvision ``vgg16-397923af.pth`` for ``perceptual_weight`` > 0.
    """

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
        self.cfg = cfg = config or TokenizerConfig()
        self.device = torch.device(device)
        self.rank, self.world = world()
        self.vae = vae.to(self.device).float().train().requires_grad_(True)
        self.train_set, self.val_set = train_set, val_set
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        if self.rank == 0:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.resolution = vae.config.resolution
        self.global_batch = cfg.batch * cfg.grad_accum * self.world
        self.batches_per_epoch = len(train_set) // self.global_batch
        if self.batches_per_epoch < 1:
            raise ConfigError(
                f"the training set has {len(train_set)} images, fewer than one global batch "
                f"({self.global_batch}); lower batch/grad_accum or add images"
            )
        self.total_steps = cfg.max_steps or cfg.epochs * self.batches_per_epoch
        self.warmup = cfg.warmup_steps if cfg.warmup_steps >= 0 else max(0, round(0.02 * self.total_steps))
        # 1. perceptual loss (frozen VGG16, outside the trained model and its checkpoints)
        self.perceptual: VGGPerceptualLoss | None = None
        if cfg.perceptual_weight > 0:
            if vgg_weights is None:
                raise CheckpointError(
                    f"perceptual_weight={cfg.perceptual_weight} needs VGG16 weights: download torchvision's "
                    f"{VGG_FILENAME} ({VGG_URL}) and pass its path (--vgg-weights PATH)"
                )
            if self.resolution < 16:
                raise ConfigError(
                    f"the perceptual loss needs images of at least 16 px (VGG16 pools 4 times), not {self.resolution}"
                )
            self.perceptual = VGGPerceptualLoss(vgg_weights).to(self.device)
        elif vgg_weights is not None:
            logger.warning("perceptual_weight is 0: the VGG16 weights %s are not used", vgg_weights)
        # 2. model step (DDP under torchrun)
        self.forward_module = _TrainForward(self.vae, cfg.precision)
        self.net: nn.Module = self.forward_module
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            q = self.vae.quantize  # with few scales some of the shared phi convs are never used
            used = {id(q.phi(si)) for si in range(q.num_scales)}
            unused = any(id(m) not in used for m in q.quant_resi.modules() if isinstance(m, nn.Conv2d))
            self.net = DDP(self.forward_module, device_ids=ids, find_unused_parameters=unused)
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
        # 4. run state
        self.state = TokenizerState()
        #: optimizer steps since each code was last hit
        self.codebook_age = torch.zeros(vae.config.vocab_size, dtype=torch.long)
        self.history: list[dict] = []
        self.logger = RunLogger(self.run_dir, self.rank)
        self.stopped_by: int | None = None  #: the signal that stopped the last fit(), if any
        self.final_dir: Path | None = None
        self._validated_at = -1

    # ------------------------------------------------------------------------------ data
    def _batches(self, epoch: int, start: int) -> Iterator[list[torch.Tensor]]:
        """This process's micro-batches of global batches ``start..`` of ``epoch``, grouped per step."""
        cfg = self.cfg
        order = epoch_permutation(len(self.train_set), cfg.seed, epoch)
        per_rank = cfg.batch * cfg.grad_accum
        indices: list[int] = []
        for b in range(start, self.batches_per_epoch):
            chunk = order[b * self.global_batch : (b + 1) * self.global_batch]
            indices.extend(chunk[self.rank * per_rank : (self.rank + 1) * per_rank])
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        loader = DataLoader(
            torch.utils.data.Subset(self.train_set, indices),
            batch_size=cfg.batch,
            shuffle=False,
            num_workers=cfg.num_workers,
            generator=torch.Generator().manual_seed(cfg.seed),  # never draws from the global RNG
            pin_memory=self.device.type == "cuda",
        )
        group: list[torch.Tensor] = []
        for mb in loader:
            group.append(_images(mb))
            if len(group) == cfg.grad_accum:
                yield group
                group = []

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

    def _optimizer_step(self, group: list[torch.Tensor]) -> dict | None:
        """One optimizer step over ``group``; None when skipped for a non-finite loss."""
        self.vae.train()
        self.optimizer.zero_grad(set_to_none=True)
        n = len(group)
        sums: dict[str, torch.Tensor] = {}
        hits = torch.zeros(self.vae.config.vocab_size, device=self.device)
        f = torch.empty(0)
        for i, img in enumerate(group):
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
        if not math.isfinite(rec["loss"]):
            self.optimizer.zero_grad(set_to_none=True)
            self.state.skipped_steps += 1
            msg = f"non-finite loss ({rec['loss']}) at step {self.state.step}"
            if self.cfg.on_nonfinite == "stop":
                path = self.save("last")
                raise NonFiniteLossError(
                    f"{msg}; stopped, last good state saved in {path or self.ckpt_dir / 'last.pt'}; lower the "
                    "learning rate, use fp32, check the data, or pass on_nonfinite=skip (--on-nonfinite skip)"
                )
            logger.warning("%s: step skipped (%d so far)", msg, self.state.skipped_steps)
            self.logger.log(
                {
                    "step": self.state.step,
                    "skipped": self.state.skipped_steps,
                    "reason": f"non-finite loss ({rec['loss']})",
                }
            )
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

    # ------------------------------------------------------------------------------ checkpoints
    def _checkpoint(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.vae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "state": dataclasses.asdict(self.state),
            "codebook_age": self.codebook_age.clone(),
            "quantizer_record_hit": int(self.vae.quantize.record_hit),
            "rng": capture_rng(),
            "config": {
                "tokenizer": self.cfg.to_dict(),
                "vqvae": self.vae.config.to_dict(),
                "world_size": self.world,
            },
        }

    def save(self, kind: str = "last") -> Path | None:
        """Write ``last``/``best``/``rolling`` (``step-<N>.pt``) checkpoints (rank 0), atomically."""
        if self.rank != 0:
            return None
        return save_checkpoint(
            self.ckpt_dir, self._checkpoint(), kind, step=self.state.step, keep_rolling=self.cfg.keep_rolling
        )

    def resume(self, path: str | os.PathLike | None = None) -> bool:
        """Load ``path`` (default ``checkpoints/last.pt`` when present); False when there is nothing to resume."""
        p = resume_path(path, self.ckpt_dir)
        if p is None:
            return False
        ck = load_training_checkpoint(p, CHECKPOINT_FORMAT, "tokenizer training")
        if ck["config"]["vqvae"] != self.vae.config.to_dict():
            raise CheckpointError(
                f"{p}: written for another VQ-VAE configuration; resume with the same model"
            )
        changed = sorted(k for k, v in ck["config"]["tokenizer"].items() if self.cfg.to_dict().get(k, v) != v)
        if changed or ck["config"].get("world_size", 1) != self.world:
            logger.warning(
                "resuming %s with changed settings (%s); the run will differ from an uninterrupted one",
                p,
                ", ".join(
                    changed + (["world_size"] if ck["config"].get("world_size", 1) != self.world else [])
                ),
            )
        self.vae.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scaler.load_state_dict(ck["scaler"])
        self.state = TokenizerState(**ck["state"])
        self.codebook_age = ck["codebook_age"].clone().long()
        self.vae.quantize.record_hit = int(ck.get("quantizer_record_hit", 0))
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
        if self.rank == 0:
            self.history.append(rec)
        self.logger.log(rec)

    def fit(self, *, progress: bool = True, stop_after: int | None = None) -> TokenizerState:
        """Train to the end (or ``stop_after`` more steps), saving as configured; returns the state.

        At the end the tokenizer is exported to ``run_dir/final`` (:func:`save_vqvae`). On
        SIGTERM/SIGINT ``last.pt`` is saved, ``stopped_by`` is set to the signal and fit returns.
        """
        cfg = self.cfg
        self.stopped_by = None
        bar = None
        if progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=self.state.step, desc="tokenizer", dynamic_ncols=True)
        if self.state.step == 0 and self.state.batch == 0 and self.state.epoch == 0:
            torch.manual_seed(cfg.seed * 1000 + self.rank)  # a fresh run: model randomness from the seed
            random.seed(cfg.seed * 1000 + self.rank)
        done_here = 0
        try:
            with StopSignals() as stop:
                while self.state.step < self.total_steps:
                    epoch = self.state.epoch
                    t0, imgs = time.perf_counter(), 0
                    for group in self._batches(epoch, self.state.batch):
                        rec = self._optimizer_step(group)
                        self.state.batch += 1
                        done_here += 1
                        if rec is not None:
                            self.state.step += 1
                            imgs += self.global_batch
                            rec.update(
                                step=self.state.step,
                                epoch=epoch,
                                imgs_per_s=imgs / (time.perf_counter() - t0),
                            )
                            if self.state.step % cfg.log_every == 0 or self.state.step == self.total_steps:
                                self._log(rec)
                            if bar is not None:
                                bar.update(1)
                                bar.set_postfix(
                                    loss=f"{rec['loss']:.4f}",
                                    lr=f"{rec['lr']:.2e}",
                                    use=f"{rec['usage']:.0%}",
                                    ips=f"{rec['imgs_per_s']:.1f}",
                                )
                            if cfg.val_every and self.state.step % cfg.val_every == 0:
                                self._validate_and_keep_best()
                            if cfg.save_every and self.state.step % cfg.save_every == 0:
                                self.save("last")
                                self.save("rolling")
                        received = self._agreed_signal(stop.received)
                        if received is not None:
                            self.save("last")
                            self.stopped_by = received
                            logger.warning(
                                "signal %d: saved %s and stopped", received, self.ckpt_dir / "last.pt"
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
                    if (
                        stop_after is not None
                        and done_here >= stop_after
                        and self.state.step < self.total_steps
                    ):
                        return self.state
                self._validate_and_keep_best()  # the final model (once, if an epoch end did not)
        finally:
            if bar is not None:
                bar.close()
            self.logger.close()
        if self.rank == 0:
            info = {
                "trained_by": "stylevar train-tokenizer",
                "steps": self.state.step,
                "epochs": self.state.epoch,
                "resolution": self.resolution,
                "tokenizer": cfg.to_dict(),
            }
            if self.history and any(k.startswith("val_") for k in self.history[-1]):
                info["val"] = {k: v for k, v in self.history[-1].items() if k.startswith("val_")}
            self.final_dir = save_vqvae(self.run_dir / "final", self.vae, info=info)
        if self.world > 1:
            dist.barrier()  # every process returns once the export is complete
        return self.state

    def _agreed_signal(self, received: int | None) -> int | None:
        """The stop signal, agreed by all processes (a signal seen by any one stops all at the same step)."""
        if self.world == 1:
            return received
        flag = torch.tensor([received or 0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None

    def _validate_and_keep_best(self) -> None:
        if self._validated_at == self.state.step:  # val_every and an epoch end on the same step
            return
        metrics = self.validate()
        if not metrics:
            return
        self._validated_at = self.state.step
        self._log({"step": self.state.step, "epoch": self.state.epoch, **metrics})
        if metrics["val_loss"] < self.state.best_val:
            self.state.best_val = metrics["val_loss"]
            self.save("best")


# ---------------------------------------------------------------------------------------- one call (CLI)
def _init_distributed(device: torch.device) -> tuple[torch.device, bool]:
    """Under ``torchrun`` (WORLD_SIZE > 1): start the process group (NCCL on CUDA, gloo on CPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return device, False
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, True


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
        data: image files/folders and triplet sources (:func:`collect_images`).
        config: :class:`TokenizerConfig` fields to set; with ``resume`` they override the run's own.
        vqvae: :class:`VQVAEConfig` fields of a new model (``patch_nums`` also re-scales ``init``);
            with ``resume``/``init`` other fields must agree with the stored model.
        resolution: image side; checked against the VQ-VAE (patch_nums[-1] x downsampling).
        init: start from this VQ-VAE (:func:`load_vqvae`: tokenizer folder, checkpoint folder, .pth).
        resume: continue ``run_dir/checkpoints/last.pt``; without it an existing run is refused.
        val_fraction: share of the images held out for validation (seeded by ``config['seed']``).
    Returns the trainer after :meth:`TokenizerTrainer.fit` (``final_dir``, ``stopped_by``, ``state``).
    """
    from ..pipeline import resolve_device

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
        vae = load_vqvae(init, patch_nums=vqvae.pop("patch_nums", None), allow_pickle=allow_pickle)
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

    paths = collect_images(data, triplets=triplets, recursive=recursive)
    train_paths, val_paths = split_images(paths, val_fraction, seed=tcfg.seed)
    train_set = ImageFolderDataset(train_paths, R, fit=fit, hflip=hflip, seed=tcfg.seed, on_bad=on_bad)
    val_set = ImageFolderDataset(val_paths, R, fit=fit, on_bad=on_bad) if val_paths else None

    dev, started = _init_distributed(resolve_device(device))
    try:
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
        elif trainer.rank == 0:
            tmp = data_file.with_name(f".{data_file.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(listing, indent=1) + "\n")
            os.replace(tmp, data_file)
        trainer.fit(progress=progress)
    except BaseException:
        if started:
            destroy(wait=False)
        raise
    if started:
        destroy()
    return trainer


def _check_fixed(cfg: VQVAEConfig, given: dict[str, Any], why: str) -> None:
    have = cfg.to_dict()
    for k, v in given.items():
        if k not in have:
            raise ConfigError(f"unknown VQ-VAE setting {k!r}")
        if (list(v) if isinstance(v, tuple) else v) != have[k]:
            raise ConfigError(f"{why} ({k}={have[k]}); drop --{k.replace('_', '-')} {v}")
