"""What a stylization is asked to do: one frozen, validated settings object.

    settings = StylizeSettings(sampling=Sampling(top_k=1, seed=0), output=Output(keep_size=True))
    pipe.stylize_pairs(pairs, settings=settings)            # or the same as keywords: top_k=1, seed=0, ...

Every way in -- the Python API's keywords, the command line's flags, a manifest row, a web request, a
Ray task (``to_dict``/``from_dict``) -- becomes these objects, and each object checks its values once,
in ``__post_init__``, with a one-line :class:`~stylevar.errors.ConfigError`. Inside the library the
object travels (the streaming loop, the batch runner, ``StyleVAR.generate``, video, Ray workers); a new
control is one field here and its one use. The fields carry their help text (``option``), from which
``stylevar stylize`` and ``stylevar video`` make their flags.

The parts:

* :class:`Sampling` -- how tokens are drawn (filters, temperature, alpha or style strength, the seed
  rule, the arithmetic: dtype, CUDA graphs, the published KV cache).
* :class:`Output` -- what is made of a result (square or the content's size, upsampling, colour
  preservation, PIL or tensor).
* :class:`Regions` and :class:`Leakage` -- where the style goes (a strength mask, region styles) and
  StyleAR's knobs against the style image's objects showing up.
* :class:`RunPolicy` -- how a run goes (samples per pair, batch size, read window, bad files).

Like :mod:`stylevar.config`, this module imports nothing heavier than the standard library.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import (
    COLOUR_MODES,
    FITS,
    UPSAMPLERS,
    Sampling,
    Serialisable,
    check_bool,
    check_choice,
    check_float,
    check_int,
    option,
)
from ..errors import ConfigError

OUTPUT_TYPES = ("pil", "pt")
BAD_FILE_POLICIES = ("fail", "skip")


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


# ------------------------------------------------------------------------------------------ the parts
@dataclass(frozen=True)
class Output(Serialisable):
    """What is made of each result."""

    fit: str = option("crop", "how an input becomes the model's square: centre crop or squash", choices=FITS)
    keep_size: bool = option(False, "resize each result back to its content region's size")
    upscale: str = option(
        "lanczos",
        "with keep_size: LANCZOS, or guided (the content's detail restored by a guided filter)",
        choices=UPSAMPLERS,
    )
    preserve_color: str = option(
        "none",
        "keep the content's colours: luminance (result's luma, content's chroma) or stats (colour "
        "mean/covariance matched to the content's)",
        choices=COLOUR_MODES,
    )
    output_type: str = option("pil", "pil images, or pt: (3, H, W) tensors in [0, 1]", flag=False)

    def __post_init__(self) -> None:
        check_choice("fit", self.fit, FITS)
        check_bool("keep_size", self.keep_size)
        check_choice("upscale", self.upscale, UPSAMPLERS)
        check_choice("preserve_color", self.preserve_color, COLOUR_MODES)
        check_choice("output_type", self.output_type, OUTPUT_TYPES)

    @property
    def needs_content(self) -> bool:
        """Does postprocessing need the full-size content (to resize to it, or to take its colours)?"""
        return self.keep_size or self.preserve_color != "none"


@dataclass(frozen=True)
class Leakage(Serialisable):
    """StyleAR's knobs against the style image's own objects appearing in the result
    (:meth:`stylevar.stylize.regional.Regional.edit_styles`): the style's salient region, given as a mask or
    found by a SAM model, is partly subtracted from its features; noise on its VQ features."""

    #: the style image's salient region: a mask image (path or PIL image)
    style_mask: Any = option(None, "the style image's salient region (a mask image)", flag=False)
    #: find the salient region with SAM: a transformers SamModel folder, a Hub id, or a callable
    segmenter: Any = option(None, "SAM model folder or Hub id that finds the salient region", flag=False)
    subtract: float = option(
        1.0, "share of the salient region's features kept: 1 keeps all, 0 none", flag=False
    )
    style_noise: float = option(0.0, "std of noise on the style's VQ condition features", flag=False)

    def __post_init__(self) -> None:
        _set(self, "subtract", check_float("subtract", self.subtract, low=0.0, high=1.0))
        _set(self, "style_noise", check_float("style_noise", self.style_noise, low=0.0))
        if self.style_mask is not None and self.segmenter is not None:
            raise ConfigError(
                "give the style image's salient region once: style_mask or a segmenter, not both"
            )
        if self.subtract != 1.0 and self.style_mask is None and self.segmenter is None:
            raise ConfigError(
                "subtract needs the style image's salient region: give style_mask (--style-mask) or a SAM "
                "model (--style-segmenter)"
            )

    @property
    def active(self) -> bool:
        return self.style_mask is not None or self.segmenter is not None or self.style_noise != 0


@dataclass(frozen=True)
class Regions(Serialisable):
    """Where the style goes, the same for every pair of a run (a mask covers the content image and is
    cropped with ``fit``): a grey-level ``mask`` of style strength (white keeps the model's alpha,
    black moves it to the content end), ``regions`` -- ``(mask, style)`` pairs whose style is used
    inside the mask --, and the ``leakage`` knobs. Masks and styles are paths or images."""

    mask: Any = None
    regions: tuple[tuple[Any, Any], ...] = ()
    leakage: Leakage = field(default_factory=Leakage)

    def __post_init__(self) -> None:
        items = () if self.regions is None else self.regions
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
            raise ConfigError("regions must be a list of (mask, style) pairs")
        pairs = []
        for item in items:
            if isinstance(item, (str, bytes)) or not isinstance(item, Sequence) or len(item) != 2:
                raise ConfigError(f"regions must be (mask, style) pairs, got {item!r}")
            pairs.append((item[0], item[1]))
        _set(self, "regions", tuple(pairs))
        if isinstance(self.leakage, Mapping):
            _set(self, "leakage", Leakage.from_dict(dict(self.leakage)))
        elif self.leakage is None:
            _set(self, "leakage", Leakage())
        elif not isinstance(self.leakage, Leakage):
            raise ConfigError(f"leakage must be a Leakage or a dict, got {type(self.leakage).__name__}")

    @property
    def active(self) -> bool:
        return self.mask is not None or bool(self.regions) or self.leakage.active

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Regions:
        d = dict(d)
        if isinstance(d.get("leakage"), Mapping):
            d["leakage"] = Leakage.from_dict(d["leakage"])
        return super().from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mask": self.mask,
            "regions": [list(r) for r in self.regions],
            "leakage": self.leakage.to_dict(),
        }


@dataclass(frozen=True)
class RunPolicy(Serialisable):
    """How a run goes through its pairs (:meth:`stylevar.stylize.pipeline.StyleVARPipeline.stylize_pairs`)."""

    num_samples: int = option(1, "images per pair, each with its own seed")
    batch_size: int = option(4, "images generated at once")
    window: int = option(
        4, "batches whose images are read at a time (memory is flat in the number of inputs)"
    )
    cache_size: int = option(
        256, "encoded images kept per role (a style used by many pairs is encoded once)", flag=False
    )
    on_bad_file: str = option(
        "fail",
        "an unreadable input: fail (stop, naming the file) or skip (go on; the pair is reported)",
        choices=BAD_FILE_POLICIES,
    )
    #: pad short batches to ``batch_size`` (the same bytes wherever an image is made); None: a run of at
    #: least one batch pads (:meth:`stylevar.stylize.pipeline.StyleVARPipeline.stylize_pairs`)
    pad_batches: bool | None = option(None, "pad short batches to batch_size", flag=False)

    def __post_init__(self) -> None:
        _set(self, "num_samples", check_int("num_samples", self.num_samples, low=1, high=1_000_000))
        _set(self, "batch_size", check_int("batch_size", self.batch_size, low=1, high=65_536))
        _set(self, "window", check_int("window", self.window, low=1, high=65_536))
        _set(self, "cache_size", check_int("cache_size", self.cache_size, low=0))
        check_choice("on_bad_file", self.on_bad_file, BAD_FILE_POLICIES)
        if self.pad_batches is not None:
            check_bool("pad_batches", self.pad_batches)


_PARTS: dict[str, type] = {"sampling": Sampling, "output": Output, "regions": Regions, "run": RunPolicy}


@dataclass(frozen=True)
class StylizeSettings:
    """Everything one stylization run is asked to do (module doc). ``with_(**keywords)`` returns a copy
    with fields changed by name, whichever part they belong to (``top_k=1, keep_size=True``)."""

    sampling: Sampling = field(default_factory=Sampling)
    output: Output = field(default_factory=Output)
    regions: Regions = field(default_factory=Regions)
    run: RunPolicy = field(default_factory=RunPolicy)

    def __post_init__(self) -> None:
        for name, cls in _PARTS.items():
            value = getattr(self, name)
            if isinstance(value, Mapping):
                _set(self, name, cls.from_dict(dict(value)))
            elif not isinstance(value, cls):
                raise ConfigError(f"settings.{name} must be a {cls.__name__}, got {type(value).__name__}")

    @staticmethod
    def field_names() -> dict[str, str]:
        """Every keyword a run takes -> the part that holds it (``mask``, ``regions``, ``leakage``: regions)."""
        out = {}
        for part, cls in _PARTS.items():
            for f in dataclasses.fields(cls):
                out[f.name] = part
        return out

    def with_(self, **changes: Any) -> StylizeSettings:
        """A copy with the named fields changed; None leaves a field as it is; an unknown name is refused
        (with the closest known one). Every changed part is validated again."""
        where = self.field_names()
        grouped: dict[str, dict[str, Any]] = {}
        for name, value in changes.items():
            if name not in where:
                close = difflib.get_close_matches(name, list(where), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"unknown setting {name!r}{hint}")
            if value is not None:
                grouped.setdefault(where[name], {})[name] = value
        parts = {part: dataclasses.replace(getattr(self, part), **kw) for part, kw in grouped.items()}
        return dataclasses.replace(self, **parts) if parts else self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (with paths, not images, for the masks and region styles): a Ray task's settings."""
        return {name: getattr(self, name).to_dict() for name in _PARTS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StylizeSettings:
        unknown = set(d) - set(_PARTS)
        if unknown:
            raise ConfigError(
                f"StylizeSettings: unknown part(s) {sorted(unknown)}; the parts are {list(_PARTS)}"
            )
        return cls(**{name: _PARTS[name].from_dict(dict(value)) for name, value in d.items()})


def pair_overrides(**values: Any) -> dict[str, Any]:
    """Check a pair's own settings (a manifest row's ``seed``, ``top_k``, ``top_p``, ``temperature``,
    ``style_strength``, ``preserve_color``) as the run's are checked; returns them normalised (None
    values dropped). Raises :class:`ConfigError` naming the bad one."""
    given = {k: v for k, v in values.items() if v is not None}
    if not given:  # most pairs (every pair of a folder run): nothing to check
        return {}
    sampling = {
        k: v for k, v in given.items() if k in ("seed", "top_k", "top_p", "temperature", "style_strength")
    }
    output = {k: v for k, v in given.items() if k == "preserve_color"}
    extra = set(given) - set(sampling) - set(output)
    if extra:
        raise ConfigError(f"not a per-pair setting: {', '.join(sorted(extra))}")
    s = dataclasses.replace(Sampling(), **sampling)
    o = dataclasses.replace(Output(), **output)
    return {**{k: getattr(s, k) for k in sampling}, **{k: getattr(o, k) for k in output}}


@dataclass(frozen=True)
class VideoOptions(Serialisable):
    """What ``stylevar video`` adds to a stylization (:func:`stylevar.stylize.video.stylize_video`)."""

    keep_scales: int | None = option(
        None,
        "scales (from the coarsest) whose tokens carry over from the previous frame where the content did "
        "not change (0: independent frames)",
    )
    keep_criterion: str = option(
        "pixels",
        "unchanged = the content's pixels under the token moved less than --change-threshold, or (tokens) "
        "the content's own token is the same",
        choices=("pixels", "tokens"),
    )
    change_threshold: float = option(
        0.02, "mean absolute pixel change ([0, 1]) under a token below which the token is kept"
    )
    start: float = option(0.0, "start at this time, in seconds")
    duration: float | None = option(None, "seconds to stylize")
    crf: int = option(18, "H.264 quality, 0-51 (lower: better and larger); VP9 gets crf+13")

    def __post_init__(self) -> None:
        if self.keep_scales is not None:
            _set(self, "keep_scales", check_int("keep_scales", self.keep_scales, low=0))
        check_choice("keep_criterion", self.keep_criterion, ("pixels", "tokens"))
        _set(
            self,
            "change_threshold",
            check_float("change_threshold", self.change_threshold, low=0.0, high=1.0),
        )
        _set(self, "start", check_float("start", self.start, low=0.0))
        if self.duration is not None:
            _set(self, "duration", check_float("duration", self.duration, low=0.0))
            if self.duration <= 0:
                raise ConfigError(f"duration must be > 0 seconds, got {self.duration:g}")
        _set(self, "crf", check_int("crf", self.crf, low=0, high=51))
