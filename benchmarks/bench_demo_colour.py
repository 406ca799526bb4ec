"""Does the content image's colour reach the demo model's output? (content colour leakage)

On the demo's synthetic task the target's figure takes the style's colour and never the content's, so a
model that ignores the content's colour gives the same figure colour whatever the content's hue. This
stylizes the held-out pairs of a finished demo (top-k 1, as the demo scores them) with the content images
as they are and with their colour channels permuted (GBR, BRG, RBG), and reports, per permutation, how far
the output figure's mean colour moves (levels of 255, mean over pairs and channels) next to its distance
from the target's.

    python benchmarks/bench_demo_colour.py demo/            # a folder written by `stylevar demo`
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from stylevar.config import Sampling
from stylevar.data import TripletDataset, TripletTransform, scan
from stylevar.demo import DemoConfig, heldout_truth
from stylevar.io import load_pretrained

PERMUTATIONS = {"GBR": [1, 2, 0], "BRG": [2, 0, 1], "RBG": [0, 2, 1]}


def figure_colour(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(B, 3): the mean colour (levels of 255) of ``images`` (B, 3, H, W) in [0, 1] inside ``masks`` (B, H, W)."""
    return torch.stack([img[:, m].mean(1) for img, m in zip(images, masks)]) * 255


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo", type=Path, help="a folder written by `stylevar demo`")
    args = ap.parse_args()
    if not (args.demo / "metrics.json").is_file():
        ap.error(
            f"{args.demo} is not a finished demo (no metrics.json): run `stylevar demo -o {args.demo}` first"
        )
    cfg = json.loads((args.demo / "metrics.json").read_text())["config"]
    ckpt = load_pretrained(args.demo / "sft" / "final")
    model, vae = ckpt.model.eval(), ckpt.vae.eval()
    held = TripletDataset(scan(args.demo / "data" / "heldout"), TripletTransform(resolution=cfg["size"]))
    batch = next(iter(DataLoader(held, batch_size=len(held))))
    demo = DemoConfig.from_dict(cfg)
    masks = heldout_truth(held, demo.seed + 1, demo.size, demo.period)[
        0
    ]  # the content figures, regenerated from the names
    seeds = [cfg["seed"] + i for i in range(len(held))]

    @torch.no_grad()
    def stylize(content: torch.Tensor) -> torch.Tensor:
        cond = model.conditioning(vae, batch["style"], content)
        return model.generate(vae, cond, Sampling.plain(top_k=1), seed=seeds).images

    target = figure_colour(batch["target"].add(1).mul(0.5), masks)
    base = figure_colour(stylize(batch["content"]), masks)
    print(
        f"{len(held)} held-out pairs; output figure colour vs the target's: {(base - target).abs().mean():.1f}"
    )
    for name, perm in PERMUTATIONS.items():
        moved = figure_colour(stylize(batch["content"][:, perm]), masks)
        print(
            f"content channels {name}: the output figure colour moves {(moved - base).abs().mean():.1f} "
            f"levels; vs the target's {(moved - target).abs().mean():.1f}"
        )


if __name__ == "__main__":
    main()
