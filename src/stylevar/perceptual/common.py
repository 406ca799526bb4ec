"""What every pretrained perceptual network here shares: where weights come from, optional packages,
input checks, and the frozen-module base class.

Conventions, everywhere in :mod:`stylevar.perceptual`: images are (N, 3, H, W) float tensors in
**[0, 1]**; every score is per image, (N,) float32. Each model is frozen (eval mode, ``requires_grad``
off on its parameters, ``.train()`` keeps it in eval mode) but its call is differentiable with respect
to the input images: nothing runs under ``torch.no_grad`` here, so a reward's gradient can flow into a
generated image. Wrap calls in ``torch.no_grad()`` yourself when you only need values.

The optional packages (``dreamsim``, ``transformers``, ``lpips``: ``pip install "stylevar[rewards]"``) are
imported only when a model is built; a missing one raises :class:`~stylevar.errors.MissingDependencyError`.
Weights come from local files or caches. Nothing is downloaded unless asked (``download=True``;
``local_files_only=False`` for CLIP); weights that are neither on disk nor downloadable raise
:class:`~stylevar.errors.MissingWeightsError`, a one-line message naming the files, where to put them and
where to get them on a connected machine.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, MissingDependencyError, MissingWeightsError
from ..io.safe import read_state_dict, why

PathLike = str | os.PathLike

EXTRA_HINT = 'pip install "stylevar[rewards]"'


def resolve_cache_dir(name: str | None = None) -> Path:
    """stylevar's cache folder (created by nobody here): ``$STYLEVAR_CACHE``, else
    ``$XDG_CACHE_HOME/stylevar``, else ``~/.cache/stylevar``; with ``name``, that sub-folder."""
    root = os.environ.get("STYLEVAR_CACHE")
    if root:
        base = Path(root).expanduser()
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "stylevar"
    return base / name if name else base


def require(module: str, what: str, hint: str = EXTRA_HINT):
    """Import an optional package or raise a one-line MissingDependencyError naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"{what} needs the optional package '{module.split('.')[0]}' ({why(e)}); install it with: {hint}"
        ) from None


def check_images(x: torch.Tensor, what: str = "images") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what}: expected a (N, 3, H, W) tensor in [0, 1], got {shape}")
    return x.float()


def image_pair(a: torch.Tensor, b: torch.Tensor, *, same_size: bool) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = check_images(a, "first images"), check_images(b, "second images")
    if a.shape[0] != b.shape[0] or (same_size and a.shape != b.shape):
        raise ValueError(
            f"expected two image batches of {'one shape' if same_size else 'one size N'}, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return a, b.to(a.device)


def hub_checkpoints_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_state_dict(
    enum, weights: PathLike | Mapping[str, torch.Tensor] | None, *, download: bool, what: str
) -> dict[str, torch.Tensor]:
    """torchvision ImageNet weights ``enum`` from a path (file or folder holding the file), a state dict,
    or torch hub's checkpoint cache; downloaded there only when ``download``."""
    url = enum.url
    return locate_weights(
        url.rsplit("/", 1)[-1],
        url,
        weights,
        search=[hub_checkpoints_dir()],
        what=what,
        download=(lambda: enum.get_state_dict(progress=False)) if download else None,
    )


def features_state(sd: Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """The ``features`` part of a torchvision VGG/AlexNet state dict, keyed ``'<index>.<param>'``
    (accepts full model state dicts, ``features.*`` only, or already-stripped keys)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("features."):
            k = k[len("features.") :]
        elif "." in k and not k.split(".", 1)[0].isdigit():
            continue  # classifier.*, etc.
        out[k] = v
    if not out:
        raise CheckpointError(f"{what}: the weights hold no convolutional 'features.*' tensors")
    return out


class Frozen(nn.Module):
    """A frozen pretrained model: always in eval mode, parameters without gradients (inputs keep theirs)."""

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # stays in eval mode, whatever the caller asks
        return super().train(False)


def locate_weights(
    fname: str,
    url: str,
    weights: PathLike | Mapping[str, torch.Tensor] | None,
    *,
    search: list[Path],
    what: str,
    download=None,
) -> dict[str, torch.Tensor]:
    """A state dict that is not torchvision's: from ``weights`` (a file, a folder holding ``fname``, or a
    state dict), else the first of ``search`` (folders) holding ``fname``, else ``download()`` when given
    (a callable returning the file's path), else a one-line :class:`MissingWeightsError` naming the file,
    the folders looked in and ``url``."""
    if isinstance(weights, Mapping):
        return dict(weights)
    if weights is not None:
        p = Path(weights).expanduser()
        if p.is_dir():
            p = p / fname
        if not p.is_file():
            raise MissingWeightsError(
                f"{what} needs {fname}, not found at {p}; download {url} on a connected machine and pass its path"
            )
        return read_state_dict(p)
    for d in search:
        if (d / fname).is_file():
            return read_state_dict(d / fname)
    if download is not None:
        try:
            got = download()  # a path, or the state dict itself
            return dict(got) if isinstance(got, Mapping) else read_state_dict(got)
        except Exception as e:
            raise MissingWeightsError(
                f"{what}: cannot download {url} ({type(e).__name__}); fetch it on a connected machine and put it "
                f"in {search[0]} or pass its path"
            ) from None
    where = ", ".join(str(d) for d in search)
    raise MissingWeightsError(
        f"{what} needs {fname}, found in none of {where}; download {url} on a connected machine and put it "
        "in the first of those folders or pass its path (or allow downloading: download=True)"
    )


def _hub_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _looks_like_path(src: str) -> bool:
    return src.startswith(("/", ".", "~")) or src.count("/") > 1 or "\\" in src


def load_hf_model(
    src: PathLike,
    *,
    kinds: Mapping[str, str],
    what: str,
    save_hint: str,
    cache_dir: PathLike | None = None,
    local_files_only: bool | None = None,
):
    """A transformers model from a folder (``save_pretrained``'s, with its config.json) or a Hub id in the
    Hugging Face cache, fetched from the Hub only where ``local_files_only`` is False, or None and the Hub is
    not disabled (``HF_HUB_OFFLINE``). ``kinds`` maps each accepted ``model_type`` to its transformers class
    name; ``what`` names the model and ``save_hint`` tells how to put it in a folder, in the one-line errors."""
    transformers = require("transformers", what)

    def load(source: str, **kw):
        config = transformers.AutoConfig.from_pretrained(source, **kw)
        kind = getattr(config, "model_type", "")
        if kind not in kinds:
            raise CheckpointError(f"{source}: not a {what} model (model_type {kind!r})")
        return getattr(transformers, kinds[kind]).from_pretrained(source, **kw)

    src = str(src)
    path = Path(src).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise MissingWeightsError(f"{path}: not a Hugging Face model folder (no config.json)")
        try:
            return load(str(path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot load the {what} model ({why(e)})") from None
    if _looks_like_path(src):
        raise MissingWeightsError(f"{what} model folder {path} does not exist; {save_hint}")
    if local_files_only is None:
        attempts = [True] if _hub_offline() else [True, False]
    else:
        attempts = [bool(local_files_only)]
    for lfo in attempts:
        try:
            return load(src, cache_dir=cache_dir, local_files_only=lfo)
        except (OSError, ValueError):
            continue
    where = "not in the Hugging Face cache" + ("" if attempts == [True] else " and the Hub is unreachable")
    raise MissingWeightsError(
        f"{what} model {src!r}: {where}; on a connected machine run `hf download {src}` (then copy the "
        "Hugging Face cache here) or save the model to a folder and pass that folder"
    )
