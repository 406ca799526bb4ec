"""``stylevar app``: a Gradio page for people who would rather drag two pictures than type a command.

    pip install -e ".[app]"
    stylevar app                                  # the released GRPO weights, http://127.0.0.1:7860
    stylevar app --checkpoint runs/sft/final --device cpu

Upload (or pick an example) content and style image, set the controls (style strength, a second style
to blend in, colour preservation, full-resolution output, samples and seed; per-scale alpha and the
sampling temperature under "Advanced"), press Stylize. Results appear in a gallery with their seeds
(reuse one to get that image again) and download at full size. Every control is the pipeline's own
(:mod:`stylevar.stylize.controls`).

Serving (docs/app.md): binds to 127.0.0.1 unless ``--host`` says otherwise (then it warns that the page
has no authentication; ``--auth USER:PASS`` adds Gradio's login, and then every route but ``/health`` and
the login page needs it); requests go through Gradio's queue (``--concurrency`` generations at a time,
``--queue-size`` waiting with their position and an estimate shown; more are refused with "Queue is
full"). A request may only name files uploaded to this server (:class:`Uploads`): a server path or a URL
in place of an upload is refused before Gradio copies anything. Uploads over ``--max-upload-mb`` are
refused by the server, images over ``--max-pixels`` (masks included) and requests whose output exceeds
``--max-request-mpix`` (samples x output pixels) by the handler, with one line saying what to lower;
every upload reaches stylevar's own image reader undecoded, so a bad, truncated, empty, huge or tiny file
gets the same one-line message as the command line, on the page, and the server logs no traceback.
Stop, closing the page, or a client that goes away stops the generation at the next scale boundary and
frees the worker. ``GET /health`` answers whether the model is loaded and what the server is doing.
"""

from .handler import ServerState, run_cancellable, stylize_request
from .page import build_app, example_pairs
from .server import serve

__all__ = ["ServerState", "build_app", "example_pairs", "run_cancellable", "serve", "stylize_request"]
