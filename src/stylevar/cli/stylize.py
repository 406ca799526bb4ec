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
            "content x style pair; --pairs reads the pairs from a CSV or JSON-lines manifest. Inputs are read "
            "a few batches at a time and outputs written as they are made. Images are centre-cropped (--fit "
            "crop) or squashed (--fit squash) to the model's square resolution. Exit codes: 0 every image "
            "written (or already there), 1 an error stopped the run (images written before it stay), 2 a "
            "usage error, 3 finished but pairs with unreadable inputs were skipped (--on-bad-file skip), "
            "130 interrupted."
        ),
    )
    p.add_argument("content", nargs="?", help="content image or folder (or give --pairs)")
    p.add_argument("style", nargs="?", help="style image or folder (or give --pairs)")
    p.add_argument(
        "--pairs",
        metavar="PAIRS.csv|.jsonl",
        help="a manifest of pairs instead of CONTENT STYLE: columns content, style and optionally seed, "
        "output, style_strength, preserve_color, top_k, top_p, temperature (README, 'Many pairs')",
    )
    p.add_argument(
        "--recursive",
        action="store_true",
        help="look for images in sub-folders too; the outputs mirror the content folder's sub-folders",
    )
    p.add_argument(
        "--on-bad-file",
        choices=("fail", "skip"),
        default="fail",
        help="an unreadable input: fail (default: stop, naming the file) or skip (go on; the skipped "
        "pairs are listed in OUT/skipped.jsonl and the exit code is 3)",
    )
    p.add_argument(
        "--window",
        type=int,
        default=4,
        help="batches whose images are read at a time (memory is flat in the number of inputs; default 4)",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        default=None,
        metavar="auto|ADDRESS",
        help="run on a Ray cluster (pip install 'stylevar[ray]'): 'auto' joins a running cluster or "
        "starts a local one; ADDRESS is a head node (ray://host:10001 or host:6379)",
    )
    p.add_argument(
        "--ray-workers",
        type=int,
        default=0,
        help="with --ray: pipeline actors (default: one per GPU, or one per --ray-cpus CPUs without GPUs)",
    )
    p.add_argument(
        "--ray-cpus", type=int, default=1, help="with --ray on CPU nodes: CPUs per pipeline actor (default 1)"
    )
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
        "--mask",
        default=None,
        metavar="MASK.png",
        help="where the style goes: a grey-level map over the content (white: the model's style strength, "
        "black: the content end, grey between; cropped with --fit like the content)",
    )
    p.add_argument(
        "--region",
        action="append",
        default=[],
        metavar="MASK.png:STYLE.jpg",
        help="another style inside a mask (white: that style, soft edges blend; repeatable)",
    )
    p.add_argument(
        "--style-mask",
        default=None,
        metavar="MASK.png",
        help="the style image's salient region (its objects), for --subtract (StyleAR's content-leakage remedy)",
    )
    p.add_argument(
        "--style-segmenter",
        default=None,
        metavar="SAM_FOLDER|HUB_ID",
        help="find each style image's salient region with SAM (a transformers SamModel folder, or a Hub id in "
        "the Hugging Face cache) instead of --style-mask",
    )
    p.add_argument(
        "--subtract",
        type=float,
        default=1.0,
        metavar="ALPHA",
        help="keep this share of the style's salient-region features: 1 (default) keeps all, 0 subtracts them",
    )
    p.add_argument(
        "--style-noise",
        type=float,
        default=0.0,
        metavar="GAMMA",
        help="std of noise on the style's VQ condition features (StyleAR; default 0)",
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
        help="leave out outputs that already exist, without reading their inputs (resume a run)",
    )
    p.add_argument(
        "--legacy-kv-cache", action="store_true", help="reproduce the published sampler token for token"
    )
    p.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="fp32",
        help="fp32 (default, exact), bf16/fp16 products and attention under autocast (fast on GPUs; "
        "logits, sampling and the quantizer stay fp32), or int8 weights for the transformer (CPU)",
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


def _region_arg(text: str) -> tuple[str, str]:
    """``MASK:STYLE`` -> (mask, style); the split is the colon with an existing file on both sides (paths
    may hold colons), else the last one, and the missing file is named."""
    from ..errors import ConfigError, ImageError

    cuts = [i for i, ch in enumerate(text) if ch == ":"]
    if not cuts:
        raise ConfigError(
            f"--region {text!r}: expected MASK.png:STYLE.jpg (a mask image, a colon, a style image)"
        )
    for i in cuts:
        if Path(text[:i]).expanduser().is_file() and Path(text[i + 1 :]).expanduser().is_file():
            return str(Path(text[:i]).expanduser()), str(Path(text[i + 1 :]).expanduser())
    mask, style = Path(text[: cuts[-1]]).expanduser(), Path(text[cuts[-1] + 1 :]).expanduser()
    missing = ("mask", mask) if not mask.is_file() else ("style image", style)
    raise ImageError(f"--region {text!r}: {missing[0]} not found: {missing[1]}")


def _larger_than(paths: list[Path], side: int) -> bool:
    """True when one of the images (read lazily: only the header) has a shorter side above ``side``."""
    from PIL import Image

    for p in paths[:64]:  # a sample is enough for a note
        try:
            with Image.open(p) as im:
                if min(im.size) > side:
                    return True
        except Exception:  # unreadable: the pipeline reports it, with its own message
            continue
    return False


def _stem(item: object) -> str:
    from ..pairs import Blend

    if isinstance(item, Blend):
        item = item.images[0]
    return Path(str(item)).stem


def _unique_names(pairs, where: str):
    """Refuse a manifest that names two rows' outputs alike (the second would overwrite the first)."""
    from ..errors import ConfigError

    seen: dict[str, str] = {}
    for pair in pairs:
        if pair.name is not None:
            if pair.name in seen:
                raise ConfigError(
                    f"{pair.source or where}: output {pair.name!r} is already the output of {seen[pair.name]}"
                )
            seen[pair.name] = pair.source or "an earlier row"
        yield pair


class _Run:
    """Where each image goes, and the run's account: the log of written images, skipped pairs, counts."""

    def __init__(self, out: Path, single_file: bool, num_samples: int, ext: str):
        self.out, self.single_file, self.num_samples, self.ext = out, single_file, num_samples, ext
        self.written = self.existing = 0
        self.skipped: list[dict] = []
        self.first_seed: int | None = None
        self._log = None

    def name(self, index: int, pair) -> str:
        if pair.name is not None:
            return pair.name
        if pair.source is not None:  # a manifest row without an output name: its index keeps it unique
            return f"{index:06d}__{_stem(pair.content)}__{_stem(pair.style)}"
        return f"{_stem(pair.content)}__{_stem(pair.style)}"

    def target(self, index: int, pair, k: int) -> Path:
        if self.single_file:
            return self.out
        suffix = f"__{k}" if self.num_samples > 1 else ""
        return self.out / f"{self.name(index, pair)}{suffix}.{self.ext}"

    def exists(self, index: int, pair, k: int) -> bool:
        if self.target(index, pair, k).exists():
            self.existing += 1
            return True
        return False

    def record(self, row: dict) -> None:
        """One finished image (``output`` set) or skipped pair (``error`` set)."""
        if row.get("error"):
            self.skipped.append(row)
            return
        self.written += 1
        if self.first_seed is None:
            self.first_seed = row["seed"]
        if self.single_file:
            return
        if self._log is None:
            self.out.mkdir(parents=True, exist_ok=True)
            self._log = open(self.out / "stylevar_runs.jsonl", "a")
        self._log.write(json.dumps({k: v for k, v in row.items() if k != "error"}) + "\n")
        self._log.flush()

    def finish(self) -> Path | None:
        """Close the log; write (or clear) ``skipped.jsonl``; its path when pairs were skipped."""
        from ..files import atomic_write

        if self._log is not None:
            self._log.close()
            self._log = None
        where = (self.out.parent if self.single_file else self.out) / "skipped.jsonl"
        if self.skipped:
            text = "".join(json.dumps(r) + "\n" for r in self.skipped)
            atomic_write(where, lambda f: f.write(text.encode()))
            return where
        if where.exists() and not self.single_file:
            where.unlink()  # a previous run's list: this run read every input it tried
        return None

    def summary(self, seconds: float) -> str:
        where = self.out if self.single_file else f"{self.out}/"
        rate = self.written / seconds if seconds > 0 else 0.0
        parts = [f"{self.written} written", f"{len(self.skipped)} skipped (unreadable input)"]
        if self.existing:
            parts.append(f"{self.existing} already there")
        line = f"{', '.join(parts)}; {rate:.2f} images/s; output: {where}"
        if self.written == 1 and self.first_seed is not None:
            line += f" (seed {self.first_seed})"
        return line


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import time

    from ..errors import ConfigError, ImageError, StyleVARError
    from ..images import IMAGE_EXTENSIONS, make_grid, save_image_atomic
    from ..pairs import Blend, collect_images, count_manifest, folder_pairs, output_names, read_manifest

    if args.pairs and (args.content or args.style):
        raise ConfigError("give CONTENT STYLE or --pairs PAIRS.csv, not both")
    if not args.pairs and not (args.content and args.style):
        raise ConfigError("give CONTENT and STYLE (image files or folders), or --pairs PAIRS.csv|.jsonl")
    if args.window < 1 or args.batch_size < 1 or args.num_samples < 1:
        raise ConfigError("--window, --batch-size and --num-samples must be >= 1")
    contents: list[Path] = []
    styles: list[Path] = []
    if args.pairs:
        first = next(read_manifest(args.pairs), None)  # fails early: a missing file, a malformed first row
        if first is None:
            raise ConfigError(f"{args.pairs} holds no pairs")
        n_pairs = count_manifest(args.pairs)
        pairs = _unique_names(read_manifest(args.pairs), args.pairs)
    else:
        contents, c_root = collect_images(args.content, "content", args.recursive)
        styles, s_root = collect_images(args.style, "style", args.recursive)
        n_pairs = len(contents) * len(styles)
        pairs = folder_pairs(contents, styles, output_names(contents, c_root), output_names(styles, s_root))
    n_images = n_pairs * args.num_samples
    out = Path(args.output).expanduser()
    single_file = out.suffix.lower() in IMAGE_EXTENSIONS
    if single_file and n_images > 1:
        raise ConfigError(f"{out} is a file name but {n_images} images will be made; give a folder with -o")
    if out.exists() and single_file and out.is_dir():
        raise ConfigError(f"{out} is a directory; give a file name ending in .png/.jpg or drop the extension")
    if not single_file and out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder; choose another output path")
    blends = [_blend_arg(b) for b in args.blend]
    for path, _ in blends:
        if not path.is_file():
            raise ImageError(f"--blend style image not found: {path}")
    if blends:  # every pair's style blended with the --blend images inside the model
        weights = (args.style_weight, *(w for _, w in blends))
        extra = tuple(str(p) for p, _ in blends)
        pairs = (dataclasses.replace(pair, style=Blend((pair.style, *extra), weights)) for pair in pairs)
    if args.ray and args.grid:
        raise ConfigError("--grid collects every image in one process; leave it out with --ray")
    keep_size = args.keep_size or args.full_res
    upscale = "guided" if args.full_res else args.upscale
    run_ = _Run(out, single_file, args.num_samples, args.format)
    settings = dict(
        num_samples=args.num_samples,
        seed=args.seed,
        top_k=args.top_k,
        top_p=args.top_p,
        temperature=args.temperature,
        style_strength=args.style_strength,
        batch_size=args.batch_size,
        window=args.window,
        fit=args.fit,
        keep_size=keep_size,
        upscale=upscale,
        preserve_color=args.preserve_color,
        legacy_kv_cache=args.legacy_kv_cache,
        dtype=args.dtype,
        cuda_graphs=args.cuda_graphs,
        on_bad_file=args.on_bad_file,
    )
    regions = [_region_arg(r) for r in args.region]
    if args.style_mask is not None or args.style_segmenter or args.subtract != 1.0 or args.style_noise:
        if args.style_mask is not None and not Path(args.style_mask).expanduser().is_file():
            raise ImageError(f"--style-mask image not found: {Path(args.style_mask).expanduser()}")
        settings["leakage"] = {
            "style_mask": None if args.style_mask is None else str(Path(args.style_mask).expanduser()),
            "subtract": args.subtract,
            "style_noise": args.style_noise,
        }
        if args.style_segmenter:
            settings["leakage"]["segmenter"] = args.style_segmenter
    if args.mask is not None:
        if not Path(args.mask).expanduser().is_file():
            raise ImageError(f"--mask image not found: {Path(args.mask).expanduser()}")
        settings["mask"] = str(Path(args.mask).expanduser())
    if regions:
        settings["regions"] = regions
    skip = run_.exists if args.skip_existing else None
    grid_rows: dict[tuple[str, str], list] = {}
    t0 = time.perf_counter()
    try:
        if args.ray:
            from ..cluster import stylize_on_ray

            if settings["seed"] is None:  # one base seed for every worker, printed in the log
                import secrets

                settings["seed"] = secrets.randbelow(2**31)
            from .common import checkpoint_kwargs

            load_kwargs = {"pretrained": args.checkpoint, **checkpoint_kwargs(args)}
            if args.device not in ("auto", None):
                load_kwargs["device"] = args.device
            for row in stylize_on_ray(
                pairs,
                load_kwargs,
                settings,
                out_dir=out.parent if single_file else out,
                target=run_.target,
                skip=skip,
                address=args.ray,
                workers=args.ray_workers,
                cpus_per_worker=args.ray_cpus,
                progress=not args.quiet,
                total=n_images,
            ):
                run_.record(row)
        else:
            pipe = load_pipeline(args)  # --alpha becomes the model's default alpha
            if contents and not keep_size and _larger_than(contents, 2 * pipe.resolution):
                R = pipe.resolution
                print(
                    f"note: this model works at {R}x{R} px, so the results are {R}x{R}; "
                    "--keep-size scales each to its content's size",
                    file=sys.stderr,
                )
            t0 = time.perf_counter()
            for r in pipe.stylize_pairs(
                pairs, **settings, skip=skip, progress=not args.quiet, total=n_images
            ):
                row = result_row(
                    r, run_.target(r.index, r.pair, r.sample) if r.ok else None, save_image_atomic
                )
                run_.record(row)
                if args.grid and r.ok:
                    grid_rows.setdefault((str(r.pair.content), str(row["style"])), []).append(r.image)
    except StyleVARError:
        run_.finish()
        if run_.written:
            print(f"stopped by an error after {run_.summary(time.perf_counter() - t0)}")
        raise
    except KeyboardInterrupt:
        run_.finish()
        print(f"interrupted: {run_.summary(time.perf_counter() - t0)}", file=sys.stderr)
        raise
    seconds = time.perf_counter() - t0
    skipped_list = run_.finish()
    if args.grid and grid_rows:
        from ..images import load_image, tensor_to_pil, to_model_input

        R = pipe.resolution

        def shown(p: str) -> object:
            return tensor_to_pil(to_model_input(load_image(p), R, args.fit).add(1).mul(0.5))

        rows = [[shown(c), shown(st), *imgs] for (c, st), imgs in grid_rows.items()]
        grid_path = out.with_name(out.stem + "_grid.png") if single_file else out / "grid.png"
        save_image_atomic(make_grid(rows, R), grid_path)
        print(f"grid: {grid_path}")
    print(run_.summary(seconds))
    if skipped_list is not None:
        print(f"skipped pairs and why: {skipped_list}")
        return 3
    return 0


def result_row(r, path: Path | None, save) -> dict:
    """The log row of one :class:`~stylevar.pipeline.PairResult`; saves its image to ``path`` first."""
    from ..pairs import log_row

    row = log_row(r.pair, r.sample, r.seed)
    if r.ok:
        row["output"] = str(save(r.image, path))
    else:
        row["error"] = r.error
    return row
