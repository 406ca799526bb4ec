"""``stylevar train-tokenizer DATA... -o RUN_DIR``: train (or fine-tune) the multi-scale VQ-VAE."""

from __future__ import annotations

import argparse

from ..config import VQVAEConfig
from ..training.config import TokenizerConfig
from .common import VGG16_FILE, add_config_flags, config_values, examples


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-tokenizer",
        help="train (or fine-tune) the multi-scale VQ-VAE tokenizer on your images",
        description="Train a VQ-VAE on DATA: image files, folders of images, or triplet datasets (OmniStyle, "
        "ImagePulse, CSV/JSONL manifests; their target images, or all three with --triplets). Checkpoints, "
        "metrics.jsonl and TensorBoard logs go to RUN_DIR; the tokenizer to RUN_DIR/final.",
        epilog=examples(
            ("a new tokenizer on a folder of images", "stylevar train-tokenizer photos/ -o runs/tok"),
            (
                "fine-tune the released VQ-VAE on every image of a triplet dataset, with a perceptual loss",
                f"stylevar train-tokenizer data/OmniStyle-150K -o runs/tok-ft --triplets "
                f"--init vae_ch160v4096z32.pth --vgg-weights {VGG16_FILE}",
            ),
            ("continue a stopped run", "stylevar train-tokenizer photos/ -o runs/tok --resume"),
        ),
    )
    p.add_argument("data", nargs="+", metavar="DATA", help="image files, image folders or triplet datasets")
    p.add_argument("-o", "--output", required=True, metavar="RUN_DIR", help="run directory")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR/checkpoints/last.pt")
    p.add_argument(
        "--init",
        metavar="VAE",
        help="start from a VQ-VAE: our folder or an upstream .pth (default: a new one)",
    )
    p.add_argument("--trust-checkpoint", action="store_true", help="allow a pickled --init (trusted files)")
    p.add_argument(
        "--vgg-weights",
        metavar="PATH",
        help=f"torchvision's {VGG16_FILE}: turns on the perceptual loss (default: none, no perceptual loss)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default); torchrun runs DDP")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("data")
    g.add_argument("--triplets", action="store_true", help="take content, style and target of each triplet")
    g.add_argument("--recursive", action="store_true", help="read image folders with their subfolders")
    g.add_argument("--val-fraction", type=float, default=0.02, help="share of images held out (default 0.02)")
    g.add_argument(
        "--fit",
        choices=("squash", "crop"),
        default="squash",
        help="how images become square: squash or centre crop (default: squash)",
    )
    g.add_argument("--hflip", action="store_true", help="random horizontal flips")
    g.add_argument(
        "--on-bad-file",
        choices=("fail", "skip"),
        default="fail",
        help="an unreadable image: fail (stop, naming it) or skip it (default: fail)",
    )
    g = p.add_argument_group("model (a new run; --init and --resume keep theirs)")
    g.add_argument("--resolution", type=int, help="image side: patch_nums[-1] x 2^(levels-1), checked")
    add_config_flags(g, VQVAEConfig, keep_defaults=False)
    # default None: a new run takes the config's default, a resumed one keeps its own value
    add_config_flags(p.add_argument_group("training (TokenizerConfig)"), TokenizerConfig, keep_defaults=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.tokenizer import train_tokenizer

    config = config_values(args, TokenizerConfig)
    if args.vgg_weights and "perceptual_weight" not in config and not args.resume:
        config["perceptual_weight"] = 1.0
    vqvae = config_values(args, VQVAEConfig)
    trainer = train_tokenizer(
        args.data,
        args.output,
        config=config,
        vqvae=vqvae,
        resolution=args.resolution,
        init=args.init,
        resume=args.resume,
        triplets=args.triplets,
        recursive=args.recursive,
        val_fraction=args.val_fraction,
        fit=args.fit,
        hflip=args.hflip,
        on_bad=args.on_bad_file,
        vgg_weights=args.vgg_weights,
        device=args.device,
        progress=not args.quiet,
        allow_pickle=args.trust_checkpoint,
    )
    if trainer.rank != 0:
        return 0
    if trainer.stopped_by is not None:
        last = trainer.ckpt_dir / "last.pt"
        step = trainer.state.step
        print(f"stopped by signal {trainer.stopped_by} at step {step}: saved {last}; continue with --resume")
        return 128 + int(trainer.stopped_by)
    print(f"tokenizer: {trainer.final_dir}/ (vqvae.safetensors, config.json); run: {trainer.run_dir}/")
    return 0
