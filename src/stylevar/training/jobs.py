"""Whole training jobs, as ``stylevar sft`` and ``stylevar grpo`` run them: data, starting model, launch.

* :func:`run_sft` -- DATA (OmniStyle-150K / ImagePulse roots or CSV/JSONL manifests,
  :func:`stylevar.data.scan`) is checked once (:func:`~stylevar.data.validate_triplets`), each source
  split with a seeded shuffle (its ``train_files.txt``/``val_files.txt`` honoured) and the split written
  to ``RUN_DIR/split.json`` (``resume`` reuses it). The model starts from a vanilla VAR checkpoint
  (``init_var``: the paper's mapping, :func:`~stylevar.training.var_init.init_from_var`), any StyleVAR
  that :func:`stylevar.io.load_pretrained` reads (``init``), or a new model (``depth``).
* :func:`run_grpo` -- the same data handling; the SFT model from ``init``; the reward from its spec.

Under ``torchrun`` the job creates the process group itself (:func:`~.distributed.launch`); rank 0
checks the folder and the data while the others wait (:func:`~.distributed.on_rank0`). The library
prints nothing: progress lines go to the ``say`` callback (rank 0 only); the command line passes
``print``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import StyleVARConfig
from ..errors import CheckpointError, ConfigError
from ..files import atomic_write_json
from ..io import classify, extract_state_dict, load_pretrained, load_vqvae, read_file
from ..models import VQVAE, StyleVAR
from .config import GRPOConfig, SFTConfig
from .distributed import launch, on_rank0

logger = logging.getLogger(__name__)

Say = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


# ============================================================================================ data
@dataclass
class DataOptions:
    """How DATA becomes training and validation triplets (``stylevar sft`` / ``grpo`` flags of the same names)."""

    layout: str = "auto"  #: auto, omnistyle, imagepulse or manifest
    on_bad_file: str = "fail"  #: a missing/unreadable image: stop naming it, or leave its triplets out
    full_check: bool = False  #: decode every image in the check (slow)
    val_fraction: float = 0.05  #: validation share of each source
    split_seed: int = 42  #: seed of the train/val split (upstream's 42)
    fit: str = "squash"  #: squash (published) or centre crop


def prepare_data(
    sources: Sequence[str | Path], opts: DataOptions, run_dir: Path, reuse_split: bool
) -> tuple[list, list, str]:
    """(train, val, a one-line description): scan, check and split ``sources``, or reuse ``RUN_DIR/split.json``."""
    from ..data import load_split, save_split, scan, split_triplets, validate_triplets

    split_file = run_dir / "split.json"
    if reuse_split and split_file.exists():
        train, val = load_split(split_file)
        return train, val, f"reusing {split_file}: {len(train)} train, {len(val)} validation triplets"
    per_source = [scan(Path(d).expanduser(), opts.layout) for d in sources]
    everything = [t for ts in per_source for t in ts]
    kept, report = validate_triplets(everything, on_bad=opts.on_bad_file, full=opts.full_check)
    usable = set(kept)
    train, val = [], []
    for source, ts in zip(sources, per_source):
        ts = [t for t in ts if t in usable]
        if not ts:
            continue
        root = Path(source).expanduser()
        tr, va = split_triplets(
            ts, val_fraction=opts.val_fraction, seed=opts.split_seed, root=root if root.is_dir() else None
        )
        train += tr
        val += va
    save_split(
        split_file,
        train,
        val,
        sources=[str(Path(d).expanduser().resolve()) for d in sources],
        val_fraction=opts.val_fraction,
        seed=opts.split_seed,
        validation=report.to_dict(),
    )
    return (
        train,
        val,
        f"{report.summary()}; {len(train)} train, {len(val)} validation triplets -> {split_file}",
    )


def _prepare_run_dir(run_dir: Path, resume: bool) -> bool:
    """Check the run folder (rank 0); True when there is a run to resume."""
    last = run_dir / "checkpoints" / "last.pt"
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir} exists and is not a folder; choose another -o RUN_DIR")
    if last.exists() and not resume:
        raise ConfigError(f"{last} exists: pass --resume to continue that run, or choose another -o RUN_DIR")
    run_dir.mkdir(parents=True, exist_ok=True)
    return resume and last.exists()


def _jsonable(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _jsonable(dataclasses.asdict(v))
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


# ============================================================================================ SFT
@dataclass
class SFTStart:
    """Where an SFT run starts (``stylevar sft`` flags of the same names): exactly one of ``init_var``,
    ``init``, ``depth``."""

    init_var: str | None = None  #: vanilla VAR checkpoint (var_d16/20/24/30.pth); needs ``vae``
    init: str | None = None  #: a StyleVAR: our checkpoint folder, an upstream .pth or a Hub repo id
    depth: int | None = None  #: a new model of this depth, randomly initialised; needs ``vae``
    vae: str | None = None  #: VQ-VAE: an upstream .pth, our checkpoint folder or a tokenizer folder
    resnet_weights: str | None = None  #: ImageNet ResNet-18 file for both encoders (new models)
    encoder_dim: int | None = None  #: new models: the ResNet encoders' width (512 = ResNet-18)
    content_residual: bool = (
        False  #: new models: the direct content pathway (StyleVARConfig.content_residual)
    )
    #: new models: the style encoder, ``resnet`` (default) or ``clip_resampler`` (StyleVARConfig.style_encoder)
    style_encoder: str | None = None
    #: ``clip_resampler``: a CLIP model folder or Hub id (in the Hugging Face cache): the tower's sizes and
    #: vision weights; without it the tower (transformers' default ViT-B/32 sizes) starts random
    clip: str | None = None
    #: keep the CLIP tower's weights fixed (StyleAR trains the resampler only); None: fixed iff ``clip`` given
    freeze_clip: bool | None = None
    style_tokens: int | None = None  #: ``clip_resampler``: M (default 16)
    #: ``clip_resampler``: the style's VQ features join its tokens (``StyleVARConfig.style_vq_tokens``)
    style_vq_tokens: bool = False
    variant: str | None = None  #: with ``init`` and a Hub id: which release (grpo, sft)
    alpha: Any = None  #: per-scale alpha: a preset or values (default: sft for new models)
    patch_nums: tuple[int, ...] | None = None  #: token scales of a ``depth`` model (default: the VQ-VAE's)
    trust_checkpoint: bool = False  #: allow .pth files with pickled objects


@dataclass
class SFTJob:
    """Everything ``stylevar sft`` does, as data (see :func:`run_sft`)."""

    data: list[str]
    output: str | Path
    start: SFTStart
    config: SFTConfig = field(default_factory=SFTConfig)
    data_options: DataOptions = field(default_factory=DataOptions)
    resolution: int | None = None  #: checked against the VQ-VAE's (the only possible value)
    content_rotation: float = 0.0  #: max content rotation, degrees (the paper's augmentation)
    content_brightness: float = 0.0  #: max relative content brightness change
    style_crop: float = 1.0  #: smallest side fraction of a random style crop (1 = off)
    device: str = "auto"
    resume: bool = False
    progress: bool = True


@dataclass
class SFTRun:
    """What :func:`run_sft` did."""

    run_dir: Path
    final: Path | None  #: RUN_DIR/final, None when the run stopped early (signal)
    step: int
    total_steps: int
    rank: int


def _check_pair(cfg: StyleVARConfig, vae: VQVAE, vae_path: Any) -> None:
    try:
        cfg.check_vqvae(vae.config)
    except ConfigError as e:
        raise CheckpointError(f"{vae_path} does not fit the model: {e}") from None


def _need_vae(start: SFTStart, flag: str) -> str:
    if not start.vae:
        raise ConfigError(
            f"{flag} needs --vae: the VQ-VAE .pth (vae_ch160v4096z32.pth) or a checkpoint folder"
        )
    return start.vae


def check_start(start: SFTStart) -> None:
    """The start options that contradict each other, refused before anything is read or written."""
    given = [name for name in ("init_var", "init", "depth") if getattr(start, name) is not None]
    if len(given) != 1:
        raise ConfigError("start from exactly one of --init-var, --init and --depth")
    if start.patch_nums is not None and start.depth is None:
        raise ConfigError("--patch-nums applies to --depth only (other starts take the checkpoint's scales)")
    if start.encoder_dim is not None and start.init:
        raise ConfigError("--encoder-dim builds new models (--init-var, --depth); --init keeps its encoders")
    if start.encoder_dim is not None and (start.encoder_dim < 8 or start.encoder_dim % 8):
        raise ConfigError(
            f"--encoder-dim must be a positive multiple of 8 (e.g. 64), got {start.encoder_dim}"
        )
    if start.content_residual and start.init:
        raise ConfigError(
            "--content-residual builds new models (--init-var, --depth); --init keeps its layout"
        )
    if (
        start.style_encoder is not None or start.clip or start.style_tokens or start.style_vq_tokens
    ) and start.init:
        raise ConfigError(
            "--style-encoder, --clip, --style-tokens and --style-vq-tokens build new models (--init-var, --depth); "
            "--init keeps its encoder"
        )
    clip_model = (start.style_encoder or "resnet") == "clip_resampler"
    if (start.clip or start.style_tokens or start.style_vq_tokens) and not clip_model:
        raise ConfigError(
            "--clip, --style-tokens and --style-vq-tokens belong to --style-encoder clip_resampler"
        )
    if start.resnet_weights and clip_model:
        raise ConfigError(
            "--resnet-weights fills both ResNet encoders; with --style-encoder clip_resampler give --clip instead"
        )
    if start.resnet_weights and start.init:
        raise ConfigError(
            "--resnet-weights initialises new models (--init-var, --depth); --init keeps its encoders"
        )
    if start.depth is not None and start.depth < 1:
        raise ConfigError(f"--depth must be >= 1, got {start.depth}")


def build_sft_model(start: SFTStart, seed: int) -> tuple[StyleVAR, VQVAE, str]:
    """(StyleVAR, VQ-VAE, a one-line description) from ``init_var`` / ``init`` / ``depth``.

    Random parts are drawn after ``torch.manual_seed(seed)``, so every process builds the same model.
    """
    from ..models.encoders import load_encoder_weights
    from .var_init import init_from_var, load_resnet18_weights, var_config_from_state_dict

    check_start(start)
    torch.manual_seed(seed)
    enc: dict[str, Any] = {} if start.encoder_dim is None else {"style_enc_dim": start.encoder_dim}
    if start.content_residual:
        enc["content_residual"] = True
    clip = _style_encoder_options(start, enc)
    if start.init_var:
        path = Path(start.init_var).expanduser()
        sd = extract_state_dict(read_file(path, allow_pickle=start.trust_checkpoint), path)
        kind = classify(sd)
        if kind != "var":
            hint = "; start from it with --init" if kind == "stylevar" else ""
            raise CheckpointError(f"{path} is not a vanilla VAR checkpoint (it looks like: {kind}){hint}")
        cfg = var_config_from_state_dict(sd, alpha=start.alpha if start.alpha is not None else "sft", **enc)
        vae = load_vqvae(
            _need_vae(start, "--init-var"), patch_nums=cfg.patch_nums, allow_pickle=start.trust_checkpoint
        )
        _check_pair(cfg, vae, start.vae)
        model = StyleVAR(cfg)
        model.init_weights()
        report = init_from_var(model, sd, resnet_weights=start.resnet_weights)
        return (
            model,
            vae,
            f"initialised from VAR {path.name}: {report.summary()}" + _set_clip(model, start, clip),
        )
    if start.init:
        vae_path = Path(start.vae).expanduser() if start.vae else None
        ckpt = load_pretrained(
            start.init,
            vae=vae_path if vae_path is not None and vae_path.is_file() else None,
            variant=start.variant,
            alpha=start.alpha,
            allow_pickle=start.trust_checkpoint,
        )
        model, vae = ckpt.model, ckpt.vae
        if vae_path is not None and vae_path.is_dir():
            vae = load_vqvae(vae_path, patch_nums=model.config.patch_nums)
            _check_pair(model.config, vae, vae_path)
        return model, vae, f"continuing from {start.init}" + _set_clip(model, start, None)
    assert start.depth is not None
    vae = load_vqvae(
        _need_vae(start, "--depth"), patch_nums=start.patch_nums, allow_pickle=start.trust_checkpoint
    )
    vc = vae.config
    cfg = StyleVARConfig(
        depth=start.depth,
        vocab_size=vc.vocab_size,
        z_channels=vc.z_channels,
        patch_nums=vc.patch_nums,
        alpha=start.alpha if start.alpha is not None else "sft",
        **enc,
    )
    model = StyleVAR(cfg)
    model.init_weights()
    if start.resnet_weights:
        load_encoder_weights(model, load_resnet18_weights(Path(start.resnet_weights)))
    n = sum(p.numel() for p in model.parameters())
    how = f"new depth-{start.depth} model ({n / 1e6:.1f}M parameters), random init"
    return model, vae, how + _set_clip(model, start, clip)


def _style_encoder_options(start: SFTStart, enc: dict[str, Any]) -> Any:
    """Put a new model's style-encoder fields into ``enc``; returns the loaded CLIP model (or None)."""
    if (start.style_encoder or "resnet") == "resnet":
        return None
    from ..models.style_encoders import clip_fields

    enc["style_encoder"] = start.style_encoder
    if start.style_tokens:
        enc["style_tokens"] = start.style_tokens
    enc["style_vq_tokens"] = start.style_vq_tokens
    if not start.clip:
        return None
    from ..perceptual import load_clip_model

    clip = load_clip_model(start.clip)
    enc["clip_vision"] = clip_fields(clip.config)
    return clip


def _set_clip(model: StyleVAR, start: SFTStart, clip: Any) -> str:
    """Load the CLIP weights (``clip``) into a new clip_resampler model and freeze its tower as asked; a note."""
    if not model.has_style_tokens:
        return ""
    from ..models.style_encoders import load_clip_vision

    note = ""
    if clip is not None:
        load_clip_vision(model, clip)
        note = f"; CLIP vision tower from {start.clip}"
    freeze = start.freeze_clip if start.freeze_clip is not None else clip is not None
    model.style_encoder.clip.requires_grad_(not freeze)
    return note + ("; CLIP tower frozen" if freeze else "; CLIP tower trained")


def run_sft(job: SFTJob, say: Say = _quiet) -> SFTRun:
    """Run (or, with ``job.resume``, continue) an SFT job; ``say`` gets progress lines (rank 0)."""
    check_start(job.start)
    return launch(
        lambda device, rank, world: _sft(job, device, rank, world, say if rank == 0 else _quiet), job.device
    )


def _sft(job: SFTJob, device: torch.device, rank: int, world: int, say: Say) -> SFTRun:
    from ..data import TripletDataset, TripletTransform
    from .sft import SFTTrainer

    run_dir = Path(job.output).expanduser()
    last = run_dir / "checkpoints" / "last.pt"
    cfg = job.config

    # 1. rank 0 checks the run folder and the data; the others wait (long timeout) and get the lists
    def prepare() -> tuple[bool, list, list, str]:
        resuming = _prepare_run_dir(run_dir, job.resume)
        return (resuming, *prepare_data(job.data, job.data_options, run_dir, reuse_split=job.resume))

    resuming, train, val, data_msg = on_rank0(prepare, rank, world)
    say(f"data: {data_msg}")
    if job.resume and not resuming:
        say(f"nothing to resume in {run_dir} (no checkpoints/last.pt): starting a new run")

    # 2. model and tokenizer (every rank builds the same one)
    model, vae, how = build_sft_model(job.start, cfg.seed)
    say(f"model: {how}")
    res = vae.config.resolution
    if job.resolution is not None and job.resolution != res:
        raise ConfigError(
            f"--resolution {job.resolution} does not match the VQ-VAE's {res} px (its last token scale covers "
            f"{res} px); leave --resolution out or use a VQ-VAE/patch_nums made for {job.resolution} px"
        )
    tf = TripletTransform(
        resolution=res,
        fit=job.data_options.fit,
        content_rotation=job.content_rotation,
        content_brightness=job.content_brightness,
        style_crop=job.style_crop,
    )
    on_bad = job.data_options.on_bad_file
    train_set = TripletDataset(train, tf, train=True, seed=cfg.seed, on_bad=on_bad)
    val_set = TripletDataset(val, tf, on_bad=on_bad) if val else None

    # 3. trainer, resume, record the resolved job, train
    trainer = SFTTrainer(model, vae, train_set, run_dir, cfg, val_set=val_set, device=device)
    if resuming:
        trainer.resume(last)
        say(f"resumed {last} at step {trainer.state.step} of {trainer.total_steps}")
    if rank == 0:
        resolved = {
            "job": _jsonable(job),
            "device": str(device),
            "world_size": world,
            "parallel": "fsdp" if trainer.fsdp else ("ddp" if world > 1 else "none"),
            "global_batch": trainer.global_batch,
            "peak_lr": trainer.peak_lr,
            "total_steps": trainer.total_steps,
            "warmup_steps": trainer.warmup,
            "sft": cfg.to_dict(),
            "transform": tf.to_dict(),
            "stylevar": model.config.to_dict(),
            "vqvae": vae.config.to_dict(),
            "init": how,
            "data": {"train": len(train), "val": len(val)},
        }
        atomic_write_json(run_dir / "sft_args.json", resolved)
    say(
        f"training: {trainer.total_steps} steps, global batch {trainer.global_batch} "
        f"({cfg.micro_batch} x {cfg.grad_accum} x {world} process{'es' if world > 1 else ''}), peak lr "
        f"{trainer.peak_lr:.4g}, {cfg.precision}, on {device}"
        + (" with FSDP" if trainer.fsdp else (" with DDP" if world > 1 else ""))
    )
    state = trainer.fit(progress=job.progress)
    done = state.step >= trainer.total_steps
    return SFTRun(run_dir, run_dir / "final" if done else None, state.step, trainer.total_steps, rank)


# ============================================================================================ GRPO
@dataclass
class RewardOptions:
    """The reward and where its models' weights come from (``stylevar grpo`` flags of the same names)."""

    reward: str = "dreamsim:5"  #: spec "name[@ref][:weight],..." (rewards.build_reward)
    dreamsim_dir: str | None = None  #: DreamSim weights cache (dino_vitb16 files)
    clip_model: str | None = None  #: CLIP folder or Hub id
    vgg_weights: str | None = None  #: torchvision vgg19-dcbe5be3.pth (gram reward)
    lpips_net: str = "vgg"  #: vgg or alex
    download: bool = False  #: let reward models download missing weights


@dataclass
class GRPOJob:
    """Everything ``stylevar grpo`` does, as data (see :func:`run_grpo`)."""

    data: list[str]
    output: str | Path
    init: str  #: the SFT model: folder, .pth or Hub id
    base: str | None = None  #: base checkpoint when ``init`` is a LoRA-only file
    vae: str | None = None  #: VQ-VAE .pth when ``init`` is an upstream file without one beside it
    variant: str | None = None
    alpha: Any = None
    trust_checkpoint: bool = False
    rewards: RewardOptions = field(default_factory=RewardOptions)
    config: GRPOConfig = field(default_factory=GRPOConfig)
    data_options: DataOptions = field(default_factory=DataOptions)
    val: list[str] | None = None  #: held-out triplets for the evaluation reward (default: the split's)
    device: str = "auto"
    resume: bool = False
    progress: bool = True


@dataclass
class GRPORun:
    run_dir: Path
    final: Path | None
    step: int
    total_steps: int
    rank: int
    eval_start: float | None
    eval_end: float | None


def run_grpo(job: GRPOJob, say: Say = _quiet) -> GRPORun:
    """Run (or continue) a GRPO job; ``say`` gets progress lines (rank 0)."""
    return launch(
        lambda device, rank, world: _grpo(job, device, rank, world, say if rank == 0 else _quiet), job.device
    )


def _base_ref(init: str) -> str:
    """Where the adapter's base lives: the absolute path of a local ``init``, else the Hub id as given."""
    p = Path(init).expanduser()
    return str(p.resolve()) if p.exists() else str(init)


def _grpo(job: GRPOJob, device: torch.device, rank: int, world: int, say: Say) -> GRPORun:
    from ..data import TripletDataset, TripletTransform, scan, validate_triplets
    from .dpo import DPOTrainer
    from .grpo import GRPOTrainer
    from .rewards import build_reward

    run_dir = Path(job.output).expanduser()
    last = run_dir / "checkpoints" / "last.pt"
    cfg = job.config
    opts = job.data_options

    def prepare():
        resuming = _prepare_run_dir(run_dir, job.resume)
        train, val, msg = prepare_data(job.data, opts, run_dir, reuse_split=job.resume)
        if job.val:
            train = train + val  # DATA is all training data then
            val, report = validate_triplets(
                [t for d in job.val for t in scan(Path(d).expanduser(), opts.layout)], on_bad=opts.on_bad_file
            )
            msg += f"; held-out set from --val: {len(val)} triplets ({report.summary()})"
        return resuming, train, val, msg

    ckpt = load_pretrained(
        job.init,
        vae=job.vae,
        base=job.base,
        variant=job.variant,
        alpha=job.alpha,
        allow_pickle=job.trust_checkpoint,
    )
    model, vae = ckpt.model, ckpt.vae
    say(f"model: {job.init} (depth {model.config.depth}, alpha {list(model.config.alpha)})")
    ro = job.rewards
    reward = build_reward(
        ro.reward,
        device=device,
        dreamsim_dir=ro.dreamsim_dir,
        clip_model=ro.clip_model,
        lpips_net=ro.lpips_net,
        vgg_weights=ro.vgg_weights,
        download=ro.download,
    )
    say(f"reward: {ro.reward}")
    # the data last: a wrong --init or --reward fails in seconds, before the scan writes split.json
    resuming, train, val, data_msg = on_rank0(prepare, rank, world)
    say(f"data: {data_msg}")
    tf = TripletTransform(resolution=vae.config.resolution, fit=opts.fit)
    train_set = TripletDataset(train, tf, on_bad=opts.on_bad_file)
    val_set = TripletDataset(val, tf, on_bad=opts.on_bad_file) if val else None
    trainer = (DPOTrainer if cfg.objective == "dpo" else GRPOTrainer)(
        model,
        vae,
        train_set,
        reward,
        run_dir,
        cfg,
        val_set=val_set,
        device=device,
        info={"init": str(job.init), "base": _base_ref(job.init), "reward": ro.reward},
    )
    if resuming:
        trainer.resume(last)
        say(f"resumed {last} at step {trainer.state.step} of {trainer.total_steps}")
    if rank == 0:
        resolved = {
            "job": _jsonable(job),
            "device": str(device),
            "world_size": world,
            "total_steps": trainer.total_steps,
            "grpo": cfg.to_dict(),
            "stylevar": model.config.to_dict(),
            "data": {"train": len(train), "val": len(val)},
        }
        atomic_write_json(run_dir / "grpo_args.json", resolved)
    say(
        f"training: {trainer.total_steps} steps of {cfg.batch_size} conditions x {cfg.group_size} rollouts "
        f"x {world} process{'es' if world > 1 else ''}, lr {cfg.lr:g}, beta {cfg.beta:g}, on {device}"
        + (", LoRA" if cfg.lora else ", full fine-tuning")
        + (", VMR" if cfg.vmr else "")
        + (f", mask propagation {cfg.mask_propagation}" if cfg.mask_propagation != "off" else "")
    )
    state = trainer.fit(progress=job.progress)
    evals = [h["eval_reward"] for h in state.history if "eval_reward" in h]
    done = state.step >= trainer.total_steps
    return GRPORun(
        run_dir,
        run_dir / "final" if done else None,
        state.step,
        trainer.total_steps,
        rank,
        evals[0] if evals else None,
        evals[-1] if evals and done else None,
    )
