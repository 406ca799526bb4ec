"""Score finished demo models on many fresh synthetic pairs: a lower-noise measure than the demo's 64.

The demo's 64 held-out pairs leave a standard error of 2-4 levels on each channel's figure MAE; this
stylizes N pairs whose contents *and* styles come from another data seed (``--data-seed``, 1000 by
default: none of them in any demo's training or held-out data) and prints, per model, SSIM against the
target, figure IoU, figure MAE per channel with its standard error, and the colour spread of the output
figures next to the targets' (max - min of the figure's mean colour over the channels, averaged: an output
that leans toward grey spreads less).

    python benchmarks/bench_demo_fresh.py demo/ demo-seed1/            # folders written by `stylevar demo`
    python benchmarks/bench_demo_fresh.py demo/ -n 512 --top-k 0 --temperature 0.7
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from stylevar.config import Sampling
from stylevar.data import TripletTransform
from stylevar.data.synthetic import synthetic_triplet
from stylevar.demo import figure_scores
from stylevar.io import load_pretrained
from stylevar.perceptual import ssim


def fresh_pairs(n: int, size: int, period: int, data_seed: int) -> dict[str, torch.Tensor]:
    """``n`` synthetic triplets (content i with style i of ``data_seed``): images in [-1, 1], figure masks,
    style palettes."""
    tf = TripletTransform(resolution=size)
    rows: dict[str, list] = {k: [] for k in ("content", "style", "target", "mask", "palette")}
    for i in range(n):
        t = synthetic_triplet(i, i, seed=data_seed, size=size, period=period)
        for k in ("content", "style", "target"):
            rows[k].append(tf.to_tensor(getattr(t, k)))
        rows["mask"].append(torch.from_numpy(t.mask))
        rows["palette"].append(torch.from_numpy(t.spec.palette()))
    return {k: torch.stack(v) for k, v in rows.items()}


@torch.no_grad()
def score(demo: Path, pairs: dict[str, torch.Tensor], sampling: Sampling, batch: int = 128) -> str:
    ckpt = load_pretrained(demo / "sft" / "final")
    model, vae = ckpt.model.eval(), ckpt.vae.eval()
    n = pairs["content"].shape[0]
    out = torch.cat(
        [
            model.generate(
                vae,
                model.conditioning(vae, pairs["style"][j : j + batch], pairs["content"][j : j + batch]),
                sampling,
                seed=list(range(j, min(n, j + batch))),
            ).images
            for j in range(0, n, batch)
        ]
    )
    target = pairs["target"].add(1).mul(0.5)
    masks = pairs["mask"]
    iou, mae = figure_scores(out, target, masks, pairs["palette"])
    se = mae.std(0) / n**0.5
    m = masks.unsqueeze(1).float()

    def spread(images: torch.Tensor) -> float:
        mean = (images * m).sum((2, 3)) / m.sum((2, 3)).clamp_min(1) * 255
        return (mean.max(1).values - mean.min(1).values).mean().item()

    rgb = ", ".join(f"{v:.1f}" for v in mae.mean(0).tolist())
    return (
        f"{demo}: SSIM {ssim(out, target).mean():.4f}, figure IoU {iou.mean():.3f}, figure MAE "
        f"{mae.mean():.1f} ({rgb}; SE {', '.join(f'{v:.1f}' for v in se.tolist())}), colour spread "
        f"{spread(out):.0f} (targets {spread(target):.0f})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demos", type=Path, nargs="+", help="folders written by `stylevar demo`")
    ap.add_argument("-n", type=int, default=512, help="fresh pairs (default 512)")
    ap.add_argument("--data-seed", type=int, default=1000, help="their data seed (default 1000)")
    ap.add_argument(
        "--top-k", type=int, default=1, help="sampling, as `generate` takes it (default 1, the demo's)"
    )
    ap.add_argument("--top-p", type=float, default=0.0)
    ap.add_argument("--temperature", type=float, default=1.0)
    args = ap.parse_args()
    configs = []
    for demo in args.demos:
        if not (demo / "metrics.json").is_file():
            ap.error(f"{demo} is not a finished demo (no metrics.json): run `stylevar demo -o {demo}` first")
        configs.append(json.loads((demo / "metrics.json").read_text())["config"])
    if len({(c["size"], c["period"]) for c in configs}) > 1:
        ap.error("the demos differ in image size or texture period: score them separately")
    pairs = fresh_pairs(args.n, configs[0]["size"], configs[0]["period"], args.data_seed)
    sampling = Sampling(top_k=args.top_k, top_p=args.top_p, temperature=args.temperature)
    for demo in args.demos:
        print(score(demo, pairs, sampling), flush=True)


if __name__ == "__main__":
    main()
