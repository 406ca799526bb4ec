"""The two style encoders on the demo benchmark at equal steps: ResNet-18 (the released models') and
StyleAR's CLIP ViT + perceiver resampler (``style_encoder="clip_resampler"``).

    python benchmarks/bench_style_encoder.py runs/enc-3e-3 --sft-lr 3e-3   # both encoders, ~25 min on 2 cores
    python benchmarks/bench_style_encoder.py runs/enc-1e-3 --reuse-tokenizer runs/enc-3e-3/resnet  # the demo's lr
    python benchmarks/bench_style_encoder.py runs/encoders --json docs/style_encoders.json

Each encoder trains the whole demo (``stylevar.demo.run_demo``: the same data, tokenizer budget, SFT
steps, learning rate and seed; only ``DemoConfig.style_encoder`` differs -- the resampler model with the
demo's ``style_vq_tokens``, which the README's table of 2026-12-02 predates; the CLIP tower is small and
trained from scratch, since no pretrained CLIP can be fetched here) into OUT/<encoder>. A finished run
(its metrics.json) is reused. The table: SSIM, figure IoU and MAE against the target on the held-out pairs
(new contents, new styles), the synthetic leakage measure, what swapping the style or the content image
costs (SSIM and IoU drop: the style must matter), validation token accuracy, SFT time and the style
encoder's parameters.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _row(name: str, m: dict) -> dict:
    t = m["against_target"]
    out = t["stylevar"]
    return {
        "encoder": name,
        "ssim": out["ssim"],
        "figure_iou": out["figure_iou"],
        "figure_mae": out["figure_mae"],
        "leakage": out["leakage"],
        "style_swap_ssim": round(out["ssim"] - t["stylevar_style_swapped"]["ssim"], 4),
        "style_swap_iou": round(out["figure_iou"] - t["stylevar_style_swapped"]["figure_iou"], 4),
        "content_swap_ssim": round(out["ssim"] - t["stylevar_content_swapped"]["ssim"], 4),
        "content_swap_iou": round(out["figure_iou"] - t["stylevar_content_swapped"]["figure_iou"], 4),
        "val_acc": round(m["val"]["val_acc"], 4),
        "sft_s": round(m["timings"]["sft_s"], 1),
        "ceiling_ssim": t["tokenizer_reconstruction"]["ssim"],
    }


def _encoder_params(run: Path) -> int:
    from stylevar.io import load_pretrained

    model = load_pretrained(run / "sft" / "final").model
    return sum(p.numel() for p in model.style_encoder.parameters()) + sum(
        p.numel() for b in model.blocks if b.style_attn is not None for p in b.style_attn.parameters()
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="a folder for the runs (OUT/resnet, OUT/clip_resampler)")
    ap.add_argument("--encoders", nargs="+", default=["resnet", "clip_resampler"])
    ap.add_argument("--sft-steps", type=int, default=None, help="default: the demo's")
    ap.add_argument("--sft-lr", type=float, default=None, help="default: the demo's (1e-3)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument(
        "--figure", default=None, help="a PNG: held-out pairs, each encoder's output beside the target"
    )
    ap.add_argument("--pairs", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5], help="the figure's pairs")
    ap.add_argument(
        "--reuse-tokenizer",
        default=None,
        metavar="DEMO_DIR",
        help="a finished demo's tokenizer (same settings)",
    )
    args = ap.parse_args()

    from stylevar.demo import DemoConfig, run_demo

    rows = []
    for enc in args.encoders:
        run = Path(args.out) / enc
        if (run / "metrics.json").is_file():
            m = json.loads((run / "metrics.json").read_text())
        else:
            cfg = DemoConfig(style_encoder=enc)
            if args.sft_steps is not None:
                cfg.sft_steps = args.sft_steps
            if args.sft_lr is not None:
                cfg.sft_lr = args.sft_lr
            m = run_demo(run, cfg, progress=False, reuse_tokenizer=args.reuse_tokenizer)
        row = _row(enc, m)
        row["style_encoder_params"] = _encoder_params(run)
        rows.append(row)
        print(json.dumps(row), flush=True)

    cols = [
        ("encoder", "style encoder"),
        ("ssim", "SSIM"),
        ("figure_iou", "figure IoU"),
        ("figure_mae", "figure MAE"),
        ("leakage", "leakage"),
        ("style_swap_ssim", "style swap: -SSIM"),
        ("style_swap_iou", "style swap: -IoU"),
        ("content_swap_ssim", "content swap: -SSIM"),
        ("val_acc", "val. token acc."),
        ("sft_s", "SFT s"),
        ("style_encoder_params", "style-side params"),
    ]
    print("\n| " + " | ".join(h for _, h in cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k, _ in cols) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    if args.figure:
        _figure(Path(args.out), args.encoders, args.pairs, Path(args.figure))


def _figure(out: Path, encoders: list[str], pairs: list[int], path: Path, zoom: int = 4) -> None:
    """Columns: content, style, target, then each encoder's output (the demo's saved samples), zoomed."""
    from PIL import Image, ImageDraw

    cols = [("content", out / encoders[0], "content"), ("style", out / encoders[0], "style")]
    cols += [("target", out / encoders[0], "target")] + [(e, out / e, "stylevar") for e in encoders]
    tiles = [
        [Image.open(run / "samples" / f"{i:03d}_{kind}.png").convert("RGB") for _, run, kind in cols]
        for i in pairs
    ]
    side = tiles[0][0].width * zoom
    head, pad = 16, 4
    fig = Image.new("RGB", (len(cols) * (side + pad) + pad, head + len(pairs) * (side + pad) + pad), "white")
    draw = ImageDraw.Draw(fig)
    for c, (label, _, _) in enumerate(cols):
        draw.text((pad + c * (side + pad), 2), label, fill="black")
    for r, row in enumerate(tiles):
        for c, im in enumerate(row):
            fig.paste(
                im.resize((side, side), Image.Resampling.NEAREST),
                (pad + c * (side + pad), head + r * (side + pad)),
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.save(path)


if __name__ == "__main__":
    main()
