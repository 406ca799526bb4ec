"""``stylevar video IN STYLE -o OUT``: a stylized video (see :mod:`stylevar.video`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import DTYPE_CHOICES, add_checkpoint_args, load_pipeline


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "video",
        help="stylize a video (mp4, webm, mov, mkv, gif) frame by frame, without flicker",
        description=(
            "Stylize every frame of IN with STYLE into OUT (.mp4, .mov, .mkv, .webm or .gif), keeping the "
            "frame size and rate and the audio. Frames are read, stylized and written a batch at a time. "
            "Every frame uses the same seed, and every scale keeps the previous frame's tokens wherever the "
            "content did not change under them (--keep-scales 0: independent frames). OUT is written "
            "whole or not at all. Needs PyAV: pip install 'stylevar[video]'."
        ),
    )
    p.add_argument("video", help="the input video")
    p.add_argument("style", help="the style image")
    p.add_argument("-o", "--output", required=True, help="the output video (.mp4, .mov, .mkv, .webm, .gif)")
    p.add_argument(
        "--keep-scales",
        type=int,
        default=None,
        help="scales (from the coarsest) whose tokens carry over from the previous frame where the content "
        "did not change (default: all; 0: independent frames)",
    )
    p.add_argument(
        "--keep-criterion",
        choices=("pixels", "tokens"),
        default="pixels",
        help="unchanged = the content's pixels under the token moved less than --change-threshold "
        "(default), or the content's own token is the same",
    )
    p.add_argument(
        "--change-threshold",
        type=float,
        default=0.02,
        help="mean absolute pixel change ([0, 1]) under a token below which it is kept (default 0.02)",
    )
    p.add_argument("--seed", type=int, default=0, help="the seed of every frame (default 0)")
    p.add_argument("--start", type=float, default=0.0, help="start at this time, in seconds (default 0)")
    p.add_argument("--duration", type=float, default=None, help="seconds to stylize (default: to the end)")
    p.add_argument("--batch-size", type=int, default=4, help="frames generated at once (default 4)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default)")
    p.add_argument("--top-k", type=int, default=None, help="top-k filter (default: the checkpoint's)")
    p.add_argument("--top-p", type=float, default=None, help="top-p filter (default: the checkpoint's)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature")
    p.add_argument("--style-strength", type=float, default=None, help="shift every alpha by 0.5*s")
    p.add_argument(
        "--fit",
        choices=("squash", "crop"),
        default="squash",
        help="squash (default: the whole frame) or crop (the centred square, stretched back to the frame)",
    )
    p.add_argument(
        "--upscale", choices=("lanczos", "guided"), default="lanczos", help="back to the frame size"
    )
    p.add_argument("--preserve-color", choices=("none", "luminance", "stats"), default="none")
    p.add_argument("--blend", action="append", default=[], metavar="STYLE2[:WEIGHT]", help="as in stylize")
    p.add_argument("--style-weight", type=float, default=1.0, help="STYLE's weight with --blend")
    p.add_argument("--mask", default=None, metavar="MASK.png", help="a style-strength map (as in stylize)")
    p.add_argument("--region", action="append", default=[], metavar="MASK.png:STYLE", help="as in stylize")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="fp32")
    p.add_argument("--crf", type=int, default=18, help="H.264 quality (lower: better, larger; default 18)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_checkpoint_args(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..errors import ImageError
    from ..video import stylize_video
    from .stylize import _blend_arg, _region_arg

    blends = [_blend_arg(b) for b in args.blend]
    for path, _ in blends:
        if not path.is_file():
            raise ImageError(f"--blend style image not found: {path}")
    regions = [_region_arg(r) for r in args.region]
    if args.mask is not None and not Path(args.mask).expanduser().is_file():
        raise ImageError(f"--mask image not found: {Path(args.mask).expanduser()}")
    pipe = load_pipeline(args)
    styles = [args.style, *(str(p) for p, _ in blends)]
    weights = [args.style_weight, *(w for _, w in blends)] if blends else None
    r = stylize_video(
        pipe,
        args.video,
        styles if blends else args.style,
        args.output,
        style_weights=weights,
        keep_scales=args.keep_scales,
        keep_criterion=args.keep_criterion,
        change_threshold=args.change_threshold,
        seed=args.seed,
        start=args.start,
        duration=args.duration,
        batch_size=args.batch_size,
        fit=args.fit,
        top_k=args.top_k,
        top_p=args.top_p,
        temperature=args.temperature,
        style_strength=args.style_strength,
        preserve_color=args.preserve_color,
        upscale=args.upscale,
        mask=args.mask,
        regions=regions or None,
        dtype=args.dtype,
        crf=args.crf,
        progress=not args.quiet,
    )
    fps = r.frames / r.seconds if r.seconds > 0 else float("inf")
    print(
        f"{r.frames} frames, {r.width}x{r.height} at {float(r.rate):g} fps, audio {r.audio}; "
        f"{fps:.2f} frames/s; {r.kept_tokens:.0%} of the kept scales' tokens carried over; output: {r.path}"
    )
    return 0
