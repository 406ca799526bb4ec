"""Writing files so that a crash never leaves half of one: the one atomic-write helper of the project.

Every file the project writes (images, JSON/CSV reports, manifests, splits, checkpoints) goes through
:func:`atomic_write`: the bytes go to a temporary file in the target's folder, are flushed and fsynced,
and the temporary file is renamed over the target (``os.replace``, atomic on POSIX and Windows). A
reader sees the old file or the new one, never a truncated one. The temporary file is created like
any other file (``open(..., "xb")``), so the result gets the usual permissions of the user's umask.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def file_mode() -> int:
    """The permissions a new file gets under the current umask (0644 under 022), for files written by
    libraries that create them private (safetensors writes 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a temporary binary file beside ``path``, then rename it to ``path``.

    The parent folder is created when missing. On any error (or interruption) the temporary file is
    removed and ``path`` keeps its previous content. Returns ``path``.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(p)
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``path`` holds ``text`` (UTF-8), written atomically."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """``path`` holds ``obj`` as JSON (with a final newline), written atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Are ``a`` and ``b`` the same file, after resolving links (False when either does not exist)?"""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False
