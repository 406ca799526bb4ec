"""``stylevar app``: a Gradio page for people who would rather drag two pictures than type a command.

    pip install -e ".[app]"
    stylevar app                                  # the released GRPO weights, http://127.0.0.1:7860
    stylevar app --checkpoint runs/sft/final --device cpu

Upload (or pick an example) content and style image, set the controls (style strength, a second style
to blend in, colour preservation, full-resolution output, samples and seed; per-scale alpha under
"Advanced"), press Stylize. Results appear in a gallery with their seeds (reuse one to get that image
again) and download at full size. Every control is the pipeline's own (:mod:`stylevar.controls`).

Serving (README, "Web app"): binds to 127.0.0.1 unless ``--host`` says otherwise (then it warns that
the page has no authentication; ``--auth USER:PASS`` adds Gradio's login); requests go through Gradio's
queue (``--concurrency`` generations at a time, ``--queue-size`` waiting with their position and an
estimate shown; more are refused with "Queue is full"); uploads over ``--max-upload-mb`` are refused by
the server; every upload reaches stylevar's own image reader undecoded, so a bad, truncated, empty,
huge or tiny file gets the same one-line message as the command line, on the page, and the server logs
no traceback. Stop, or closing the page, stops the generation at the next scale boundary and frees the
worker. ``GET /health`` answers whether the model is loaded and what the server is doing.
"""

from __future__ import annotations

import contextvars
import os
import threading
from pathlib import Path
from typing import Any

from .config import parse_numbers
from .errors import Cancelled, ConfigError, MissingDependencyError, StyleVARError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no usage reports unless the user asks
    try:
        import gradio as gr
    except ImportError:
        raise MissingDependencyError('the web app needs gradio: pip install "stylevar[app]"') from None
    return gr


def example_pairs(folder: Path = EXAMPLES) -> list[list[str]]:
    """[content, style] example pairs from ``folder``: ``content*.jpg`` x ``style*.jpg``, in name order."""
    if not folder.is_dir():
        return []
    contents = sorted(folder.glob("content*.jpg"))
    styles = sorted(folder.glob("style*.jpg"))
    return [[str(c), str(s)] for c in contents for s in styles]


def _parse_alpha(text: str | None) -> list[float] | None:
    if not text or not text.strip():
        return None
    try:
        return parse_numbers(text)
    except ValueError:
        raise ConfigError(f"alpha: give one number per scale, separated by commas, not {text!r}") from None


def _read(path: str, role: str, max_pixels: int):
    """An uploaded image, with a message for people (no server paths) when it is too large or unreadable."""
    from PIL import Image

    from .errors import ImageError
    from .images import load_image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except Image.DecompressionBombError:
        raise ImageError(
            f"The {role} image is too large to open (a decompression bomb?); the limit here is "
            f"{max_pixels / 1e6:.1f} MP. Downscale it and upload it again."
        ) from None
    except Exception:
        raise ImageError(
            f"the {role} image is not a picture this app can read; upload a PNG, JPEG or WebP"
        ) from None
    if w * h > max_pixels:
        raise ImageError(
            f"The {role} image is too large: {w}x{h} ({w * h / 1e6:.1f} MP); the limit here is "
            f"{max_pixels / 1e6:.1f} MP. Downscale it and upload it again."
        )
    try:
        return load_image(path, role=role, max_pixels=max_pixels)
    except ImageError as e:
        raise ImageError(str(e).replace(str(path), "").replace("  ", " ")) from None


def _mask(value: Any, role: str, max_pixels: int):
    """A mask from the page: None (nothing given or nothing drawn), an upload's path, or an image editor's
    value (a dict with its ``composite``, RGBA: what was drawn, on black where nothing was) -> a grey PIL
    image or None."""
    from PIL import Image

    if isinstance(value, dict):
        value = value.get("composite")
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return _read(value, role, max_pixels).convert("L")
    if not isinstance(value, Image.Image):
        import numpy as np

        value = Image.fromarray(np.asarray(value))
    if value.mode in ("RGBA", "LA", "PA"):
        alpha = value.getchannel("A")
        if alpha.getextrema()[1] == 0:
            return None  # an empty canvas: no mask
        black = Image.new("RGBA", value.size, (0, 0, 0, 255))
        value = Image.alpha_composite(black, value.convert("RGBA"))
    return value.convert("L")


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
    *,
    max_pixels: int = 40_000_000,
    progress=None,
    cancel: threading.Event | None = None,
) -> tuple[list[tuple[Any, str]], str]:
    """One press of the button: the results as (image, caption) pairs and a line naming the seeds.

    ``content``/``style``/``style2`` are file paths (what Gradio hands over); ``blend`` is the second
    style's share (0..1); ``seed`` < 0 or None draws one. ``mask``: where the style goes (white: the full
    style strength, black: none); ``region_mask`` + ``region_style``: another style inside the mask (masks:
    an upload's path or an image editor's value, drawn strokes on black). Errors are
    :class:`StyleVARError` (one line)."""
    if not content or not style:
        raise ConfigError("add a content image and a style image first")
    images = {"content": _read(content, "content", max_pixels), "style": _read(style, "style", max_pixels)}
    styles = [images["style"]]
    weights = None
    if style2 and blend > 0:
        styles.append(_read(style2, "second style", max_pixels))
        weights = [1.0 - float(blend), float(blend)]
    n = int(num_samples)
    if not 1 <= n <= 16:
        raise ConfigError("samples: choose 1 to 16")
    base = None if seed is None or float(seed) < 0 else int(seed)
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
    for batch in pipe.iter_batches(
        images["content"],
        styles,
        style_weights=weights,
        num_samples=n,
        seed=base,
        style_strength=float(strength),
        alpha=_parse_alpha(alpha),
        preserve_color=preserve_color,
        keep_size=bool(full_res),
        upscale="guided" if full_res else "lanczos",
        fit="squash" if full_res else "crop",
        batch_size=4,
        mask=mask_img,
        regions=regions,
    ):
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


def _components(gr):
    """gr.Image / gr.ImageEditor whose uploads reach stylevar's reader (one-line errors, no tracebacks).

    The components are Gradio's own, with ``preprocess`` replaced on each instance: a subclass would make
    Gradio write a ``.pyi`` stub beside this package's source."""
    import types

    def image_preprocess(self, payload):  # the upload's path, undecoded: _read opens it, words every error
        return None if payload is None else payload.path

    def editor_preprocess(self, payload):
        try:
            return gr.ImageEditor.preprocess(self, payload)
        except Exception:
            raise gr.Error(
                "the mask is not a picture this app can read; upload a PNG, JPEG or WebP",
                print_exception=False,
            ) from None

    def image(**kw):
        c = gr.Image(**kw)
        c.preprocess = types.MethodType(image_preprocess, c)
        return c

    def editor(**kw):
        c = gr.ImageEditor(**kw)
        c.preprocess = types.MethodType(editor_preprocess, c)
        return c

    return image, editor


def run_cancellable(work, cancel: threading.Event, state: ServerState, poll: float = 0.2):
    """Run ``work()`` in a thread (the caller's context, with :data:`stylevar.stream.CANCEL` set to
    ``cancel``), yielding None every ``poll`` seconds while it runs, then its result. Closing this
    generator (Gradio does on Stop and on a closed page) sets ``cancel``: the sampler stops at its next
    scale boundary and the thread ends."""
    from .stream import CANCEL

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


def build_app(
    pipe,
    *,
    max_pixels: int = 40_000_000,
    examples: list[list[str]] | None = None,
    title: str = "",
    state: ServerState | None = None,
):
    """The Gradio Blocks page around ``pipe`` (a :class:`~stylevar.pipeline.StyleVARPipeline`)."""
    gr = _gradio()
    n_scales = len(pipe.model.patch_nums)
    examples = example_pairs() if examples is None else examples
    state = state or ServerState(pipe)
    UploadedImage, MaskEditor = _components(gr)

    def run(*values, progress=gr.Progress()):  # noqa: B008 (Gradio idiom); values: the inputs, in order
        cancel = threading.Event()
        try:
            for out in run_cancellable(
                lambda: stylize_request(
                    pipe, *values, max_pixels=max_pixels, progress=progress, cancel=cancel
                ),
                cancel,
                state,
            ):
                yield (gr.skip(), gr.skip()) if out is None else out
        except Cancelled:
            return
        except StyleVARError as e:
            raise gr.Error(str(e), print_exception=False) from None

    with gr.Blocks(title=title or "StyleVAR") as demo:
        gr.Markdown(
            f"## {title or 'StyleVAR style transfer'}\n"
            "Content keeps its structure; the style gives colours and textures. "
            f"Images up to {max_pixels / 1e6:.1f} MP."
        )
        with gr.Row():
            content = UploadedImage(
                type="filepath", label="Content", elem_id="content", sources=["upload", "clipboard"]
            )
            style = UploadedImage(
                type="filepath", label="Style", elem_id="style", sources=["upload", "clipboard"]
            )
            style2 = UploadedImage(
                type="filepath",
                label="Second style (optional)",
                elem_id="style2",
                sources=["upload", "clipboard"],
            )
        with gr.Row():
            strength = gr.Slider(-1, 1, value=0, step=0.05, label="Style strength", elem_id="strength")
            blend = gr.Slider(0, 1, value=0.5, step=0.05, label="Second style's share", elem_id="blend")
            preserve = gr.Radio(
                ["none", "luminance", "stats"],
                value="none",
                label="Keep the content's colours",
                elem_id="preserve",
            )
        with gr.Row():
            full_res = gr.Checkbox(value=False, label="Full resolution (content's size, guided upsampling)")
            n = gr.Slider(1, 8, value=1, step=1, label="Samples", elem_id="samples")
            seed = gr.Number(value=-1, precision=0, label="Seed (-1: random)", elem_id="seed")
        with gr.Accordion("Advanced", open=False):
            alpha = gr.Textbox(
                label=f"Per-scale alpha ({n_scales} comma-separated values; empty: the checkpoint's)",
                elem_id="alpha",
            )
        with gr.Accordion("Where the style goes (masks)", open=False):
            gr.Markdown(
                "Draw (white: style, black or nothing: the content) or upload a grey-level mask over the "
                "content. A region style is used inside its mask instead of the main style."
            )
            with gr.Row():
                brush = gr.Brush(colors=["#ffffff", "#808080", "#000000"], color_mode="fixed")
                mask = MaskEditor(
                    type="pil", label="Style-strength mask", elem_id="mask", brush=brush, layers=False
                )
                region_mask = MaskEditor(
                    type="pil", label="Region mask", elem_id="region_mask", brush=brush, layers=False
                )
                region_style = UploadedImage(
                    type="filepath",
                    label="Region style",
                    elem_id="region_style",
                    sources=["upload", "clipboard"],
                )
        with gr.Row():
            go = gr.Button("Stylize", variant="primary", elem_id="stylize")
            stop = gr.Button("Stop", variant="stop", elem_id="stop")
        gallery = gr.Gallery(
            label="Results",
            elem_id="results",
            columns=4,
            height=300,
            object_fit="contain",
            preview=False,
            format="png",
            buttons=["download", "download_all", "fullscreen"],
        )
        info = gr.Markdown(elem_id="seeds")
        if examples:
            gr.Examples(examples, inputs=[content, style], label="Examples")
        event = go.click(
            run,
            inputs=[
                content,
                style,
                style2,
                blend,
                strength,
                preserve,
                full_res,
                n,
                seed,
                alpha,
                mask,
                region_mask,
                region_style,
            ],  # fmt: skip
            outputs=[gallery, info],
            show_progress="full",  # a waiting request shows its place in the queue and an estimate
            api_name="stylize",
        )
        stop.click(None, None, None, cancels=[event])  # the generation stops at its next scale boundary
    return demo


def serve(
    pipe,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    concurrency: int = 1,
    queue_size: int = 32,
    max_upload_mb: float = 20,
    max_pixels: float = 40e6,
    title: str = "",
    auth: tuple[str, str] | None = None,
    root_path: str | None = None,
) -> None:
    """Serve the page for ``pipe`` until interrupted (``stylevar app``): Gradio's queue runs
    ``concurrency`` generations at a time and lets ``queue_size`` requests wait (more are refused);
    uploads over ``max_upload_mb`` are refused by the server, images over ``max_pixels`` by the handler.
    ``GET /health`` answers with :meth:`ServerState.health` (JSON); ``auth`` is Gradio's login;
    ``root_path`` the public path prefix behind a reverse proxy."""
    import sys

    import uvicorn
    from fastapi import FastAPI

    gr = _gradio()
    state = ServerState(pipe)
    demo = build_app(pipe, max_pixels=int(max_pixels), title=title, state=state)
    demo.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, Any]:
        return state.health()

    app = gr.mount_gradio_app(
        app,
        demo,
        path="/",
        server_name=host,
        server_port=port,
        auth=auth,
        root_path=root_path,
        show_error=True,
        # bytes: Gradio's "Nmb" strings take whole numbers only, and the flag is a float
        max_file_size=int(max_upload_mb * 1024 * 1024),
        ssr_mode=False,  # plain Python server: no Node.js needed
        theme=gr.themes.Default(),
    )
    if host not in ("127.0.0.1", "localhost", "::1") and auth is None:
        print(
            f"warning: --host {host} serves this page to the network with no authentication; add --auth "
            "USER:PASS or put it behind a reverse proxy that authenticates (README, Web app)",
            file=sys.stderr,
            flush=True,
        )
    print(f"stylevar app on http://{host}:{port} (device {pipe.device}; Ctrl-C stops it)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
