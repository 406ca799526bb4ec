"""The real-photo demo's last stage: StyleVAR and its peers on the two held-out sets, scored and shown.

Held-out sets (``stylevar triplets``' splits): ``unseen_photos`` -- photographs kept out of training, in
styles seen in training; ``unseen_styles`` -- built-in styles kept out of training. For each,
``heldout_pairs`` pairs (a seeded sample) are stylized by:

* **StyleVAR** (the demo's model, the demo's sampling; seed = the demo's seed + pair index; one pair at a
  time, so its seconds per image are batch-1 latency);
* **the teacher**: its own output, the target (its speed from the build);
* **colour transfer**: the content with the style image's colour mean and covariance
  (:func:`stylevar.perceptual.colour.colour_transfer`): the palette without any texture;
* **the content copy**: no stylization at all.

Each is scored on what a person looks for, per pair and averaged: ``ssim_to_teacher`` (SSIM against the
target); ``style_distance`` (the teacher's own learned style measure: the cosine distance of Magenta's
100-d style vectors of the output and of the style image; :func:`~stylevar.perceptual.magenta.style_vector_distance`);
``colour_distance`` (Hellinger distance of the output's and the style image's joint RGB histograms);
``structure`` (edge correlation with the content: is the photo's layout still there?); ``s_per_image``.
The tokenizer's own reconstruction of the targets is the ceiling of what StyleVAR can reach.

The inputs are the pairs' 8-bit images at the model's size, exactly as ``samples/`` stores them, so
``stylevar stylize samples/000_content.png samples/000_style.png ...`` with the demo's sampling remakes
``samples/000_stylevar.png`` bit for bit.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..config import Sampling

if TYPE_CHECKING:  # real.py runs this stage
    from .real import RealDemoConfig

#: the held-out sets: (name in metrics.json, the build's split, the samples' folder, the grid's file)
SETS = (
    ("unseen_photos", "val", "samples", "grid.png"),
    ("unseen_styles", "val_unseen_style", "samples_unseen_styles", "grid_unseen_styles.png"),
)
METHODS = ("stylevar", "teacher", "colour_transfer", "content_copy")
SAMPLE_KINDS = {"content": "content", "style": "style", "target": "teacher", "stylevar": "stylevar"}


def _pairs(manifest: Path, n: int, seed: int):
    from ..data import scan
    from ..errors import DataError

    try:
        triplets = sorted(scan(manifest), key=lambda t: t.key)
    except DataError:  # no such split (e.g. no held-out styles), or the filter kept none of it
        return []
    return sorted(
        random.Random(f"{seed}:heldout").sample(triplets, min(n, len(triplets))), key=lambda t: t.key
    )


def _eight_bit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] model inputs -> [0, 1] images on the 8-bit grid (what a saved PNG holds)."""
    return x.add(1).mul(127.5).round().clamp(0, 255).div(255)


def _scores(images: torch.Tensor, batch: dict, style_net) -> dict[str, torch.Tensor]:
    from ..perceptual import colour_histogram_distance, edge_correlation, ssim
    from ..perceptual.magenta import style_vector_distance

    return {
        "ssim_to_teacher": ssim(images, batch["target"]),
        "style_distance": style_vector_distance(images, batch["style"], network=style_net),
        "colour_distance": colour_histogram_distance(images, batch["style"]),
        "structure": edge_correlation(images, batch["content"]),
    }


def _row(scores: dict[str, torch.Tensor], seconds: float | None) -> dict[str, Any]:
    row: dict[str, Any] = {k: round(v.double().mean().item(), 4) for k, v in scores.items()}
    d = scores["style_distance"]
    row["style_distance_se"] = round((d.std() / len(d) ** 0.5).item(), 4) if len(d) > 1 else None
    row["s_per_image"] = None if seconds is None else round(seconds, 4)
    return row


@torch.no_grad()
def evaluate_set(
    model,
    vae,
    cfg: RealDemoConfig,
    triplets,
    out: Path,
    samples: str,
    grid: str,
    *,
    device,
    teacher_s,
    style_net,
) -> dict[str, Any]:
    """Stylize one held-out set, score every method, write its samples and grid; the set's table."""
    from torch.utils.data import DataLoader

    from ..data import TripletDataset, TripletTransform
    from ..images import make_grid, save_image_atomic, tensor_to_pil
    from ..perceptual import ssim
    from ..perceptual.colour import colour_transfer

    data = TripletDataset(triplets, TripletTransform(resolution=cfg.size))
    raw = next(iter(DataLoader(data, batch_size=len(data))))
    batch = {k: _eight_bit(raw[k]) for k in ("content", "style", "target")}
    n = batch["content"].shape[0]
    seeds = [cfg.seed + i for i in range(n)]
    sampling = Sampling(top_k=cfg.top_k, top_p=cfg.top_p, temperature=cfg.temperature)
    content, style = (batch[k].to(device) for k in ("content", "style"))

    t0 = time.perf_counter()
    ours = []
    for i in range(n):  # one pair at a time, as ``stylevar stylize`` runs it: the same numbers, bit for bit
        cond = model.conditioning(vae, style[i : i + 1] * 2 - 1, content[i : i + 1] * 2 - 1)
        ours.append(model.generate(vae, cond, sampling, seed=seeds[i]).images.float().cpu())
    ours = torch.cat(ours)
    t_ours = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    colour = colour_transfer(batch["content"], batch["style"])
    t_colour = (time.perf_counter() - t0) / n
    outputs = {
        "stylevar": ours,
        "teacher": batch["target"],
        "colour_transfer": colour,
        "content_copy": batch["content"],
    }
    seconds = {"stylevar": t_ours, "teacher": teacher_s, "colour_transfer": t_colour, "content_copy": 0.0}
    table = {name: _row(_scores(img, batch, style_net), seconds[name]) for name, img in outputs.items()}
    recon = (
        vae.idx_to_img(vae.img_to_idx(batch["target"].to(device) * 2 - 1)).add(1).mul(0.5).clamp(0, 1).cpu()
    )
    ceiling = {"ssim_to_teacher": round(ssim(recon, batch["target"]).mean().item(), 4)}

    folder = out / samples
    folder.mkdir(parents=True, exist_ok=True)
    pil = {
        kind: [tensor_to_pil(x) for x in (batch[kind] if kind != "stylevar" else ours)]
        for kind in SAMPLE_KINDS
    }
    pil["colour_transfer"] = [tensor_to_pil(x) for x in colour]
    for i in range(n):
        for kind, images in pil.items():
            save_image_atomic(images[i], folder / f"{i:03d}_{kind}.png")
    cell = 2 * cfg.size
    order = ("content", "style", "target", "stylevar", "colour_transfer")
    rows = [[pil[k][i].resize((cell, cell)) for k in order] for i in range(min(8, n))]
    labels = ["content", "style", "teacher", "StyleVAR", "colour transfer"]
    save_image_atomic(make_grid(rows, cell, labels=labels), out / grid)
    return {
        "pairs": n,
        "table": table,
        "tokenizer_ceiling": ceiling,
        "samples": str(folder),
        "grid": str(out / grid),
        "keys": [t.key for t in triplets],
    }


def evaluate_real(model, vae, cfg: RealDemoConfig, out: Path, *, device) -> dict[str, Any]:
    """Both held-out sets (module doc); the metrics with the done-when checks of the seen-style set."""
    import json

    from ..perceptual.magenta import MagentaArbitrary

    style_net = MagentaArbitrary()
    teacher_s = None
    records = out / "data" / "records.jsonl"
    if records.is_file():
        secs = [json.loads(line).get("seconds") for line in records.read_text().splitlines() if line.strip()]
        secs = [s for s in secs if isinstance(s, (int, float))]
        teacher_s = sum(secs) / len(secs) if secs else None
    result: dict[str, Any] = {
        "sampling": {
            "top_k": cfg.top_k,
            "top_p": cfg.top_p,
            "temperature": cfg.temperature,
            "seeds": "seed + pair index",
        },
        "teacher": cfg.teacher,
    }
    for name, split, samples, grid in SETS:
        triplets = _pairs(out / "data" / f"{split}.csv", cfg.heldout_pairs, cfg.seed)
        if not triplets:
            result[name] = None
            continue
        result[name] = evaluate_set(
            model,
            vae,
            cfg,
            triplets,
            out,
            samples,
            grid,
            device=device,
            teacher_s=teacher_s,
            style_net=style_net,
        )
    seen = result.get("unseen_photos")
    if seen is not None:
        t = seen["table"]
        result["checks"] = {
            "closer_to_style_than_colour_transfer": t["stylevar"]["style_distance"]
            < t["colour_transfer"]["style_distance"],
            "keeps_half_the_teachers_structure": t["stylevar"]["structure"]
            >= 0.5 * t["teacher"]["structure"],
        }
    return result
