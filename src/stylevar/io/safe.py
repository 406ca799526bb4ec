"""Safe reading and atomic writing of tensors: the bottom of :mod:`stylevar.io`.

* :func:`read_file` -- any ``.safetensors`` or PyTorch file, PyTorch files with
  ``torch.load(weights_only=True)`` (memory-mapped when the file allows it); pickled Python objects
  are refused unless the caller opts in (``allow_pickle``), with a one-line message naming the flag.
* :func:`read_state_dict` -- the same, unwrapped to one ``{name: tensor}`` dict (pretrained weights of
  metric and reward networks).
* :func:`load_strict` -- ``load_state_dict(strict=True)`` with one line naming the first missing,
  unexpected and mis-shaped keys.
* :func:`atomic_save` (a ``torch.save``) and :func:`write_weights_dir` (a folder of safetensors files
  and a JSON config) never leave a half-written file or folder behind.
"""

from __future__ import annotations

import json
import os
import pickle
import secrets
import shutil
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..files import atomic_write, file_mode

PICKLE_FLAG = "--trust-checkpoint (Python: allow_pickle=True)"


def short_error(e: BaseException) -> str:
    """The first line of an exception's message (at most 160 characters), for one-line errors."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:160]


def why(e: BaseException) -> str:
    """``Type: first line of the message``, for one-line errors."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


# ---------------------------------------------------------------------------------------- reading
def torch_load(path: str | os.PathLike, **kwargs: Any) -> Any:
    """``torch.load`` on the CPU without torch's "Detected pickle protocol N" warning: files saved with
    another pickle protocol load the same, and a refusal must stay one line on stderr."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(str(path), map_location="cpu", **kwargs)


def read_file(path: str | os.PathLike, *, allow_pickle: bool = False) -> Any:
    """Read a ``.safetensors`` or PyTorch file into Python objects (tensors on the CPU).

    PyTorch files are read with ``weights_only=True`` (memory-mapped when possible) unless
    ``allow_pickle`` is set; a refusal names the opt-in flag.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, expected a checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(
                f"cannot read {path}: not a valid safetensors file ({short_error(e)})"
            ) from None
    try:
        try:
            return torch_load(path, weights_only=not allow_pickle, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e) and "zip" not in str(e):
                raise
            # legacy (non-zip) serialisation cannot be memory-mapped
            return torch_load(path, weights_only=not allow_pickle)
    except pickle.UnpicklingError as e:
        if not allow_pickle and "weights_only" in str(e).lower().replace(" ", "_"):
            raise CheckpointError(
                f"{path} contains pickled Python objects that safe loading (weights_only=True) refuses; "
                f"if you trust this file, pass {PICKLE_FLAG}"
            ) from None
        raise CheckpointError(f"cannot read {path}: not a PyTorch checkpoint ({short_error(e)})") from None
    except Exception as e:  # truncated or foreign files fail in many ways inside torch.load
        raise CheckpointError(
            f"cannot read {path}: not a valid PyTorch checkpoint or truncated ({type(e).__name__}: {short_error(e)})"
        ) from None


def read_state_dict(
    path: str | os.PathLike, *, unwrap: Iterable[str] = ("state_dict", "model")
) -> dict[str, torch.Tensor]:
    """A ``{name: tensor}`` dict from a weights file (:func:`read_file`, no pickled code), unwrapping
    ``{'state_dict': ...}`` / ``{'model': ...}``; a one-line :class:`CheckpointError` otherwise."""
    p = Path(path)
    obj = read_file(p)
    for key in unwrap:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{p}: not a state dict of tensors")
    return dict(obj)


def load_strict(
    module: torch.nn.Module,
    sd: Mapping[str, torch.Tensor],
    what: Any,
    *,
    assign: bool = False,
    optional: tuple[str, ...] = ("num_batches_tracked",),
) -> None:
    """``module.load_state_dict(sd, strict=True)``, or one :class:`CheckpointError` line
    ``"<what>: missing: a, b, c and 4 more; unexpected: ...; wrong shape: k (file) vs (model)"``.

    Keys of the module ending in one of ``optional`` (default ``num_batches_tracked``, a BatchNorm counter
    absent from some released files) may be missing; they keep the module's value (zero on the meta device). ``assign=True`` takes the given tensors as the
    parameters (modules built on the meta device), instead of copying into them.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith(optional)]
    unexpected = [k for k in sd if k not in own]
    shapes = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            problems.append(f"{label}: {', '.join(keys[:3])}{more}")
    if problems:
        raise CheckpointError(f"{what}: {'; '.join(problems)}")
    full = dict(sd)
    for k, v in own.items():
        if k not in full:  # an optional key
            full[k] = v if not v.is_meta else torch.zeros_like(v, device="cpu")
    module.load_state_dict(full, strict=True, assign=assign)


def read_json(path: Path, what: str = "config") -> dict[str, Any]:
    """A JSON object from ``path``; one :class:`CheckpointError` line when unreadable or not an object."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {short_error(e)}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} is not a stylevar {what} (not a JSON object)")
    return raw


# ---------------------------------------------------------------------------------------- writing
def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` via a temporary sibling, fsync and an atomic rename.

    A crash leaves either the old file or the new one, never a truncated file.
    """
    return atomic_write(path, lambda f: torch.save(obj, f))


def write_weights_dir(
    out_dir: str | os.PathLike,
    modules: Mapping[str, torch.nn.Module | Mapping[str, torch.Tensor]],
    config: dict[str, Any],
    *,
    kind: str,
    dtype: torch.dtype | None = None,
    config_name: str = "config.json",
) -> Path:
    """Write each module's state dict (or tensor dict) as ``<name>`` (safetensors) plus ``config_name``
    into ``out_dir``.

    Atomic: the files go to a temporary sibling directory that replaces ``out_dir`` only when
    complete. Files and folder get the permissions of the user's umask (0644/0755 under 022). An
    existing non-empty ``out_dir`` without a ``config_name`` is refused (``kind`` names what it should
    have been). ``dtype`` casts floating-point weights.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out} exists and is a file, not a {kind}; choose a new output path")
    if out.exists() and not (out / config_name).exists() and any(out.iterdir()):
        raise CheckpointError(f"{out} exists and is not a {kind}; choose a new output path")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()  # not tempfile.mkdtemp: its 0700 would survive the rename; this follows the umask
    mode = file_mode()
    try:
        for name, module in modules.items():
            sd, seen = {}, set()
            tensors = module.state_dict() if isinstance(module, torch.nn.Module) else module
            for k, v in tensors.items():
                v = v.detach().to("cpu")
                if dtype is not None and v.is_floating_point():
                    v = v.to(dtype)
                v = v.contiguous()
                if v.numel() and v.data_ptr() in seen:  # safetensors refuses shared storage
                    v = v.clone()
                seen.add(v.data_ptr())
                sd[k] = v
            save_file(sd, str(tmp / name), metadata={"format": "pt"})
            os.chmod(tmp / name, mode)  # safetensors creates its files 0600
        (tmp / config_name).write_text(json.dumps(config, indent=2) + "\n")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
