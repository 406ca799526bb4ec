"""``stylevar convert``, ``merge-lora`` and ``info``: checkpoint files in, checkpoint files (or facts) out."""

from __future__ import annotations

import argparse
import json

from ..config import DTYPES
from .common import add_checkpoint_args, alpha_arg, checkpoint_kwargs, dtype_arg, examples

#: what ``convert`` can write (int8 and auto are ways of computing, not weight formats on disk)
CONVERT_DTYPES = tuple(d for d in DTYPES if d not in ("int8", "auto"))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert upstream .pth files into config.json + safetensors",
        description="Read the authors' released StyleVAR .pth (and its VQ-VAE .pth) and write our checkpoint "
        "folder: config.json (the model's configuration, its alpha and sampling defaults) beside "
        "model.safetensors and vqvae.safetensors. The folder loads without running any code from a file, "
        "and every command takes it as --checkpoint.",
        epilog=examples(
            (
                "the GRPO release, its VQ-VAE beside it",
                "stylevar convert StyleVAR-GRPO.pth -o stylevar-grpo/",
            ),
            (
                "the SFT release in bf16 (half the size), the VQ-VAE elsewhere",
                "stylevar convert StyleVAR_SFT.pth -o stylevar-sft/ --variant sft --dtype bf16 "
                "--vae vae_ch160v4096z32.pth",
            ),
        ),
    )
    p.add_argument(
        "source", metavar="SOURCE", help="upstream StyleVAR .pth (or a folder with the released files)"
    )
    p.add_argument("-o", "--output", required=True, help="output checkpoint directory")
    p.add_argument(
        "--vae", default=None, help="VQ-VAE .pth (default: vae_ch160v4096z32.pth beside the source)"
    )
    p.add_argument(
        "--variant",
        choices=("grpo", "sft"),
        default=None,
        help="which release this is, which sets the stored alpha (default: grpo or sft in the file name, "
        "else the paper's alpha)",
    )
    p.add_argument(
        "--alpha",
        type=alpha_arg,
        default=None,
        help="per-scale alpha to store: a preset or values (default: the --variant's)",
    )
    p.add_argument(
        "--dtype",
        type=dtype_arg,
        choices=CONVERT_DTYPES,
        default="fp32",
        help="weight dtype on disk; bf16 halves the size (default: fp32)",
    )
    p.add_argument(
        "--trust-checkpoint", action="store_true", help="allow pickled Python objects (trusted files only)"
    )
    p.set_defaults(func=run_convert)

    p = sub.add_parser(
        "merge-lora",
        help="merge GRPO LoRA adapters into plain weights (upstream's merge_grpo_lora.py)",
        description="LORA is an upstream GRPO checkpoint (grpo_*.pth: adapters only, which need --base, or a "
        "LoRA-wrapped full state) or a stylevar LoRA folder. The merged weights are checked by a strict "
        "load, then written as our checkpoint folder or as upstream's {'model': ..., 'note': ...} .pth.",
        epilog=examples(
            (
                "upstream adapters onto the SFT model they were trained from",
                "stylevar merge-lora grpo_500.pth --base StyleVAR_SFT.pth -o merged/",
            ),
            (
                "a stylevar run's LoRA folder, written as one upstream .pth",
                "stylevar merge-lora runs/grpo/lora -o merged.pth --format upstream",
            ),
        ),
    )
    p.add_argument("lora", metavar="LORA", help="grpo_*.pth or a LoRA folder (adapter_config.json)")
    p.add_argument("-o", "--output", required=True, help="output folder (--format stylevar) or .pth file")
    p.add_argument(
        "--base",
        default=None,
        help="the SFT checkpoint the GRPO run started from, file or folder (default: none; needed for an "
        "adapters-only file)",
    )
    p.add_argument(
        "--vae", default=None, help="VQ-VAE .pth (default: the base's, or vae_ch160v4096z32.pth beside it)"
    )
    p.add_argument(
        "--format",
        choices=("stylevar", "upstream"),
        default="stylevar",
        help="stylevar: config.json + safetensors folder (default); upstream: one .pth file",
    )
    p.add_argument(
        "--rank", type=int, default=None, help="LoRA rank (default: the file's args, else lora_A's)"
    )
    p.add_argument(
        "--lora-alpha", type=float, default=None, help="LoRA alpha (default: the file's args, else 2 x rank)"
    )
    p.add_argument(
        "--trust-checkpoint", action="store_true", help="allow pickled Python objects (trusted files only)"
    )
    p.set_defaults(func=run_merge_lora)

    p = sub.add_parser(
        "info",
        help="print a checkpoint's configuration",
        description="Load CHECKPOINT (checked as every command checks it) and print, as JSON, its model and "
        "VQ-VAE configurations, its sampling defaults, its parameter counts and resolution, and what it "
        "records of its origin.",
        epilog=examples(
            ("a converted or trained checkpoint folder", "stylevar info runs/sft/final"),
            (
                "the released GRPO model (from the Hub, or its cache with --offline)",
                "stylevar info Senfier-LiqiJing/StyleVAR --variant grpo",
            ),
            ("an upstream file", "stylevar info StyleVAR_SFT.pth --vae vae_ch160v4096z32.pth"),
        ),
    )
    p.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help="checkpoint directory, upstream .pth file, or Hub repo id (the released one: "
        "Senfier-LiqiJing/StyleVAR)",
    )
    add_checkpoint_args(p, checkpoint=False)
    p.set_defaults(func=run_info)


def run_convert(args: argparse.Namespace) -> int:
    from ..io import convert_upstream
    from ..models.ops import parse_dtype

    dtype = parse_dtype(args.dtype)
    out = convert_upstream(
        args.source,
        args.output,
        vae=args.vae,
        variant=args.variant,
        alpha=args.alpha,
        allow_pickle=args.trust_checkpoint,
        dtype=dtype,
    )
    print(f"wrote {out}/ (config.json, model.safetensors, vqvae.safetensors)")
    return 0


def run_merge_lora(args: argparse.Namespace) -> int:
    from ..io import merge_lora_checkpoint

    out = merge_lora_checkpoint(
        args.lora,
        args.output,
        base=args.base,
        vae=args.vae,
        fmt=args.format,
        rank=args.rank,
        alpha=args.lora_alpha,
        allow_pickle=args.trust_checkpoint,
    )
    if args.format == "upstream":
        print(f"wrote {out} ({{'model': merged state dict, 'note': ...}}; load it with its VQ-VAE via --vae)")
    else:
        print(f"wrote {out}/ (config.json, model.safetensors, vqvae.safetensors)")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from ..io import load_pretrained

    ckpt = load_pretrained(args.checkpoint, **checkpoint_kwargs(args))
    n_model = sum(p.numel() for p in ckpt.model.parameters())
    n_vae = sum(p.numel() for p in ckpt.vae.parameters())
    print(
        json.dumps(
            {
                "stylevar": ckpt.model.config.to_dict(),
                "vqvae": ckpt.vae.config.to_dict(),
                "sampling": ckpt.sampling.to_dict(),
                "parameters": {"stylevar": n_model, "vqvae": n_vae},
                "resolution": ckpt.vae.config.resolution,
                "info": ckpt.info,
            },
            indent=2,
        )
    )
    return 0
