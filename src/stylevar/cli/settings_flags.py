"""The flags of a stylization, made from :mod:`stylevar.stylize.settings` (``stylevar stylize`` and ``video``).

Sampling, output and run flags are generated from the settings' fields (help text, choices, defaults);
what a field cannot say by itself -- a style blend (``--blend STYLE2:WEIGHT``), region styles
(``--region MASK:STYLE``), StyleAR's leakage knobs -- is declared here once. :func:`settings_keywords`
turns the parsed flags into the keywords of :meth:`stylevar.stylize.pipeline.StyleVARPipeline.settings`, where
they pass the one validation. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import Sampling
from ..errors import ConfigError, ImageError
from ..stylize.settings import Output, RunPolicy
from .common import add_config_flags, config_values

#: sampling flags default to the checkpoint's values (None here)
CHECKPOINT_DEFAULT = "the checkpoint's"


def add_sampling_flags(p: argparse.ArgumentParser, *, seed_default: int | None = None) -> None:
    g = p.add_argument_group("sampling")
    shown = {k: CHECKPOINT_DEFAULT for k in ("top_k", "top_p", "temperature", "style_strength")}
    shown["dtype"] = "the checkpoint's: fp32 unless it stores another"
    shown["seed"] = "random, printed" if seed_default is None else str(seed_default)
    add_config_flags(g, Sampling, keep_defaults=False, shown=shown)
    for action in g._group_actions:
        if action.dest == "seed" and seed_default is not None:
            action.default = seed_default


def add_output_flags(p: argparse.ArgumentParser, *, fit: str = "crop", video: bool = False) -> None:
    g = p.add_argument_group("output")
    skip = ("keep_size",) if video else ()
    add_config_flags(g, Output, defaults={"fit": fit}, skip=skip)
    if not video:
        g.add_argument(
            "--full-res",
            action="store_true",
            help="results at the content's original size and aspect, guided upsampling (= --keep-size "
            "--upscale guided; use with --fit squash for the whole image)",
        )


def add_run_flags(p: argparse.ArgumentParser, *, video: bool = False) -> None:
    g = p.add_argument_group("run")
    skip = ("num_samples", "window", "on_bad_file") if video else ()
    add_config_flags(g, RunPolicy, skip=skip)


def add_style_flags(p: argparse.ArgumentParser, *, leakage: bool = True) -> None:
    """A style blend, region styles and (``leakage``) StyleAR's knobs."""
    g = p.add_argument_group("blends and regions")
    g.add_argument(
        "--blend",
        action="append",
        default=[],
        metavar="STYLE2[:WEIGHT]",
        help="blend another style image into the model's conditioning (weight 1 when left out; repeatable); "
        "weights, with --style-weight for STYLE, are normalised to sum 1 (default: none)",
    )
    g.add_argument(
        "--style-weight",
        type=float,
        default=1.0,
        help="STYLE's weight when blending with --blend (default 1)",
    )
    g.add_argument(
        "--mask",
        default=None,
        metavar="MASK.png",
        help="where the style goes: a grey-level map over the content (white: the model's style strength, "
        "black: the content end, grey between; cropped with --fit like the content)",
    )
    g.add_argument(
        "--region",
        action="append",
        default=[],
        metavar="MASK.png:STYLE.jpg",
        help="another style inside a mask (white: that style, soft edges blend; repeatable) (default: none)",
    )
    if not leakage:
        return
    g = p.add_argument_group("content leakage (StyleAR)")
    g.add_argument(
        "--style-mask",
        default=None,
        metavar="MASK.png",
        help="the style image's salient region (its objects), for --subtract",
    )
    g.add_argument(
        "--style-segmenter",
        default=None,
        metavar="SAM_FOLDER|HUB_ID",
        help="find each style image's salient region with SAM (a transformers SamModel folder, or a Hub id in "
        "the Hugging Face cache) instead of --style-mask",
    )
    g.add_argument(
        "--subtract",
        type=float,
        default=1.0,
        metavar="ALPHA",
        help="keep this share of the style's salient-region features: 1 (default) keeps all, 0 subtracts them",
    )
    g.add_argument(
        "--style-noise",
        type=float,
        default=0.0,
        metavar="GAMMA",
        help="std of noise on the style's VQ condition features (default 0)",
    )


def blend_arg(text: str) -> tuple[Path, float]:
    """``PATH[:WEIGHT]`` (weight 1 when left out) of ``--blend``."""
    path, sep, weight = text.rpartition(":")
    if not sep or not path or "/" in weight or "\\" in weight:
        return Path(text).expanduser(), 1.0
    try:
        return Path(path).expanduser(), float(weight)
    except ValueError:
        return Path(text).expanduser(), 1.0


def region_arg(text: str) -> tuple[str, str]:
    """``MASK:STYLE`` -> (mask, style); the split is the colon with an existing file on both sides (paths
    may hold colons), else the last one, and the missing file is named."""
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


def input_file(path: str, flag: str) -> str:
    """An input file named by ``flag``: one line when it is missing or a folder."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ImageError(f"{flag} {p} is a folder; give an image file")
    if not p.is_file():
        raise ImageError(f"{flag} image not found: {p}")
    return str(p)


def blends(args: argparse.Namespace) -> list[tuple[Path, float]]:
    """The ``--blend`` images (checked to exist) and their weights."""
    out = [blend_arg(b) for b in args.blend]
    for path, _ in out:
        input_file(str(path), "--blend")
    return out


def settings_keywords(args: argparse.Namespace, *, video: bool = False) -> dict[str, Any]:
    """The parsed flags as settings keywords (None: not given, the checkpoint's or the default)."""
    kw: dict[str, Any] = {}
    kw.update(config_values(args, Sampling))
    kw.update(config_values(args, Output, skip=("keep_size",) if video else ()))
    kw.update(config_values(args, RunPolicy, skip=("num_samples", "window", "on_bad_file") if video else ()))
    if not video and args.full_res:
        kw.update(keep_size=True, upscale="guided")
    if args.mask is not None:
        kw["mask"] = input_file(args.mask, "--mask")
    if args.region:
        kw["regions"] = [region_arg(r) for r in args.region]
    if not video:
        leak = {"subtract": args.subtract, "style_noise": args.style_noise}
        if args.style_mask is not None:
            leak["style_mask"] = input_file(args.style_mask, "--style-mask")
        if args.style_segmenter:
            leak["segmenter"] = args.style_segmenter
        kw["leakage"] = leak
    return kw
