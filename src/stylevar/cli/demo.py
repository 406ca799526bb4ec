"""``stylevar make-synthetic`` and ``stylevar demo``: procedural triplets, and the whole pipeline trained on them."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "make-synthetic",
        help="write procedural (content, style, target) triplets in the OmniStyle layout",
        description="Contents are shapes on a background; styles a two-colour palette and a texture; each "
        "target is the content's silhouette painted in the style (deterministic, seeded).",
    )
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--num-contents", type=int, default=200)
    p.add_argument("--num-styles", type=int, default=200)
    p.add_argument("--num-triplets", type=int, default=1000)
    p.add_argument("--size", type=int, default=64, help="image side in pixels (a multiple of 8)")
    p.add_argument("--period", type=int, default=0, help="texture period in pixels (default: size/8)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_make_synthetic)

    p = sub.add_parser(
        "demo",
        help="train a small tokenizer and StyleVAR on synthetic triplets (CPU, minutes), then evaluate",
        description="Makes synthetic data, trains a VQ-VAE and a StyleVAR from scratch, stylizes held-out "
        "pairs, and writes OUT/grid.png and OUT/metrics.json. About 10 minutes on 2 CPU cores. The trained "
        "model is OUT/sft/final: stylevar stylize CONTENT STYLE -o out.png --checkpoint OUT/sft/final "
        "(it works at 32x32 px, on images like the synthetic ones).",
    )
    p.add_argument("-o", "--output", default="stylevar-demo", help="output folder (default: stylevar-demo)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--sft-seed",
        type=int,
        default=None,
        help="seed of StyleVAR's initialisation and batch order (default: --seed); with --reuse-tokenizer, "
        "measures how much the held-out scores vary from one SFT run to the next",
    )
    p.add_argument("--tokenizer-steps", type=int, default=None, help="override the tokenizer's steps")
    p.add_argument("--sft-steps", type=int, default=None, help="override the SFT steps")
    p.add_argument(
        "--sft-processes",
        type=int,
        default=0,
        help="SFT processes (DDP over gloo, each with its share of the threads and of each batch); 0 (default) "
        "= two on a CPU with two or more threads, one on a GPU",
    )
    p.add_argument(
        "--tokenizer-precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="the tokenizer's training precision: auto (default) = bf16 autocast where the device computes "
        "bf16 natively (CUDA since Ampere, CPUs with Intel AMX or AVX512-BF16), else fp32",
    )
    p.add_argument(
        "--sft-precision",
        default="fp32",
        choices=("auto", "fp32", "bf16"),
        help="StyleVAR's training precision (default fp32: bf16 does not speed up the small transformer)",
    )
    p.add_argument(
        "--style-encoder",
        default=None,
        choices=("resnet", "clip_resampler"),
        help="the style encoder: clip_resampler (default: StyleAR's CLIP ViT + perceiver resampler, here small "
        "and trained from scratch) or resnet (the released models' ResNet-18; SFT at lr 3e-3, its best)",
    )
    p.add_argument("--quick", action="store_true", help="a one-minute smoke run (does not learn much)")
    p.add_argument(
        "--reuse-tokenizer",
        metavar="DEMO_DIR",
        help="copy the tokenizer of an earlier demo run with the same data and tokenizer settings instead of "
        "training it again (to try SFT settings sooner; the timing then leaves the tokenizer out)",
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    p.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep the runs' training checkpoints (OUT/*/checkpoints, to resume or inspect them; "
        "deleted by default: only the models in */final are needed to use them)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_demo_command)


def run_make_synthetic(args: argparse.Namespace) -> int:
    from ..data.synthetic import make_synthetic

    out = make_synthetic(
        args.output,
        num_contents=args.num_contents,
        num_styles=args.num_styles,
        num_triplets=args.num_triplets,
        size=args.size,
        period=args.period,
        seed=args.seed,
    )
    print(f"wrote {args.num_triplets} triplets to {out}/ (content/, style/, target/: the OmniStyle layout)")
    return 0


def run_demo_command(args: argparse.Namespace) -> int:
    import torch

    from ..demo import DemoConfig, run_demo
    from ..devices import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = DemoConfig(seed=args.seed)
    if args.quick:
        cfg = DemoConfig(
            seed=args.seed,
            num_contents=60,
            num_styles=60,
            num_triplets=400,
            num_heldout=16,
            tokenizer_steps=40,
            sft_steps=40,
        )
    if args.tokenizer_steps is not None:
        cfg.tokenizer_steps = args.tokenizer_steps
    if args.sft_steps is not None:
        cfg.sft_steps = args.sft_steps
    cfg.sft_seed = args.sft_seed
    cfg.sft_processes = args.sft_processes
    cfg.__post_init__()  # the overrides checked like a config built with them
    cfg.tokenizer_precision, cfg.sft_precision = args.tokenizer_precision, args.sft_precision
    if args.style_encoder == "resnet":  # with the ResNet's own best learning rate (README, lever table)
        cfg.style_encoder, cfg.sft_lr = "resnet", 3e-3
    m = run_demo(
        args.output,
        cfg,
        device=resolve_device(args.device),
        progress=not args.quiet,
        keep_checkpoints=args.keep_checkpoints,
        reuse_tokenizer=args.reuse_tokenizer,
    )
    t = m["against_target"]
    print(f"\nheld-out pairs: {m['heldout_pairs']} (new contents and new styles), against the target:")
    print(f"  {'':28s} {'SSIM':>7s} {'PSNR':>7s} {'L1':>7s} {'fig IoU':>8s} {'fig MAE':>8s}")
    for name, row in t.items():
        if name == "target":
            continue
        print(
            f"  {name:28s} {row['ssim']:7.4f} {row['psnr']:7.2f} {row['l1']:7.4f} "
            f"{row['figure_iou']:8.3f} {row['figure_mae']:8.1f}"
        )
    print("  (fig IoU: the content's figure found in the output; fig MAE: error inside it, levels of 255)")
    failed = [k for k, ok in m["checks"].items() if not ok]
    print(
        f"checks: {len(m['checks']) - len(failed)}/{len(m['checks'])} met"
        + (f" (not: {', '.join(failed)})" if failed else "")
    )
    print(f"every pair: {m['samples']}/NNN_{{content,style,target,stylevar,swapped}}.png")
    print(
        f"took {m['timings']['total_s'] / 60:.1f} min; metrics: {args.output}/metrics.json; grid: {m['grid']}"
    )
    print(f"the model: {m['model']}/ (it works at {cfg.size}x{cfg.size} px); use it with")
    print(f"  stylevar stylize CONTENT STYLE -o out.png --checkpoint {m['model']}")
    return 0
