"""``stylevar stylize CONTENT STYLE -o OUTPUT``: files or folders, every content x style pair."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import add_checkpoint_args, examples, load_pipeline
from .settings_flags import (
    add_output_flags,
    add_run_flags,
    add_sampling_flags,
    add_style_flags,
    blends,
    settings_keywords,
)

EXIT_CODES = (
    "exit codes: 0 every image written (or already there), 1 an error stopped the run (images written\n"
    "before it stay), 2 a usage error, 3 finished but pairs were skipped (--on-bad-file skip),\n"
    "130 interrupted (Ctrl-C), 143 SIGTERM, 129 SIGHUP"
)


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "stylize",
        help="stylize content image(s) with style image(s)",
        usage=(
            "%(prog)s CONTENT STYLE -o OUTPUT [options]\n"
            "       %(prog)s --pairs PAIRS.csv|.jsonl -o OUTPUT [options]"
        ),
        description=(
            "Stylize CONTENT with STYLE. Each may be an image file or a folder of images; folders give every "
            "content x style pair; --pairs reads the pairs from a CSV or JSON-lines manifest instead. Inputs are "
            "read a few batches at a time and outputs written as they are made. Images are centre-cropped (--fit "
            "crop) or squashed (--fit squash) to the model's square resolution. Every setting is checked before "
            "any image is made (a manifest's rows too)."
        ),
        epilog=examples(
            (
                "one image, reproducible (the seed is printed when you leave it out)",
                "stylevar stylize photo.jpg monet.jpg -o out.png --seed 0",
            ),
            (
                "every photo x every painting, 2 samples each, resumable",
                "stylevar stylize photos/ paintings/ -o results/ --num-samples 2 --skip-existing",
            ),
            (
                "a manifest of pairs, at each content's own size, with the SFT release",
                "stylevar stylize --pairs pairs.csv -o results/ --full-res --fit squash --variant sft",
            ),
        )
        + "\n\n"
        + EXIT_CODES,
    )
    p.add_argument(
        "content", nargs="?", metavar="CONTENT", help="content image or folder (or give --pairs instead)"
    )
    p.add_argument(
        "style", nargs="?", metavar="STYLE", help="style image or folder (or give --pairs instead)"
    )
    p.add_argument("-o", "--output", required=True, help="output file (one image) or folder")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default: auto)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("inputs")
    g.add_argument(
        "--pairs",
        metavar="PAIRS.csv|.jsonl",
        help="a manifest of pairs instead of CONTENT STYLE: columns content, style and optionally seed, "
        "output, style_strength, preserve_color, top_k, top_p, temperature",
    )
    g.add_argument(
        "--recursive",
        action="store_true",
        help="look for images in sub-folders too; the outputs mirror the content folder's sub-folders",
    )
    g.add_argument("--grid", action="store_true", help="also write a content | style | result sheet")
    g.add_argument(
        "--format",
        choices=("png", "jpg", "webp"),
        default="png",
        help="file type in folder mode (default: png)",
    )
    g.add_argument(
        "--skip-existing",
        action="store_true",
        help="leave out outputs that already exist, without reading their inputs (resume a run)",
    )
    add_sampling_flags(p)
    add_output_flags(p)
    add_run_flags(p)
    add_style_flags(p)
    g = p.add_argument_group("ray")
    g.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        default=None,
        metavar="auto|ADDRESS",
        help="run on a Ray cluster (pip install 'stylevar[ray]'): 'auto' joins a running cluster or "
        "starts a local one; ADDRESS is a head node (ray://host:10001 or host:6379) (default: no Ray, "
        "one process)",
    )
    g.add_argument(
        "--ray-workers",
        type=int,
        default=0,
        help="with --ray: pipeline actors (default: one per GPU, or one per --ray-cpus CPUs without GPUs)",
    )
    g.add_argument(
        "--ray-cpus",
        type=int,
        default=1,
        help="with --ray on CPU nodes: CPUs per pipeline actor (default: 1)",
    )
    add_checkpoint_args(p)
    p.set_defaults(func=run, _parser=p)  # run's usage errors print this usage
    return p


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


def _pair_source(args: argparse.Namespace, blend_images: list[tuple[Path, float]]):
    """(a function making the run's pairs afresh, their content files or [], the number of pairs or of a
    manifest's rows): the pairs are made twice, once to check the whole plan, once to stylize them (a
    manifest is never held in memory)."""
    import dataclasses

    from ..stylize.pairs import (
        Blend,
        collect_images,
        folder_pairs,
        output_names,
        read_manifest,
    )

    contents: list[Path] = []
    if args.pairs:
        count = None  # counted once the manifest is known to be readable

        def make():
            return read_manifest(args.pairs, on_bad_row=args.on_bad_file)

    else:
        contents, c_root = collect_images(args.content, "content", args.recursive)
        styles, s_root = collect_images(args.style, "style", args.recursive)
        c_names, s_names = output_names(contents, c_root), output_names(styles, s_root)
        count = len(contents) * len(styles)

        def make():
            return folder_pairs(contents, styles, c_names, s_names)

    if not blend_images:
        return make, contents, count
    weights = (args.style_weight, *(w for _, w in blend_images))
    extra = tuple(str(p) for p, _ in blend_images)

    def blended():  # every pair's style blended with the --blend images inside the model
        return (dataclasses.replace(pair, style=Blend((pair.style, *extra), weights)) for pair in make())

    return blended, contents, count


def check_usage(args: argparse.Namespace) -> None:
    """CONTENT and STYLE, or --pairs; --grid without --ray: anything else is a usage error (exit 2, with
    the usage), like a misspelt flag."""
    if args.pairs and (args.content or args.style):
        args._parser.error("give CONTENT STYLE or --pairs PAIRS.csv|.jsonl, not both")
    if not args.pairs and not (args.content and args.style):
        missing = "STYLE" if args.content else "CONTENT and STYLE"
        args._parser.error(f"give {missing} (image files or folders), or --pairs PAIRS.csv|.jsonl")
    if args.ray and args.grid:
        args._parser.error("--grid collects every image in one process; leave it out with --ray")


def run(args: argparse.Namespace) -> int:
    import time

    check_usage(args)  # before anything is imported or read

    from ..errors import ConfigError, StyleVARError
    from ..images import save_image_atomic
    from ..stylize.outputs import OutputError, OutputRun, resolve_output
    from ..stylize.pairs import count_manifest
    from ..stylize.settings import StylizeSettings

    keywords = settings_keywords(args)
    StylizeSettings().with_(**keywords)  # every flag checked before any file is read
    make_pairs, contents, n_pairs = _pair_source(args, blends(args))
    first = next(iter(make_pairs()), None)  # a missing file, a malformed first row: before counting
    if first is None:
        raise ConfigError(f"{args.pairs} holds no pairs")
    num_samples = keywords["num_samples"]
    if n_pairs is None:
        n_pairs = count_manifest(args.pairs)
    out, single_file = resolve_output(args.output, n_pairs * num_samples)
    run_ = OutputRun(out, single_file, num_samples, args.format)
    n_pairs = run_.check(make_pairs())  # whole plan, before any image is made
    if single_file and n_pairs * num_samples > 1:
        raise ConfigError(
            f"{out} is a file name but {n_pairs * num_samples} images will be made; give a folder"
        )
    n_images = n_pairs * num_samples
    skip = run_.exists if args.skip_existing else None
    grid_rows: dict[tuple[str, str], list] = {}
    t0 = time.perf_counter()
    try:
        if args.ray:
            rows = _ray_rows(args, make_pairs(), keywords, run_, skip, n_images)
        else:
            pipe = load_pipeline(args)  # --alpha becomes the model's default alpha
            settings = pipe.settings(**keywords)
            if contents and not settings.output.keep_size and _larger_than(contents, 2 * pipe.resolution):
                R = pipe.resolution
                print(
                    f"note: this model works at {R}x{R} px, so the results are {R}x{R}; "
                    "--keep-size scales each to its content's size",
                    file=sys.stderr,
                )
            t0 = time.perf_counter()
            results = pipe.stylize_pairs(
                make_pairs(), settings, skip=skip, progress=not args.quiet, total=n_images
            )
            rows = _local_rows(results, run_, save_image_atomic, grid_rows if args.grid else None)
        for row in rows:
            run_.record(row)
    except StyleVARError as e:
        run_.finish()
        if run_.written or run_.skipped or isinstance(e, OutputError):
            print(f"stopped by an error after {run_.summary(time.perf_counter() - t0)}; {run_.resume_hint()}")
        raise
    except KeyboardInterrupt:
        run_.finish()
        print(f"interrupted: {run_.summary(time.perf_counter() - t0)}; {run_.resume_hint()}", file=sys.stderr)
        raise
    seconds = time.perf_counter() - t0
    skipped_list = run_.finish()
    if args.grid and grid_rows:
        grid_path = _write_grid(grid_rows, pipe.resolution, settings.output.fit, out, single_file)
        print(f"grid: {grid_path}")
    print(run_.summary(seconds))
    if skipped_list is not None:
        print(f"skipped pairs and why: {skipped_list}")
        return 3
    return 0


def _local_rows(results, run_, save, grid_rows: dict | None):
    """The log rows of the one-process loop's results, each image saved first."""
    from ..stylize.pairs import log_row

    for r in results:
        row = log_row(r.pair, r.sample, r.seed)
        if r.ok:
            row["output"] = str(run_.save(r.image, run_.target(r.index, r.pair, r.sample), save))
            if grid_rows is not None:
                grid_rows.setdefault((str(r.pair.content), str(row["style"])), []).append(r.image)
        else:
            row["error"] = r.error
        yield row


def _ray_rows(args: argparse.Namespace, pairs, keywords: dict, run_, skip, n_images: int):
    """The log rows of a Ray run (the workers save the images)."""
    import secrets

    from ..stylize.cluster import stylize_on_ray
    from .common import checkpoint_kwargs

    if keywords.get("seed") is None:  # one base seed for every worker, printed in the log
        keywords = {**keywords, "seed": secrets.randbelow(2**31)}
    load_kwargs = {"pretrained": args.checkpoint, **checkpoint_kwargs(args)}
    if args.device not in ("auto", None):
        load_kwargs["device"] = args.device
    return stylize_on_ray(
        pairs,
        load_kwargs,
        keywords,
        out_dir=run_.folder,
        target=run_.target,
        skip=skip,
        address=args.ray,
        workers=args.ray_workers,
        cpus_per_worker=args.ray_cpus,
        progress=not args.quiet,
        total=n_images,
    )


def _write_grid(grid_rows: dict, R: int, fit: str, out: Path, single_file: bool) -> Path:
    from ..images import load_image, make_grid, save_image_atomic, tensor_to_pil, to_model_input

    def shown(p: str) -> object:
        return tensor_to_pil(to_model_input(load_image(p), R, fit).add(1).mul(0.5))

    rows = [[shown(c), shown(st), *imgs] for (c, st), imgs in grid_rows.items()]
    grid_path = out.with_name(out.stem + "_grid.png") if single_file else out / "grid.png"
    return save_image_atomic(make_grid(rows, R), grid_path)
