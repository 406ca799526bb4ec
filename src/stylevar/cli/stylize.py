"""``stylevar stylize CONTENT STYLE -o OUT``: files or folders, every content x style pair."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import DTYPE_CHOICES, add_checkpoint_args, load_pipeline


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
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
    add_checkpoint_args(p)
    p.set_defaults(func=run)
    return p


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
    from ..errors import ImageError
    from ..images import list_images

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


def _larger_than(paths: list[Path], side: int) -> bool:
    """True when one of the images (read lazily: only the header) has a shorter side above ``side``."""
    from PIL import Image

    for p in paths:
        try:
            with Image.open(p) as im:
                if min(im.size) > side:
                    return True
        except Exception:  # unreadable: the pipeline reports it, with its own message
            continue
    return False


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError, ImageError
    from ..images import IMAGE_EXTENSIONS, make_grid, save_image_atomic

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
    pipe = load_pipeline(args)  # --alpha becomes the model's default alpha
    if not keep_size and _larger_than(contents, 2 * pipe.resolution):
        R = pipe.resolution
        print(
            f"note: this model works at {R}x{R} px, so the results are {R}x{R}; "
            "--keep-size scales each to its content's size",
            file=sys.stderr,
        )
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
        from ..images import load_image, tensor_to_pil, to_model_input

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
