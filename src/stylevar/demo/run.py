"""``stylevar demo``'s orchestration: data, tokenizer, SFT, held-out evaluation, in one output folder."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write_json
from .config import DemoConfig
from .heldout import evaluate_heldout
from .stages import reused_tokenizer, stage, start_run, train_sft, train_tokenizer


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
    from ..data import TripletDataset, TripletTransform, scan
    from ..data.synthetic import make_synthetic

    cfg = config or DemoConfig()
    out, device, procs, precision = start_run(out_dir, cfg, device)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    # 1. data -------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    stage("1/4 synthetic triplets", say)
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
        vae = reused_tokenizer(Path(reuse_tokenizer).expanduser(), cfg, out, precision, timings, say)
    else:
        vae = train_tokenizer(
            cfg,
            [train_root / r for r in ("target", "content", "style")],
            out,
            precision,
            device,
            progress,
            say,
        )
        timings["tokenizer_s"] = time.perf_counter() - t0

    # 3. SFT --------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    model, sft = train_sft(cfg, vae, train_root, held_root, out, precision, device, procs, progress, say)
    held_set = TripletDataset(scan(held_root), TripletTransform(resolution=cfg.size), cache_images=True)
    timings["sft_s"] = time.perf_counter() - t0

    # 4. held-out stylization and metrics ---------------------------------------------------------
    t0 = time.perf_counter()
    stage(f"4/4 stylizing {len(held_set)} held-out pairs", say)
    metrics = evaluate_heldout(
        model, vae, held_set, cfg, out / "grid.png", device=device, samples_dir=out / "samples"
    )
    if sft is not None:
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
