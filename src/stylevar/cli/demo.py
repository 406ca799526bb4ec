"""``stylevar make-synthetic`` and ``stylevar demo``: procedural triplets, and the whole pipeline trained on them."""

from __future__ import annotations

import argparse

from .common import examples


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "make-synthetic",
        help="write procedural (content, style, target) triplets in the OmniStyle layout",
        description="Contents are shapes on a background; styles a two-colour palette and a texture; each "
        "target is the content's silhouette painted in the style (deterministic, seeded).",
        epilog=examples(
            ("1000 triplets of 64x64 px", "stylevar make-synthetic -o synth/"),
            (
                "a small held-out set with other contents and styles (another seed)",
                "stylevar make-synthetic -o synth-heldout/ --num-contents 20 --num-styles 20 --num-triplets 20 "
                "--seed 1",
            ),
            (
                "larger images, a coarser texture",
                "stylevar make-synthetic -o synth128/ --size 128 --period 32",
            ),
        ),
    )
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument(
        "--num-contents", type=int, default=200, help="content images (shapes) to draw from (default: 200)"
    )
    p.add_argument(
        "--num-styles",
        type=int,
        default=200,
        help="style images (palette + texture) to draw from (default: 200)",
    )
    p.add_argument(
        "--num-triplets",
        type=int,
        default=1000,
        help="(content, style, target) triplets, distinct content x style pairs (default: 1000)",
    )
    p.add_argument("--size", type=int, default=64, help="image side in pixels, a multiple of 8 (default: 64)")
    p.add_argument("--period", type=int, default=0, help="texture period in pixels (default: 0, size/8)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the drawing: another seed, other images (default: 0)"
    )
    p.set_defaults(func=run_make_synthetic)

    p = sub.add_parser(
        "demo",
        help="train a small tokenizer and StyleVAR on synthetic triplets (CPU, minutes), then evaluate",
        description="Makes synthetic data, trains a VQ-VAE and a StyleVAR from scratch, stylizes held-out "
        "pairs, and writes OUT/grid.png and OUT/metrics.json. About 10 minutes on 2 CPU cores. The trained "
        "model is OUT/sft/final (it works at 32x32 px, on images like the synthetic ones); the run ends by "
        "printing the stylevar stylize command, with the demo's sampling settings, that remakes its grid bit "
        "for bit.",
        epilog=examples(
            ("the demo (about 10 minutes on 2 CPU cores)", "stylevar demo -o demo/"),
            (
                "a one-minute check that every stage runs (plumbing only: the model does not learn yet)",
                "stylevar demo -o demo-quick/ --quick",
            ),
            (
                "the demo on real photographs and real styles (about 10 minutes)",
                "stylevar demo --real -o demo-real/",
            ),
            (
                "how much the scores vary with SFT's seed, the tokenizer reused",
                "stylevar demo -o demo-seed1/ --sft-seed 1 --reuse-tokenizer demo/",
            ),
        ),
    )
    p.add_argument("-o", "--output", default="stylevar-demo", help="output folder (default: stylevar-demo)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps or auto")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the data, the initialisations, the batch order and the sampling (default: 0)",
    )
    p.add_argument(
        "--sft-seed",
        type=int,
        default=None,
        help="seed of StyleVAR's initialisation and batch order (default: --seed); with --reuse-tokenizer, "
        "measures how much the held-out scores vary from one SFT run to the next",
    )
    p.add_argument(
        "--tokenizer-steps",
        type=int,
        default=None,
        help="override the tokenizer's steps (default: the demo's, fewer with --quick)",
    )
    p.add_argument(
        "--sft-steps",
        type=int,
        default=None,
        help="override the SFT steps (default: the demo's, fewer with --quick)",
    )
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
    p.add_argument(
        "--quick",
        action="store_true",
        help="a one-minute run that checks the plumbing only (every stage runs and writes its files), not "
        "quality: the model trains too briefly to learn, its outputs are alike and most checks fail",
    )
    p.add_argument(
        "--reuse-tokenizer",
        metavar="DEMO_DIR",
        help="copy the tokenizer of an earlier demo run with the same data and tokenizer settings instead of "
        "training it again (to try SFT settings sooner; the timing then leaves the tokenizer out) "
        "(default: train it)",
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    p.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep the runs' training checkpoints (OUT/*/checkpoints, to resume or inspect them; "
        "deleted by default: only the models in */final are needed to use them)",
    )
    p.add_argument(
        "--real",
        action="store_true",
        help="the demo on real photographs (the sample photos scikit-image and scikit-learn ship) and real "
        "styles (Magenta's pretrained 26-style network as the teacher), offline; needs the photos and teachers "
        "extras; about 10 minutes on 2 CPU cores (default: the synthetic demo)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_demo_command, _parser=p)


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


#: what ``--quick`` is for, printed before and after its run
QUICK_NOTE = (
    "--quick checks the plumbing only (every stage runs and writes its files), not quality: its model trains "
    "too briefly to learn, so its outputs look alike (often one flat colour) and most checks fail; that is "
    "expected. The real demo: stylevar demo -o DIR (about 10 minutes on 2 CPU cores)"
)


def run_demo_command(args: argparse.Namespace) -> int:
    import torch

    from ..demo import DemoConfig, run_demo
    from ..devices import resolve_device

    if args.real and args.reuse_tokenizer:
        args._parser.error("--reuse-tokenizer is for the synthetic demo; run --real without it")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.real:
        from ..demo.real import RealDemoConfig

        cfg = RealDemoConfig(seed=args.seed)
        if args.quick:
            print(QUICK_NOTE.replace("stylevar demo -o DIR", "stylevar demo --real -o DIR"))
            cfg = RealDemoConfig(
                seed=args.seed,
                crops_per_image=4,
                styles_per_content=2,
                heldout_pairs=8,
                tokenizer_steps=40,
                sft_steps=40,
            )
    else:
        cfg = DemoConfig(seed=args.seed)
        if args.quick:
            print(QUICK_NOTE)
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
    if args.style_encoder == "resnet":  # with the ResNet's own best learning rate (docs/demo.md, lever table)
        cfg.style_encoder, cfg.sft_lr = "resnet", 3e-3
    device = resolve_device(args.device)
    common = dict(device=device, progress=not args.quiet, keep_checkpoints=args.keep_checkpoints)
    if args.real:
        from ..demo.real import run_real_demo

        m = run_real_demo(args.output, cfg, **common)
        print(real_report(m, args.output, device=str(device), quick=args.quick))
        return 0
    m = run_demo(args.output, cfg, reuse_tokenizer=args.reuse_tokenizer, **common)
    print(report(m, args.output, device=str(device), quick=args.quick))
    return 0


def report(m: dict, output: str, *, device: str = "cpu", quick: bool = False) -> str:
    """The lines ``stylevar demo`` prints after its run, from its metrics ``m`` (:func:`stylevar.demo.run_demo`'s):
    the held-out table, the checks (with ``quick``, that failing ones are expected), where everything is, and
    the command that remakes the grid's first StyleVAR image bit for bit (the demo's sampling settings, its
    seed, its ``device``) and how to sample freely instead."""

    t = m["against_target"]
    lines = [
        f"\nheld-out pairs: {m['heldout_pairs']} (new contents and new styles), against the target:",
        f"  {'':28s} {'SSIM':>7s} {'PSNR':>7s} {'L1':>7s} {'fig IoU':>8s} {'fig MAE':>8s}",
    ]
    for name, row in t.items():
        if name == "target":
            continue
        lines.append(
            f"  {name:28s} {row['ssim']:7.4f} {row['psnr']:7.2f} {row['l1']:7.4f} "
            f"{row['figure_iou']:8.3f} {row['figure_mae']:8.1f}"
        )
    lines.append(
        "  (fig IoU: the content's figure found in the output; fig MAE: error inside it, levels of 255)"
    )
    failed = [k for k, ok in m["checks"].items() if not ok]
    lines.append(
        f"checks: {len(m['checks']) - len(failed)}/{len(m['checks'])} met"
        + (f" (not: {', '.join(failed)})" if failed else "")
    )
    if quick:
        lines.append(QUICK_NOTE)
    lines += [
        f"every pair: {m['samples']}/NNN_{{content,style,target,stylevar,swapped}}.png",
        f"took {m['timings']['total_s'] / 60:.1f} min; metrics: {output}/metrics.json; grid: {m['grid']}",
    ]
    return "\n".join(lines + use_lines(m, m["samples"], device))


def use_lines(m: dict, samples: str, device: str) -> list[str]:
    """Where a demo's model is, the command that remakes its first StyleVAR sample bit for bit (the demo's
    sampling settings, its seed, ``device``), and how to sample freely instead."""
    import shlex

    size, seed = m["config"]["size"], m["config"]["seed"]
    sampling = m["sampling"]
    flags = (
        f"--top-k {sampling['top_k']} --top-p {sampling['top_p']:g} --temperature {sampling['temperature']:g}"
    )
    model = shlex.quote(m["model"])
    content, style = (shlex.quote(f"{samples}/000_{kind}.png") for kind in ("content", "style"))
    return [
        f"the model: {model}/ (it works at {size}x{size} px). With the demo's sampling ({flags}) it remakes "
        f"the grid bit for bit; the first pair's StyleVAR image, {samples}/000_stylevar.png:",
        f"  stylevar stylize {content} {style} -o out.png "
        f"--checkpoint {model} {flags} --seed {seed} --device {device}",
        f"use it on other images the same way (CONTENT STYLE instead of the samples); to sample freely "
        f"(another image for each --seed), leave out {flags}: the checkpoint's own settings then apply "
        f"(stylevar info {model} shows them)",
    ]


def real_report(m: dict, output: str, *, device: str = "cpu", quick: bool = False) -> str:
    """The lines ``stylevar demo --real`` prints after its run (:func:`stylevar.demo.real.run_real_demo`'s
    metrics ``m``): each held-out set's table, the checks, where everything is, how to use the model."""
    lines = []
    for name, title in (("unseen_photos", "unseen photos, seen styles"), ("unseen_styles", "unseen styles")):
        part = m.get(name)
        if not part:
            lines.append(f"\n{title}: no pairs (the split is empty)")
            continue
        lines += [
            f"\n{title}: {part['pairs']} pairs; tokenizer ceiling SSIM {part['tokenizer_ceiling']['ssim_to_teacher']:.3f}",
            f"  {'':16s} {'SSIM(teacher)':>13s} {'style dist':>10s} {'colour dist':>11s} {'structure':>9s} {'s/image':>8s}",
        ]
        for method, row in part["table"].items():
            secs = "-" if row["s_per_image"] is None else f"{row['s_per_image']:.3f}"
            lines.append(
                f"  {method:16s} {row['ssim_to_teacher']:13.4f} {row['style_distance']:10.4f} "
                f"{row['colour_distance']:11.4f} {row['structure']:9.4f} {secs:>8s}"
            )
    lines.append(
        "  (style dist: Magenta's style-vector distance to the style image, lower = closer in style; colour "
        "dist: to the style's colours; structure: edge correlation with the content)"
    )
    checks = m.get("checks", {})
    failed = [k for k, ok in checks.items() if not ok]
    lines.append(
        f"checks (unseen photos): {len(checks) - len(failed)}/{len(checks)} met"
        + (f" (not: {', '.join(failed)})" if failed else "")
    )
    if quick:
        lines.append(QUICK_NOTE.replace("stylevar demo -o DIR", "stylevar demo --real -o DIR"))
    samples = m["unseen_photos"]["samples"] if m.get("unseen_photos") else f"{output}/samples"
    lines += [
        f"every pair: {samples}/NNN_{{content,style,target,stylevar,colour_transfer}}.png (target: the teacher's)",
        f"took {m['timings']['total_s'] / 60:.1f} min (data {m['timings']['data_s']:.0f} s, tokenizer "
        f"{m['timings']['tokenizer_s']:.0f} s, SFT {m['timings']['sft_s']:.0f} s, evaluation "
        f"{m['timings']['eval_s']:.0f} s); metrics: {output}/metrics.json; grids: {output}/grid.png, "
        f"{output}/grid_unseen_styles.png",
    ]
    return "\n".join(lines + use_lines(m, samples, device))
