"""``stylevar app``: a Gradio page for people who would rather drag two pictures than type a command.

    pip install -e ".[app]"
    stylevar app                                  # the released GRPO weights, http://127.0.0.1:7860
    stylevar app --checkpoint runs/sft/final --device cpu

Upload (or pick an example) content and style image, set the controls (style strength, a second style
to blend in, colour preservation, full-resolution output, samples and seed; per-scale alpha under
"Advanced"), press Stylize. Results appear in a gallery with their seeds (reuse one to get that image
again) and download at full size. Every control is the pipeline's own (:mod:`stylevar.controls`).

Serving: binds to 127.0.0.1 unless ``--host`` says otherwise; requests go through Gradio's queue
(``--concurrency`` generations at a time, the rest wait their turn with their position shown);
uploads over ``--max-upload-mb`` are refused by the server, images over ``--max-pixels`` with a
message saying how large they are and what to do.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .config import parse_numbers
from .errors import ConfigError, MissingDependencyError, StyleVARError

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
        for img, s in zip(batch.images, batch.seeds):
            out.append((img, f"seed {s}"))
            seeds.append(s)
        done += len(batch.images)
        if progress is not None:
            progress(done / n, desc=f"{done}/{n} images")
    return out, "seeds: " + ", ".join(
        str(s) for s in seeds
    ) + " (enter one as the seed to get that image again)"


def build_app(
    pipe, *, max_pixels: int = 40_000_000, examples: list[list[str]] | None = None, title: str = ""
):
    """The Gradio Blocks page around ``pipe`` (a :class:`~stylevar.pipeline.StyleVARPipeline`)."""
    gr = _gradio()
    n_scales = len(pipe.model.patch_nums)
    examples = example_pairs() if examples is None else examples

    def run(*values, progress=gr.Progress()):  # noqa: B008 (Gradio idiom); values: the inputs, in order
        try:
            return stylize_request(pipe, *values, max_pixels=max_pixels, progress=progress)
        except StyleVARError as e:
            raise gr.Error(str(e)) from None

    with gr.Blocks(title=title or "StyleVAR") as demo:
        gr.Markdown(
            f"## {title or 'StyleVAR style transfer'}\n"
            "Content keeps its structure; the style gives colours and textures. "
            f"Images up to {max_pixels / 1e6:.1f} MP."
        )
        with gr.Row():
            content = gr.Image(
                type="filepath", label="Content", elem_id="content", sources=["upload", "clipboard"]
            )
            style = gr.Image(type="filepath", label="Style", elem_id="style", sources=["upload", "clipboard"])
            style2 = gr.Image(
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
                mask = gr.ImageEditor(
                    type="pil", label="Style-strength mask", elem_id="mask", brush=brush, layers=False
                )
                region_mask = gr.ImageEditor(
                    type="pil", label="Region mask", elem_id="region_mask", brush=brush, layers=False
                )
                region_style = gr.Image(
                    type="filepath",
                    label="Region style",
                    elem_id="region_style",
                    sources=["upload", "clipboard"],
                )
        go = gr.Button("Stylize", variant="primary", elem_id="stylize")
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
        go.click(
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
        )
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
) -> None:
    """Serve the page for ``pipe`` until interrupted (``stylevar app``): Gradio's queue runs
    ``concurrency`` generations at a time and lets ``queue_size`` requests wait; uploads over
    ``max_upload_mb`` are refused by the server, images over ``max_pixels`` by the handler."""
    gr = _gradio()
    demo = build_app(pipe, max_pixels=int(max_pixels), title=title)
    demo.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    print(f"stylevar app on http://{host}:{port} (device {pipe.device}; Ctrl-C stops it)", flush=True)
    demo.launch(
        server_name=host,
        server_port=port,
        # bytes: Gradio's "Nmb" strings take whole numbers only, and the flag is a float
        max_file_size=int(max_upload_mb * 1024 * 1024),
        show_error=True,
        inbrowser=False,
        ssr_mode=False,  # plain Python server: no Node.js needed
        quiet=True,  # our own line above says where the page is; Gradio's talks of launch(share=True)
        theme=gr.themes.Default(),
    )
