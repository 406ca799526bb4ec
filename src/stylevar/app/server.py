"""``serve``: the page mounted in FastAPI with ``/health``, the guards, and uvicorn."""

from __future__ import annotations

from typing import Any

from .guards import Gate, mounted_gradio_app
from .handler import ServerState
from .page import build_app, load_gradio


def serve(
    pipe,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    concurrency: int = 1,
    queue_size: int = 32,
    max_upload_mb: float = 20,
    max_pixels: float = 40e6,
    max_request_mpix: float = 40,
    title: str = "",
    auth: tuple[str, str] | None = None,
    root_path: str | None = None,
) -> None:
    """Serve the page for ``pipe`` until interrupted (``stylevar app``): Gradio's queue runs
    ``concurrency`` generations at a time and lets ``queue_size`` requests wait (more are refused);
    uploads over ``max_upload_mb`` are refused by the server, images over ``max_pixels`` and requests
    over ``max_request_mpix`` megapixels of output (:func:`check_work`) by the handler; files only as
    uploads (:class:`Uploads`). ``GET /health`` answers with :meth:`ServerState.health` (JSON); ``auth``
    is Gradio's login, which :class:`Gate` extends to every route but ``/health`` and the login page;
    ``root_path`` the public path prefix behind a reverse proxy (docs/app.md)."""
    import sys

    import uvicorn
    from fastapi import FastAPI

    gr = load_gradio()
    state = ServerState(pipe)
    demo = build_app(
        pipe,
        max_pixels=int(max_pixels),
        max_request_pixels=max_request_mpix * 1e6,
        title=title,
        state=state,
    )
    demo.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)  # no schema pages: docs/app.md

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
    app.add_middleware(Gate, gradio_app=mounted_gradio_app(app), login=auth is not None)
    if host not in ("127.0.0.1", "localhost", "::1") and auth is None:
        print(
            f"warning: --host {host} serves this page to the network with no authentication; add --auth "
            "USER:PASS or put it behind a reverse proxy that authenticates (docs/app.md)",
            file=sys.stderr,
            flush=True,
        )
    print(f"stylevar app on http://{host}:{port} (device {pipe.device}; Ctrl-C stops it)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
