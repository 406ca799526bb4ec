"""Benchmark sample selection: the paper's three regimes, deterministic and free of training triplets.

* **Paired** (OmniStyle-150K held-out, ImagePulse, any triplet layout :func:`stylevar.data.scan` reads):
  the triplets are sorted by key, shuffled with ``random.Random(seed)`` and the first ``n`` taken, after
  leaving out every triplet the model was trained on: the ``train`` list of each ``split.json`` that
  ``stylevar sft``/``grpo`` wrote (``--exclude-split``), and ``train_files.txt`` in the dataset root when
  present (the published data preparation's split). ``strict=True`` also leaves out triplets whose
  content *or* style image was seen in training (OmniStyle-150K has only ~1,800 content images, so a
  held-out triplet usually shares its content with training ones). Metrics compare against the target.
* **Unpaired** (COCO content x WikiArt style): every image under each root (recursive, sorted by
  relative path) and ``n`` distinct (content, style) pairs drawn from their product with
  ``random.Random(seed)``. Metrics compare against the content image.

The upstream evaluation (docs/upstream.md §7.1, B13) drew OmniStyle samples from the whole target folder
(training triplets included) in ``os.listdir`` order, which differs between filesystems; both are fixed
here. Sample ``i`` is generated with seed ``seed + i`` by every model, as upstream does.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.triplets import Triplet, load_split, scan
from ..errors import DataError
from ..files import atomic_write_text
from ..images import FITS, IMAGE_EXTENSIONS, crop_box, load_image

PathLike = str | os.PathLike


@dataclass(frozen=True)
class Sample:
    """One benchmark item: ``index`` is its position in the selection (its seed is ``seed + index``)."""

    index: int
    key: str
    content: Path
    style: Path
    target: Path | None = None


@dataclass
class Benchmark:
    """A named list of samples; ``paired`` benchmarks have targets (metrics against the target)."""

    name: str
    samples: list[Sample]
    paired: bool
    source: str = ""
    selection: dict = field(default_factory=dict)

    @property
    def reference(self) -> str:
        """What LPIPS/SSIM/DreamSim/CLIP compare against: ``target`` (GT) or ``content``."""
        return "target" if self.paired else "content"

    @property
    def slug(self) -> str:
        return slugify(self.name)

    def fingerprint(self) -> str:
        """A digest of the selected samples (keys and files), to tell whether a resumed run saw the same."""
        h = hashlib.sha256()
        for s in self.samples:
            h.update(f"{s.index}|{s.key}|{s.content}|{s.style}|{s.target}\n".encode())
        return h.hexdigest()[:16]


def slugify(name: str) -> str:
    """A file-name-safe form of a dataset or model name (``COCO+WikiArt`` -> ``COCO_WikiArt``)."""
    out = "".join(c if c.isalnum() or c in "-._" else "_" for c in name).strip("._")
    return out or "unnamed"


# ---------------------------------------------------------------------------------------------------
# Training exclusions


@dataclass
class Exclusions:
    """What training saw: target paths, (source, key) pairs, and the content and style images."""

    targets: set[str] = field(default_factory=set)
    keys: set[tuple[str, str]] = field(default_factory=set)
    contents: set[str] = field(default_factory=set)
    styles: set[str] = field(default_factory=set)
    files: list[str] = field(default_factory=list)

    def add(self, triplets: Iterable[Triplet]) -> None:
        for t in triplets:
            self.targets.add(_norm(t.target))
            self.keys.add((t.source, t.key))
            self.contents.add(_norm(t.content))
            self.styles.add(_norm(t.style))

    def covers(self, t: Triplet, strict: bool = False) -> bool:
        if _norm(t.target) in self.targets or (t.source, t.key) in self.keys:
            return True
        return strict and (_norm(t.content) in self.contents or _norm(t.style) in self.styles)

    def __bool__(self) -> bool:
        return bool(self.targets or self.keys)


def _norm(p: PathLike) -> str:
    return os.path.normcase(os.path.abspath(os.path.expanduser(str(p))))


def load_exclusions(split_files: Sequence[PathLike]) -> Exclusions:
    """The training triplets of each ``split.json`` (written by ``stylevar sft``/``grpo``)."""
    ex = Exclusions()
    for f in split_files:
        p = Path(f).expanduser()
        if p.is_dir():
            p = p / "split.json"
        if not p.is_file():
            raise DataError(
                f"split file not found: {p}; give the split.json a training run wrote (RUN_DIR/split.json)"
            )
        train, _ = load_split(p)
        ex.add(train)
        ex.files.append(str(p))
    return ex


def _root_train_keys(source: Path) -> set[str]:
    f = source / "train_files.txt"
    if source.is_dir() and f.is_file():
        return {line.strip() for line in f.read_text().splitlines() if line.strip()}
    return set()


# ---------------------------------------------------------------------------------------------------
# Selection


def paired_benchmark(
    name: str,
    source: PathLike,
    *,
    num_samples: int,
    seed: int = 42,
    layout: str = "auto",
    exclude: Exclusions | None = None,
    strict: bool = False,
) -> Benchmark:
    """``num_samples`` triplets of a dataset root or manifest, training triplets left out (module doc)."""
    if num_samples < 1:
        raise DataError(f"num_samples must be >= 1, got {num_samples}")
    src = Path(source).expanduser()
    triplets = scan(src, layout)
    exclude = exclude or Exclusions()
    root_keys = _root_train_keys(src)
    kept = [t for t in triplets if t.key not in root_keys and not exclude.covers(t, strict)]
    if not kept:
        raise DataError(
            f"{src}: all {len(triplets)} triplets were used in training; evaluate on other data or drop "
            "--exclude-split"
        )
    ordered = sorted(kept, key=lambda t: t.key)
    random.Random(seed).shuffle(ordered)
    chosen = ordered[:num_samples]
    samples = [Sample(i, t.key, t.content, t.style, t.target) for i, t in enumerate(chosen)]
    selection = {
        "rule": "sorted keys, random.Random(seed).shuffle, first n",
        "available": len(triplets),
        "excluded_training": len(triplets) - len(kept),
        "excluded_by": [*exclude.files, *([str(src / "train_files.txt")] if root_keys else [])],
        "strict_holdout": strict,
        "selected": len(samples),
    }
    return Benchmark(name, samples, paired=True, source=str(src), selection=selection)


def find_images(root: PathLike, role: str) -> list[Path]:
    """Every image file under ``root`` (recursive; hidden files and folders skipped), sorted by relative path."""
    r = Path(root).expanduser()
    if not r.exists():
        raise DataError(f"{role} folder not found: {r}")
    if r.is_file():
        return [r]
    out = []
    for dirpath, dirnames, filenames in os.walk(r):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS:
                out.append(Path(dirpath) / f)
    if not out:
        raise DataError(f"{role} folder {r} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS)[:5])}, ...)")
    return sorted(out, key=lambda p: p.relative_to(r).as_posix())


def unpaired_benchmark(
    name: str, content_root: PathLike, style_root: PathLike, *, num_samples: int, seed: int = 42
) -> Benchmark:
    """``num_samples`` distinct (content, style) pairs from two image folders (module doc)."""
    if num_samples < 1:
        raise DataError(f"num_samples must be >= 1, got {num_samples}")
    croot, sroot = Path(content_root).expanduser(), Path(style_root).expanduser()
    cs, ss = find_images(croot, "content"), find_images(sroot, "style")
    total = len(cs) * len(ss)
    picks = random.Random(seed).sample(range(total), min(num_samples, total))

    def rel(p: Path, root: Path) -> str:
        return p.relative_to(root).as_posix() if root.is_dir() else p.name

    samples = []
    for i, k in enumerate(picks):
        c, s = cs[k // len(ss)], ss[k % len(ss)]
        samples.append(Sample(i, f"{rel(c, croot)}&&{rel(s, sroot)}", c, s, None))
    selection = {
        "rule": "sorted recursive file lists, random.Random(seed).sample of distinct pairs",
        "content_images": len(cs),
        "style_images": len(ss),
        "selected": len(samples),
    }
    return Benchmark(name, samples, paired=False, source=f"{croot} x {sroot}", selection=selection)


# ---------------------------------------------------------------------------------------------------
# Images


def open_rgb(path: PathLike, role: str = "image") -> Image.Image:
    """An image file read as pytorch-fid, art-fid and StyleID's ``eval_artfid.py`` read theirs:
    ``Image.open(path).convert("RGB")`` and nothing else. Unlike :func:`stylevar.images.load_image` (what
    the methods are given) it **drops** alpha (transparent pixels keep the RGB stored under them; no
    composite onto white), converts palette, grey and 16-bit images by PIL's rules, takes the first frame
    and applies no EXIF rotation. A file PIL cannot read gives ``load_image``'s one-line ImageError."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        load_image(path, role=role)  # raises the one-line error that says what is wrong with the file
        raise


def read_image(path: PathLike, resolution: int, fit: str = "squash", role: str = "image") -> torch.Tensor:
    """An image file as a (3, R, R) uint8 tensor, resized as the model was trained (LANCZOS; ``squash``
    the whole image, or ``crop`` the centred square first)."""
    if fit not in FITS:
        raise DataError(f"fit must be one of {FITS}, got {fit!r}")
    img = load_image(path, role=role)
    region = img.crop(crop_box(img.size, fit)).resize((resolution, resolution), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(region, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


class BenchmarkImages:
    """The benchmark's content/style/target images at one resolution, read once, kept as uint8."""

    def __init__(self, bench: Benchmark, resolution: int, fit: str = "squash"):
        self.bench, self.resolution, self.fit = bench, resolution, fit
        self._cache: dict[Path, torch.Tensor] = {}

    def image(self, path: Path, role: str) -> torch.Tensor:
        """One file as (3, R, R) uint8, read on first use."""
        if path not in self._cache:
            self._cache[path] = read_image(path, self.resolution, self.fit, role)
        return self._cache[path]

    def batch(self, samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(content, style, target or None), each (B, 3, R, R) float in [0, 1]."""

        def stack(paths, role):
            return torch.stack([self.image(p, role) for p in paths]).float().div_(255)

        content = stack([s.content for s in samples], "content")
        style = stack([s.style for s in samples], "style")
        target = stack([s.target for s in samples], "target") if self.bench.paired else None
        return content, style, target


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] float images -> uint8 (rounded, clamped): what a PNG of them holds."""
    return images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)


def describe(bench: Benchmark) -> str:
    sel = bench.selection
    if bench.paired:
        extra = (
            f", {sel['excluded_training']} training triplets left out" if sel.get("excluded_training") else ""
        )
        return f"{bench.name}: {len(bench.samples)} of {sel['available']} triplets (vs target{extra})"
    return (
        f"{bench.name}: {len(bench.samples)} pairs from {sel['content_images']} content x "
        f"{sel['style_images']} style images (vs content)"
    )


def dump_samples(bench: Benchmark, path: PathLike) -> None:
    """The selected samples as JSON lines (index, key, files), for the record."""
    rows = [
        {
            "index": s.index,
            "key": s.key,
            "content": str(s.content),
            "style": str(s.style),
            "target": str(s.target) if s.target else None,
        }
        for s in bench.samples
    ]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
