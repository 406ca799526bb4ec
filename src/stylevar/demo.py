"""``stylevar demo``: the whole pipeline, trained from nothing on synthetic triplets, on a CPU.

1. :func:`stylevar.data.synthetic.make_synthetic` writes a training set and a held-out set
   (new contents *and* new styles: another seed) in the OmniStyle layout.
2. A small multi-scale VQ-VAE is trained on every image of the training triplets
   (:class:`stylevar.training.tokenizer.TokenizerTrainer`).
3. A small StyleVAR is trained from scratch on the triplets with the SFT trainer
   (:class:`stylevar.training.sft.SFTTrainer`), the VQ-VAE frozen.
4. The model stylizes the held-out pairs, and, as controls, the same pairs with the style image
   swapped for another pair's and with the content image swapped for another pair's. The
   metrics file compares each with the target (SSIM, PSNR, L1), next to the content image, the
   style image and the tokenizer's own reconstruction of the target (the ceiling).

Everything is seeded; the stages write their usual run folders, so each can be inspected with
``stylevar plot`` or resumed like any run.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import Serialisable
from .errors import ConfigError
from .files import atomic_write_json

logger = logging.getLogger(__name__)


@dataclass
class DemoConfig(Serialisable):
    """Sizes and budgets of the demo. The defaults run in about 8 minutes on 2 CPU cores."""

    size: int = 32  #: image side (pixels)
    period: int = 8  #: texture period of the synthetic styles (pixels)
    num_contents: int = 300
    num_styles: int = 300
    num_triplets: int = 3000  #: training triplets
    num_heldout: int = 64  #: held-out pairs (new contents and new styles)
    # tokenizer
    vocab_size: int = 128
    z_channels: int = 8
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 6, 8)
    tokenizer_steps: int = 300
    tokenizer_batch: int = 32
    tokenizer_lr: float = 2e-3
    # transformer
    depth: int = 4
    embed_dim: int = 128
    num_heads: int = 4
    sft_steps: int = 300
    sft_batch: int = 32
    sft_lr: float = 2e-3
    # sampling of the held-out pairs
    top_k: int = 0
    top_p: float = 0.0
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        self.patch_nums = tuple(self.patch_nums)
        if self.size % self.patch_nums[-1]:
            raise ConfigError(f"size {self.size} is not a multiple of the last scale {self.patch_nums[-1]}")
        down = self.size // self.patch_nums[-1]
        if down < 2 or down & (down - 1):
            raise ConfigError(f"size / patch_nums[-1] must be a power of two >= 2, got {down}")
        if self.num_heldout < 2:
            raise ConfigError("num_heldout must be >= 2 (the swapped controls need another pair)")


def _vqvae_config(cfg: DemoConfig):
    from .config import VQVAEConfig

    levels = (cfg.size // cfg.patch_nums[-1]).bit_length()  # downsampling 2**(levels-1)
    ch_mult = tuple(min(2, 1 + i) for i in range(levels))  # 32, 64, 64, ... channels
    return VQVAEConfig(
        vocab_size=cfg.vocab_size,
        z_channels=cfg.z_channels,
        ch=32,
        ch_mult=ch_mult,
        num_res_blocks=1,
        patch_nums=cfg.patch_nums,
        using_sa=False,
        using_mid_sa=False,
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
) -> dict[str, Any]:
    """Run the demo into ``out_dir`` (created; an existing demo there is refused). Returns the metrics.

    Writes ``data/{train,heldout}``, ``tokenizer/`` and ``sft/`` (run folders with
    ``metrics.jsonl`` and ``final/``: the trained StyleVAR is ``sft/final``), ``grid.png`` and
    ``metrics.json``. The runs' training checkpoints (``*/checkpoints``: resumable state with the
    optimizer, most of the bytes) are deleted at the end unless ``keep_checkpoints``.
    """
    from .data import ImageFolderDataset, TripletDataset, TripletTransform, scan
    from .data.synthetic import make_synthetic
    from .models import StyleVAR
    from .training.config import SFTConfig, TokenizerConfig
    from .training.sft import SFTTrainer
    from .training.tokenizer import TokenizerTrainer

    cfg = config or DemoConfig()
    out = Path(out_dir).expanduser()
    if (out / "metrics.json").exists():
        raise ConfigError(f"{out} already holds a finished demo; choose another folder or delete it")
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
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
    _stage(f"2/4 tokenizer: {cfg.tokenizer_steps} steps of {cfg.tokenizer_batch} images", say)
    from .models import VQVAE

    torch.manual_seed(cfg.seed)
    vae = VQVAE(_vqvae_config(cfg))
    images = ImageFolderDataset(
        [train_root / "target", train_root / "content", train_root / "style"], cfg.size, seed=cfg.seed
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
        ),
        device=device,
    )
    tok.fit(progress=progress)
    vae = tok.vae.eval().requires_grad_(False)
    timings["tokenizer_s"] = time.perf_counter() - t0

    # 3. SFT --------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    _stage(f"3/4 StyleVAR SFT: {cfg.sft_steps} steps of {cfg.sft_batch} triplets", say)
    from .config import StyleVARConfig

    torch.manual_seed(cfg.seed)
    model = StyleVAR(
        StyleVARConfig(
            depth=cfg.depth,
            embed_dim=cfg.embed_dim,
            num_heads=cfg.num_heads,
            drop_path_rate=0.0,
            vocab_size=cfg.vocab_size,
            z_channels=cfg.z_channels,
            patch_nums=cfg.patch_nums,
        )
    )
    model.init_weights()
    tf = TripletTransform(resolution=cfg.size)
    train_set = TripletDataset(scan(train_root), tf, train=True, seed=cfg.seed)
    held_set = TripletDataset(scan(held_root), tf)
    sft = SFTTrainer(
        model,
        vae,
        train_set,
        out / "sft",
        SFTConfig(
            max_steps=cfg.sft_steps,
            micro_batch=cfg.sft_batch,
            grad_accum=1,
            lr=cfg.sft_lr,
            schedule="cosine",
            warmup_steps=20,
            seed=cfg.seed,
            save_every=0,
            log_every=25,
            num_workers=0,
            encoder_bn="train",  # the ResNets start random: batch statistics keep them normalised
        ),
        val_set=held_set,
        device=device,
    )
    sft.fit(progress=progress)
    model = sft.model.eval()
    timings["sft_s"] = time.perf_counter() - t0

    # 4. held-out stylization and metrics ---------------------------------------------------------
    t0 = time.perf_counter()
    _stage(f"4/4 stylizing {len(held_set)} held-out pairs", say)
    metrics = evaluate_heldout(model, vae, held_set, cfg, out / "grid.png", device=device)
    metrics["val"] = sft.validate()
    timings["eval_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_all
    metrics["timings"] = timings
    metrics["config"] = cfg.to_dict()
    metrics["threads"] = torch.get_num_threads()
    metrics["model"] = str(out / "sft" / "final")
    atomic_write_json(out / "metrics.json", metrics)
    if not keep_checkpoints:  # what a user needs is final/; the resumable training state is most of the bytes
        for run in ("tokenizer", "sft"):
            shutil.rmtree(out / run / "checkpoints", ignore_errors=True)
    return metrics


@torch.no_grad()
def evaluate_heldout(model, vae, held_set, cfg: DemoConfig, grid_path: Path, *, device) -> dict[str, Any]:
    """Stylize every held-out pair (and the swapped controls); SSIM/PSNR/L1 against the targets."""
    from torch.utils.data import DataLoader

    from .images import make_grid, save_image_atomic, tensor_to_pil
    from .perceptual import mean_abs_error, psnr, ssim

    batch = next(iter(DataLoader(held_set, batch_size=len(held_set))))
    content, style, target = (batch[k].to(device) for k in ("content", "style", "target"))
    n = content.shape[0]
    other = torch.roll(torch.arange(n), 1)  # pair i borrows pair i-1's style (or content)
    seeds = [cfg.seed + i for i in range(n)]

    def stylize(style_img, content_img):
        cond = model.conditioning(vae, style_img, content_img)
        return model.generate(
            vae, cond, seed=seeds, top_k=cfg.top_k, top_p=cfg.top_p, temperature=cfg.temperature
        ).images

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
    }
    table = {}
    for name, img in outputs.items():
        s, p, l1 = ssim(img, tgt), psnr(img, tgt), mean_abs_error(img, tgt)
        table[name] = {
            "ssim": round(s.mean().item(), 4),
            "psnr": round(p.mean().item(), 3),
            "l1": round(l1.mean().item(), 4),
        }
    ours = table["stylevar"]["ssim"]
    checks = {
        "closer_than_content_image": ours > table["content_image"]["ssim"],
        "closer_than_style_swapped": ours > table["stylevar_style_swapped"]["ssim"],
        "closer_than_content_swapped": ours > table["stylevar_content_swapped"]["ssim"],
    }
    rows = []
    for i in range(min(8, n)):
        rows.append(
            [
                tensor_to_pil(unit(content[i])),
                tensor_to_pil(unit(style[i])),
                tensor_to_pil(tgt[i]),
                tensor_to_pil(outputs["stylevar"][i]),
                tensor_to_pil(outputs["stylevar_style_swapped"][i]),
            ]
        )
    cell = 4 * cfg.size
    rows = [[im.resize((cell, cell), resample=0) for im in row] for row in rows]
    labels = ["content", "style", "target", "StyleVAR", "style swapped"]
    save_image_atomic(make_grid(rows, cell, labels=labels), grid_path)
    return {"heldout_pairs": n, "against_target": table, "checks": checks, "grid": str(grid_path)}
