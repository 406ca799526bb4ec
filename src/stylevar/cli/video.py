"""``stylevar video VIDEO STYLE -o OUTPUT``: a stylized video (see :mod:`stylevar.stylize.video`)."""

from __future__ import annotations

import argparse

from .common import add_checkpoint_args, add_config_flags, config_values, examples, load_pipeline
from .settings_flags import (
    add_output_flags,
    add_run_flags,
    add_sampling_flags,
    add_style_flags,
    blends,
    settings_keywords,
)


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ..stylize.settings import VideoOptions

    p = sub.add_parser(
        "video",
        help="stylize a video (mp4, webm, mov, mkv, gif) frame by frame, without flicker",
        description=(
            "Stylize every frame of VIDEO with STYLE into OUTPUT (.mp4, .mov, .mkv, .webm or .gif), "
            "keeping the frame size and rate and the audio. Frames are read, stylized and written a batch at "
            "a time. Every frame uses the same seed, and every scale keeps the previous frame's tokens "
            "wherever the content did not change under them (--keep-scales 0: independent frames). The "
            "output is written whole or not at all. Needs PyAV: pip install 'stylevar[video]'."
        ),
        epilog=examples(
            ("a clip in one style, sound kept", "stylevar video clip.mp4 monet.jpg -o clip_monet.mp4"),
            (
                "the first 5 seconds as a GIF, each frame independent (may flicker)",
                "stylevar video clip.mp4 monet.jpg -o preview.gif --duration 5 --keep-scales 0",
            ),
            (
                "two styles blended, on a GPU in bf16",
                "stylevar video clip.mp4 monet.jpg -o out.mp4 --blend hokusai.jpg:0.5 --device cuda --dtype bf16",
            ),
        ),
    )
    p.add_argument("video", metavar="VIDEO", help="the input video (a still image: use stylevar stylize)")
    p.add_argument("style", metavar="STYLE", help="the style image")
    p.add_argument("-o", "--output", required=True, help="the output video (.mp4, .mov, .mkv, .webm, .gif)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default: auto)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    shown = {"keep_scales": "all", "duration": "to the end"}
    add_config_flags(p.add_argument_group("video"), VideoOptions, shown=shown)
    add_sampling_flags(p, seed_default=0)
    add_output_flags(p, fit="squash", video=True)
    add_run_flags(p, video=True)
    add_style_flags(p, leakage=False)
    add_checkpoint_args(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import sys

    from ..stylize.settings import StylizeSettings, VideoOptions
    from ..stylize.video import stylize_video

    keywords = settings_keywords(args, video=True)
    StylizeSettings().with_(**keywords)  # every flag checked before the model loads
    options = VideoOptions(**config_values(args, VideoOptions))
    blend_images = blends(args)
    pipe = load_pipeline(args)
    styles = [args.style, *(str(p) for p, _ in blend_images)]
    weights = [args.style_weight, *(w for _, w in blend_images)] if blend_images else None
    r = stylize_video(
        pipe,
        args.video,
        styles if blend_images else args.style,
        args.output,
        options=options,
        style_weights=weights,
        progress=not args.quiet,
        **keywords,
    )
    if r.expected_frames is not None and r.frames < r.expected_frames:
        print(
            f"warning: {r.frames} of the {r.expected_frames} frames the container announces could be read "
            "(a truncated or damaged file?)",
            file=sys.stderr,
        )
    fps = r.frames / r.seconds if r.seconds > 0 else float("inf")
    print(
        f"{r.frames} frames, {r.width}x{r.height} at {float(r.rate):g} fps, audio {r.audio}; "
        f"{fps:.2f} frames/s; {r.kept_tokens:.0%} of the kept scales' tokens carried over; output: {r.path}"
    )
    return 0
