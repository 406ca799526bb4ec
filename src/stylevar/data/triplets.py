"""Finding (content, style, target) triplets, splitting them, and checking their files.

Layouts (docs/upstream.md §5.1):

* **OmniStyle-150K**: ``root/{content,style,target}``; every file in ``target/`` whose name
  contains ``&&`` is one triplet named ``<content file>&&<style file><suffix>``. Content is
  ``content/<part before &&>``; style is ``style/<part after &&>`` without the target's own
  extension (upstream strips the last 4 characters unconditionally, which is the same thing for
  the dataset's ``.png`` targets and wrong for ``.jpeg``/``.webp`` ones). When ``target/`` is
  absent, ``OmniStyle-150K`` / ``OmniStyle-150k`` is used, as upstream does.
* **ImagePulse**: (A) one folder per sample holding ``content.*``, ``style.*``, ``target.*``;
  (B) JSON records with ``image_1`` = content, ``image_2`` = style, ``image_4`` = target
  (``image_3`` unused), paths relative to the JSON file; (C) the "organised" flat layout, which
  is the OmniStyle layout.
* **Manifest**: a CSV with a ``content,style,target`` header, or JSON lines with those keys;
  relative paths are relative to the manifest's folder.

Splits are deterministic: triplets sorted, shuffled with a seeded ``random.Random``, the first
``val_fraction`` for validation; ``train_files.txt`` / ``val_files.txt`` in a root are honoured
(the published data preparation wrote them). :func:`save_split` writes the split beside a run so
evaluation can exclude the training triplets.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from ..files import atomic_write_json, atomic_write_text
from ..images import IMAGE_EXTENSIONS, MIN_SIDE

ROLES = ("content", "style", "target")
OMNISTYLE_TARGET_DIRS = ("target", "OmniStyle-150K", "OmniStyle-150k")


@dataclass(frozen=True, order=True)
class Triplet:
    """Paths of one training example. ``key`` names it in split files (unique within a dataset)."""

    key: str
    content: Path
    style: Path
    target: Path
    source: str = ""

    def paths(self) -> dict[str, Path]:
        return {"content": self.content, "style": self.style, "target": self.target}


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


# ---------------------------------------------------------------------------------------- OmniStyle
def omnistyle_target_dir(root: Path) -> Path | None:
    for name in OMNISTYLE_TARGET_DIRS:
        if (root / name).is_dir():
            return root / name
    return None


def scan_omnistyle(root: str | os.PathLike, *, source: str = "omnistyle") -> list[Triplet]:
    """Triplets of an OmniStyle-150K-layout root (also ImagePulse's organised layout)."""
    root = Path(root)
    tdir = omnistyle_target_dir(root)
    if tdir is None:
        raise DataError(
            f"{root}: no target/ (or OmniStyle-150K/) folder; an OmniStyle root holds content/, style/ and target/"
        )
    out = []
    for t in sorted(tdir.iterdir()):
        if "&&" not in t.name or not _is_image(t):
            continue
        content_name, style_part = t.name.split("&&", 1)
        style_name = style_part[: -len(t.suffix)] if t.suffix else style_part
        out.append(Triplet(t.name, root / "content" / content_name, root / "style" / style_name, t, source))
    if not out:
        raise DataError(f"{tdir}: no target images named <content>&&<style><ext>")
    return out


# ---------------------------------------------------------------------------------------- ImagePulse
def _role_file(folder: Path, role: str) -> Path | None:
    for p in sorted(folder.glob(f"{role}.*")):
        if _is_image(p):
            return p
    return None


def scan_imagepulse(root: str | os.PathLike, *, source: str = "imagepulse") -> list[Triplet]:
    """Triplets of an ImagePulse root in any of its three layouts."""
    root = Path(root)
    if omnistyle_target_dir(root) is not None:  # (C) organised flat layout
        return scan_omnistyle(root, source=source)
    out: list[Triplet] = []
    # (A) per-sample folders (at any depth); one sample per folder
    folders: set[Path] = set()
    for content in sorted(root.rglob("content.*")):
        folder = content.parent
        if not _is_image(content) or folder in folders:
            continue
        folders.add(folder)
        style, target = _role_file(folder, "style"), _role_file(folder, "target")
        out.append(
            Triplet(
                folder.relative_to(root).as_posix() or folder.name,
                content,
                style or folder / "style.png",  # missing files are reported by validate_triplets
                target or folder / "target.png",
                source,
            )
        )
    # (B) JSON records
    for js in sorted(root.rglob("*.json")):
        try:
            data = json.loads(js.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        records = data if isinstance(data, list) else [data]
        for i, rec in enumerate(records):
            if not isinstance(rec, dict) or not all(k in rec for k in ("image_1", "image_2", "image_4")):
                continue
            key = js.relative_to(root).with_suffix("").as_posix() + (f"#{i}" if len(records) > 1 else "")
            paths = [js.parent / str(rec[k]) for k in ("image_1", "image_2", "image_4")]
            out.append(Triplet(key, *paths, source))
    if not out:
        raise DataError(
            f"{root}: no ImagePulse samples (folders with content/style/target images, JSON records with "
            "image_1/image_2/image_4, or an organised target/ folder)"
        )
    return out


# ---------------------------------------------------------------------------------------- manifest
def read_manifest(path: str | os.PathLike, *, source: str = "") -> list[Triplet]:
    """Triplets listed in a CSV (header ``content,style,target``) or JSON-lines file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    base = path.parent
    rows: list[dict] = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read manifest {path}: {e}") from None
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise DataError(
                        f"{path}:{n}: not a JSON object; one {{content, style, target}} per line"
                    ) from None
    else:
        reader = csv.DictReader(text.splitlines())
        missing = set(ROLES) - set(reader.fieldnames or [])
        if missing:
            raise DataError(
                f"{path}: CSV header lacks {sorted(missing)}; the first line must name content,style,target"
            )
        rows = list(reader)
    out = []
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or any(not row.get(k) for k in ROLES):
            raise DataError(f"{path}: entry {n} lacks a content, style or target path")
        paths = [Path(os.path.expanduser(str(row[k]))) for k in ROLES]
        paths = [p if p.is_absolute() else base / p for p in paths]
        out.append(Triplet(str(row.get("key") or f"{n:08d}"), *paths, source or path.stem))
    if not out:
        raise DataError(f"{path}: the manifest lists no triplets")
    return out


def write_manifest(triplets: Iterable[Triplet], path: str | os.PathLike) -> Path:
    """Write triplets as a CSV manifest (absolute paths), atomically."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["key", "content", "style", "target"])
    for t in triplets:
        w.writerow([t.key, t.content.resolve(), t.style.resolve(), t.target.resolve()])
    return atomic_write_text(path, buf.getvalue())


# ---------------------------------------------------------------------------------------- any
LAYOUTS = ("auto", "omnistyle", "imagepulse", "manifest")


def scan(source: str | os.PathLike, layout: str = "auto") -> list[Triplet]:
    """Triplets of a dataset root (OmniStyle or ImagePulse layout) or a manifest file."""
    p = Path(source)
    if layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if not p.exists():
        raise DataError(f"dataset not found: {p}")
    if layout == "manifest" or (layout == "auto" and p.is_file()):
        return read_manifest(p)
    if not p.is_dir():
        raise DataError(f"{p}: a {layout} dataset is a folder")
    if layout == "omnistyle" or (layout == "auto" and omnistyle_target_dir(p) is not None):
        return scan_omnistyle(p, source=p.name)
    return scan_imagepulse(p, source=p.name)


# ---------------------------------------------------------------------------------------- split
def split_triplets(
    triplets: Sequence[Triplet],
    *,
    val_fraction: float = 0.05,
    seed: int = 42,
    root: str | os.PathLike | None = None,
) -> tuple[list[Triplet], list[Triplet]]:
    """Deterministic (train, val) split.

    ``root/train_files.txt`` and ``root/val_files.txt`` (one key per line), when both exist, are
    used as given. Otherwise triplets are sorted by key, shuffled with ``random.Random(seed)`` and
    the first ``round(n * val_fraction)`` (at least 1 when ``val_fraction > 0`` and n > 1) go to
    validation; the result does not depend on the order the files were found in.
    """
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if root is not None:
        tr, va = Path(root) / "train_files.txt", Path(root) / "val_files.txt"
        if tr.is_file() and va.is_file():
            by_key = {t.key: t for t in triplets}
            want_tr, want_va = _read_keys(tr), _read_keys(va)
            return [by_key[k] for k in want_tr if k in by_key], [by_key[k] for k in want_va if k in by_key]
    ordered = sorted(triplets, key=lambda t: (t.source, t.key))
    random.Random(seed).shuffle(ordered)
    n_val = round(len(ordered) * val_fraction)
    if val_fraction > 0 and len(ordered) > 1:
        n_val = max(n_val, 1)
    return ordered[n_val:], ordered[:n_val]


def _read_keys(p: Path) -> list[str]:
    return [line.strip() for line in p.read_text().splitlines() if line.strip()]


def save_split(path: str | os.PathLike, train: Sequence[Triplet], val: Sequence[Triplet], **info) -> Path:
    """Write ``{"train": [...], "val": [...], ...info}`` (keys and paths) atomically."""

    def rows(ts):
        return [{"key": t.key, "source": t.source, **{r: str(p) for r, p in t.paths().items()}} for t in ts]

    return atomic_write_json(path, {**info, "train": rows(train), "val": rows(val)}, indent=1)


def load_split(path: str | os.PathLike) -> tuple[list[Triplet], list[Triplet]]:
    """Read a split written by :func:`save_split`."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read split file {path}: {e}") from None

    def trip(r):
        return Triplet(r["key"], Path(r["content"]), Path(r["style"]), Path(r["target"]), r.get("source", ""))

    return [trip(r) for r in data.get("train", [])], [trip(r) for r in data.get("val", [])]


# ---------------------------------------------------------------------------------------- validation
@dataclass
class ValidationReport:
    """What :func:`validate_triplets` found."""

    total: int = 0
    kept: int = 0
    problems: dict[str, str] = field(default_factory=dict)  # file -> reason
    dropped: list[str] = field(default_factory=list)  # triplet keys

    def summary(self) -> str:
        if not self.problems:
            return f"{self.total} triplets, all files readable"
        first = next(iter(self.problems.items()))
        return (
            f"{self.total} triplets: {len(self.dropped)} unusable ({len(self.problems)} bad files; "
            f"first: {first[0]}: {first[1]})"
        )

    def to_dict(self) -> dict:
        return {"total": self.total, "kept": self.kept, "problems": self.problems, "dropped": self.dropped}


def check_image(path: Path, full: bool = False) -> str | None:
    """None when ``path`` is a usable image; otherwise the reason (one phrase)."""
    if not path.exists():
        return "missing"
    if path.is_dir():
        return "a directory"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(path) as img:
                w, h = img.size
                if full:
                    img.load()
                else:
                    img.verify()
        except Image.DecompressionBombError:
            return "absurdly large"
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            return f"unreadable ({type(e).__name__})"
    if min(w, h) < MIN_SIDE:
        return f"too small ({w}x{h})"
    return None


def validate_triplets(
    triplets: Sequence[Triplet],
    *,
    on_bad: str = "fail",
    full: bool = False,
    workers: int = 8,
) -> tuple[list[Triplet], ValidationReport]:
    """Check every distinct file once; return the usable triplets and a report.

    Args:
        on_bad: ``fail`` raises :class:`DataError` naming the first bad file (and the count);
            ``skip`` drops triplets with any bad file and counts them in the report.
        full: decode every image (slow, catches truncated data); default checks existence,
            header and integrity markers without decoding pixels.
    """
    if on_bad not in ("fail", "skip"):
        raise DataError(f"on_bad must be 'fail' or 'skip', not {on_bad!r}")
    files = sorted({p for t in triplets for p in t.paths().values()})
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        reasons = dict(zip(files, pool.map(lambda p: check_image(p, full), files)))
    report = ValidationReport(total=len(triplets))
    report.problems = {str(p): r for p, r in reasons.items() if r is not None}
    kept = []
    for t in triplets:
        if any(reasons[p] is not None for p in t.paths().values()):
            report.dropped.append(t.key)
        else:
            kept.append(t)
    report.kept = len(kept)
    if report.problems and on_bad == "fail":
        path, why = next(iter(report.problems.items()))
        raise DataError(
            f"{path}: {why} ({len(report.problems)} bad files in {len(report.dropped)} triplets); fix or remove "
            "them, or pass --on-bad-file skip to train without those triplets"
        )
    if not kept:
        raise DataError(f"no usable triplets: {report.summary()}")
    return kept, report
