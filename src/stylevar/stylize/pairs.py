"""What to stylize: (content, style) pairs from files, folders and manifests, one at a time.

A million pairs must not be a million objects in memory before the first image is made, so every
source here is an iterator: :func:`folder_pairs` walks folders (every content x every style),
:func:`read_manifest` reads a CSV or JSON-lines file row by row. Each yields :class:`Pair`; the
pipeline's streaming path (:meth:`stylevar.stylize.pipeline.StyleVARPipeline.stylize_pairs`) decodes the
images of a few batches at a time.

Seeds: a pair carries its own ``seed`` or none. Without one, the streaming path gives the image of
pair ``i``, sample ``k`` the seed ``base + i * num_samples + k``; with one, ``seed + k``. A folder run
writes the seed of every output to ``stylevar_runs.jsonl``, and the same seed in a manifest or in a
:class:`Pair` passed to the Python API makes the same image (docs/batch.md).

Manifest columns (CSV with a header row, or one JSON object per line): ``content`` and ``style``
(paths, relative to the manifest's folder unless absolute), optional ``seed`` (int), ``output``
(the output's name without extension, sub-folders allowed, relative to the output folder),
``style_strength`` (float), ``preserve_color`` (none, luminance, stats), ``top_k``, ``top_p``,
``temperature``. Empty CSV cells mean "not given". Unknown columns are refused (a typo would
otherwise silently do nothing).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any

from ..config import MAX_SEED, Sampling
from ..errors import ConfigError, ImageError
from ..images import IMAGE_EXTENSIONS, list_images
from .settings import pair_overrides

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson")


@dataclass(frozen=True)
class Blend:
    """Several style images blended into one style inside the model (weights normalised to sum 1)."""

    images: tuple[Any, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.images) != len(self.weights) or not self.images:
            raise ConfigError(f"a blend needs one weight per style image, got {len(self.images)} images")


@dataclass(frozen=True)
class Pair:
    """One content image with one style (a path, PIL image, tensor in [0, 1], or a :class:`Blend`).

    Optional per-pair settings override the run's: ``seed`` (sample k gets ``seed + k``), ``name``
    (the output's relative name without extension), ``style_strength``, ``preserve_color``,
    ``top_k``, ``top_p``, ``temperature``, checked as the run's are (a one-line
    :class:`~stylevar.errors.ConfigError`). ``source`` says where the pair came from (a manifest's
    file and line), for messages.
    """

    content: Any
    style: Any
    seed: int | None = None
    name: str | None = None
    style_strength: float | None = None
    preserve_color: str | None = None
    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    source: str | None = None
    #: why this pair cannot be made (a manifest row refused under ``on_bad_row="skip"``): the run reports
    #: it as skipped, reading nothing
    error: str | None = None

    def __post_init__(self) -> None:
        """The pair's own settings pass the run's validation (:func:`stylevar.stylize.settings.pair_overrides`)."""
        values = {name: getattr(self, name) for name in PAIR_SETTINGS}
        try:
            checked = pair_overrides(**values)
        except ConfigError as e:
            raise ConfigError(f"{self.source}: {e}" if self.source else str(e)) from None
        for name, value in checked.items():
            object.__setattr__(self, name, value)


#: a pair's own settings, overriding the run's (:class:`stylevar.config.Sampling` and ``Output`` fields)
PAIR_SETTINGS = ("seed", "style_strength", "preserve_color", "top_k", "top_p", "temperature")


#: the sampling fields that one ``generate`` call's rows must share
FILTERS = ("top_k", "top_p", "temperature")


def filters_of(sampling: Sampling, pair: Pair) -> tuple[int, float, float]:
    """(top_k, top_p, temperature) of ``pair`` in a run sampled with ``sampling``: what the rows of one
    ``generate`` call share (read off the fields: no new settings object per image)."""
    return tuple(v if (v := getattr(pair, k)) is not None else getattr(sampling, k) for k in FILTERS)


def pair_sampling(sampling: Sampling, pair: Pair) -> Sampling:
    """The run's sampling with ``pair``'s own filters and style strength (its seed is :func:`image_seed`'s)."""
    own = {k: getattr(pair, k) for k in ("top_k", "top_p", "temperature", "style_strength")}
    own = {k: v for k, v in own.items() if v is not None}
    return dataclasses.replace(sampling, **own) if own else sampling


def image_seed(pair: Pair, index: int, sample: int, num_samples: int, base: int) -> int:
    """The seed of pair ``index``'s sample ``sample``: ``pair.seed + sample``, or
    ``base + index * num_samples + sample`` when the pair has none (the one rule every path uses), as an
    unsigned 63-bit number (a base near :data:`~stylevar.stylize.settings.MAX_SEED` wraps around)."""
    if pair.seed is not None:
        return (pair.seed + sample) % (MAX_SEED + 1)
    return (base + index * num_samples + sample) % (MAX_SEED + 1)


#: manifest column -> (Pair field, converter)
_COLUMNS: dict[str, tuple[str, Any]] = {
    "content": ("content", str),
    "style": ("style", str),
    "seed": ("seed", int),
    "output": ("name", str),
    "name": ("name", str),
    "style_strength": ("style_strength", float),
    "preserve_color": ("preserve_color", str),
    "top_k": ("top_k", int),
    "top_p": ("top_p", float),
    "temperature": ("temperature", float),
}
PAIR_FIELDS = tuple(f.name for f in fields(Pair))


def safe_name(name: str, where: str) -> str:
    """An output name relative to the output folder: no absolute paths, no ``..``, no empty parts."""
    text = str(name).replace("\\", "/").strip()
    p = PurePosixPath(text)
    if not text or p.is_absolute() or any(part in ("", ".", "..") for part in text.split("/")):
        raise ConfigError(f"{where}: output name {name!r} must be a relative path inside the output folder")
    if any(ord(ch) < 32 or ch == "\x7f" for ch in text):
        raise ConfigError(f"{where}: output name {name!r} holds a control character (NUL, newline, ...)")
    if p.suffix.lower() in IMAGE_EXTENSIONS:  # 'a/b.png' -> 'a/b': the run's --format decides the type
        text = str(p.with_suffix(""))
    return text


def _row_to_pair(row: dict[str, Any], base: Path, where: str) -> Pair:
    """One manifest row -> a :class:`Pair`, every value checked as the run's are (``file:line: ...``)."""
    unknown = sorted(k for k in row if k not in _COLUMNS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown column(s) {', '.join(map(repr, unknown))}; the columns are "
            f"{', '.join(_COLUMNS)}"
        )
    kw: dict[str, Any] = {}
    for key, value in row.items():
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        field_name, conv = _COLUMNS[key]
        if conv is str and not isinstance(value, str):
            raise ConfigError(f"{where}: {key} must be text (a path or a name), got {value!r}")
        if isinstance(value, str):  # CSV cells (and JSON strings) are converted; JSON numbers are checked
            try:
                value = conv(value.strip())
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: {key} {value!r} is not a valid {conv.__name__}") from None
        kw[field_name] = value
    for role in ("content", "style"):
        if role not in kw:
            raise ConfigError(f"{where}: no {role} given (every row needs content and style)")
        if "\x00" in kw[role]:
            raise ConfigError(f"{where}: the {role} path holds a NUL character")
        p = Path(kw[role]).expanduser()
        kw[role] = p if p.is_absolute() else base / p
    if "name" in kw:
        kw["name"] = safe_name(kw["name"], where)
    return Pair(**kw, source=where)  # the settings are checked there, with ``where`` in the message


def _bad_row(row: Any, where: str, error: str) -> Pair:
    """A refused row, kept in its place (its index, hence later rows' seeds and names, do not move)."""
    cells = row if isinstance(row, dict) else {}
    text = {k: str(cells.get(k) or "") for k in ("content", "style")}
    return Pair(text["content"], text["style"], source=where, error=error)


def read_manifest(path: str | os.PathLike, on_bad_row: str = "fail") -> Iterator[Pair]:
    """The pairs of a manifest (``.csv`` with a header row, or ``.jsonl``), row by row, lazily.

    Relative paths are relative to the manifest's folder. A malformed row (a bad value, an unknown
    column, a setting the run would refuse) raises :class:`~stylevar.errors.ConfigError` naming the file
    and line (``on_bad_row="fail"``), or is yielded in its place as a :class:`Pair` with ``error`` set
    (``"skip"``: the run reports it as skipped). A file that is not UTF-8 text, or has no header, fails
    either way.
    """
    if on_bad_row not in ("fail", "skip"):
        raise ConfigError(f"on_bad_row must be fail or skip, got {on_bad_row!r}")
    p = Path(path).expanduser()
    if p.is_dir():
        raise ConfigError(f"pairs manifest {p} is a folder; give a .csv or .jsonl file")
    if not p.is_file():
        raise ConfigError(f"pairs manifest not found: {p}")
    suffix = p.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise ConfigError(f"{p}: a pairs manifest must be .csv or .jsonl (one JSON object per line)")
    base = p.resolve().parent
    rows = _read_csv(p) if suffix == ".csv" else _read_jsonl(p)
    try:
        for where, row, error in rows:
            if error is None:
                try:
                    yield _row_to_pair(row, base, where)
                    continue
                except ConfigError as e:
                    error = str(e)
            if on_bad_row == "fail":
                raise ConfigError(error)
            yield _bad_row(row, where, error.removeprefix(f"{where}: "))
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{p}: not UTF-8 text (byte {e.object[e.start : e.start + 1]!r} at offset {e.start} of a line); "
            "save the manifest as UTF-8"
        ) from None


def _read_csv(p: Path) -> Iterator[tuple[str, Any, str | None]]:
    """(where, row, error) per data row."""
    with open(p, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"content", "style"} <= {c.strip() for c in reader.fieldnames}:
            raise ConfigError(
                f"{p}: the first row must be a header naming at least the columns content,style"
            )
        for row in reader:
            where = f"{p}:{reader.line_num}"
            if None in row:  # more cells than header columns
                yield where, row, f"{where}: more cells than the header has columns"
                continue
            clean = {k.strip(): v for k, v in row.items()}
            if not any((v or "").strip() for v in clean.values()):
                continue  # blank line
            yield where, clean, None


def _read_jsonl(p: Path) -> Iterator[tuple[str, Any, str | None]]:
    """(where, row, error) per non-blank line."""
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{p}:{n}"
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as e:
                yield where, None, f"{where}: not valid JSON ({getattr(e, 'msg', 'nested too deeply')})"
                continue
            if not isinstance(row, dict):
                yield where, row, f"{where}: each line must be a JSON object with content and style"
                continue
            yield where, row, None


def count_manifest(path: str | os.PathLike) -> int:
    """Rows of a manifest, counted without parsing them (for a progress bar's total)."""
    p = Path(path).expanduser()
    with open(p, "rb") as f:
        n = sum(1 for line in f if line.strip())
    return max(0, n - 1) if p.suffix.lower() == ".csv" else n


def list_images_recursive(folder: str | os.PathLike, role: str = "image") -> list[Path]:
    """Image files (by extension) under ``folder`` at any depth, sorted; hidden files and folders skipped."""
    root = Path(folder)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / name)
    found.sort(key=lambda q: q.relative_to(root).as_posix())
    if not found:
        raise ImageError(f"{role} folder {root} has no image files (searched sub-folders too)")
    return found


def collect_images(
    path: str | os.PathLike, role: str, recursive: bool = False
) -> tuple[list[Path], Path | None]:
    """(image files, the folder they were found in, or None for a single file) of a file or folder."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ImageError(f"{role} path not found: {p}")
    if not p.is_dir():
        return [p], None
    return (list_images_recursive(p, role) if recursive else list_images(p, role)), p


def output_names(paths: Sequence[Path], root: Path | None) -> list[str]:
    """Short unique names for input files: stems, or paths relative to ``root`` (sub-folders kept)
    when the files come from sub-folders, or full names when stems collide."""
    if root is not None and any(p.parent != root for p in paths):
        rel = [p.relative_to(root) for p in paths]
        names = [str((r.parent / r.stem).as_posix()) for r in rel]
        if len(set(names)) == len(names):
            return names
        return [r.as_posix().replace(".", "_") for r in rel]
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [p.name.replace(".", "_") for p in paths]


def folder_pairs(
    contents: Sequence[Any],
    styles: Sequence[Any],
    content_names: Sequence[str] | None = None,
    style_names: Sequence[str] | None = None,
) -> Iterator[Pair]:
    """Every content with every style, content-major (the order ``stylevar stylize`` uses).

    With names, each pair is named ``<content name>__<style name>``; a content name with sub-folders
    (``--recursive``) keeps them, so the outputs mirror the input tree. A style name's sub-folders
    become ``_`` (one output folder level per content folder, not per style folder).
    """
    for ci, c in enumerate(contents):
        for si, s in enumerate(styles):
            name = None
            if content_names is not None and style_names is not None:
                name = f"{content_names[ci]}__{style_names[si].replace('/', '_')}"
            yield Pair(c, s, name=name)


def log_row(pair: Pair, sample: int, seed: int) -> dict[str, Any]:
    """What a run log (``stylevar_runs.jsonl``, ``skipped.jsonl``) says about one image of ``pair``."""
    blend = pair.style if isinstance(pair.style, Blend) else None
    row: dict[str, Any] = {
        "content": str(pair.content),
        "style": str(blend.images[0] if blend else pair.style),
        "sample": int(sample),
        "seed": int(seed),
    }
    if blend:
        row["blend"] = [{"style": str(p), "weight": w} for p, w in zip(blend.images[1:], blend.weights[1:])]
        row["style_weight"] = blend.weights[0]
    if pair.source is not None:
        row["source"] = pair.source
    return row
