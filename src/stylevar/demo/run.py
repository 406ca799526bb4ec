"""``stylevar demo``'s orchestration: data, tokenizer, SFT, held-out evaluation, in one output folder."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..files import atomic_write_json
from .config import DemoConfig, resolve_precision, sft_processes
from .heldout import evaluate_heldout
from .stages import reused_tokenizer, sft_trainer, spawn_sft, stage, stop_if_signalled, train_tokenizer


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
    how = f"{precision['sft']}" + (f", {procs} processes" if procs > 1 else "")
    stage(f"3/4 StyleVAR SFT: {cfg.sft_steps} steps of {cfg.sft_batch} triplets ({how})", say)
    if procs == 1:
        sft, held_set = sft_trainer(cfg, vae, train_root, held_root, out, precision, device, world=1)
        sft.fit(progress=progress)
        stop_if_signalled(sft)
        model = sft.model.eval()
    else:  # DDP over gloo: the processes load the tokenizer from out/; rank 0 exports the model, its scores
        spawn_sft(cfg, procs, out, train_root, held_root, precision, progress)
        from ..io import load_checkpoint_dir

        model = load_checkpoint_dir(out / "sft" / "final").model.to(device).eval()
        held_set = TripletDataset(scan(held_root), TripletTransform(resolution=cfg.size), cache_images=True)
    timings["sft_s"] = time.perf_counter() - t0

    # 4. held-out stylization and metrics ---------------------------------------------------------
    t0 = time.perf_counter()
    stage(f"4/4 stylizing {len(held_set)} held-out pairs", say)
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
