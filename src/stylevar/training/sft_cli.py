"""The ``stylevar sft`` command: data, initialisation and launch around :class:`~stylevar.training.sft.SFTTrainer`.

``stylevar sft DATA [DATA ...] -o RUN_DIR (--init-var VAR.pth --vae VAE | --init CKPT | --depth N --vae VAE)``

* DATA: OmniStyle-150K / ImagePulse roots or CSV/JSONL manifests (:func:`stylevar.data.scan`),
  concatenated. Every file is checked once (:func:`~stylevar.data.validate_triplets`), each
  source is split with a seeded shuffle (its ``train_files.txt``/``val_files.txt`` honoured) and
  the split is written to ``RUN_DIR/split.json``; ``--resume`` reuses that file.
* Start: ``--init-var`` a vanilla VAR checkpoint (the paper's mapping, :func:`init_from_var`),
  ``--init`` any StyleVAR that :func:`~stylevar.checkpoints.load_pretrained` reads (our folder, an
  upstream ``.pth``, the Hub), or ``--depth`` a new model (VAR's ``init_weights``).
* Under ``torchrun`` the command creates the process group (NCCL on CUDA, gloo on the CPU) and
  destroys it at the end; rank 0 checks and splits the data and reports; ``--fsdp`` shards the
  model (``SFTConfig.parallel="fsdp"``).

The library side prints nothing: progress lines go through the ``say`` callback the CLI passes
(called on rank 0 only).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..cli import _alpha_arg
from ..errors import CheckpointError, ConfigError, StyleVARError

logger = logging.getLogger(__name__)

Say = Callable[[str], None]


class OtherRankFailed(StyleVARError):
    """Raised on ranks > 0 when rank 0 failed while preparing the run (rank 0 reports the reason)."""


# ------------------------------------------------------------------------------------------ arguments
#: help of the flags that set :class:`SFTConfig` fields (their defaults come from the dataclass)
_SFT_HELP = {
    "epochs": "passes over the training set (--max-steps overrides)",
    "max_steps": "stop after this many optimizer steps (0 = by epochs)",
    "micro_batch": "images per process per forward",
    "grad_accum": "micro-batches per optimizer step; global batch = micro x accum x processes",
    "lr": "peak learning rate (0 = base-lr x global batch / 256, upstream's rule)",
    "base_lr": "learning rate per 256 images when --lr is 0 (upstream's tblr)",
    "weight_decay": "AdamW weight decay (not on biases, norms, embeddings)",
    "grad_clip": "max global gradient norm (0 = off)",
    "schedule": "lr schedule: lin0 (published), step (the paper's 1/5 drop at 60%%), cosine, constant",
    "warmup_steps": "linear warm-up steps (< 0: 2%% of the steps)",
    "label_smoothing": "label smoothing of the cross-entropy",
    "scale_weight_power": "per-token loss weight (h*w)^-p per scale (0 = plain mean, 0.7 = PANW)",
    "precision": "fp32, bf16 (autocast) or fp16 (autocast + grad scaler; not with --fsdp)",
    "alpha_jitter": "std of Gaussian noise on each sample's per-scale alpha",
    "style_noise": "std of Gaussian noise on the style tokens' VQ features (StyleAR)",
    "seed": "seed of the data order, augmentations, model randomness and a new model's init",
    "val_every": "validate every N steps (0 = at epoch ends)",
    "save_every": "write checkpoints/last.pt and a rolling step-N.pt every N steps",
    "keep_rolling": "rolling checkpoints kept",
    "num_workers": "data-loading worker processes per training process",
    "encoder_bn": "ResNet BatchNorm: frozen running statistics, or train (batch statistics, as upstream)",
    "on_nonfinite": "a NaN/inf loss: stop (save, exit 1) or skip the step",
    "log_every": "write metrics.jsonl every N steps",
}
_CHOICES = {
    "schedule": ("lin0", "step", "cosine", "constant"),
    "precision": ("fp32", "bf16", "fp16"),
    "encoder_bn": ("frozen", "train"),
    "on_nonfinite": ("stop", "skip"),
}


def _ints_arg(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in re.split(r"[,\s]+", text.strip()) if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_config_flags(g: Any, config_cls: type, helps: dict[str, str], choices: dict[str, tuple]) -> None:
    """One ``--field-name`` flag per entry of ``helps``, typed and defaulted from the dataclass ``config_cls``."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    for name, text in helps.items():
        default = fields[name].default
        kw: dict[str, Any] = {
            "type": type(default),
            "default": default,
            "help": f"{text} (default: %(default)s)",
        }
        if name in choices:
            kw["choices"] = choices[name]
        g.add_argument("--" + name.replace("_", "-"), **kw)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``stylevar sft``."""
    from .sft import SFTConfig

    p.add_argument(
        "data", nargs="+", metavar="DATA", help="OmniStyle/ImagePulse roots or CSV/JSONL manifests"
    )
    p.add_argument(
        "-o", "--output", required=True, metavar="RUN_DIR", help="run folder (checkpoints, logs, final/)"
    )

    g = p.add_argument_group("start from (one of)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--init-var", metavar="VAR.pth", help="vanilla VAR checkpoint (var_d16/20/24/30.pth); needs --vae"
    )
    src.add_argument(
        "--init",
        metavar="CHECKPOINT",
        help="a StyleVAR: our checkpoint folder, an upstream .pth or a Hub repo id",
    )
    src.add_argument("--depth", type=int, help="a new model of this depth, randomly initialised; needs --vae")
    g.add_argument(
        "--vae",
        help="VQ-VAE: an upstream .pth (vae_ch160v4096z32.pth), our checkpoint folder or a tokenizer folder",
    )
    g.add_argument(
        "--resnet-weights", metavar="PATH", help="ImageNet ResNet-18 file for both encoders (new models)"
    )
    g.add_argument(
        "--encoder-dim",
        type=int,
        metavar="N",
        help="new models (--init-var, --depth): the ResNet encoders' output width; 512 (default) is "
        "ResNet-18, smaller multiples of 8 narrow every stage (small models from scratch)",
    )
    g.add_argument(
        "--variant", choices=("grpo", "sft"), default=None, help="with --init and a Hub id: which release"
    )
    g.add_argument(
        "--alpha",
        type=_alpha_arg,
        default=None,
        help="per-scale alpha: preset (sft, paper) or values (default: sft for new models, the checkpoint's for --init)",
    )
    g.add_argument(
        "--patch-nums",
        type=_ints_arg,
        default=None,
        help="token scales of a --depth model (default: the VQ-VAE's)",
    )
    g.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow .pth files with pickled objects (trusted files)",
    )

    g = p.add_argument_group("data")
    g.add_argument("--layout", choices=("auto", "omnistyle", "imagepulse", "manifest"), default="auto")
    g.add_argument(
        "--on-bad-file",
        choices=("fail", "skip"),
        default="fail",
        help="a missing/unreadable image: stop naming it (default), or leave its triplets out",
    )
    g.add_argument("--full-check", action="store_true", help="decode every image in the check (slow)")
    g.add_argument(
        "--val-fraction", type=float, default=0.05, help="validation share of each source (default 0.05)"
    )
    g.add_argument(
        "--split-seed", type=int, default=42, help="seed of the train/val split (default 42, upstream's)"
    )
    g.add_argument(
        "--resolution", type=int, default=None, help="image side (default and only value: the VQ-VAE's)"
    )
    g.add_argument(
        "--fit", choices=("squash", "crop"), default="squash", help="squash (published) or centre crop"
    )
    g.add_argument(
        "--content-rotation", type=float, default=0.0, help="max content rotation, degrees (paper)"
    )
    g.add_argument(
        "--content-brightness", type=float, default=0.0, help="max relative content brightness change"
    )
    g.add_argument(
        "--style-crop",
        type=float,
        default=1.0,
        help="smallest side fraction of a random style crop (1 = off)",
    )

    add_config_flags(p.add_argument_group("training (SFTConfig)"), SFTConfig, _SFT_HELP, _CHOICES)

    g = p.add_argument_group("run")
    g.add_argument(
        "--device",
        default="auto",
        help="auto (cuda:LOCAL_RANK when CUDA is present, else cpu), cpu, cuda, cuda:N",
    )
    g.add_argument(
        "--fsdp", action="store_true", help="shard the model with FSDP under torchrun (large depths)"
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue RUN_DIR/checkpoints/last.pt (and reuse RUN_DIR/split.json)",
    )
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def sft_config(args: argparse.Namespace):
    """The :class:`SFTConfig` of parsed flags."""
    from .sft import SFTConfig

    values = {name: getattr(args, name) for name in _SFT_HELP}
    return SFTConfig(**values, parallel="fsdp" if args.fsdp else "ddp")


# ------------------------------------------------------------------------------------------ loading
def load_vae(path: str | os.PathLike, patch_nums: Sequence[int] | None = None, *, allow_pickle: bool = False):
    """The ``--vae`` VQ-VAE (float32, CPU, eval): an upstream ``.pth``/``.safetensors`` state dict, our full
    checkpoint folder (its VQ-VAE) or a tokenizer folder (``config.json`` ``"format": "stylevar-vqvae"``).

    ``patch_nums`` replaces the stored scales (the weights do not depend on them); upstream files
    store none and get VAR's 256 px scales by default. (``stylevar.training.tokenizer.load_vqvae``
    reads the same sources and more; this function can defer to it.)
    """
    from ..checkpoints import (
        CONFIG_NAME,
        VAE_WEIGHTS,
        build_vqvae,
        classify,
        extract_state_dict,
        infer_vqvae_config,
        read_file,
    )
    from ..config import DEFAULT_PATCH_NUMS, VQVAEConfig

    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(
            f"VQ-VAE not found: {p}; pass --vae with a VQ-VAE .pth file or a checkpoint folder"
        )
    if p.is_dir():
        cfg_file = p / CONFIG_NAME
        try:
            raw = json.loads(cfg_file.read_text())
            if raw.get("format") not in ("stylevar", "stylevar-vqvae"):
                raise KeyError("format")
            cfg = VQVAEConfig.from_dict(raw["vqvae"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ConfigError):
            raise CheckpointError(
                f"{p}: not a stylevar checkpoint or tokenizer folder (no valid {CONFIG_NAME}); "
                "pass --vae with a VQ-VAE .pth file or such a folder"
            ) from None
        if patch_nums is not None and tuple(patch_nums) != cfg.patch_nums:
            cfg = dataclasses.replace(cfg, patch_nums=tuple(patch_nums))
        return build_vqvae(cfg, read_file(p / VAE_WEIGHTS), p / VAE_WEIGHTS).float()
    sd = extract_state_dict(read_file(p, allow_pickle=allow_pickle), p)
    kind = classify(sd)
    if kind != "vqvae":
        raise CheckpointError(
            f"{p} is not a VQ-VAE checkpoint (its weights look like: {kind}); --vae takes e.g. vae_ch160v4096z32.pth"
        )
    cfg = infer_vqvae_config(sd, tuple(patch_nums) if patch_nums is not None else DEFAULT_PATCH_NUMS)
    return build_vqvae(cfg, sd, p).float()


def _need_vae(args: argparse.Namespace, flag: str) -> str:
    if not args.vae:
        raise ConfigError(
            f"{flag} needs --vae: the VQ-VAE .pth (vae_ch160v4096z32.pth) or a checkpoint folder"
        )
    return args.vae


def _load_resnets(model, path: str) -> None:
    from ..models.encoders import load_encoder_weights
    from .var_init import load_resnet18_weights

    load_encoder_weights(model, load_resnet18_weights(Path(path)))


def build_model(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """(StyleVAR, VQ-VAE, a one-line description) from ``--init-var`` / ``--init`` / ``--depth``.

    Random parts are drawn after ``torch.manual_seed(args.seed)``, so every process builds the same model.
    """
    from ..checkpoints import classify, extract_state_dict, load_pretrained, read_file
    from ..config import StyleVARConfig
    from ..models import StyleVAR
    from .var_init import init_from_var, var_config_from_state_dict

    torch.manual_seed(args.seed)
    if args.patch_nums is not None and args.depth is None:
        raise ConfigError("--patch-nums applies to --depth only (other starts take the checkpoint's scales)")
    if args.encoder_dim is not None and args.init:
        raise ConfigError("--encoder-dim builds new models (--init-var, --depth); --init keeps its encoders")
    enc = {} if args.encoder_dim is None else {"style_enc_dim": args.encoder_dim}
    if args.resnet_weights and args.init:
        raise ConfigError(
            "--resnet-weights initialises new models (--init-var, --depth); --init keeps its encoders"
        )
    if args.init_var:
        path = Path(args.init_var).expanduser()
        sd = extract_state_dict(read_file(path, allow_pickle=args.trust_checkpoint), path)
        kind = classify(sd)
        if kind != "var":
            hint = "; start from it with --init" if kind == "stylevar" else ""
            raise CheckpointError(f"{path} is not a vanilla VAR checkpoint (it looks like: {kind}){hint}")
        cfg = var_config_from_state_dict(sd, alpha=args.alpha if args.alpha is not None else "sft", **enc)
        vae = load_vae(_need_vae(args, "--init-var"), cfg.patch_nums, allow_pickle=args.trust_checkpoint)
        _check_pair(cfg, vae, args.vae)
        model = StyleVAR(cfg)
        model.init_weights()
        report = init_from_var(model, sd, resnet_weights=args.resnet_weights)
        return model, vae, f"initialised from VAR {path.name}: {report.summary()}"
    if args.init:
        vae_path = Path(args.vae).expanduser() if args.vae else None
        ckpt = load_pretrained(
            args.init,
            vae=vae_path if vae_path is not None and vae_path.is_file() else None,
            variant=args.variant,
            alpha=args.alpha,
            allow_pickle=args.trust_checkpoint,
        )
        model, vae = ckpt.model, ckpt.vae
        if vae_path is not None and vae_path.is_dir():
            vae = load_vae(vae_path, model.config.patch_nums)
            _check_pair(model.config, vae, vae_path)
        return model, vae, f"continuing from {args.init}"
    if args.depth < 1:
        raise ConfigError(f"--depth must be >= 1, got {args.depth}")
    vae = load_vae(_need_vae(args, "--depth"), args.patch_nums, allow_pickle=args.trust_checkpoint)
    vc = vae.config
    cfg = StyleVARConfig(
        depth=args.depth,
        vocab_size=vc.vocab_size,
        z_channels=vc.z_channels,
        patch_nums=vc.patch_nums,
        alpha=args.alpha if args.alpha is not None else "sft",
        **enc,
    )
    model = StyleVAR(cfg)
    model.init_weights()
    if args.resnet_weights:
        _load_resnets(model, args.resnet_weights)
    n = sum(p.numel() for p in model.parameters())
    return model, vae, f"new depth-{args.depth} model ({n / 1e6:.1f}M parameters), random init"


def _check_pair(cfg, vae, vae_path) -> None:
    try:
        cfg.check_vqvae(vae.config)
    except ConfigError as e:
        raise CheckpointError(f"{vae_path} does not fit the model: {e}") from None


# ------------------------------------------------------------------------------------------ data
def prepare_data(args: argparse.Namespace, run_dir: Path, reuse_split: bool) -> tuple[list, list, str]:
    """(train, val, a one-line description): scan, check and split DATA, or reuse ``RUN_DIR/split.json``."""
    from ..data import load_split, save_split, scan, split_triplets, validate_triplets

    split_file = run_dir / "split.json"
    if reuse_split and split_file.exists():
        train, val = load_split(split_file)
        return train, val, f"reusing {split_file}: {len(train)} train, {len(val)} validation triplets"
    per_source = [scan(Path(d).expanduser(), args.layout) for d in args.data]
    everything = [t for ts in per_source for t in ts]
    kept, report = validate_triplets(everything, on_bad=args.on_bad_file, full=args.full_check)
    usable = set(kept)
    train, val = [], []
    for source, ts in zip(args.data, per_source):
        ts = [t for t in ts if t in usable]
        if not ts:
            continue
        root = Path(source).expanduser()
        tr, va = split_triplets(
            ts, val_fraction=args.val_fraction, seed=args.split_seed, root=root if root.is_dir() else None
        )
        train += tr
        val += va
    save_split(
        split_file,
        train,
        val,
        sources=[str(Path(d).expanduser().resolve()) for d in args.data],
        val_fraction=args.val_fraction,
        seed=args.split_seed,
        validation=report.to_dict(),
    )
    return (
        train,
        val,
        f"{report.summary()}; {len(train)} train, {len(val)} validation triplets -> {split_file}",
    )


# ------------------------------------------------------------------------------------------ run
def on_rank0(fn: Callable[[], Any], rank: int, world: int) -> Any:
    """``fn()`` on rank 0 (checking the run folder, scanning data), its result broadcast to the other
    ranks, which wait with a long timeout; a failure there raises :class:`OtherRankFailed` on the others."""
    from . import distributed as D

    if world == 1:
        return fn()
    group = D.patient_group()
    outcome: Any = None
    if rank == 0:
        try:
            outcome = ("ok", fn())
        except Exception as e:  # tell the other ranks, then report it here
            D.broadcast_object(("error", f"{type(e).__name__}: {e}"), group)
            raise
    outcome = D.broadcast_object(outcome, group)
    if outcome[0] == "error":
        raise OtherRankFailed(f"rank 0 failed while preparing the run ({outcome[1]})")
    return outcome[1]


@dataclass
class SFTRun:
    """What ``stylevar sft`` did."""

    run_dir: Path
    final: Path | None  #: RUN_DIR/final, None when the run stopped early (signal)
    step: int
    total_steps: int
    rank: int


def _jsonable(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def launch(body: Callable[..., Any], args: argparse.Namespace, say: Say) -> Any:
    """``body(args, device, rank, world, say)`` inside the ``torchrun`` process group (created from the
    environment when present, destroyed after); ``say`` is silenced on ranks > 0."""
    from . import distributed as D

    device = D.resolve_device(args.device)
    created = D.init_from_env(device)
    try:
        rank, world = D.world()
        result = body(args, device, rank, world, say if rank == 0 else (lambda _m: None))
    except BaseException:
        if created:
            D.destroy(wait=False)
        raise
    if created:
        D.destroy()
    return result


def run_sft(args: argparse.Namespace, say: Say = lambda _m: None) -> SFTRun:
    """Everything ``stylevar sft`` does, from parsed flags; ``say`` gets progress lines (rank 0)."""
    return launch(_run, args, say)


def _run(args: argparse.Namespace, device: torch.device, rank: int, world: int, say: Say) -> SFTRun:
    from ..data import TripletDataset, TripletTransform
    from .sft import SFTTrainer

    run_dir = Path(args.output).expanduser()
    last = run_dir / "checkpoints" / "last.pt"
    cfg = sft_config(args)  # bad values fail here, on every rank alike
    if args.encoder_dim is not None and (args.encoder_dim < 8 or args.encoder_dim % 8):
        raise ConfigError(f"--encoder-dim must be a positive multiple of 8 (e.g. 64), got {args.encoder_dim}")

    # 1. rank 0 checks the run folder and the data; the others wait (long timeout) and get the lists
    def prepare() -> tuple[bool, list, list, str]:
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"{run_dir} exists and is not a folder; choose another -o RUN_DIR")
        if last.exists() and not args.resume:
            raise ConfigError(
                f"{last} exists: pass --resume to continue that run, or choose another -o RUN_DIR"
            )
        resuming = args.resume and last.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        return (resuming, *prepare_data(args, run_dir, reuse_split=args.resume))

    resuming, train, val, data_msg = on_rank0(prepare, rank, world)
    say(f"data: {data_msg}")
    if args.resume and not resuming:
        say(f"nothing to resume in {run_dir} (no checkpoints/last.pt): starting a new run")

    # 2. model and tokenizer (every rank builds the same one)
    model, vae, how = build_model(args)
    say(f"model: {how}")
    res = vae.config.resolution
    if args.resolution is not None and args.resolution != res:
        raise ConfigError(
            f"--resolution {args.resolution} does not match the VQ-VAE's {res} px (its last token scale covers "
            f"{res} px); leave --resolution out or use a VQ-VAE/patch_nums made for {args.resolution} px"
        )
    tf = TripletTransform(
        resolution=res,
        fit=args.fit,
        content_rotation=args.content_rotation,
        content_brightness=args.content_brightness,
        style_crop=args.style_crop,
    )
    train_set = TripletDataset(train, tf, train=True, seed=cfg.seed, on_bad=args.on_bad_file)
    val_set = TripletDataset(val, tf, on_bad=args.on_bad_file) if val else None

    # 3. trainer, resume, record the resolved command, train
    trainer = SFTTrainer(model, vae, train_set, run_dir, cfg, val_set=val_set, device=device)
    if resuming:
        trainer.resume(last)
        say(f"resumed {last} at step {trainer.state.step} of {trainer.total_steps}")
    if rank == 0:
        resolved = {
            "args": _jsonable({k: v for k, v in vars(args).items() if k != "func"}),
            "device": str(device),
            "world_size": world,
            "parallel": "fsdp" if trainer.fsdp else ("ddp" if world > 1 else "none"),
            "global_batch": trainer.global_batch,
            "peak_lr": trainer.peak_lr,
            "total_steps": trainer.total_steps,
            "warmup_steps": trainer.warmup,
            "sft": cfg.to_dict(),
            "transform": dataclasses.asdict(tf),
            "stylevar": model.config.to_dict(),
            "vqvae": vae.config.to_dict(),
            "init": how,
            "data": {"train": len(train), "val": len(val)},
        }
        tmp = run_dir / ".sft_args.json.tmp"
        tmp.write_text(json.dumps(resolved, indent=2) + "\n")
        os.replace(tmp, run_dir / "sft_args.json")
    say(
        f"training: {trainer.total_steps} steps, global batch {trainer.global_batch} "
        f"({cfg.micro_batch} x {cfg.grad_accum} x {world} process{'es' if world > 1 else ''}), peak lr "
        f"{trainer.peak_lr:.4g}, {cfg.precision}, on {device}"
        + (" with FSDP" if trainer.fsdp else (" with DDP" if world > 1 else ""))
    )
    state = trainer.fit(progress=not args.quiet)
    done = state.step >= trainer.total_steps
    return SFTRun(run_dir, run_dir / "final" if done else None, state.step, trainer.total_steps, rank)
