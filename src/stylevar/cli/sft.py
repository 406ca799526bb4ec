"""``stylevar sft DATA... -o RUN_DIR (--init-var VAR.pth --vae VAE | --init CKPT | --depth N --vae VAE)``.

Flags -> :class:`~stylevar.training.jobs.SFTJob` (the training flags are made from
:class:`~stylevar.training.config.SFTConfig`'s fields) -> :func:`~stylevar.training.jobs.run_sft`.
"""

from __future__ import annotations

import argparse

from ..training.config import SFTConfig
from .common import (
    add_config_flags,
    add_triplet_data_args,
    alpha_arg,
    config_values,
    data_options,
    examples,
    int_tuple,
    report_training,
    say,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sft",
        help="fine-tune StyleVAR on (content, style, target) triplets (torchrun: DDP or --fsdp)",
        description="Supervised fine-tuning from a vanilla VAR checkpoint (--init-var), any StyleVAR (--init) "
        "or a new model (--depth) on OmniStyle-150K / ImagePulse roots or manifests. Under torchrun each "
        "process trains on its slice of every global batch.",
        epilog=examples(
            (
                "the paper's start: a vanilla VAR and its VQ-VAE, on OmniStyle-150K",
                "stylevar sft data/OmniStyle-150K -o runs/sft --init-var var_d20.pth --vae vae_ch160v4096z32.pth",
            ),
            (
                "a small new model from scratch on a manifest, with a tokenizer you trained",
                "stylevar sft pairs.csv -o runs/small --depth 6 --vae runs/tok/final",
            ),
            (
                "on 4 GPUs (one process each), from the released SFT model",
                "torchrun --nproc-per-node 4 -m stylevar sft data/OmniStyle-150K -o runs/sft2 "
                "--init Senfier-LiqiJing/StyleVAR --variant sft",
            ),
        ),
    )
    g = add_triplet_data_args(p)
    g.add_argument(
        "--resolution", type=int, default=None, help="image side (default and only value: the VQ-VAE's)"
    )
    g.add_argument(
        "--content-rotation",
        type=float,
        default=0.0,
        help="max content rotation, degrees (the paper's augmentation; default: 0, off)",
    )
    g.add_argument(
        "--content-brightness",
        type=float,
        default=0.0,
        help="max relative content brightness change (default: 0, off)",
    )
    g.add_argument(
        "--style-crop",
        type=float,
        default=1.0,
        help="smallest side fraction of a random style crop (default: 1, off)",
    )
    p.add_argument(
        "-o", "--output", required=True, metavar="RUN_DIR", help="run folder (checkpoints, logs, final/)"
    )

    g = p.add_argument_group("start from (one of)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--init-var", metavar="VAR.pth", help="vanilla VAR checkpoint (var_d16/20/24/30.pth); needs --vae"
    )
    src.add_argument(
        "--init",
        metavar="CHECKPOINT",
        help="a StyleVAR: our checkpoint folder, an upstream .pth or a Hub repo id",
    )
    src.add_argument("--depth", type=int, help="a new model of this depth, randomly initialised; needs --vae")
    g.add_argument(
        "--vae",
        help="VQ-VAE: an upstream .pth (vae_ch160v4096z32.pth), our checkpoint folder or a tokenizer folder",
    )
    g.add_argument(
        "--resnet-weights", metavar="PATH", help="ImageNet ResNet-18 file for both encoders (new models)"
    )
    g.add_argument(
        "--style-encoder",
        choices=("resnet", "clip_resampler"),
        help="new models (--init-var, --depth): the style image's encoder; resnet (default, the released "
        "models') or clip_resampler (StyleAR's CLIP ViT + perceiver resampler: M tokens the blocks attend to)",
    )
    g.add_argument(
        "--clip",
        metavar="FOLDER|HUB_ID",
        help="clip_resampler: a CLIP model folder (or a Hub id in the Hugging Face cache) for the vision tower; "
        "without it the tower starts random",
    )
    g.add_argument(
        "--freeze-clip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the CLIP tower's weights fixed (default: fixed when --clip gives pretrained ones)",
    )
    g.add_argument("--style-tokens", type=int, metavar="M", help="clip_resampler: style tokens (default 16)")
    g.add_argument(
        "--style-vq-tokens",
        action="store_true",
        help="clip_resampler: the style's per-scale VQ features join the style tokens (a direct path for its colours)",
    )
    g.add_argument(
        "--encoder-dim",
        type=int,
        metavar="N",
        help="new models (--init-var, --depth): the ResNet encoders' output width; 512 (default) is "
        "ResNet-18, smaller multiples of 8 narrow every stage (small models from scratch)",
    )
    g.add_argument(
        "--content-residual",
        action="store_true",
        help="new models (--init-var, --depth): add each content token's VQ feature to the target token at "
        "the same place, a direct content pathway besides the attention queries (not in the released model)",
    )
    g.add_argument(
        "--variant", choices=("grpo", "sft"), default=None, help="with --init and a Hub id: which release"
    )
    g.add_argument(
        "--alpha",
        type=alpha_arg,
        default=None,
        help="per-scale alpha: preset (sft, paper) or values (default: sft for new models, the checkpoint's for --init)",
    )
    g.add_argument(
        "--patch-nums",
        type=int_tuple,
        default=None,
        help="token scales of a --depth model (default: the VQ-VAE's)",
    )
    g.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow .pth files with pickled objects (trusted files)",
    )

    add_config_flags(p.add_argument_group("training (SFTConfig)"), SFTConfig)

    g = p.add_argument_group("run")
    g.add_argument(
        "--device",
        default="auto",
        help="auto (cuda:LOCAL_RANK when CUDA is present, else cpu), cpu, cuda, cuda:N (default: auto)",
    )
    g.add_argument(
        "--fsdp", action="store_true", help="shard the model with FSDP under torchrun (large depths)"
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue RUN_DIR/checkpoints/last.pt (and reuse RUN_DIR/split.json)",
    )
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def job_from_args(args: argparse.Namespace):
    """The :class:`~stylevar.training.jobs.SFTJob` of parsed flags (bad values fail here, on every rank alike)."""
    from ..training.jobs import SFTJob, SFTStart

    start = SFTStart(
        init_var=args.init_var,
        init=args.init,
        depth=args.depth,
        vae=args.vae,
        resnet_weights=args.resnet_weights,
        encoder_dim=args.encoder_dim,
        content_residual=args.content_residual,
        style_encoder=args.style_encoder,
        clip=args.clip,
        freeze_clip=args.freeze_clip,
        style_tokens=args.style_tokens,
        style_vq_tokens=args.style_vq_tokens,
        variant=args.variant,
        alpha=args.alpha,
        patch_nums=args.patch_nums,
        trust_checkpoint=args.trust_checkpoint,
    )
    return SFTJob(
        data=list(args.data),
        output=args.output,
        start=start,
        config=SFTConfig(**config_values(args, SFTConfig), parallel="fsdp" if args.fsdp else "ddp"),
        data_options=data_options(args),
        resolution=args.resolution,
        content_rotation=args.content_rotation,
        content_brightness=args.content_brightness,
        style_crop=args.style_crop,
        device=args.device,
        resume=args.resume,
        progress=not args.quiet,
    )


def run(args: argparse.Namespace) -> int:
    from ..errors import OtherRankFailed
    from ..training.jobs import run_sft

    try:
        result = run_sft(job_from_args(args), say=say)  # rank 0 prints; the progress bar too
    except OtherRankFailed:  # rank 0 printed the reason
        return 1
    report_training(result, "final model")
    return 0
