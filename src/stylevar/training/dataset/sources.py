"""The inputs of ``stylevar triplets`` and the plan made of them: which crops, which pairs, which split.

Everything here is decided before any network runs, from the settings and the input files alone, so a
rerun makes the same plan and finds its files (docs/triplets.md):

* **Sources**: each input image gets an id that is safe as a file name and unique within its role (the
  path inside its folder, ``/`` as ``--``; a clash gets ``-2``, ``-3``...); the sample photographs are
  named by their file (``astronaut``). Every file is decoded once before any work starts; the first
  unreadable one is named in one line with the fix.
* **Crops**: ``crops_per_image`` per content image (``content/<id>_<k>.png``) and ``style_crops_per_image``
  per style image (``style/<id>_<k>.png``), square, at ``resolution``
  (:func:`stylevar.data.photos.random_crops`). Without style folders the content images are the styles
  too (other crops of them), and no content is paired with a crop of itself.
* **Pairs**: each content crop gets ``styles_per_content`` styles drawn without replacement, seeded by
  the crop's name. For ``multistyle26`` a style is a built-in one, and its reference image is *another*
  content crop rendered in it (``style/ms26-<b>_<crop>.png``), drawn from the contents of the same split
  (a validation content never shows up in training, not even as a style reference).
* **Split**: by content image (``val_fraction`` of the content images, all their crops and pairs) and by
  style (``held_out_styles`` style images, or built-in styles, whose every pair goes to
  ``val_unseen_style``, whatever its content).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ...data.photos import list_photos
from ...data.triplets import check_image
from ...errors import ConfigError, DataError
from ...images import IMAGE_EXTENSIONS, load_image
from .config import MULTISTYLE, TripletBuildConfig

SPLITS = ("train", "val", "val_unseen_style")


@dataclass(frozen=True)
class Source:
    """One input image: ``id`` (file-name safe, unique in its role), ``path``, ``role``, where it came from."""

    id: str
    path: Path
    role: str
    origin: str


@dataclass(frozen=True)
class Crop:
    """A square crop of a source, saved as ``file`` (relative to the output folder)."""

    file: str
    source: Source
    index: int

    @property
    def name(self) -> str:
        return Path(self.file).name


@dataclass(frozen=True)
class Reference:
    """multistyle26's style image: content crop ``crop`` rendered in built-in style ``builtin``."""

    file: str
    crop: Crop
    builtin: int

    @property
    def name(self) -> str:
        return Path(self.file).name


@dataclass(frozen=True)
class PlannedTriplet:
    """One triplet to make: ``key`` (the target's file name, OmniStyle's ``<content>&&<style>.png``)."""

    key: str
    content: Crop
    style: Crop | Reference
    style_id: str  #: the style's identity for the split: a style image's id, or ``ms26-<b>``
    split: str
    seed: int  #: the teacher's seed (stylevar: sampling), from the settings' seed and the key

    @property
    def target(self) -> str:
        return f"target/{self.key}"


@dataclass
class Plan:
    content_crops: list[Crop]
    style_crops: list[Crop]
    references: list[Reference]
    triplets: list[PlannedTriplet]
    val_contents: list[str]
    held_out_styles: list[str]


# ---------------------------------------------------------------------------------------- sources
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "image"


def _folder_images(folder: Path, recursive: bool, flag: str) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{flag} {folder}: not a folder")
    it = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(
        p
        for p in it
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    )
    if not files:
        deeper = "" if recursive else " (add --recursive for subfolders)"
        raise DataError(f"{flag} {folder}: no image files{deeper}")
    return files


def _named(items: Sequence[tuple[str, Path, str]], role: str) -> list[Source]:
    seen: set[str] = set()
    out = []
    for base, path, origin in items:
        name, n = _slug(base), 2
        while name in seen:
            name, n = f"{_slug(base)}-{n}", n + 1
        seen.add(name)
        out.append(Source(name, path, role, origin))
    return out


def _folder_items(folders: Sequence[str], role: str, recursive: bool) -> list[tuple[str, Path, str]]:
    items = []
    for d in folders:
        folder = Path(d).expanduser()
        for p in _folder_images(folder, recursive, f"--{role}-dir"):
            items.append(
                (p.relative_to(folder).with_suffix("").as_posix().replace("/", "--"), p, str(folder))
            )
    return items


def content_sources(cfg: TripletBuildConfig) -> list[Source]:
    """The content images: the sample photographs (``--photos``) first, then the ``--content-dir`` folders."""
    items = []
    if cfg.photos:
        items += [(p.name, p.path, f"photos ({p.package})") for p in list_photos(grey=cfg.grey_photos)]
    return _named(items + _folder_items(cfg.content_dirs, "content", cfg.recursive), "content")


def style_sources(cfg: TripletBuildConfig, contents: Sequence[Source]) -> list[Source]:
    """The style images: ``--style-dir`` folders, else the contents (arbitrary and stylevar); none for
    multistyle26 (its styles are built in)."""
    if cfg.spec.kind == MULTISTYLE:
        return []
    if cfg.style_dirs:
        return _named(_folder_items(cfg.style_dirs, "style", cfg.recursive), "style")
    return [Source(s.id, s.path, "style", s.origin) for s in contents]


def check_sources(sources: Sequence[Source], workers: int = 4) -> None:
    """Decode every input once; the first unreadable one raises its one-line ImageError (with the count)."""
    paths = sorted({s.path for s in sources})
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        reasons = dict(zip(paths, pool.map(lambda p: check_image(p, full=True), paths), strict=True))
    bad = [p for p in paths if reasons[p] is not None]
    if not bad:
        return
    role = next(s.role for s in sources if s.path == bad[0])
    count = f" ({len(bad)} unusable input images; fix or remove them)" if len(bad) > 1 else ""
    try:
        load_image(bad[0], role=role)
    except Exception as e:  # its one line names the file and the fix
        raise DataError(f"{e}{count}") from None
    raise DataError(f"{role} image {bad[0]}: {reasons[bad[0]]}; re-export it as PNG or JPEG{count}")


def check_output(cfg: TripletBuildConfig) -> Path:
    """The output folder, refused where writing it could touch an input folder (one line)."""
    out = Path(cfg.output).expanduser().resolve()
    for flag, folders in (("--content-dir", cfg.content_dirs), ("--style-dir", cfg.style_dirs)):
        for d in folders:
            src = Path(d).expanduser().resolve()
            if out == src or out in src.parents or (cfg.recursive and src in out.parents):
                raise ConfigError(
                    f"-o/--output {out} and {flag} {src} overlap; outputs never go among the inputs: choose "
                    "another output folder"
                )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o/--output {out} is a file; give a folder")
    return out


# ---------------------------------------------------------------------------------------- the plan
def _held(ids: Sequence[str], n: int, seed: int, what: str) -> list[str]:
    ordered = sorted(ids)
    random.Random(f"{seed}:{what}").shuffle(ordered)
    return sorted(ordered[:n])


def triplet_seed(seed: int, key: str) -> int:
    """A 63-bit seed of (the build's seed, the triplet's key): the same in every run and process."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") >> 1


def make_plan(cfg: TripletBuildConfig, contents: Sequence[Source], styles: Sequence[Source]) -> Plan:
    """The crops, the pairs and their split (module doc); the order is the order of the work."""
    content_crops = [
        Crop(f"content/{s.id}_{k}.png", s, k) for s in contents for k in range(cfg.crops_per_image)
    ]
    ids = sorted({s.id for s in contents})
    n_val = round(len(ids) * cfg.val_fraction)
    if cfg.val_fraction > 0 and len(ids) > 1:
        n_val = min(len(ids) - 1, max(n_val, 1))
    val_contents = set(_held(ids, n_val, cfg.seed, "val-contents"))

    style_crops: list[Crop] = []
    if cfg.spec.kind == MULTISTYLE:
        style_ids = [f"ms26-{b:02d}" for b in cfg.builtin_styles]
    else:
        style_crops = [
            Crop(f"style/{s.id}_{k}.png", s, k) for s in styles for k in range(cfg.style_crops_per_image)
        ]
        style_ids = sorted({s.id for s in styles})
    if cfg.held_out_styles >= len(style_ids):
        raise ConfigError(
            f"--held-out-styles {cfg.held_out_styles} leaves no style for training (there are {len(style_ids)})"
        )
    held = set(_held(style_ids, cfg.held_out_styles, cfg.seed, "held-out-styles"))

    triplets: list[PlannedTriplet] = []
    references: dict[str, Reference] = {}
    for crop in content_crops:
        rng = random.Random(f"{cfg.seed}:pairs:{crop.file}")
        in_val = crop.source.id in val_contents
        if cfg.spec.kind == MULTISTYLE:
            chosen = rng.sample(cfg.builtin_styles, min(cfg.styles_per_content, len(cfg.builtin_styles)))
            others = [c for c in content_crops if c.source.id != crop.source.id]
            same_split = [c for c in others if (c.source.id in val_contents) == in_val]
            pool = same_split or (others if in_val else [])
            if not pool:
                raise ConfigError(
                    "multistyle26 takes each style reference from another content image of the same split, and "
                    f"the {'validation' if in_val else 'training'} split has one content image; give more content "
                    "images or another --val-fraction"
                )
            styles_for: list[tuple[Crop | Reference, str]] = []
            for b in chosen:
                ref_crop = rng.choice(pool)
                file = f"style/ms26-{b:02d}_{ref_crop.name}"
                ref = references.setdefault(file, Reference(file, ref_crop, b))
                styles_for.append((ref, f"ms26-{b:02d}"))
        else:
            pool = [c for c in style_crops if c.source.path != crop.source.path]
            if not pool:
                raise ConfigError(
                    "every style image is the content image itself; give more images or --style-dir"
                )
            picked = rng.sample(pool, min(cfg.styles_per_content, len(pool)))
            styles_for = [(c, c.source.id) for c in picked]
        for style, style_id in styles_for:
            key = f"{crop.name}&&{style.name}.png"
            split = "val_unseen_style" if style_id in held else ("val" if in_val else "train")
            triplets.append(PlannedTriplet(key, crop, style, style_id, split, triplet_seed(cfg.seed, key)))
    keys = [t.key for t in triplets]
    if len(set(keys)) != len(keys):  # two crops of one name cannot happen (ids are unique); a guard
        raise DataError("two planned triplets share a name; report this as a bug")
    return Plan(
        content_crops, style_crops, list(references.values()), triplets, sorted(val_contents), sorted(held)
    )


def inputs_fingerprint(sources: Sequence[Source]) -> str:
    """What the inputs are, for the resume check: each source's role, id and size in bytes."""
    h = hashlib.sha256()
    for s in sources:
        h.update(f"{s.role}\0{s.id}\0{s.path.stat().st_size}\n".encode())
    return h.hexdigest()[:16]
