"""``stylevar demo``: the whole pipeline, trained from nothing on synthetic triplets, on a CPU.

1. :func:`stylevar.data.synthetic.make_synthetic` writes a training set and a held-out set
   (new contents *and* new styles: another seed) in the OmniStyle layout.
2. A small multi-scale VQ-VAE is trained on every image of the training triplets
   (:class:`stylevar.training.tokenizer.TokenizerTrainer`).
3. A small StyleVAR is trained from scratch on the triplets with the SFT trainer
   (:class:`stylevar.training.sft.SFTTrainer`), the VQ-VAE frozen.
4. The model stylizes the held-out pairs, and, as controls, the same pairs with the style image
   swapped for another pair's and with the content image swapped for another pair's. The
   metrics file compares each with the target (SSIM, PSNR, L1, and :func:`figure_scores`: does
   the content's figure come through, in the style's colours?), next to the content image, the
   style image and the tokenizer's own reconstruction of the target (the ceiling); every pair is
   written under ``samples/``.

Everything is seeded; the stages write their usual run folders, so each can be inspected with
``stylevar plot`` or resumed like any run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import Sampling, Serialisable
from .errors import ConfigError
from .files import atomic_write_json

logger = logging.getLogger(__name__)


@dataclass
class DemoConfig(Serialisable):
    """Sizes and budgets of the demo. The defaults run in about 10 minutes on 2 CPU cores."""

    size: int = 32  #: image side (pixels)
    period: int = 8  #: texture period of the synthetic styles (pixels)
    num_contents: int = 300
    num_styles: int = 300
    num_triplets: int = 3000  #: training triplets
    num_heldout: int = 64  #: held-out pairs (new contents and new styles)
    # tokenizer
    vocab_size: int = 256  #: codebook size (docs/demo.md, "What limits the demo": why 256)
    z_channels: int = 8
    patch_nums: tuple[int, ...] = (1, 2, 4, 8)  #: token-map sides, coarse to fine (85 tokens in all)
    #: GroupNorm groups of the tokenizer: one group, so that the narrow tokenizer keeps each image's colours
    #: (VAR's 32 would normalise every channel on its own; docs/demo.md)
    norm_groups: int = 1
    tokenizer_ch: int = 16  #: the tokenizer's base width (VQVAEConfig.ch, channels at full resolution)
    tokenizer_steps: int = 2400  #: tokenizer training steps (docs/demo.md: what fewer give)
    tokenizer_batch: int = 16
    tokenizer_lr: float = 2e-3
    # transformer
    depth: int = 4
    embed_dim: int = 128
    num_heads: int = 4
    mlp_ratio: float = 4.0  #: the blocks' FFN width over embed_dim (StyleVARConfig.mlp_ratio)
    style_enc_dim: int = 64  #: narrow ResNet-18 encoders (full width: 22 M parameters for 32 px images)
    content_residual: bool = True  #: the direct content pathway (StyleVARConfig.content_residual)
    #: the style encoder (StyleVARConfig.style_encoder): StyleAR's ``clip_resampler``, here a small CLIP ViT
    #: trained from scratch with the rest (``demo_clip``; needs transformers), or the released models'
    #: ``resnet`` (docs/demo.md, "Two style encoders", compares them)
    style_encoder: str = "clip_resampler"
    demo_clip: dict = field(
        default_factory=lambda: dict(
            hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, patch_size=4
        )
    )
    style_tokens: int = 16  #: clip_resampler: the resampler's tokens
    resampler_depth: int = 2  #: clip_resampler: perceiver layers
    resampler_dim: int = 64  #: clip_resampler: the resampler's width
    #: clip_resampler: the style's VQ features join its tokens (StyleVARConfig.style_vq_tokens; docs/demo.md)
    style_vq_tokens: bool = True
    sft_steps: int = 1000
    sft_batch: int = 32
    #: SFT processes on the CPU (DDP over gloo, each with its share of the threads and of every batch); 0 =
    #: auto: two on a CPU with two or more threads, one elsewhere (docs/demo.md measures the choice)
    sft_processes: int = 0
    sft_lr: float = 1e-3  #: SFT learning rate, the CLIP resampler's best (the ResNet's: 3e-3; docs/demo.md)
    #: per-token SFT loss weight (h*w)^-p per scale (SFTConfig.scale_weight_power; 0 = plain mean)
    sft_scale_weight_power: float = 0.0
    #: std of Gaussian noise on the style tokens' VQ features in SFT (SFTConfig.style_noise, StyleAR's
    #: remedy for content leakage; the features' std is ~0.26 with the demo tokenizer)
    sft_style_noise: float = 0.0
    # sampling of the held-out pairs: the most likely token at every scale (top-k 1; docs/demo.md says
    # what plain sampling scores on this small model)
    top_k: int = 1
    top_p: float = 0.0
    temperature: float = 1.0
    #: precision of each trainer: ``auto`` is bf16 autocast where the device computes bf16 natively
    #: (CUDA since Ampere, CPUs with AMX or AVX512-BF16: :func:`stylevar.devices.has_fast_bf16`), else
    #: fp32. The tokenizer's convolutions gain from it; the small transformer's step does not (autocast's
    #: casts cost more than its matrix products save), so SFT defaults to fp32 (docs/demo.md, docs/speed.md)
    tokenizer_precision: str = "auto"
    sft_precision: str = "fp32"
    seed: int = 0
    #: seed of StyleVAR's initialisation and the SFT batch order (None: ``seed``). Not a data or tokenizer
    #: field, so SFT runs with other seeds can reuse one tokenizer (``--reuse-tokenizer``) to measure the
    #: run-to-run spread of the held-out scores
    sft_seed: int | None = None

    def __post_init__(self) -> None:
        self.patch_nums = tuple(self.patch_nums)
        if self.size % self.patch_nums[-1]:
            raise ConfigError(f"size {self.size} is not a multiple of the last scale {self.patch_nums[-1]}")
        down = self.size // self.patch_nums[-1]
        if down < 2 or down & (down - 1):
            raise ConfigError(f"size / patch_nums[-1] must be a power of two >= 2, got {down}")
        if self.num_heldout < 2:
            raise ConfigError("num_heldout must be >= 2 (the swapped controls need another pair)")
        if self.sft_processes < 0 or (self.sft_processes and self.sft_batch % self.sft_processes):
            raise ConfigError(f"sft_processes must be 0 (auto) or divide sft_batch {self.sft_batch}")
        if self.style_encoder not in ("resnet", "clip_resampler"):
            raise ConfigError(f"style_encoder must be resnet or clip_resampler, got {self.style_encoder!r}")
        for name in ("tokenizer_precision", "sft_precision"):
            if getattr(self, name) not in ("auto", "fp32", "bf16"):
                raise ConfigError(f"{name} must be auto, fp32 or bf16, got {getattr(self, name)!r}")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``precision`` with ``auto`` made concrete for ``device`` (bf16 where it is native, else fp32)."""
    from .devices import has_fast_bf16

    if precision != "auto":
        return precision
    return "bf16" if has_fast_bf16(device) else "fp32"


#: the DemoConfig fields that decide the data and the tokenizer (a reused tokenizer must share them); the
#: precision is compared as resolved (``auto`` that became fp32 is fp32 asked for by name)
_TOKENIZER_FIELDS = (
    "size",
    "period",
    "num_contents",
    "num_styles",
    "num_triplets",
    "num_heldout",
    "vocab_size",
    "z_channels",
    "patch_nums",
    "norm_groups",
    "tokenizer_ch",
    "tokenizer_steps",
    "tokenizer_batch",
    "tokenizer_lr",
    "seed",
)
#: tokenizer fields added after demos were first written: their value in a metrics.json without them
_ADDED_LATER = {"tokenizer_ch": 32}


def _train_tokenizer(cfg: DemoConfig, train_root: Path, out: Path, precision: dict, device, progress, say):
    from .data import ImageFolderDataset
    from .training.config import TokenizerConfig
    from .training.tokenizer import TokenizerTrainer

    _stage(
        f"2/4 tokenizer: {cfg.tokenizer_steps} steps of {cfg.tokenizer_batch} images ({precision['tokenizer']})",
        say,
    )
    from .models import VQVAE

    torch.manual_seed(cfg.seed)
    vae = VQVAE(_vqvae_config(cfg))
    images = ImageFolderDataset(
        [train_root / "target", train_root / "content", train_root / "style"],
        cfg.size,
        seed=cfg.seed,
        cache_images=True,  # 3600 files of 32 px, each read ~11 times: decoded once
    )
    tok = TokenizerTrainer(
        vae,
        images,
        out / "tokenizer",
        TokenizerConfig(
            max_steps=cfg.tokenizer_steps,
            batch=cfg.tokenizer_batch,
            lr=cfg.tokenizer_lr,
            betas=(0.9, 0.99),
            recon_loss="l1+l2",
            dead_code_steps=25,
            warmup_steps=20,
            seed=cfg.seed,
            save_every=0,
            log_every=25,
            num_workers=0,
            precision=precision["tokenizer"],
            # channels_last would step 1.1x faster here, but its tokenizers (another rounding, so other
            # codes) gave StyleVAR a worse figure colour on both data draws measured (docs/demo.md, lever table)
        ),
        device=device,
    )
    tok.fit(progress=progress)
    return tok.vae.eval().requires_grad_(False)


def _reused_tokenizer(earlier: Path, cfg: DemoConfig, out: Path, precision: dict, timings: dict, say):
    from .io import load_vqvae

    try:
        before = json.loads((earlier / "metrics.json").read_text())
    except (OSError, ValueError):
        raise ConfigError(
            f"{earlier} is not a finished demo (no readable metrics.json) to reuse a tokenizer from"
        ) from None
    now = cfg.to_dict()
    diff = [k for k in _TOKENIZER_FIELDS if before["config"].get(k, _ADDED_LATER.get(k)) != now[k]]
    if before.get("precision", {}).get("tokenizer") != precision["tokenizer"]:
        diff.append("the tokenizer's resolved precision")
    if diff:
        raise ConfigError(
            f"{earlier}'s tokenizer was trained with other settings ({', '.join(diff)}): train it anew"
        )
    _stage(f"2/4 tokenizer: reused from {earlier}", say)
    shutil.copytree(earlier / "tokenizer" / "final", out / "tokenizer" / "final", dirs_exist_ok=True)
    timings["tokenizer_reused_s"] = before["timings"].get(
        "tokenizer_s", before["timings"].get("tokenizer_reused_s")
    )
    return load_vqvae(out / "tokenizer" / "final").eval().requires_grad_(False)


def sft_processes(cfg: DemoConfig, device: torch.device) -> int:
    """How many processes the demo's SFT runs in (``cfg.sft_processes``, 0 = auto)."""
    if cfg.sft_processes:
        return cfg.sft_processes
    auto = 2 if torch.device(device).type == "cpu" and torch.get_num_threads() >= 2 else 1
    return auto if cfg.sft_batch % auto == 0 else 1


def _sft_trainer(
    cfg: DemoConfig, vae, train_root: Path, held_root: Path, out: Path, precision, device, world
):
    """The demo's StyleVAR and its SFT trainer (each process's share of a batch: ``sft_batch / world``)."""
    from .config import StyleVARConfig
    from .data import TripletDataset, TripletTransform, scan
    from .models import StyleVAR
    from .training.config import SFTConfig
    from .training.sft import SFTTrainer

    sft_seed = cfg.seed if cfg.sft_seed is None else cfg.sft_seed
    torch.manual_seed(sft_seed)
    model = StyleVAR(
        StyleVARConfig(
            depth=cfg.depth,
            embed_dim=cfg.embed_dim,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            drop_path_rate=0.0,
            vocab_size=cfg.vocab_size,
            z_channels=cfg.z_channels,
            patch_nums=cfg.patch_nums,
            style_enc_dim=cfg.style_enc_dim,
            content_residual=cfg.content_residual,
            **_style_encoder_fields(cfg),
        )
    )
    model.init_weights()
    tf = TripletTransform(resolution=cfg.size)
    # 3600 files of 32 px: decoded once (each step would otherwise decode 96 PNGs, ~8 % of its time)
    train_set = TripletDataset(scan(train_root), tf, train=True, seed=sft_seed, cache_images=True)
    held_set = TripletDataset(scan(held_root), tf, cache_images=True)
    sft = SFTTrainer(
        model,
        vae,
        train_set,
        out / "sft",
        SFTConfig(
            max_steps=cfg.sft_steps,
            micro_batch=cfg.sft_batch // world,
            grad_accum=1,
            lr=cfg.sft_lr,
            schedule="cosine",
            warmup_steps=20,
            seed=sft_seed,
            save_every=0,
            log_every=25,
            num_workers=0,
            # the ResNets start random: batch statistics keep them normalised (each process's own batch)
            encoder_bn="train",
            cache_tokens=True,  # 3000 triplets of 600 contents/styles: each file tokenized once
            precision=precision["sft"],
            scale_weight_power=cfg.sft_scale_weight_power,
            style_noise=cfg.sft_style_noise,
        ),
        val_set=held_set,
        device=device,
    )
    return sft, held_set


def _spawn_sft(cfg: DemoConfig, procs: int, out: Path, train_root, held_root, precision, progress) -> None:
    """Run the SFT stage as ``procs`` CPU processes (DDP over gloo on this machine) and wait for them.

    The processes are fresh interpreters (``python -c``), not ``multiprocessing`` children, so a script
    that calls :func:`run_demo` without an ``if __name__ == "__main__"`` guard is not run again in them.
    """
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:  # a free port for the group's rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    threads = max(1, torch.get_num_threads() // procs)
    job = dict(config=cfg.to_dict(), out=str(out), train_root=str(train_root), held_root=str(held_root))
    job.update(precision=precision, progress=bool(progress), threads=threads)
    atomic_write_json(out / "sft" / "job.json", job)
    code = "import sys; from stylevar.demo import _sft_rank; _sft_rank(sys.argv[1])"
    workers = []
    for rank in range(procs):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(procs)}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        workers.append(subprocess.Popen([sys.executable, "-c", code, str(out / "sft" / "job.json")], env=env))
    try:
        codes = [w.wait() for w in workers]
    finally:
        for w in workers:  # an interrupted wait (Ctrl-C) takes the processes down with it
            if w.poll() is None:
                w.kill()
                w.wait()
    if any(codes):
        raise RuntimeError(
            f"the SFT processes exited with {codes}; their errors are above "
            "(set sft_processes=1 to train in this process)"
        )


def _sft_rank(job_file: str) -> None:
    """One SFT process of :func:`_spawn_sft` (rank and world from the environment); rank 0 exports
    ``sft/final`` and writes ``sft/val.json``."""
    import torch.distributed as dist

    from .io import load_vqvae
    from .training import distributed as D

    job = json.loads(Path(job_file).read_text())
    out = Path(job["out"])
    torch.set_num_threads(job["threads"])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        cfg = DemoConfig.from_dict(job["config"])
        vae = load_vqvae(out / "tokenizer" / "final").eval().requires_grad_(False)
        sft, _ = _sft_trainer(
            cfg,
            vae,
            Path(job["train_root"]),
            Path(job["held_root"]),
            out,
            job["precision"],
            torch.device("cpu"),
            world,
        )
        sft.fit(progress=job["progress"] and rank == 0)
        if rank == 0:  # validation has no collective (the unwrapped model): rank 0 alone scores and writes it
            atomic_write_json(out / "sft" / "val.json", sft.validate())
    except BaseException:
        D.destroy(wait=False)
        raise
    D.destroy()


def _style_encoder_fields(cfg: DemoConfig) -> dict[str, Any]:
    if cfg.style_encoder == "resnet":
        return {}
    return dict(
        style_encoder=cfg.style_encoder,
        clip_vision={**cfg.demo_clip, "image_size": cfg.size},
        style_tokens=cfg.style_tokens,
        resampler_depth=cfg.resampler_depth,
        resampler_dim=cfg.resampler_dim,
        style_vq_tokens=cfg.style_vq_tokens,
    )


def _vqvae_config(cfg: DemoConfig):
    from .config import VQVAEConfig

    levels = (cfg.size // cfg.patch_nums[-1]).bit_length()  # downsampling 2**(levels-1)
    ch_mult = tuple(min(2, 1 + i) for i in range(levels))  # ch, 2 ch, 2 ch, ... channels
    return VQVAEConfig(
        vocab_size=cfg.vocab_size,
        z_channels=cfg.z_channels,
        ch=cfg.tokenizer_ch,
        ch_mult=ch_mult,
        num_res_blocks=1,
        patch_nums=cfg.patch_nums,
        using_sa=False,
        using_mid_sa=False,
        norm_groups=cfg.norm_groups,
    )


def _stage(name: str, say) -> None:
    say(f"[demo] {name}")


def run_demo(
    out_dir: str | os.PathLike,
    config: DemoConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    keep_checkpoints: bool = False,
    say=print,
    reuse_tokenizer: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Run the demo into ``out_dir`` (created; an existing demo there is refused). Returns the metrics.

    ``reuse_tokenizer``: an earlier demo folder whose data and tokenizer settings are this config's (the
    tokenizer run is deterministic, so it would train the same one): its ``tokenizer/final`` is copied
    instead of trained again, to measure SFT levers sooner; its tokenizer time is reported as
    ``tokenizer_reused_s``.

    Writes ``data/{train,heldout}``, ``tokenizer/`` and ``sft/`` (run folders with
    ``metrics.jsonl`` and ``final/``: the trained StyleVAR is ``sft/final``), ``grid.png`` and
    ``metrics.json``. The runs' training checkpoints (``*/checkpoints``: resumable state with the
    optimizer, most of the bytes) are deleted at the end unless ``keep_checkpoints``.
    """
    from .data import TripletDataset, TripletTransform, scan
    from .data.synthetic import make_synthetic

    cfg = config or DemoConfig()
    if cfg.style_encoder == "clip_resampler":
        try:
            import transformers  # noqa: F401
        except ImportError:
            raise ConfigError(
                "the demo's CLIP-resampler style encoder needs transformers: pip install 'stylevar[rewards]', "
                "or run the demo with --style-encoder resnet"
            ) from None
    out = Path(out_dir).expanduser()
    if (out / "metrics.json").exists():
        raise ConfigError(f"{out} already holds a finished demo; choose another folder or delete it")
    device = torch.device(device)
    procs = sft_processes(cfg, device)
    if procs > 1 and device.type != "cpu":
        raise ConfigError(f"sft_processes {procs} trains on the CPU; on {device} use 1 (or 0, auto)")
    out.mkdir(parents=True, exist_ok=True)
    precision = {
        "tokenizer": resolve_precision(cfg.tokenizer_precision, device),
        "sft": resolve_precision(cfg.sft_precision, device),
    }
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    # 1. data -------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    _stage("1/4 synthetic triplets", say)
    data = out / "data"
    train_root = make_synthetic(
        data / "train",
        num_contents=cfg.num_contents,
        num_styles=cfg.num_styles,
        num_triplets=cfg.num_triplets,
        size=cfg.size,
        period=cfg.period,
        seed=cfg.seed,
    )
    held_root = make_synthetic(
        data / "heldout",
        num_contents=cfg.num_heldout,
        num_styles=cfg.num_heldout,
        num_triplets=cfg.num_heldout,
        size=cfg.size,
        period=cfg.period,
        seed=cfg.seed + 1,
    )
    timings["data_s"] = time.perf_counter() - t0

    # 2. tokenizer --------------------------------------------------------------------------------
    t0 = time.perf_counter()
    if reuse_tokenizer is not None:
        vae = _reused_tokenizer(Path(reuse_tokenizer).expanduser(), cfg, out, precision, timings, say)
    else:
        vae = _train_tokenizer(cfg, train_root, out, precision, device, progress, say)
        timings["tokenizer_s"] = time.perf_counter() - t0

    # 3. SFT --------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    how = f"{precision['sft']}" + (f", {procs} processes" if procs > 1 else "")
    _stage(f"3/4 StyleVAR SFT: {cfg.sft_steps} steps of {cfg.sft_batch} triplets ({how})", say)
    if procs == 1:
        sft, held_set = _sft_trainer(cfg, vae, train_root, held_root, out, precision, device, world=1)
        sft.fit(progress=progress)
        model = sft.model.eval()
    else:  # DDP over gloo: the processes load the tokenizer from out/; rank 0 exports the model, its scores
        _spawn_sft(cfg, procs, out, train_root, held_root, precision, progress)
        from .io import load_checkpoint_dir

        model = load_checkpoint_dir(out / "sft" / "final").model.to(device).eval()
        held_set = TripletDataset(scan(held_root), TripletTransform(resolution=cfg.size), cache_images=True)
    timings["sft_s"] = time.perf_counter() - t0

    # 4. held-out stylization and metrics ---------------------------------------------------------
    t0 = time.perf_counter()
    _stage(f"4/4 stylizing {len(held_set)} held-out pairs", say)
    metrics = evaluate_heldout(
        model, vae, held_set, cfg, out / "grid.png", device=device, samples_dir=out / "samples"
    )
    if procs == 1:
        metrics["val"] = sft.validate()
    else:
        metrics["val"] = json.loads((out / "sft" / "val.json").read_text())
    timings["eval_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_all
    metrics["timings"] = timings
    metrics["config"] = cfg.to_dict()
    metrics["threads"] = torch.get_num_threads()
    metrics["sft_processes"] = procs
    metrics["precision"] = precision
    metrics["model"] = str(out / "sft" / "final")
    atomic_write_json(out / "metrics.json", metrics)
    if not keep_checkpoints:  # what a user needs is final/; the resumable training state is most of the bytes
        for run in ("tokenizer", "sft"):
            shutil.rmtree(out / run / "checkpoints", ignore_errors=True)
    return metrics


def figure_pixels(images: torch.Tensor, palettes: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool: the pixels of ``images`` nearer (L1 in RGB) to one of the style's two figure colours
    than to both of its background colours (``palettes`` (B, 4, 3), :meth:`StyleSpec.palette` order)."""
    dist = (images.float().unsqueeze(1) - palettes.float()[:, :, :, None, None]).abs().sum(2)  # (B, 4, H, W)
    return dist[:, :2].amin(1) < dist[:, 2:].amin(1)


def figure_scores(
    images: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor, palettes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Does the content's figure come through in the style's colours? Per image, ``(IoU (B,), MAE (B, 3))``.

    ``images``/``targets`` (B, 3, H, W) in [0, 1]; ``masks`` (B, H, W) bool, the content's figure;
    ``palettes`` (B, 4, 3), the style's colours (:meth:`~stylevar.data.synthetic.StyleSpec.palette`:
    figure plain and textured, background plain and textured). A pixel of ``images`` belongs to its
    figure when it is nearer (L1 in RGB) to one of the figure's two colours than to both background
    colours; IoU compares that figure with ``masks``. MAE is the mean absolute error against the
    target inside ``masks``, per channel, in levels of 255.
    """
    figure = figure_pixels(images, palettes)
    inter = (figure & masks).flatten(1).sum(1).float()
    union = (figure | masks).flatten(1).sum(1).float().clamp_min(1)
    m = masks.unsqueeze(1).float()
    mae = ((images.float() - targets.float()).abs() * m).sum((2, 3)) / m.sum((2, 3)).clamp_min(1) * 255
    return inter / union, mae


def leakage_scores(
    images: torch.Tensor, masks: torch.Tensor, palettes: torch.Tensor, style_masks: torch.Tensor
) -> torch.Tensor:
    """Content leakage on the synthetic task, where the truth is known, per image (B,): how much of the
    style image's layout (its blobs) reappears in the output. Outside the content's figure the target is
    plain background; there, the share of the style image's blob pixels that the output paints in the
    figure's colours (as :func:`figure_scores` classifies them), minus the same share on the other
    background pixels. 0: the output ignores where the style image's blobs are; 1: it copies them (the
    style image itself scores 1)."""
    figure = figure_pixels(images, palettes)
    background = ~masks
    blob, rest = style_masks & background, ~style_masks & background

    def share(region: torch.Tensor) -> torch.Tensor:
        return (figure & region).flatten(1).sum(1).float() / region.flatten(1).sum(1).clamp_min(1).float()

    return share(blob) - share(rest)


def _truth(held_set, cfg: DemoConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The held-out pairs' content figures (B, H, W), style palettes (B, 4, 3) and style-image blobs
    (B, H, W), regenerated from their names."""
    import numpy as np

    from .data.synthetic import parse_ids, synthetic_triplet

    masks, palettes, blobs = [], [], []
    for t in held_set.triplets:
        ci, si = parse_ids(t.content, t.style)
        truth = synthetic_triplet(ci, si, seed=cfg.seed + 1, size=cfg.size, period=cfg.period)
        masks.append(truth.mask)
        palettes.append(truth.spec.palette())
        blobs.append(truth.style_mask)
    return tuple(torch.from_numpy(np.stack(x)) for x in (masks, palettes, blobs))


#: the demo's goals (docs/demo.md says why these)
GOALS = {"tokenizer_ceiling_ssim": 0.85, "figure_iou": 0.5, "figure_mae": 40.0}


@torch.no_grad()
def evaluate_heldout(
    model, vae, held_set, cfg: DemoConfig, grid_path: Path, *, device, samples_dir: Path | None = None
) -> dict[str, Any]:
    """Stylize every held-out pair (and the swapped controls) and score them against the targets.

    Per row of the table: SSIM, PSNR, L1 against the target, and :func:`figure_scores` (the content's
    figure: IoU; the style's colours inside it: MAE per channel). Writes the labelled grid and, with
    ``samples_dir``, every pair as ``NNN_content.png``, ``NNN_style.png``, ``NNN_target.png``,
    ``NNN_stylevar.png`` and ``NNN_swapped.png`` (the output with pair NNN-1's style).
    """
    from torch.utils.data import DataLoader

    from .images import make_grid, save_image_atomic, tensor_to_pil
    from .perceptual import mean_abs_error, psnr, ssim

    batch = next(iter(DataLoader(held_set, batch_size=len(held_set))))
    content, style, target = (batch[k].to(device) for k in ("content", "style", "target"))
    masks, palettes, blobs = (t.to(device) for t in _truth(held_set, cfg))
    n = content.shape[0]
    other = torch.roll(torch.arange(n), 1)  # pair i borrows pair i-1's style (or content)
    seeds = [cfg.seed + i for i in range(n)]
    sampling = Sampling(top_k=cfg.top_k, top_p=cfg.top_p, temperature=cfg.temperature)

    def stylize(style_img, content_img):
        cond = model.conditioning(vae, style_img, content_img)
        return model.generate(vae, cond, sampling, seed=seeds).images

    def unit(x):
        return x.add(1).mul(0.5).clamp(0, 1)

    tgt = unit(target)
    outputs = {
        "stylevar": stylize(style, content),
        "stylevar_style_swapped": stylize(style[other], content),
        "stylevar_content_swapped": stylize(style, content[other]),
        "content_image": unit(content),
        "style_image": unit(style),
        "tokenizer_reconstruction": unit(vae.idx_to_img(vae.img_to_idx(target))),
        "target": tgt,
    }
    table = {}
    for name, img in outputs.items():
        s, p, l1 = ssim(img, tgt), psnr(img, tgt).clamp_max(100), mean_abs_error(img, tgt)
        iou, mae = figure_scores(img, tgt, masks, palettes)
        leak = leakage_scores(img, masks, palettes, blobs)
        table[name] = {
            "ssim": round(s.mean().item(), 4),
            "psnr": round(p.mean().item(), 3),
            "l1": round(l1.mean().item(), 4),
            "figure_iou": round(iou.mean().item(), 4),
            "figure_mae": round(mae.mean().item(), 2),
            "figure_mae_rgb": [round(v, 2) for v in mae.mean(0).tolist()],
            # the held-out pairs' own uncertainty on each channel's MAE: their spread / sqrt(n)
            "figure_mae_rgb_se": [round(v, 2) for v in (mae.std(0) / n**0.5).tolist()],
            "leakage": round(leak.mean().item(), 4),
        }
    ours = table["stylevar"]
    checks = {
        "closer_than_content_image": ours["ssim"] > table["content_image"]["ssim"],
        "closer_than_style_image": ours["ssim"] > table["style_image"]["ssim"],
        "closer_than_style_swapped": ours["ssim"] > table["stylevar_style_swapped"]["ssim"],
        "closer_than_content_swapped": ours["ssim"] > table["stylevar_content_swapped"]["ssim"],
        "tokenizer_ceiling": table["tokenizer_reconstruction"]["ssim"] >= GOALS["tokenizer_ceiling_ssim"],
        "figure_iou": ours["figure_iou"] >= GOALS["figure_iou"],
        "figure_mae": max(ours["figure_mae_rgb"]) <= GOALS["figure_mae"],
    }
    # what swapping an input costs, each measure signed so that a positive cost is a worse result
    swap_cost = {}
    for kind in ("style", "content"):
        other_row = table[f"stylevar_{kind}_swapped"]
        swap_cost[kind] = {
            "ssim": round(ours["ssim"] - other_row["ssim"], 4),
            "figure_iou": round(ours["figure_iou"] - other_row["figure_iou"], 4),
            "figure_mae": round(other_row["figure_mae"] - ours["figure_mae"], 2),
        }
    pil = {
        "content": [tensor_to_pil(x) for x in unit(content)],
        "style": [tensor_to_pil(x) for x in unit(style)],
        "target": [tensor_to_pil(x) for x in tgt],
        "stylevar": [tensor_to_pil(x) for x in outputs["stylevar"]],
        "swapped": [tensor_to_pil(x) for x in outputs["stylevar_style_swapped"]],
    }
    if samples_dir is not None:
        samples_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            for kind, images in pil.items():
                save_image_atomic(images[i], samples_dir / f"{i:03d}_{kind}.png")
    cell = 4 * cfg.size
    rows = [[pil[k][i].resize((cell, cell), resample=0) for k in pil] for i in range(min(8, n))]
    labels = ["content", "style", "target", "StyleVAR", "style swapped"]
    save_image_atomic(make_grid(rows, cell, labels=labels), grid_path)
    return {
        "heldout_pairs": n,
        "sampling": {
            "top_k": cfg.top_k,
            "top_p": cfg.top_p,
            "temperature": cfg.temperature,
            "seeds": "seed + pair index",
        },
        "against_target": table,
        "swap_cost": swap_cost,
        "goals": GOALS,
        "checks": checks,
        "grid": str(grid_path),
        "samples": None if samples_dir is None else str(samples_dir),
    }
