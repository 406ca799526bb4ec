"""The demo's last stage: stylize the held-out pairs and the swapped controls, score them against the
targets, and write the grid and the samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import Sampling
from .config import DemoConfig
from .scoring import figure_scores, heldout_truth, leakage_scores

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

    from ..images import make_grid, save_image_atomic, tensor_to_pil
    from ..perceptual import mean_abs_error, psnr, ssim

    batch = next(iter(DataLoader(held_set, batch_size=len(held_set))))
    content, style, target = (batch[k].to(device) for k in ("content", "style", "target"))
    truth = heldout_truth(held_set, cfg.seed + 1, cfg.size, cfg.period)
    masks, palettes, blobs = (t.to(device) for t in truth)
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
