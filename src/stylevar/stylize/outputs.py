"""Where a run's images go, and the run's account: one place for the command line and the Ray driver.

:class:`OutputRun` names each image's file (a manifest row's ``output``, or ``<content>__<style>``, with
``__k`` for sample k), checks the whole plan before anything is generated (:meth:`OutputRun.check`: two
images with one file, or a file that is one of the inputs, are refused naming the rows), keeps the log of
written images (``stylevar_runs.jsonl``) and of skipped pairs (``skipped.jsonl``), and says how the run
ended (:meth:`OutputRun.summary`, with the resume hint when it stopped early).

Every image is written atomically (:func:`stylevar.files.atomic_write`): a temporary file beside the
target, renamed when complete. A run that was killed (SIGKILL, power loss) can leave such temporary
files; the next run into the same folder removes those of processes that no longer exist
(:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..errors import ConfigError, StyleVARError
from ..files import atomic_write
from ..images import IMAGE_EXTENSIONS
from .pairs import Blend, Pair

#: longest output file name (bytes): NAME_MAX (255) less room for the temporary file's prefix and suffix
MAX_NAME_BYTES = 200
#: the temporary files of :func:`stylevar.files.atomic_write`: ``.NAME.tmp-PID-HEX``
_TEMP = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{8}$")
#: errors of the output's storage: the run stops with its summary and a resume hint
STORAGE_ERRORS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


class OutputError(StyleVARError):
    """The output cannot be written (disk full, read-only, no permission): one line naming the file."""


def _stem(item: Any) -> str:
    if isinstance(item, Blend):
        item = item.images[0]
    return Path(str(item)).stem[:80]  # long stems: a name stays below MAX_NAME_BYTES


def _input_paths(pair: Pair) -> list[str]:
    items = [pair.content, *(pair.style.images if isinstance(pair.style, Blend) else [pair.style])]
    return [os.fspath(p) for p in items if isinstance(p, (str, os.PathLike))]


def resolve_output(output: str | os.PathLike, n_images: int) -> tuple[Path, bool]:
    """(the output path, whether it is one file) of ``-o``: a name with an image extension is one file
    (then exactly one image may be made), anything else a folder. Refused with one line: a file name for
    several images, a non-image extension for one image (``result.txt``), a folder where a file is meant
    and the other way round. (An output that is an input is found by :meth:`OutputRun.check`.)"""
    out = Path(output).expanduser()
    suffix = out.suffix.lower()
    single = suffix in IMAGE_EXTENSIONS
    if single and n_images > 1:
        raise ConfigError(f"{out} is a file name but {n_images} images will be made; give a folder with -o")
    if single and out.is_dir():
        raise ConfigError(f"{out} is a folder; give a file name ending in .png/.jpg, or drop the extension")
    if not single and n_images == 1 and suffix and not out.is_dir():
        raise ConfigError(
            f"{out}: {suffix} is not an image type; give a name ending in .png, .jpg or .webp "
            f"(or a folder without an extension)"
        )
    if not single and out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder; choose another output path")
    return out, single


def remove_stale_temporaries(folder: Path, recursive: bool = True) -> int:
    """Remove the temporary files that killed runs left in ``folder`` (and its sub-folders): those of
    processes that no longer exist. Returns how many were removed."""
    if not folder.is_dir():
        return 0
    removed = 0
    for dirpath, dirs, files in os.walk(folder):
        if not recursive:
            dirs.clear()
        for name in files:
            m = _TEMP.match(name)
            if m is None or _alive(int(m.group(1))):
                continue
            try:
                os.unlink(os.path.join(dirpath, name))
                removed += 1
            except OSError:
                pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class OutputRun:
    """Where each image goes, and the run's account: the log of written images, skipped pairs, counts."""

    def __init__(self, out: Path, single_file: bool, num_samples: int, ext: str):
        self.out, self.single_file, self.num_samples, self.ext = out, single_file, num_samples, ext
        self.folder = out.parent if single_file else out
        self.written = self.existing = 0
        self.skipped: list[dict] = []
        self.first_seed: int | None = None
        self._log = None
        self.stale_removed = remove_stale_temporaries(self.folder, recursive=not single_file)

    # ------------------------------------------------------------------ names
    def name(self, index: int, pair: Pair) -> str:
        if pair.name is not None:
            return pair.name
        if pair.source is not None:  # a manifest row without an output name: its index keeps it unique
            return f"{index:06d}__{_stem(pair.content)}__{_stem(pair.style)}"
        return f"{_stem(pair.content)}__{_stem(pair.style)}"

    def target(self, index: int, pair: Pair, k: int) -> Path:
        if self.single_file:
            return self.out
        suffix = f"__{k}" if self.num_samples > 1 else ""
        return self.out / f"{self.name(index, pair)}{suffix}.{self.ext}"

    def exists(self, index: int, pair: Pair, k: int) -> bool:
        if self.target(index, pair, k).exists():
            self.existing += 1
            return True
        return False

    def check(self, pairs: Iterable[Pair]) -> int:
        """Check the whole plan before anything is generated; returns the number of pairs.

        Refused with one line naming the rows: two images with one file (an output name given twice,
        or given as another row's automatic name), a file that is one of the run's inputs (after
        resolving links), a file name over :data:`MAX_NAME_BYTES`."""
        seen: dict[str, str] = {}
        given: set[str] = set()  # the inputs as named (a style shared by every pair: once)
        n = 0
        for i, pair in enumerate(pairs):
            n += 1
            if pair.error is None:
                given.update(_input_paths(pair))
            where = pair.source or f"pair {i + 1}"
            for k in range(self.num_samples):
                target = self.target(i, pair, k)
                if len(target.name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
                    raise ConfigError(
                        f"{where}: output name {target.name[:40]!r}... is longer than {MAX_NAME_BYTES} bytes; "
                        "give a shorter name"
                    )
                key = os.path.normcase(os.fspath(target))
                if key in seen:
                    label = target.name if self.single_file else target.relative_to(self.out).with_suffix("")
                    raise ConfigError(f"{where}: output {str(label)!r} is already the output of {seen[key]}")
                seen[key] = where
        inputs = {os.path.realpath(p) for p in given}
        folders: dict[str, str] = {}  # each output folder resolved once (a million targets, a few folders)
        for key, where in seen.items():
            parent, name = os.path.split(key)
            if parent not in folders:
                folders[parent] = os.path.realpath(parent)
            real = os.path.realpath(key) if os.path.islink(key) else os.path.join(folders[parent], name)
            if real in inputs:
                raise ConfigError(f"{where}: output {key} is an input of this run; choose another output")
        return n

    # ------------------------------------------------------------------ the account
    def save(self, image: Any, path: Path, save: Callable[[Any, Path], Path]) -> Path:
        """``save(image, path)``; a storage error (full disk, read-only, no permission) becomes an
        :class:`OutputError` naming the file."""
        try:
            return save(image, path)
        except OSError as e:
            reason = STORAGE_ERRORS.get(e.errno)
            if reason is None:
                raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
            raise OutputError(f"cannot write {path}: {reason}") from None

    def record(self, row: dict) -> None:
        """One finished image (``output`` set) or skipped pair (``error`` set)."""
        if row.get("error"):
            self.skipped.append(row)
            return
        self.written += 1
        if self.first_seed is None:
            self.first_seed = row["seed"]
        if self.single_file:
            return
        try:
            if self._log is None:
                self.out.mkdir(parents=True, exist_ok=True)
                self._log = open(self.out / "stylevar_runs.jsonl", "a")
            self._log.write(json.dumps({k: v for k, v in row.items() if k != "error"}) + "\n")
            self._log.flush()
        except OSError as e:
            raise OutputError(
                f"cannot write {self.out / 'stylevar_runs.jsonl'}: {STORAGE_ERRORS.get(e.errno, e.strerror)}"
            ) from None

    def finish(self) -> Path | None:
        """Close the log; write (or clear) ``skipped.jsonl``; its path when pairs were skipped. Never
        raises for the storage (a run stopped by a full disk still gets its summary)."""
        if self._log is not None:
            try:
                self._log.close()
            except OSError:
                pass
            self._log = None
        where = self.folder / "skipped.jsonl"
        try:
            if self.skipped:
                text = "".join(json.dumps(r) + "\n" for r in self.skipped)
                atomic_write(where, lambda f: f.write(text.encode()))
                return where
            if where.exists() and not self.single_file:
                where.unlink()  # a previous run's list: this run read every input it tried
        except OSError:
            return None
        return None

    def summary(self, seconds: float) -> str:
        where = self.out if self.single_file else f"{self.out}/"
        rate = self.written / seconds if seconds > 0 else 0.0
        parts = [f"{self.written} written", f"{len(self.skipped)} skipped (unreadable input)"]
        if self.existing:
            parts.append(f"{self.existing} already there")
        line = f"{', '.join(parts)}; {rate:.2f} images/s; output: {where}"
        if self.written == 1 and self.first_seed is not None:
            line += f" (seed {self.first_seed})"
        return line

    def resume_hint(self) -> str:
        """How to go on after an early stop."""
        if self.single_file:
            return "run the same command again"
        return "run the same command with --skip-existing to go on where it stopped"
