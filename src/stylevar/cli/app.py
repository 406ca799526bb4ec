"""``stylevar app``: the Gradio page (:mod:`stylevar.app`) for a checkpoint."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from .common import add_checkpoint_args, examples, load_pipeline


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "app",
        help="a web page (Gradio) to stylize uploaded images with every control",
        description="Serve a Gradio page on --host:--port (default 127.0.0.1:7860). Needs stylevar[app].",
        epilog=examples(
            ("the released model, on this machine only", "stylevar app"),
            (
                "your checkpoint for your network, behind a login",
                "stylevar app --checkpoint runs/grpo/final --host 0.0.0.0 --auth alice:s3cret",
            ),
            ("behind a reverse proxy at /stylevar", "stylevar app --root-path /stylevar --port 8080"),
        ),
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default)")
    p.add_argument(
        "--concurrency", type=int, default=1, help="generations at once; the rest queue (default 1)"
    )
    p.add_argument("--queue-size", type=int, default=32, help="requests that may wait (default 32)")
    p.add_argument("--max-upload-mb", type=float, default=20, help="largest upload in MB (default 20)")
    p.add_argument("--max-pixels", type=float, default=40e6, help="largest image in pixels (default 40e6)")
    p.add_argument(
        "--max-request-mpix",
        type=float,
        default=40,
        help="most output one request may ask for, in megapixels: samples x (the content's pixels with "
        "full resolution, the model's resolution squared otherwise) (default 40)",
    )
    p.add_argument("--title", default="", help="page title (default: none)")
    p.add_argument(
        "--auth",
        default=None,
        metavar="USER:PASS",
        help="a login for the page and its API (every route but /health; docs/app.md); without it, --host "
        "other than 127.0.0.1 warns (default: none)",
    )
    p.add_argument(
        "--root-path", default=None, help="the public path prefix behind a reverse proxy (default: none)"
    )
    add_checkpoint_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..app import serve
    from ..app.page import load_gradio

    load_gradio()  # a missing gradio fails before the checkpoint loads
    for flag in ("concurrency", "queue_size", "max_upload_mb", "max_pixels", "max_request_mpix"):
        if not getattr(args, flag) > 0:  # NaN too
            raise ConfigError(f"--{flag.replace('_', '-')} must be > 0")
    auth = None
    if args.auth is not None:
        user, sep, password = args.auth.partition(":")
        if not (sep and user and password):
            raise ConfigError("--auth must be USER:PASS")
        auth = (user, password)
    serve(
        load_pipeline(args),
        host=args.host,
        port=args.port,
        concurrency=args.concurrency,
        queue_size=args.queue_size,
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels,
        max_request_mpix=args.max_request_mpix,
        title=args.title,
        auth=auth,
        root_path=args.root_path,
    )
    return 0
