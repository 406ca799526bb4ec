"""Training-run checkpoints (``RUN_DIR/checkpoints/*.pt``): written atomically, read without pickled code.

A trainer's checkpoint is one ``torch.save`` of plain tensors, numbers, strings, lists and dicts with a
``"format"`` entry naming the trainer and its version (``stylevar-sft-1``, ``stylevar-tokenizer-1``,
``stylevar-grpo-1``). Kinds: ``last.pt`` (resume point), ``best.pt`` (best validation) and rolling
``step-<N>.pt`` (the newest few are kept).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .safe import atomic_save, file_kind, short_error, torch_load, what_file_is

CHECKPOINT_KINDS = ("last", "best", "rolling")


def save_checkpoint(
    ckpt_dir: str | os.PathLike, obj: Any, kind: str = "last", *, step: int = 0, keep_rolling: int = 5
) -> Path:
    """Write ``obj`` as ``last.pt``, ``best.pt`` or (``kind="rolling"``) ``step-<step:08d>.pt``.

    Rolling checkpoints beyond the newest ``keep_rolling`` are deleted. Returns the path written.
    """
    if kind not in CHECKPOINT_KINDS:
        raise ValueError(f"kind must be one of {CHECKPOINT_KINDS}, not {kind!r}")
    ckpt_dir = Path(ckpt_dir)
    name = f"step-{step:08d}.pt" if kind == "rolling" else f"{kind}.pt"
    path = atomic_save(obj, ckpt_dir / name)
    if kind == "rolling":
        rolling = sorted(ckpt_dir.glob("step-*.pt"))
        for old in rolling[: max(0, len(rolling) - max(keep_rolling, 1))]:
            old.unlink(missing_ok=True)
    return path


def resume_path(path: str | os.PathLike | None, ckpt_dir: str | os.PathLike) -> Path | None:
    """The checkpoint a trainer's ``resume(path)`` reads: ``path`` (which must exist), else
    ``ckpt_dir/last.pt`` when present, else None (nothing to resume)."""
    p = Path(path) if path else Path(ckpt_dir) / "last.pt"
    if p.exists():
        return p
    if path:
        raise CheckpointError(f"checkpoint to resume not found: {p}")
    return None


def load_training_checkpoint(path: str | os.PathLike, expected_format: str, what: str) -> dict:
    """Read a training checkpoint with ``weights_only=True`` and check its ``"format"`` field.

    ``what`` names the kind in error messages (e.g. ``"tokenizer training"``). Raises
    :class:`CheckpointError` (one line: file and problem) for a missing, unreadable or foreign file.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{what} checkpoint not found: {p}")
    if p.is_dir():
        raise CheckpointError(
            f"{p} is a folder, not a file; a {what} checkpoint is a file (checkpoints/last.pt)"
        )
    try:
        kind = file_kind(p)
    except OSError as e:
        raise CheckpointError(f"cannot read {p}: {type(e).__name__}: {short_error(e)}") from None
    if kind not in ("zip", "torch-pickle"):
        raise CheckpointError(
            f"{p} is not a {what} checkpoint: {what_file_is(p, kind)} (torch.save writes them)"
        )
    try:
        ck = torch_load(p, weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{p}: unreadable {what} checkpoint ({type(e).__name__}: {short_error(e)})"
        ) from None
    if not isinstance(ck, dict) or ck.get("format") != expected_format:
        found = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
        raise CheckpointError(
            f"{p}: not a stylevar {what} checkpoint (format {found!r}, expected {expected_format!r})"
        )
    return ck
