"""Content leakage against StyleAR's knobs on the demo benchmark: subtract (alpha) and style noise (gamma).

    stylevar demo -o demo
    python benchmarks/bench_leakage.py demo --plot docs/leakage.png

On the demo's held-out pairs (new contents, new styles), where the truth is known: each pair's style
image's salient region is its blobs (regenerated from the file names) and is given as the style mask.
For every (alpha, gamma): leakage (``stylevar.demo.leakage_scores``: how much of the style image's blob
layout reappears outside the content's figure), figure IoU and MAE and SSIM against the target (style
and content still coming through). Sampling as the demo scores: top-k 1, seed 42 + i.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo", help="a `stylevar demo` output folder (its sft/final and data/heldout)")
    ap.add_argument("--alphas", type=float, nargs="+", default=[1.0, 0.5, 0.0])
    ap.add_argument("--gammas", type=float, nargs="+", default=[0.0, 0.13, 0.26])
    ap.add_argument("-n", type=int, default=64, help="held-out pairs")
    ap.add_argument("--plot", default=None, help="write a PNG of leakage and SSIM against alpha")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from PIL import Image

    from stylevar.data import TripletDataset, TripletTransform, scan
    from stylevar.demo import DemoConfig, figure_scores, heldout_truth, leakage_scores
    from stylevar.perceptual import ssim
    from stylevar.stylize.pipeline import StyleVARPipeline

    root = Path(args.demo)
    m = json.loads((root / "metrics.json").read_text())
    cfg = DemoConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in m["config"].items()})
    pipe = StyleVARPipeline.from_pretrained(root / "sft" / "final")
    held = TripletDataset(scan(root / "data" / "heldout"), TripletTransform(resolution=cfg.size))
    n = min(args.n, len(held.triplets))
    masks, palettes, blobs = heldout_truth(held, cfg.seed + 1, cfg.size, cfg.period)
    masks, palettes, blobs = masks[:n], palettes[:n], blobs[:n]
    targets = torch.stack([held[i]["target"] for i in range(n)]).add(1).mul(0.5)
    rows = []
    for gamma in args.gammas:
        for alpha in args.alphas:
            outs = []
            for i, t in enumerate(held.triplets[:n]):
                smask = Image.fromarray((blobs[i].numpy() * 255).astype("uint8"))
                knobs = {"style_mask": smask, "subtract": alpha, "style_noise": gamma}
                outs.append(
                    pipe(
                        t.content,
                        t.style,
                        seed=42 + i,
                        top_k=1,
                        top_p=0.0,
                        fit="squash",
                        output_type="pt",
                        leakage=knobs,
                    )[0]  # fmt: skip
                )
            out = torch.stack(outs)
            iou, mae = figure_scores(out, targets, masks, palettes)
            row = {
                "alpha": alpha,
                "gamma": gamma,
                "leakage": leakage_scores(out, masks, palettes, blobs).mean().item(),
                "ssim": ssim(out, targets).mean().item(),
                "figure_iou": iou.mean().item(),
                "figure_mae": mae.mean().item(),
            }
            rows.append(row)
            print(json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)
    print("\n| alpha | gamma | leakage | SSIM | figure IoU | figure MAE |\n|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['alpha']:g} | {r['gamma']:g} | {r['leakage']:.4f} | {r['ssim']:.4f} | "
              f"{r['figure_iou']:.3f} | {r['figure_mae']:.1f} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
        for gamma in args.gammas:
            rs = [r for r in rows if r["gamma"] == gamma]
            for ax, key in zip(axes, ("leakage", "ssim")):
                ax.plot([r["alpha"] for r in rs], [r[key] for r in rs], marker="o", label=f"gamma {gamma:g}")
        for ax, title in zip(axes, ("leakage (lower: less of the style image's layout)", "SSIM vs target")):
            ax.set_xlabel("alpha (1: no subtraction)")
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
