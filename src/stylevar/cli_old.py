"""The ``stylevar`` command line. Subcommands are thin: flags -> library call.

stylevar stylize CONTENT STYLE -o OUT      stylize files or folders (every content x style pair)
stylevar convert UPSTREAM.pth -o DIR       upstream .pth files -> config.json + safetensors
stylevar merge-lora LORA --base SFT -o OUT  GRPO LoRA adapters merged into plain weights
stylevar info CHECKPOINT                   print a checkpoint's configuration
stylevar evaluate --model M --omnistyle D  the paper's Table 2 (metrics, baselines, timing, reports)
stylevar app [--checkpoint C]              a web page with every control (Gradio)
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from ._malloc import release_memory_promptly
from .errors import ConfigError, ImageError, StyleVARError

logger = logging.getLogger("stylevar")
DTYPE_CHOICES = ("fp32", "bf16", "fp16", "float32", "bfloat16", "float16")


# ------------------------------------------------------------------------------------------ helpers
def _alpha_arg(text: str) -> str | list[float]:
    from .config import ALPHA_PRESETS

    if text in ALPHA_PRESETS:
        return text
    try:
        return [float(v) for v in re.split(r"[,\s]+", text.strip()) if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a preset ({', '.join(ALPHA_PRESETS)}) or comma-separated numbers, got {text!r}"
        ) from None


def _add_checkpoint_args(p: argparse.ArgumentParser, checkpoint: bool = True) -> None:
    g = p.add_argument_group("checkpoint")
    if checkpoint:
        g.add_argument(
            "--checkpoint",
            default=None,
            help="our checkpoint directory, an upstream .pth file or folder, or a Hub repo id "
            "(default: Senfier-LiqiJing/StyleVAR)",
        )
    g.add_argument(
        "--vae",
        default=None,
        help="VQ-VAE file for upstream checkpoints (default: vae_ch160v4096z32.pth beside it)",
    )
    g.add_argument(
        "--variant", choices=("grpo", "sft"), default=None, help="released weights to use (default: grpo)"
    )
    g.add_argument(
        "--alpha",
        type=_alpha_arg,
        default=None,
        help="per-scale alpha: a preset (paper, sft) or N comma-separated values",
    )
    g.add_argument(
        "--base",
        default=None,
        help="base (SFT) checkpoint for a checkpoint holding only GRPO LoRA adapters",
    )
    g.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    g.add_argument("--cache-dir", default=None, help="Hugging Face cache directory")
    g.add_argument("--offline", action="store_true", help="use only files already in the Hugging Face cache")
    g.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow .pth files with pickled Python objects (runs code from the file: trusted files only)",
    )


def _load_pipeline(args: argparse.Namespace):
    from .pipeline import StyleVARPipeline

    return StyleVARPipeline.from_pretrained(args.checkpoint, device=args.device, **_checkpoint_kwargs(args))


def _checkpoint_kwargs(args: argparse.Namespace) -> dict:
    """The checkpoint-selection options shared by every subcommand, as ``load_pretrained`` arguments."""
    return dict(
        vae=args.vae,
        variant=args.variant,
        alpha=args.alpha,
        revision=args.revision,
        cache_dir=args.cache_dir,
        local_files_only=args.offline,
        allow_pickle=args.trust_checkpoint,
        base=args.base,
    )


def _blend_arg(text: str) -> tuple[Path, float]:
    """``PATH[:WEIGHT]`` (weight 1 when left out) of ``--blend``."""
    path, sep, weight = text.rpartition(":")
    if not sep or not path or "/" in weight or "\\" in weight:
        return Path(text).expanduser(), 1.0
    try:
        return Path(path).expanduser(), float(weight)
    except ValueError:
        return Path(text).expanduser(), 1.0


def _collect(path_text: str, role: str) -> list[Path]:
    from .images import list_images

    p = Path(path_text).expanduser()
    if not p.exists():
        raise ImageError(f"{role} path not found: {p}")
    return list_images(p, role) if p.is_dir() else [p]


def _output_names(contents: list[Path], styles: list[Path]) -> tuple[list[str], list[str]]:
    def names(paths: list[Path]) -> list[str]:
        stems = [p.stem for p in paths]
        if len(set(stems)) == len(stems):
            return stems
        return [p.name.replace(".", "_") for p in paths]

    return names(contents), names(styles)


# ------------------------------------------------------------------------------------------ stylize
def cmd_stylize(args: argparse.Namespace) -> int:
    from .images import IMAGE_EXTENSIONS, make_grid, save_image_atomic

    contents = _collect(args.content, "content")
    styles = _collect(args.style, "style")
    n_images = len(contents) * len(styles) * args.num_samples
    out = Path(args.output).expanduser()
    single_file = out.suffix.lower() in IMAGE_EXTENSIONS
    if single_file and n_images > 1:
        raise ConfigError(f"{out} is a file name but {n_images} images will be made; give a folder with -o")
    if out.exists() and single_file and out.is_dir():
        raise ConfigError(f"{out} is a directory; give a file name ending in .png/.jpg or drop the extension")
    if not single_file and out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder; choose another output path")
    c_names, s_names = _output_names(contents, styles)
    ext = args.format

    def target(ci: int, si: int, k: int) -> Path:
        if single_file:
            return out
        suffix = f"__{k}" if args.num_samples > 1 else ""
        return out / f"{c_names[ci]}__{s_names[si]}{suffix}.{ext}"

    blends = [_blend_arg(b) for b in args.blend]
    for path, _ in blends:
        if not path.is_file():
            raise ImageError(f"--blend style image not found: {path}")
    keep_size = args.keep_size or args.full_res
    upscale = "guided" if args.full_res else args.upscale
    pipe = _load_pipeline(args)  # --alpha becomes the model's default alpha
    grid_rows: dict[tuple[int, int], list] = {}
    written = 0
    skip = (lambda c, s, k: target(c, s, k).exists()) if args.skip_existing else None
    manifest = []
    if blends:  # each STYLE image blended with the --blend images inside the model, one call per STYLE image
        weights = [args.style_weight, *(w for _, w in blends)]
        calls = [
            (si, dict(style=[str(st), *(str(p) for p, _ in blends)], style_weights=weights))
            for si, st in enumerate(styles)
        ]
    else:
        calls = [(None, dict(style=[str(p) for p in styles]))]

    def batches():
        for si, style_kw in calls:
            sk = skip
            if skip is not None and si is not None:
                sk = lambda c, _s, k, si=si: skip(c, si, k)  # noqa: E731
            seed = args.seed
            if seed is not None and si is not None:  # distinct seeds across STYLE images
                seed += si * len(contents) * args.num_samples
            for batch in pipe.iter_batches(
                [str(p) for p in contents],
                **style_kw,
                num_samples=args.num_samples,
                seed=seed,
                top_k=args.top_k,
                top_p=args.top_p,
                temperature=args.temperature,
                style_strength=args.style_strength,
                pairing="product",
                batch_size=args.batch_size,
                fit=args.fit,
                keep_size=keep_size,
                upscale=upscale,
                preserve_color=args.preserve_color,
                legacy_kv_cache=args.legacy_kv_cache,
                dtype=args.dtype,
                cuda_graphs=args.cuda_graphs,
                progress=not args.quiet,
                skip=sk,
            ):
                if si is not None:
                    batch.pairs = [(c, si) for c, _ in batch.pairs]
                yield batch

    for batch in batches():
        for img, seed, (ci, si), k in zip(batch.images, batch.seeds, batch.pairs, batch.sample_indices):
            path = save_image_atomic(img, target(ci, si, k))
            written += 1
            manifest.append(
                {
                    "content": str(contents[ci]),
                    "style": str(styles[si]),
                    "sample": k,
                    "seed": seed,
                    "output": str(path),
                    **(
                        {
                            "blend": [{"style": str(p), "weight": w} for p, w in blends],
                            "style_weight": args.style_weight,
                        }
                        if blends
                        else {}
                    ),
                }
            )
            if args.grid:
                grid_rows.setdefault((ci, si), []).append(img)
    if args.grid and grid_rows:
        from .images import load_image, tensor_to_pil, to_model_input

        R = pipe.resolution

        def shown(p: Path) -> object:
            return tensor_to_pil(to_model_input(load_image(p), R, args.fit).add(1).mul(0.5))

        rows = [
            [shown(contents[ci]), shown(styles[si]), *imgs] for (ci, si), imgs in sorted(grid_rows.items())
        ]
        grid_path = out.with_name(out.stem + "_grid.png") if single_file else out / "grid.png"
        save_image_atomic(make_grid(rows, R), grid_path)
        print(f"grid: {grid_path}")
    if not single_file and manifest:
        log = out / "stylevar_runs.jsonl"
        with open(log, "a") as f:
            for row in manifest:
                f.write(json.dumps(row) + "\n")
    skipped = n_images - written
    where = out if single_file else f"{out}/"
    msg = f"wrote {written} image{'s' if written != 1 else ''} to {where}"
    if skipped:
        msg += f" ({skipped} existing skipped)"
    if written == 1 and manifest:
        msg += f" (seed {manifest[0]['seed']})"
    print(msg)
    return 0


# ------------------------------------------------------------------------------------------ convert / info
def cmd_convert(args: argparse.Namespace) -> int:

    from .checkpoints import convert_upstream
    from .models.ops import parse_dtype

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


def cmd_merge_lora(args: argparse.Namespace) -> int:
    from .checkpoints import merge_lora_checkpoint

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


def cmd_info(args: argparse.Namespace) -> int:
    from .checkpoints import load_pretrained

    ckpt = load_pretrained(args.checkpoint, **_checkpoint_kwargs(args))
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


# ------------------------------------------------------------------------------------------ synthetic data / demo
def cmd_make_synthetic(args: argparse.Namespace) -> int:
    from .data.synthetic import make_synthetic

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


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from .demo import DemoConfig, run_demo
    from .pipeline import resolve_device

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
    m = run_demo(args.output, cfg, device=resolve_device(args.device), progress=not args.quiet)
    t = m["against_target"]
    print(f"\nheld-out pairs: {m['heldout_pairs']} (new contents and new styles); similarity to the target:")
    print(f"  {'':28s} {'SSIM':>7s} {'PSNR':>7s} {'L1':>7s}")
    for name, row in t.items():
        print(f"  {name:28s} {row['ssim']:7.4f} {row['psnr']:7.2f} {row['l1']:7.4f}")
    print(
        f"took {m['timings']['total_s'] / 60:.1f} min; metrics: {args.output}/metrics.json; grid: {m['grid']}"
    )
    return 0


# ------------------------------------------------------------------------------------------ tokenizer / plot
def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in re.split(r"[,\s]+", text.strip()) if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _float_pair(text: str) -> tuple[float, float]:
    try:
        vals = tuple(float(v) for v in re.split(r"[,\s]+", text.strip()) if v)
    except ValueError:
        vals = ()
    if len(vals) != 2:
        raise argparse.ArgumentTypeError(f"expected two comma-separated numbers, got {text!r}")
    return vals  # type: ignore[return-value]


#: train-tokenizer flags that set TokenizerConfig fields: (flag, type, help); default None = the
#: config's default on a new run, the run's own value with --resume
_TOKENIZER_FLAGS: tuple[tuple[str, object, str], ...] = (
    ("--epochs", int, "passes over the training images (default 10; --max-steps overrides)"),
    ("--max-steps", int, "stop after this many optimizer steps"),
    ("--batch", int, "images per process per forward (default 16)"),
    ("--grad-accum", int, "micro-batches per optimizer step (default 1)"),
    ("--lr", float, "peak learning rate, AdamW (default 1e-4)"),
    ("--betas", _float_pair, "AdamW betas (default 0.5,0.9)"),
    ("--weight-decay", float, "weight decay of conv weights (default 0)"),
    ("--schedule", str, "lin0, step, cosine (default) or constant"),
    ("--warmup-steps", int, "linear warm-up steps (default: 2%% of the steps)"),
    ("--grad-clip", float, "max gradient norm (default 1; 0 = off)"),
    ("--precision", str, "fp32 (default), bf16 or fp16"),
    ("--recon-loss", str, "l1 (default), l2 or l1+l2"),
    ("--vq-weight", float, "weight of the codebook + commitment loss (default 1)"),
    ("--perceptual-weight", float, "weight of the VGG16 perceptual loss (default: 1 with --vgg-weights)"),
    ("--dead-code-steps", int, "restart codes unused for N steps from batch features (default 0 = off)"),
    ("--seed", int, "seed of data order, split, flips and initialisation (default 0)"),
    ("--val-every", int, "validate every N steps (default: epoch ends)"),
    ("--save-every", int, "write last.pt and a rolling checkpoint every N steps (default 500)"),
    ("--keep-rolling", int, "rolling checkpoints kept (default 3)"),
    ("--log-every", int, "metrics record every N steps (default 10)"),
    ("--num-workers", int, "data loader processes (default 2)"),
    ("--on-nonfinite", str, "stop (default: save and exit) or skip the step"),
)
_ARCH_FLAGS = ("vocab_size", "z_channels", "ch", "ch_mult", "num_res_blocks", "patch_nums")


def cmd_train_tokenizer(args: argparse.Namespace) -> int:
    from .training.tokenizer import train_tokenizer

    config = {
        flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_"))
        for flag, _, _ in _TOKENIZER_FLAGS
        if getattr(args, flag[2:].replace("-", "_")) is not None
    }
    if args.vgg_weights and "perceptual_weight" not in config and not args.resume:
        config["perceptual_weight"] = 1.0
    vqvae = {k: getattr(args, k) for k in _ARCH_FLAGS if getattr(args, k) is not None}
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


def cmd_plot(args: argparse.Namespace) -> int:
    from .training.plot import plot_run

    print(f"wrote {plot_run(args.run_dir, args.output)}")
    return 0


# ------------------------------------------------------------------------------------------ sft
def cmd_sft(args: argparse.Namespace) -> int:
    from .training.sft_cli import OtherRankFailed, run_sft

    try:
        run = run_sft(args, say=print)  # rank 0 prints; the progress bar too
    except OtherRankFailed:  # rank 0 printed the reason
        return 1
    if run.rank == 0:
        if run.final is None:
            print(
                f"stopped at step {run.step} of {run.total_steps}; continue with the same command and --resume"
            )
        else:
            print(f"final model: {run.final}/ (stylevar stylize ... --checkpoint {run.final})")
    return 0


# ------------------------------------------------------------------------------------------ grpo
def cmd_grpo(args: argparse.Namespace) -> int:
    from .training.grpo_cli import run_grpo
    from .training.sft_cli import OtherRankFailed

    try:
        run = run_grpo(args, say=print)
    except OtherRankFailed:
        return 1
    if run.rank == 0:
        if run.eval_start is not None and run.eval_end is not None:
            print(f"held-out reward: {run.eval_start:.4f} -> {run.eval_end:.4f}")
        if run.final is None:
            print(
                f"stopped at step {run.step} of {run.total_steps}; continue with the same command and --resume"
            )
        else:
            print(f"final model (LoRA merged): {run.final}/ (stylevar stylize ... --checkpoint {run.final})")
    return 0


# ------------------------------------------------------------------------------------------ evaluate
def cmd_evaluate(args: argparse.Namespace) -> int:
    from .eval.evaluate_cli import run_evaluate

    run_evaluate(args, say=print)
    return 0


# ------------------------------------------------------------------------------------------ app
def cmd_app(args: argparse.Namespace) -> int:
    from .app import run_app

    run_app(args, _load_pipeline)
    return 0


# ------------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stylevar", description="Reference-based style transfer with StyleVAR."
    )
    parser.add_argument("--version", action="version", version=f"stylevar {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "stylize",
        help="stylize content image(s) with style image(s)",
        description=(
            "Stylize CONTENT with STYLE. Each may be an image file or a folder of images; folders give every "
            "content x style pair. Images are centre-cropped (--fit crop) or squashed (--fit squash) to the "
            "model's square resolution."
        ),
    )
    p.add_argument("content", help="content image or folder")
    p.add_argument("style", help="style image or folder")
    p.add_argument("-o", "--output", required=True, help="output file (one image) or folder")
    p.add_argument("--grid", action="store_true", help="also write a content | style | result sheet")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default)")
    p.add_argument(
        "--seed", type=int, default=None, help="base seed; image k gets seed+k (default: random, printed)"
    )
    p.add_argument("--top-k", type=int, default=None, help="top-k filter (default: 900; 0 = off)")
    p.add_argument("--top-p", type=float, default=None, help="top-p filter (default: 0.96; 0 = off)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: 1)")
    p.add_argument(
        "--style-strength",
        type=float,
        default=None,
        help="shift every alpha by 0.5*s, clamped to [0.01, 0.99] (default: 0)",
    )
    p.add_argument("--num-samples", type=int, default=1, help="images per pair (default: 1)")
    p.add_argument("--batch-size", type=int, default=4, help="images generated at once (default: 4)")
    p.add_argument(
        "--fit", choices=("crop", "squash"), default="crop", help="how inputs become square (default: crop)"
    )
    p.add_argument(
        "--keep-size", action="store_true", help="resize results back to the content region's size"
    )
    p.add_argument(
        "--upscale",
        choices=("lanczos", "guided"),
        default="lanczos",
        help="with --keep-size: LANCZOS (default) or guided (the content's detail restored by a guided filter)",
    )
    p.add_argument(
        "--full-res",
        action="store_true",
        help="results at the content's original size and aspect, guided upsampling (= --keep-size --upscale "
        "guided; use with --fit squash for the whole image)",
    )
    p.add_argument(
        "--preserve-color",
        choices=("none", "luminance", "stats"),
        default="none",
        help="keep the content's colours: luminance (result's luma + content's chroma) or stats (colour "
        "mean/covariance matched to the content's); default none",
    )
    p.add_argument(
        "--blend",
        action="append",
        default=[],
        metavar="STYLE2[:WEIGHT]",
        help="blend another style image into the model's conditioning (weight default 1; repeatable); "
        "weights, with --style-weight for STYLE, are normalised to sum 1",
    )
    p.add_argument(
        "--style-weight",
        type=float,
        default=1.0,
        help="STYLE's weight when blending with --blend (default 1)",
    )
    p.add_argument(
        "--format",
        choices=("png", "jpg", "webp"),
        default="png",
        help="file type in folder mode (default: png)",
    )
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="leave out outputs that already exist (resume a folder run)",
    )
    p.add_argument(
        "--legacy-kv-cache", action="store_true", help="reproduce the published sampler token for token"
    )
    p.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="fp32",
        help="fp32 (default, exact) or bf16/fp16 products and attention under autocast (fast on GPUs; "
        "logits, sampling and the quantizer stay fp32)",
    )
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="replay each scale's transformer pass as a CUDA graph (GPU; captured once per batch size)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_checkpoint_args(p)
    p.set_defaults(func=cmd_stylize)

    p = sub.add_parser("convert", help="convert upstream .pth files into config.json + safetensors")
    p.add_argument("source", help="upstream StyleVAR .pth (or a folder with the released files)")
    p.add_argument("-o", "--output", required=True, help="output checkpoint directory")
    p.add_argument(
        "--vae", default=None, help="VQ-VAE .pth (default: vae_ch160v4096z32.pth beside the source)"
    )
    p.add_argument(
        "--variant", choices=("grpo", "sft"), default=None, help="which release this is (sets default alpha)"
    )
    p.add_argument(
        "--alpha", type=_alpha_arg, default=None, help="per-scale alpha to store (preset or values)"
    )
    p.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="float32",
        help="weight dtype on disk (bf16 halves the size)",
    )
    p.add_argument(
        "--trust-checkpoint", action="store_true", help="allow pickled Python objects (trusted files only)"
    )
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "merge-lora",
        help="merge GRPO LoRA adapters into plain weights (upstream's merge_grpo_lora.py)",
        description="LORA is an upstream GRPO checkpoint (grpo_*.pth: adapters only, which need --base, or a "
        "LoRA-wrapped full state) or a stylevar LoRA folder. The merged weights are checked by a strict "
        "load, then written as our checkpoint folder or as upstream's {'model': ..., 'note': ...} .pth.",
    )
    p.add_argument("lora", metavar="LORA", help="grpo_*.pth or a LoRA folder (adapter_config.json)")
    p.add_argument("-o", "--output", required=True, help="output folder (--format stylevar) or .pth file")
    p.add_argument(
        "--base", default=None, help="the SFT checkpoint the GRPO run started from (file or folder)"
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
    p.set_defaults(func=cmd_merge_lora)

    p = sub.add_parser("info", help="print a checkpoint's configuration")
    p.add_argument("checkpoint", nargs="?", default=None, help="checkpoint directory, file or Hub repo id")
    p.add_argument("--vae", default=None)
    p.add_argument("--variant", choices=("grpo", "sft"), default=None)
    p.add_argument("--alpha", type=_alpha_arg, default=None)
    p.add_argument("--base", default=None, help="base (SFT) checkpoint for LoRA-only adapters")
    p.add_argument("--revision", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--offline", action="store_true")
    p.add_argument("--trust-checkpoint", action="store_true")
    p.set_defaults(func=cmd_info)
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
    p.set_defaults(func=cmd_make_synthetic)

    p = sub.add_parser(
        "demo",
        help="train a small tokenizer and StyleVAR on synthetic triplets (CPU, minutes), then evaluate",
        description="Makes synthetic data, trains a VQ-VAE and a StyleVAR from scratch, stylizes held-out "
        "pairs, and writes OUT/grid.png and OUT/metrics.json. About 8 minutes on 2 CPU cores.",
    )
    p.add_argument("-o", "--output", default="stylevar-demo", help="output folder (default: stylevar-demo)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer-steps", type=int, default=None, help="override the tokenizer's steps")
    p.add_argument("--sft-steps", type=int, default=None, help="override the SFT steps")
    p.add_argument("--quick", action="store_true", help="a one-minute smoke run (does not learn much)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "train-tokenizer",
        help="train (or fine-tune) the multi-scale VQ-VAE tokenizer on your images",
        description="Train a VQ-VAE on DATA: image files, folders of images, or triplet datasets (OmniStyle, "
        "ImagePulse, CSV/JSONL manifests; their target images, or all three with --triplets). Checkpoints, "
        "metrics.jsonl and TensorBoard logs go to RUN_DIR; the tokenizer to RUN_DIR/final.",
    )
    p.add_argument("data", nargs="+", help="image files, image folders or triplet datasets")
    p.add_argument("-o", "--output", required=True, metavar="RUN_DIR", help="run directory")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR/checkpoints/last.pt")
    p.add_argument("--init", metavar="VAE", help="start from a VQ-VAE: our folder or an upstream .pth")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow a pickled --init (trusted files)")
    p.add_argument("--vgg-weights", metavar="PATH", help="torchvision vgg16-397923af.pth: perceptual loss")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default); torchrun runs DDP")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("data")
    g.add_argument("--triplets", action="store_true", help="take content, style and target of each triplet")
    g.add_argument("--recursive", action="store_true", help="read image folders with their subfolders")
    g.add_argument("--val-fraction", type=float, default=0.02, help="share of images held out (default 0.02)")
    g.add_argument("--fit", choices=("squash", "crop"), default="squash", help="how images become square")
    g.add_argument("--hflip", action="store_true", help="random horizontal flips")
    g.add_argument("--on-bad-file", choices=("fail", "skip"), default="fail", help="on an unreadable image")
    g = p.add_argument_group("model (a new run; --init and --resume keep theirs)")
    g.add_argument("--resolution", type=int, help="image side: patch_nums[-1] x 2^(levels-1), checked")
    g.add_argument("--vocab-size", type=int, default=None, help="codebook size (default 4096)")
    g.add_argument("--z-channels", type=int, default=None, help="code dimension (default 32)")
    g.add_argument("--ch", type=int, default=None, help="base channels, a multiple of 32 (default 160)")
    g.add_argument("--ch-mult", type=_int_tuple, help="channel multipliers per level (default 1,1,2,2,4)")
    g.add_argument("--num-res-blocks", type=int, default=None, help="ResNet blocks per level (default 2)")
    g.add_argument("--patch-nums", type=_int_tuple, help="token-map sides (default 1,2,3,4,5,6,8,10,13,16)")
    g = p.add_argument_group("training")
    for flag, kind, text in _TOKENIZER_FLAGS:
        g.add_argument(flag, type=kind, default=None, help=text)
    p.set_defaults(func=cmd_train_tokenizer)

    p = sub.add_parser("plot", help="draw a training run's loss/accuracy curves to a PNG")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory holding metrics.jsonl")
    p.add_argument("-o", "--output", default=None, help="PNG path (default: RUN_DIR/curves.png)")
    p.set_defaults(func=cmd_plot)

    from .training.sft_cli import add_arguments as add_sft_arguments

    p = sub.add_parser(
        "sft",
        help="fine-tune StyleVAR on (content, style, target) triplets (torchrun: DDP or --fsdp)",
        description="Supervised fine-tuning from a vanilla VAR checkpoint (--init-var), any StyleVAR (--init) "
        "or a new model (--depth) on OmniStyle-150K / ImagePulse roots or manifests. Under torchrun each "
        "process trains on its slice of every global batch.",
    )
    add_sft_arguments(p)
    p.set_defaults(func=cmd_sft)

    from .training.grpo_cli import add_arguments as add_grpo_arguments

    p = sub.add_parser(
        "grpo",
        help="reinforcement fine-tuning (GRPO + LoRA) of a StyleVAR against a perceptual reward",
        description="GRPO from an SFT checkpoint (--init) on triplets: G rollouts per (content, style), a reward "
        "(default -5 DreamSim vs target), PPO clip + KL to the LoRA-off reference, PANW token weights, "
        "iterative reference merges; options for VAR RL Done Right's middle return (--vmr) and mask "
        "propagation. Under torchrun each process rolls out its own conditions.",
    )
    add_grpo_arguments(p)
    p.set_defaults(func=cmd_grpo)

    from .eval.evaluate_cli import add_evaluate_arguments

    p = sub.add_parser(
        "evaluate",
        help="score checkpoints and baselines on the paper's benchmarks (Table 2) and write reports",
        description=(
            "Generate and score N samples per dataset for every model, AdaIN and a content copy; write "
            "summary.{json,csv,md}, sample sheets and a bar chart to --out. Rerun the same command to resume."
        ),
    )
    add_evaluate_arguments(p, _add_checkpoint_args)
    p.set_defaults(func=cmd_evaluate)

    from .app import add_app_arguments

    p = sub.add_parser(
        "app",
        help="a web page (Gradio) to stylize uploaded images with every control",
        description="Serve a Gradio page on --host:--port (default 127.0.0.1:7860). Needs stylevar[app].",
    )
    add_app_arguments(p)
    _add_checkpoint_args(p)
    p.set_defaults(func=cmd_app)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    release_memory_promptly()
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # the Hub client logs every retry; our own error line says what failed
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except StyleVARError as e:
        print(f"stylevar: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stylevar: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
