"""The Gradio page: its components (uploads read by stylevar's own reader, one-line errors) and layout."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ..errors import Cancelled, MissingDependencyError, StyleVARError
from .guards import Uploads
from .handler import ServerState, check_size, run_cancellable, stylize_request

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def load_gradio():
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


def _components(gr, uploads: Uploads, max_pixels: int):
    """gr.Image / gr.ImageEditor whose uploads reach stylevar's reader (one-line errors, no tracebacks) and
    that take only files :class:`Uploads` allows, each image within ``max_pixels``.

    The components are Gradio's own, with ``preprocess`` (and the file moves, :meth:`Uploads.guard`)
    replaced on each instance: a subclass would make Gradio write a ``.pyi`` stub beside this package."""
    import types

    from ..errors import ImageError

    def image(role: str, **kw):
        def preprocess(self, payload):  # the upload's path, undecoded: _read opens it, words every error
            return None if payload is None else uploads.require(gr, payload.path, role)

        c = gr.Image(**kw)
        c.preprocess = types.MethodType(preprocess, c)
        uploads.guard(gr, c, role)
        return c

    def editor(role: str, **kw):
        def preprocess(self, payload):
            if payload is None:
                return None
            files = [f for f in (payload.background, *payload.layers, payload.composite) if f is not None]
            sources = [uploads.require(gr, f.path, role) for f in files]
            blobs = self.blob_storage.get(payload.id) if payload.id is not None else None
            if blobs is not None:  # what the page's canvas sent as bytes (Gradio's accept_blobs)
                sources += [b for b in (blobs.background, *blobs.layers, blobs.composite) if b]
            try:
                for source in sources:  # each within max_pixels before Gradio decodes it
                    check_size(source, role, max_pixels)
                return gr.ImageEditor.preprocess(self, payload)
            except ImageError as e:
                raise gr.Error(str(e), print_exception=False) from None
            except Exception:
                raise gr.Error(
                    f"the {role} is not a picture this app can read; upload a PNG, JPEG or WebP",
                    print_exception=False,
                ) from None

        c = gr.ImageEditor(**kw)
        c.preprocess = types.MethodType(preprocess, c)
        uploads.guard(gr, c, role)
        return c

    return image, editor


def _one_line_errors(gr, component, name: str) -> None:
    """Whatever ``component``'s preprocess refuses (an API client's value out of a slider's range, not one
    of a radio's choices) reaches the client as one line naming the parameter, and the server log gets no
    traceback (Gradio prints one for its own errors). Replaced on the instance, as in :func:`_components`."""
    original = component.preprocess

    def preprocess(payload):
        try:
            return original(payload)
        except gr.Error as e:
            if not e.print_exception:
                raise  # already ours: one line
            message = f"{name}: {e.message}"
        except Exception:
            message = f"{name}: not a value this parameter takes"
        raise gr.Error(message, print_exception=False)

    component.preprocess = preprocess


def build_app(
    pipe,
    *,
    max_pixels: int = 40_000_000,
    max_request_pixels: float | None = None,
    examples: list[list[str]] | None = None,
    title: str = "",
    state: ServerState | None = None,
):
    """The Gradio Blocks page around ``pipe`` (a :class:`~stylevar.stylize.pipeline.StyleVARPipeline`): every
    image within ``max_pixels``, every request's output within ``max_request_pixels`` (:func:`check_work`),
    files only as uploads (:class:`Uploads`). Its API endpoint ``/stylize`` takes the parameters of
    :func:`stylize_request`, by name."""
    gr = load_gradio()
    n_scales = len(pipe.model.patch_nums)
    examples = example_pairs() if examples is None else examples
    state = state or ServerState(pipe)
    uploads = Uploads([path for pair in examples for path in pair])
    UploadedImage, MaskEditor = _components(gr, uploads, max_pixels)
    default_temperature = pipe.sampling.temperature

    # Gradio passes every value; the None defaults make the optional images (which have no value of their
    # own on the page) optional in the API too, and the others default to their controls' values there
    def stylize(
        content,
        style,
        style2=None,
        blend=None,
        strength=None,
        preserve_color=None,
        full_res=None,
        num_samples=None,
        seed=None,
        alpha=None,
        mask=None,
        region_mask=None,
        region_style=None,
        temperature=None,
        progress=gr.Progress(),  # noqa: B008 (Gradio idiom)
    ):
        """Stylize the content image with the style image(s): the gallery of results and their seeds."""
        request = dict(
            content=content,
            style=style,
            style2=style2,
            blend=blend,
            strength=strength,
            preserve_color=preserve_color,
            full_res=full_res,
            num_samples=num_samples,
            seed=seed,
            alpha=alpha,
            mask=mask,
            region_mask=region_mask,
            region_style=region_style,
            temperature=None if temperature == default_temperature else temperature,  # None: the checkpoint's
        )
        cancel = threading.Event()
        try:
            for out in run_cancellable(
                lambda: stylize_request(
                    pipe,
                    **request,
                    max_pixels=max_pixels,
                    max_request_pixels=max_request_pixels,
                    progress=progress,
                    cancel=cancel,
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
            f"Images up to {max_pixels / 1e6:.1f} MP"
            + (
                f"; up to {max_request_pixels / 1e6:.3g} MP of output per request (samples x output size)."
                if max_request_pixels is not None
                else "."
            )
        )
        with gr.Row():
            content = UploadedImage(
                "content image",
                type="filepath",
                label="Content",
                elem_id="content",
                sources=["upload", "clipboard"],
            )
            style = UploadedImage(
                "style image",
                type="filepath",
                label="Style",
                elem_id="style",
                sources=["upload", "clipboard"],
            )
            style2 = UploadedImage(
                "second style image",
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
            temperature = gr.Slider(
                min(0.05, default_temperature),
                max(2.0, default_temperature),
                value=default_temperature,
                step=0.05,
                label="Sampling temperature (higher: more varied; the default is the checkpoint's)",
                elem_id="temperature",
            )
        with gr.Accordion("Where the style goes (masks)", open=False):
            gr.Markdown(
                "Draw (white: style, black or nothing: the content) or upload a grey-level mask over the "
                "content. A region style is used inside its mask instead of the main style."
            )
            with gr.Row():
                brush = gr.Brush(colors=["#ffffff", "#808080", "#000000"], color_mode="fixed")
                mask = MaskEditor(
                    "mask", type="pil", label="Style-strength mask", elem_id="mask", brush=brush, layers=False
                )
                region_mask = MaskEditor(
                    "region mask",
                    type="pil",
                    label="Region mask",
                    elem_id="region_mask",
                    brush=brush,
                    layers=False,
                )
                region_style = UploadedImage(
                    "region style image",
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
        # stylize's parameters, in order: their names are the API's (/gradio_api/info)
        inputs = {
            "content": content,
            "style": style,
            "style2": style2,
            "blend": blend,
            "strength": strength,
            "preserve_color": preserve,
            "full_res": full_res,
            "num_samples": n,
            "seed": seed,
            "alpha": alpha,
            "mask": mask,
            "region_mask": region_mask,
            "region_style": region_style,
            "temperature": temperature,
        }
        for name, component in inputs.items():
            _one_line_errors(gr, component, name)
        event = go.click(
            stylize,
            inputs=list(inputs.values()),
            outputs=[gallery, info],
            show_progress="full",  # a waiting request shows its place in the queue and an estimate
            api_name="stylize",
        )
        stop.click(None, None, None, cancels=[event])  # the generation stops at its next scale boundary
    uploads.blocks = demo  # its upload_file_set: what this server has received

    def validate_inputs(block_fn, values):  # Gradio's says so in many lines, with the values and a traceback
        if len(values) < len(block_fn.inputs):
            raise gr.Error(
                f"{block_fn.name} takes {len(block_fn.inputs)} values, got {len(values)}; its parameters, "
                "by name and in order: /gradio_api/info",
                print_exception=False,
            )

    demo.validate_inputs = validate_inputs
    return demo
