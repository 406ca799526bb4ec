"""One request of the page: its inputs read and bounded (pixels, work), its settings checked, the
results generated; the server's account (:class:`ServerState`) and cancellation (:func:`run_cancellable`)."""

from __future__ import annotations

import contextvars
import threading
from typing import Any

from ..config import parse_numbers
from ..errors import Cancelled, ConfigError


def _parse_alpha(text: str | None) -> list[float] | None:
    if not text or not text.strip():
        return None
    try:
        return parse_numbers(text)
    except ValueError:
        raise ConfigError(f"alpha: give one number per scale, separated by commas, not {text!r}") from None


def check_size(source: str | bytes, role: str, max_pixels: int) -> tuple[int, int]:
    """The (width, height) of an image file (a path, or its bytes) from its header alone, or an
    :class:`~stylevar.errors.ImageError` for people (no server paths) when it is over ``max_pixels`` or
    not a picture: nothing is decoded before the size is known to be within the limit."""
    import io

    from PIL import Image

    from ..errors import ImageError

    too_large = f"the limit here is {max_pixels / 1e6:.1f} MP. Downscale it and upload it again."
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            w, h = im.size
    except Image.DecompressionBombError:
        raise ImageError(
            f"The {role} image is too large to open (a decompression bomb?); {too_large}"
        ) from None
    except Exception:
        raise ImageError(
            f"the {role} image is not a picture this app can read; upload a PNG, JPEG or WebP"
        ) from None
    if w * h > max_pixels:
        raise ImageError(f"The {role} image is too large: {w}x{h} ({w * h / 1e6:.1f} MP); {too_large}")
    return w, h


def _read(path: str, role: str, max_pixels: int):
    """An uploaded image, with a message for people (no server paths) when it is too large or unreadable."""
    from ..errors import ImageError
    from ..images import load_image

    check_size(path, role, max_pixels)
    try:
        return load_image(path, role=role, max_pixels=max_pixels)
    except ImageError as e:
        raise ImageError(str(e).replace(str(path), "").replace("  ", " ")) from None


def _mask(value: Any, role: str, max_pixels: int):
    """A mask from the page: None (nothing given or nothing drawn), an upload's path, or an image editor's
    value (a dict with its ``composite``, RGBA: what was drawn, on black where nothing was) -> a grey PIL
    image or None. Either kind is held to ``max_pixels``."""
    from PIL import Image

    from ..errors import ImageError

    if isinstance(value, dict):
        value = value.get("composite")
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return _read(value, role, max_pixels).convert("L")
    if not isinstance(value, Image.Image):
        import numpy as np

        value = Image.fromarray(np.asarray(value))
    w, h = value.size
    if w * h > max_pixels:
        raise ImageError(
            f"The {role} image is too large: {w}x{h} ({w * h / 1e6:.1f} MP); the limit here is "
            f"{max_pixels / 1e6:.1f} MP. Downscale it and upload it again."
        )
    if value.mode in ("RGBA", "LA", "PA"):
        alpha = value.getchannel("A")
        if alpha.getextrema()[1] == 0:
            return None  # an empty canvas: no mask
        black = Image.new("RGBA", value.size, (0, 0, 0, 255))
        value = Image.alpha_composite(black, value.convert("RGBA"))
    return value.convert("L")


def check_work(
    num_samples: int, content_size: tuple[int, int], full_res: bool, resolution: int, limit: float | None
) -> None:
    """Refuse a request whose output is over ``limit`` pixels: ``num_samples`` x (the content's pixels
    at full resolution, the model's ``resolution``^2 otherwise). That product is what the time and
    memory of a request grow with (the full-resolution upsampling and colour steps run at the content's
    size); the message says what to lower."""
    w, h = content_size
    each = w * h if full_res else resolution * resolution
    if limit is None or num_samples * each <= limit:
        return
    size = f"{w}x{h}, full resolution" if full_res else f"{resolution}x{resolution}"
    raise ConfigError(
        f"This request is too large: {num_samples} sample{'s' if num_samples != 1 else ''} x "
        f"{each / 1e6:.3g} MP ({size}) = {num_samples * each / 1e6:.3g} MP of output; the limit here is "
        f"{limit / 1e6:.3g} MP. Lower the samples, turn off full resolution or upload a smaller content image."
    )


def stylize_request(
    pipe,
    content: str | None,
    style: str | None,
    style2: str | None = None,
    blend: float = 0.0,
    strength: float = 0.0,
    preserve_color: str = "none",
    full_res: bool = False,
    num_samples: int = 1,
    seed: float | None = -1,
    alpha: str = "",
    mask: Any = None,
    region_mask: Any = None,
    region_style: str | None = None,
    temperature: float | None = None,
    *,
    max_pixels: int = 40_000_000,
    max_request_pixels: float | None = None,
    progress=None,
    cancel: threading.Event | None = None,
) -> tuple[list[tuple[Any, str]], str]:
    """One press of the button: the results as (image, caption) pairs and a line naming the seeds.

    ``content``/``style``/``style2`` are file paths (what Gradio hands over); ``blend`` is the second
    style's share (0..1); ``seed`` < 0 or None draws one. ``mask``: where the style goes (white: the full
    style strength, black: none); ``region_mask`` + ``region_style``: another style inside the mask (masks:
    an upload's path or an image editor's value, drawn strokes on black). ``temperature``: the sampling
    temperature (> 0; None: the checkpoint's). Every image is held to ``max_pixels``, the request's output
    to ``max_request_pixels`` (:func:`check_work`). Errors are :class:`StyleVARError` (one line)."""
    if not content or not style:
        raise ConfigError("add a content image and a style image first")
    n = int(num_samples)
    if not 1 <= n <= 16:
        raise ConfigError("samples: choose 1 to 16")
    # the request's settings, through the one validation, before any file is read
    settings = pipe.settings(
        num_samples=n,
        seed=None if seed is None or float(seed) < 0 else int(seed),
        style_strength=float(strength),
        temperature=temperature,
        alpha=_parse_alpha(alpha),
        preserve_color=preserve_color,
        keep_size=bool(full_res),
        upscale="guided" if full_res else "lanczos",
        fit="squash" if full_res else "crop",
        batch_size=4,
    )
    images = {"content": _read(content, "content", max_pixels)}
    check_work(n, images["content"].size, bool(full_res), pipe.resolution, max_request_pixels)
    images["style"] = _read(style, "style", max_pixels)
    styles = [images["style"]]
    weights = None
    if style2 and blend > 0:
        styles.append(_read(style2, "second style", max_pixels))
        weights = [1.0 - float(blend), float(blend)]
    mask_img = _mask(mask, "mask", max_pixels)
    regions = None
    region_mask_img = _mask(region_mask, "region mask", max_pixels)
    if region_style:
        if region_mask_img is None:
            raise ConfigError("the region style needs a region mask: draw or upload where it goes")
        regions = [(region_mask_img, _read(region_style, "region style", max_pixels))]
    elif region_mask_img is not None:
        raise ConfigError("a region mask needs a region style image")
    out = []
    seeds = []
    done = 0
    if progress is not None:
        progress(0.0, desc="encoding")
    settings = settings.with_(mask=mask_img, regions=regions)
    for batch in pipe.iter_batches(images["content"], styles, settings, style_weights=weights):
        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled between batches")
        for img, s in zip(batch.images, batch.seeds):
            out.append((img, f"seed {s}"))
            seeds.append(s)
        done += len(batch.images)
        if progress is not None:
            progress(done / n, desc=f"{done}/{n} images")
    return out, "seeds: " + ", ".join(
        str(s) for s in seeds
    ) + " (enter one as the seed to get that image again)"


class ServerState:
    """What the server is doing, for ``GET /health``: requests generating now, served, cancelled, failed."""

    def __init__(self, pipe=None):
        self.pipe = pipe
        self.lock = threading.Lock()
        self.counts = {"generating": 0, "served": 0, "cancelled": 0, "failed": 0}

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def health(self) -> dict[str, Any]:
        with self.lock:
            counts = dict(self.counts)
        pipe = self.pipe
        return {
            "status": "ok" if pipe is not None else "loading",
            "model_loaded": pipe is not None,
            "device": None if pipe is None else str(pipe.device),
            "resolution": None if pipe is None else pipe.resolution,
            **counts,
        }


def run_cancellable(work, cancel: threading.Event, state: ServerState, poll: float = 0.2):
    """Run ``work()`` in a thread (the caller's context, with :data:`stylevar.stylize.stream.CANCEL` set to
    ``cancel``), yielding None every ``poll`` seconds while it runs, then its result. Closing this
    generator (Gradio does on Stop and on a closed page) sets ``cancel``: the sampler stops at its next
    scale boundary and the thread ends."""
    from ..stylize.stream import CANCEL

    box: dict[str, Any] = {}

    def target():
        state.add("generating")
        CANCEL.set(cancel)
        try:
            box["out"] = work()
        except BaseException as e:  # handed to the generator
            box["err"] = e
        finally:
            state.add("generating", -1)
            err = box.get("err")
            state.add("served" if err is None else "cancelled" if isinstance(err, Cancelled) else "failed")

    t = threading.Thread(
        target=contextvars.copy_context().run, args=(target,), daemon=True, name="stylevar-request"
    )
    t.start()
    try:
        yield None  # at once: Gradio can only cancel an iterator that has yielded once
        while t.is_alive():
            t.join(poll)
            if t.is_alive():
                yield None
    finally:
        if t.is_alive():
            cancel.set()
    if "err" in box:
        raise box["err"]
    yield box["out"]
