"""Safe reading and atomic writing of tensors: the bottom of :mod:`stylevar.io`.

* :func:`read_file` -- any safetensors or PyTorch file, told apart by their first bytes
  (:func:`file_kind`: a file of neither kind is "not a checkpoint"), PyTorch files with
  ``torch.load(weights_only=True)`` (memory-mapped when the file allows it); pickled Python objects
  are refused unless the caller opts in (``allow_pickle``), with a one-line message naming the flag.
* :func:`check_finite` -- refuses weights holding NaN or inf, naming the file and the first such tensor.
* :func:`read_json` -- a config file: UTF-8 JSON of a sane size and depth, or one line naming the file.
* :func:`read_state_dict` -- the same, unwrapped to one ``{name: tensor}`` dict (pretrained weights of
  metric and reward networks).
* :func:`load_strict` -- ``load_state_dict(strict=True)`` with one line naming the first missing,
  unexpected and mis-shaped keys.
* :func:`atomic_save` (a ``torch.save``) and :func:`write_weights_dir` (a folder of safetensors files
  and a JSON config) never leave a half-written file or folder behind.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import reprlib
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


def short_repr(value: Any, limit: int = 40) -> str:
    """A repr bounded in length and depth (the value may be a huge or deeply nested JSON list)."""
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict, short.maxstring, short.maxother = 3, 4, 3, limit, limit
    text = short.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


#: what :func:`read_file` reads, for the message about a file that is neither
ACCEPTED_FILES = (
    "a PyTorch file (torch.save's zip or legacy format, .pth/.pt) or a safetensors file (.safetensors)"
)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first entry, or an empty zip's end record
#: torch.save's legacy format pickles torch.serialization.MAGIC_NUMBER first: protocol 2+ as 10 bytes
#: (after a FRAME opcode from protocol 4 on), protocols 0 and 1 as decimal text
_TORCH_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_TORCH_MAGIC_TEXT = b"L119547037146038801333356L"


def file_kind(path: str | os.PathLike) -> str:
    """What a file holds, by its first bytes: ``zip`` (torch.save's format, or another zip archive),
    ``torch-pickle`` (torch.save's legacy format), ``pickle`` (a Python pickle torch.save did not
    write), ``safetensors``, ``empty`` or ``other``. Raises ``OSError`` when the file cannot be read."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return "empty"
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    # safetensors: an 8-byte little-endian header length, then the JSON header. Tested before pickle: a
    # header of 640 bytes begins 80 02, like a pickle; a pickle never has "{" at byte 8 after a length < 1e8
    if len(head) > 8 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= 100_000_000:
        return "safetensors"
    if head.startswith(_TORCH_MAGIC_TEXT):
        return "torch-pickle"
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:  # PROTO opcode, protocols 2-5
        return "torch-pickle" if _TORCH_MAGIC in head[:40] else "pickle"
    return "other"


def what_file_is(path: Path, kind: str) -> str:
    """What a file of :func:`file_kind` ``kind`` is, for messages: ``it is empty``, ``it looks like text
    ('hello')``, ``it starts with the bytes 00 ff ...``."""
    if kind == "empty":
        return "it is empty"
    if kind == "pickle":
        return "it is a Python pickle that torch.save did not write"
    with open(path, "rb") as f:
        head = f.read(32)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:  # a character cut at the end of the 32 bytes is still text
        text = head[: e.start].decode("utf-8") if e.start >= len(head) - 3 else ""
    if text and all(c.isprintable() or c.isspace() for c in text):
        words = " ".join(text.split())
        return f"it looks like text ({words[:20]!r}{'...' if len(words) > 20 else ''})"
    return f"it starts with the bytes {head[:8].hex(' ')}"


def read_file(path: str | os.PathLike, *, allow_pickle: bool = False) -> Any:
    """Read a safetensors or PyTorch file into Python objects (tensors on the CPU).

    The format is told by the file's first bytes, not its name. PyTorch files are read with
    ``weights_only=True`` (memory-mapped when possible) unless ``allow_pickle`` is set; a refusal names
    the opt-in flag. Anything else (a folder, a text file, a pickle torch.save did not write) is a
    one-line :class:`CheckpointError` saying what it is and what is accepted.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a file; expected {ACCEPTED_FILES}")
    try:
        kind = file_kind(path)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {why(e)}") from None
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(
                f"cannot read {path}: not a valid safetensors file ({short_error(e)})"
            ) from None
    if kind not in ("zip", "torch-pickle"):
        raise CheckpointError(
            f"{path} is not a checkpoint: {what_file_is(path, kind)}; expected {ACCEPTED_FILES}"
        )
    if path.suffix == ".safetensors":  # torch.load would read it as safetensors, by its name
        raise CheckpointError(
            f"{path} is a PyTorch (torch.save) file, not safetensors: rename it {path.with_suffix('.pth').name}"
        )
    try:
        # torch.save's legacy (non-zip) format cannot be memory-mapped
        return torch_load(path, weights_only=not allow_pickle, mmap=kind == "zip")
    except pickle.UnpicklingError as e:
        if not allow_pickle and "weights_only" in str(e).lower().replace(" ", "_"):
            found = re.search(r"GLOBAL ([\w.]+)", str(e))
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path} contains pickled Python objects{what} that safe loading (weights_only=True) "
                f"refuses; if you trust this file, pass {PICKLE_FLAG}"
            ) from None
        raise CheckpointError(f"cannot read {path}: not a PyTorch checkpoint ({short_error(e)})") from None
    except Exception as e:  # truncated or foreign files fail in many ways inside torch.load
        zip_note = (
            " (a zip archive torch.save did not write?)"
            if "data.pkl" in str(e) or "subdirectory" in str(e)
            else ""
        )
        raise CheckpointError(
            f"cannot read {path}: not a valid PyTorch checkpoint or truncated{zip_note} "
            f"({type(e).__name__}: {short_error(e)})"
        ) from None


#: buffers that hold -inf by design (StyleVAR's attention mask); NaN and +inf are refused there too
NEG_INF_BUFFERS = ("attn_bias_for_masking",)


def first_nonfinite(tensors: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(name, "NaN" or "inf")`` of the first floating-point tensor holding a non-finite value, else None.

    One ``aminmax`` per tensor (NaN propagates into both ends; no tensor-sized temporary): a pass over the
    weights at memory speed, about as costly as a sum per tensor and an order of magnitude cheaper than
    ``isfinite(t).all()`` (benchmarks/bench_finite_check.py measures it on d20-sized weights). Tensors
    named ``*attn_bias_for_masking`` may hold -inf.
    """
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() == 0:
            continue
        if t.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            t = t.float()  # float8 and the like
        lo, hi = (float(v) for v in torch.aminmax(t))
        if math.isfinite(lo) and math.isfinite(hi):
            continue
        if math.isnan(lo) or math.isnan(hi):
            return name, "NaN"
        if hi == math.inf or not name.endswith(NEG_INF_BUFFERS):
            return name, "inf"
    return None


def check_finite(tensors: Mapping[str, Any], where: Any) -> None:
    """One :class:`CheckpointError` line naming ``where`` (the file) and the first tensor holding NaN or
    inf: such weights load, and fail only later, when sampling draws from NaN probabilities."""
    bad = first_nonfinite(tensors)
    if bad is not None:
        raise CheckpointError(
            f"{where}: tensor {bad[0]} holds {bad[1]} values; the weights are broken (a diverged training "
            "run or a damaged file): use another checkpoint"
        )


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


#: a stylevar config is a few kilobytes; a larger "config" is not one
MAX_JSON_BYTES = 16 * 2**20


def read_json(path: Path, what: str = "config") -> dict[str, Any]:
    """A JSON object from ``path``: UTF-8 (a BOM is allowed), at most :data:`MAX_JSON_BYTES`, nested no
    deeper than Python's recursion limit; one :class:`CheckpointError` line naming the file otherwise."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a file; a stylevar {what} is a JSON file")
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise CheckpointError(
                f"{path} is not a stylevar {what}: {path.stat().st_size} bytes, over the "
                f"{MAX_JSON_BYTES // 2**20} MiB a config may have"
            )
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {why(e)}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CheckpointError(
            f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); a stylevar {what} "
            "is UTF-8 JSON: save it as UTF-8"
        ) from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); fix the {what}"
        ) from None
    except RecursionError:
        raise CheckpointError(
            f"{path} is not a stylevar {what}: its JSON is nested too deeply to read"
        ) from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise CheckpointError(f"{path} is not a stylevar {what}: {short_error(e)}") from None
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
