"""``stylevar demo --real``: the whole pipeline on real photographs and real styles, offline, on a CPU.

1. **Triplets** (:func:`stylevar.training.dataset.build_triplets`, ``stylevar triplets``): crops and
   flips of the sample photographs that scikit-image and scikit-learn ship (nothing is downloaded) as
   contents; the teacher is Magenta's 26-style network (``multistyle26``): a target is a crop in a built-in
   style, its style reference another photo's crop in the same style. Photos held out of training (the
   ``val`` split: unseen photos in seen styles) and built-in styles held out of training
   (``val_unseen_style``: unseen styles) make the two held-out sets.
2. **Tokenizer** on the training triplets' images, 3. **SFT** (both as the synthetic demo trains them:
   :mod:`stylevar.demo.stages`, at :attr:`RealDemoConfig.size`).
4. **Held-out evaluation** (:mod:`stylevar.demo.real_heldout`): StyleVAR beside the teacher, a colour
   transfer and the content copy, scored against the teacher's output, the style image and the content.

Everything is seeded; the stages write their usual run folders (``data/``, ``tokenizer/``, ``sft/``).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..files import atomic_write_json
from .config import ModelBudget
from .stages import stage, start_run, train_sft, train_tokenizer

__all__ = ["RealDemoConfig", "run_real_demo"]


@dataclass
class RealDemoConfig(ModelBudget):
    """The real-photo demo: its data (photo crops, the teacher, the held-out photos and styles) and
    :class:`~.config.ModelBudget`'s sizes and budgets with defaults for 64-px photos (docs/demo.md, "Real
    photos": what they take and score on a 2-core CPU)."""

    size: int = 64  #: the side StyleVAR works at (pixels)
    render: int = 128  #: the side the teacher renders at (targets and style references; resized to ``size``)
    teacher: str = (
        "multistyle26"  #: ``multistyle26`` (built-in styles) or ``arbitrary`` (photo crops as styles)
    )
    crops_per_image: int = 32  #: random crops (and flips) of each photograph
    styles_per_content: int = 4  #: styles each content crop is rendered in
    held_out_styles: int = 4  #: built-in styles kept out of training (the unseen-style set)
    val_fraction: float = 0.2  #: share of the photographs kept out of training (the unseen-photo set)
    heldout_pairs: int = 48  #: pairs scored in each held-out set
    tokenizer_steps: int = 1500
    sft_steps: int = 1000
    #: the CLIP ViT of the style encoder on 8-px patches (64 patches of a 64-px image, as the synthetic demo's
    #: 4-px patches of 32 px)
    demo_clip: dict = field(
        default_factory=lambda: dict(
            hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, patch_size=8
        )
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.render < self.size:
            raise ConfigError(f"render {self.render} must be at least size {self.size}")
        if self.teacher not in ("multistyle26", "arbitrary"):
            raise ConfigError(f"teacher must be multistyle26 or arbitrary, got {self.teacher!r}")
        if self.heldout_pairs < 2:
            raise ConfigError("heldout_pairs must be >= 2")


def _build_data(cfg: RealDemoConfig, data: Path, progress: bool, say) -> dict[str, Any]:
    from ..training.dataset.build import build_triplets
    from ..training.dataset.config import TripletBuildConfig

    build = TripletBuildConfig(
        output=str(data),
        teacher=cfg.teacher,
        photos=True,
        resolution=cfg.render,
        crops_per_image=cfg.crops_per_image,
        style_crops_per_image=2,
        styles_per_content=cfg.styles_per_content,
        held_out_styles=cfg.held_out_styles,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        progress=progress,
    )
    result = build_triplets(build, say=lambda m: say(f"[demo]   {m}"))
    return {"splits": result.splits, "filter": result.filter, "teacher_s_per_image": result.teacher_seconds}


def _training_images(train_csv: Path) -> list[Path]:
    from ..data import scan

    seen: dict[Path, None] = {}
    for t in scan(train_csv):
        for p in (t.target, t.content, t.style):
            seen.setdefault(p, None)
    return list(seen)


def run_real_demo(
    out_dir: str | os.PathLike,
    config: RealDemoConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    keep_checkpoints: bool = False,
    say=print,
) -> dict[str, Any]:
    """Run the real-photo demo into ``out_dir`` (an existing finished demo there is refused); returns the
    metrics, also written to ``metrics.json``. Writes ``data/`` (the triplet dataset, ``stylevar
    triplets``' layout), ``tokenizer/``, ``sft/`` (the model: ``sft/final``), ``grid.png`` (unseen photos in
    seen styles), ``grid_unseen_styles.png``, ``samples/`` and ``samples_unseen_styles/``."""
    from .real_heldout import evaluate_real

    cfg = config or RealDemoConfig()
    out, device, procs, precision = start_run(out_dir, cfg, device)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    stage(f"1/4 triplets: photo crops in the {cfg.teacher} teacher's styles", say)
    data = out / "data"
    built = _build_data(cfg, data, progress, say)
    train_csv, val_csv = data / "train.csv", data / "val.csv"
    timings["data_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    vae = train_tokenizer(cfg, _training_images(train_csv), out, precision, device, progress, say)
    timings["tokenizer_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model, _ = train_sft(cfg, vae, train_csv, val_csv, out, precision, device, procs, progress, say)
    timings["sft_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    stage(f"4/4 stylizing {cfg.heldout_pairs} unseen photos and {cfg.heldout_pairs} unseen-style pairs", say)
    metrics = evaluate_real(model, vae, cfg, out, device=device)
    timings["eval_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_all
    metrics.update(
        data=built,
        timings=timings,
        config=cfg.to_dict(),
        threads=torch.get_num_threads(),
        sft_processes=procs,
        precision=precision,
        model=str(out / "sft" / "final"),
    )
    atomic_write_json(out / "metrics.json", metrics)
    if not keep_checkpoints:
        for run in ("tokenizer", "sft"):
            shutil.rmtree(out / run / "checkpoints", ignore_errors=True)
    return metrics
