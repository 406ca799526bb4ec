"""The streaming loop's parts: its results, and the bounded memory of encoded images.

:meth:`stylevar.stylize.pipeline.StyleVARPipeline.stylize_pairs` takes (pair, sample) jobs a window at a time;
:class:`EncodedImages` reads and encodes the images of each window that it does not already hold
(an LRU cache per role, so a style shared by many pairs is read and encoded once) and remembers which
files could not be read. Nothing here grows with the number of pairs.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, ImageOps

from ..errors import Cancelled, ConfigError, ImageError
from ..images import (
    crop_box,
    load_image,
    pil_from_tensor_input,
    pil_to_unit_tensor,
    tensor_to_pil,
    to_model_input,
    to_rgb,
)
from .controls import blend_weights, guided_upsample, preserve_colour
from .pairs import Blend, Pair
from .settings import Output

Job = tuple[int, Pair, int, int]  #: (pair index, pair, sample, seed)
READ_THREADS = min(8, os.cpu_count() or 1)  #: threads that read a window's files


@dataclass
class PairResult:
    """One image of :meth:`StyleVARPipeline.stylize_pairs`: pair ``index`` (in the order given), sample
    ``sample`` with ``seed``; ``image`` (PIL or tensor), or None and ``error`` (one line naming the file)
    when an input could not be read and ``on_bad_file="skip"``."""

    index: int
    sample: int
    seed: int
    pair: Pair
    image: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class LRU:
    """A bounded mapping that forgets the least recently used entry."""

    def __init__(self, size: int):
        self.size, self.data = max(0, int(size)), OrderedDict()

    def get(self, key: Any) -> Any:
        if key in self.data:
            self.data.move_to_end(key)
            return self.data[key]
        return None

    def put(self, key: Any, value: Any) -> None:
        self.data[key] = value
        self.data.move_to_end(key)
        while len(self.data) > self.size:
            self.data.popitem(last=False)

    def __contains__(self, key: Any) -> bool:
        return key in self.data


def image_key(item: Any) -> tuple:
    """A cache key for an input image: its absolute path, or the object's identity (the cache entry
    holds the object, so the identity cannot be reused while the entry lives)."""
    if isinstance(item, (str, os.PathLike)):
        return ("path", os.path.abspath(os.path.expanduser(os.fspath(item))))
    return ("object", id(item))


def blend_key(blend: Blend) -> tuple:
    return ("blend", tuple(image_key(x) for x in blend.images), tuple(float(w) for w in blend.weights))


def style_key(style: Any) -> tuple:
    return blend_key(style) if isinstance(style, Blend) else image_key(style)


def style_parts(style: Any) -> list[Any]:
    return list(style.images) if isinstance(style, Blend) else [style]


def as_pair(item: Any) -> Pair:
    if isinstance(item, Pair):
        return item
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return Pair(item[0], item[1])
    raise ConfigError(
        f"a pair must be a stylevar.stylize.pairs.Pair or a (content, style) tuple, got {type(item).__name__}"
    )


def read_input(item: Any, role: str) -> Image.Image:
    """One input (path, PIL image, tensor in [0, 1]) -> RGB PIL image; one-line ImageError when unreadable."""
    if isinstance(item, Image.Image):
        return to_rgb(ImageOps.exif_transpose(item) or item)
    if torch.is_tensor(item):
        imgs = pil_from_tensor_input(item, role)
        if len(imgs) != 1:
            raise ImageError(f"a {role} tensor in a pair must hold one image, got {len(imgs)}")
        return imgs[0]
    if isinstance(item, (str, os.PathLike)):
        return load_image(item, role=role)
    raise ImageError(f"{role} must be a path, a PIL image or a tensor, got {type(item).__name__}")


class EncodedImages:
    """Encoded images by role (``(ResNet feature, VQ condition features, the input)``, LRU-bounded) and
    the files that could not be read (their one-line reasons, bounded too).

    ``encode(batch (B, 3, R, R) in [-1, 1], role) -> (features (B, C), condition features (B, L, Cvae))``.
    """

    def __init__(
        self,
        encode: Callable[[torch.Tensor, str], tuple[torch.Tensor, torch.Tensor]],
        resolution: int,
        fit: str,
        cache_size: int,
        on_bad_file: str,
    ):
        self.encode, self.resolution, self.fit, self.on_bad_file = encode, resolution, fit, on_bad_file
        self.caches = {"content": LRU(cache_size), "style": LRU(cache_size)}
        self.bad = LRU(4096)  # (role, key) -> reason: a bad file shared by many pairs is read once

    def error(self, pair: Pair) -> str | None:
        """Why ``pair`` cannot be made (a refused manifest row, an input that could not be read), or None."""
        if pair.error is not None:
            return pair.error
        for role, item in (("content", pair.content), *(("style", x) for x in style_parts(pair.style))):
            reason = self.bad.get((role, image_key(item)))
            if reason is not None:
                return reason
        return None

    def content(self, pair: Pair) -> tuple[torch.Tensor, torch.Tensor]:
        return self.caches["content"].get(image_key(pair.content))[:2]

    def style(self, pair: Pair) -> tuple[torch.Tensor, torch.Tensor]:
        return self.caches["style"].get(style_key(pair.style))[:2]

    def style_input(self, pair: Pair) -> Any:
        """The input a pair's style encoding was made from (a path, an image, a Blend)."""
        return self.caches["style"].get(style_key(pair.style))[2]

    def prepare(
        self, win: list[Job], *, output: Output, batch_size: int, pad_to: int = 0
    ) -> dict[tuple, Image.Image]:
        """Read and encode the window's images that are not cached (``fail``: raise at the first that
        cannot be read; ``skip``: remember it). Returns the full-size contents that postprocessing needs
        (``output.keep_size``, colour preservation of the run or a pair), by key. Encoder batches are
        padded to ``pad_to`` rows."""
        caches = self.caches
        win = [job for job in win if job[1].error is None]  # refused manifest rows: nothing to read
        # the window's keys become the most recent entries, and the caches hold at least all of them,
        # so nothing this window uses is evicted before its batch runs
        used: dict[str, set[tuple]] = {"content": set(), "style": set()}
        for _, pair, _, _ in win:
            used["content"].add(image_key(pair.content))
            if isinstance(pair.style, Blend):
                used["style"].add(blend_key(pair.style))
            used["style"].update(image_key(x) for x in style_parts(pair.style))
        for role, keys in used.items():
            caches[role].size = max(caches[role].size, len(keys))
            for key in keys:
                caches[role].get(key)
        todo: dict[str, dict[tuple, Any]] = {"content": {}, "style": {}}
        need_full: set[tuple] = set()
        for _, pair, _, _ in win:
            ck = image_key(pair.content)
            if output.keep_size or (pair.preserve_color or output.preserve_color) != "none":
                need_full.add(ck)
            if ck in need_full or ck not in caches["content"]:
                todo["content"].setdefault(ck, pair.content)
            if isinstance(pair.style, Blend) and blend_key(pair.style) in caches["style"]:
                continue
            for item in style_parts(pair.style):
                sk = image_key(item)
                if sk not in caches["style"]:
                    todo["style"].setdefault(sk, item)
        full: dict[tuple, Image.Image] = {}
        for role, items in todo.items():
            new_keys, tensors = [], []
            wanted = [(key, item) for key, item in items.items() if (role, key) not in self.bad]

            def load(key_item: tuple[tuple, Any], role: str = role) -> tuple:
                """(full-size image if kept, model input if not cached, error): in a reader thread."""
                key, item = key_item
                try:
                    img = read_input(item, role)
                except ImageError as e:
                    return None, None, e
                keep = img if role == "content" and key in need_full else None
                x = None if key in caches[role] else to_model_input(img, self.resolution, self.fit)
                return keep, x, None

            # decoding and resizing release the GIL: the window's files are read by a few threads, in
            # order (the first unreadable one in input order is the one reported)
            with ThreadPoolExecutor(max_workers=max(1, min(READ_THREADS, len(wanted)))) as pool:
                for (key, item), (keep, x, err) in zip(wanted, pool.map(load, wanted)):
                    if err is not None:
                        if self.on_bad_file == "fail":
                            raise err
                        self.bad.put((role, key), str(err))
                        continue
                    if keep is not None:
                        full[key] = keep
                    if x is not None:
                        new_keys.append((key, item))
                        tensors.append(x)
            for start in range(0, len(tensors), batch_size):  # encoded a batch at a time
                chunk = tensors[start : start + batch_size]
                chunk += chunk[-1:] * max(0, pad_to - len(chunk))  # padded: see the pipeline's _run_batch
                feat, cvae = self.encode(torch.stack(chunk), role)
                for j, (key, item) in enumerate(new_keys[start : start + batch_size]):
                    caches[role].put(key, (feat[j], cvae[j], item))
        for _, pair, _, _ in win:  # blended styles: the weighted sum of their parts' encodings
            st = pair.style
            if isinstance(st, Blend):
                bk = blend_key(st)
                parts = [caches["style"].get(image_key(x)) for x in st.images]
                if bk not in caches["style"] and all(p is not None for p in parts):
                    w = torch.tensor(blend_weights(st.weights, len(parts)), device=parts[0][0].device)
                    f = torch.stack([p[0] for p in parts])
                    c = torch.stack([p[1] for p in parts])
                    feat = (w.view(-1, *[1] * (f.ndim - 1)).to(f.dtype) * f).sum(0)
                    cvae = (w.view(-1, 1, 1).to(c.dtype) * c).sum(0)
                    caches["style"].put(bk, (feat, cvae, st))
        return full


#: the cancel flag of the current request (a web page's Stop button): the sampler checks it at every scale
#: boundary (:func:`cancel_hook`); set it in the thread (context) that runs the request
CANCEL: ContextVar[threading.Event | None] = ContextVar("stylevar_cancel", default=None)


def cancel_hook(inner: Callable[[int, torch.Tensor], torch.Tensor] | None = None):
    """A token hook that raises :class:`~stylevar.errors.Cancelled` once the current request's
    :data:`CANCEL` flag is set (then ``inner``); ``inner`` itself when no flag is set for this context."""
    flag = CANCEL.get()
    if flag is None:
        return inner

    def hook(si: int, tokens: torch.Tensor) -> torch.Tensor:
        if flag.is_set():
            raise Cancelled(f"cancelled at scale {si + 1}")
        return tokens if inner is None else inner(si, tokens)

    return hook


def postprocess(
    img: torch.Tensor, content: Image.Image | None, output: Output, colour: str | None = None
) -> Any:
    """A (3, R, R) result in [0, 1] -> the output: at the content region's size with ``output.keep_size``
    (LANCZOS or guided upsampling), then colour preservation (``colour``, a pair's own, else the run's)
    against the content region at that size; a PIL image or a tensor in [0, 1] (``output.output_type``)."""
    fit, keep_size, upscale = output.fit, output.keep_size, output.upscale
    preserve_color = colour or output.preserve_color
    x = img.detach().float().cpu().clamp(0, 1).unsqueeze(0)
    region = None
    if keep_size or preserve_color != "none":
        region = content.crop(crop_box(content.size, fit))
    if keep_size and region.size != (x.shape[-1], x.shape[-2]):
        if upscale == "guided":
            x = guided_upsample(x, pil_to_unit_tensor(region))
        else:
            x = pil_to_unit_tensor(tensor_to_pil(x[0]).resize(region.size, Image.Resampling.LANCZOS))
    if preserve_color != "none":
        ref = (
            region
            if region.size == (x.shape[-1], x.shape[-2])
            else region.resize((x.shape[-1], x.shape[-2]), Image.Resampling.LANCZOS)
        )
        x = preserve_colour(x, pil_to_unit_tensor(ref), preserve_color)
    if output.output_type == "pt":
        return x[0]
    return tensor_to_pil(x[0])
