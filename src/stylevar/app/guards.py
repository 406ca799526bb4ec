"""What keeps the served page to its uploads and its login: :class:`Uploads` (a request may only name files
uploaded to this server) and :class:`Gate` (every route but ``/health`` and the login page needs the login)."""

from __future__ import annotations

import os
from typing import Any


class Uploads:
    """The files a request may name: those uploaded to this server (Gradio's upload route records each
    in ``blocks.upload_file_set``, under a folder named by the file's SHA-256, so naming another user's
    upload takes knowing its content) and the example images the page offers, with Gradio's cached copies
    of them. Anything else (a server path, a URL, a path with ``..``) is not.

    Why this is ours to check: Gradio runs its own "was it uploaded?" check only for an app it launched
    itself (``Blocks.launch``); mounted into FastAPI (:func:`serve`), it copies whatever path a request
    names into its cache, where ``/gradio_api/file=`` serves it to anyone."""

    def __init__(self, offered: list[str] | tuple[str, ...] = ()):
        self.blocks = None  # the Blocks whose upload_file_set is consulted (set by build_app)
        self.offered = {os.path.abspath(p) for p in offered}

    def allows(self, path: Any) -> bool:
        if not isinstance(path, str) or not path:
            return False
        uploaded = getattr(self.blocks, "upload_file_set", set())
        if path in uploaded or path in self.offered:
            return True
        path = os.path.abspath(path)
        return path in self.offered or any(os.path.abspath(u) == path for u in list(uploaded))

    def guard(self, gr, component, role: str) -> None:
        """Refuse, in ``component``, any file a request names that :meth:`allows` does not, before Gradio
        copies it: Gradio hands every file a request names for this component to its
        ``(async_)move_resource_to_block_cache``, so the check wraps those two (on the instance: a
        subclass would make Gradio write a ``.pyi`` stub beside this package). A copy Gradio makes of an
        allowed file (an example image) is allowed in its turn."""
        original_move = component.move_resource_to_block_cache
        original_async_move = component.async_move_resource_to_block_cache

        def check(path) -> None:
            if path is not None and not self.allows(str(path)):
                raise not_uploaded(gr, role)

        def remember(path, copy) -> None:
            if copy is not None and str(copy) != str(path):
                self.offered.add(os.path.abspath(str(copy)))

        def move(path):
            check(path)
            copy = original_move(path)
            remember(path, copy)
            return copy

        async def async_move(path):
            check(path)
            copy = await original_async_move(path)
            remember(path, copy)
            return copy

        component.move_resource_to_block_cache = move
        component.async_move_resource_to_block_cache = async_move

    def require(self, gr, path: str, role: str) -> str:
        """``path`` when a request may name it, else the one-line refusal (a ``gr.Error``)."""
        if not self.allows(path):
            raise not_uploaded(gr, role)
        return path


def not_uploaded(gr, role: str):
    return gr.Error(
        f"the {role} must be a file uploaded to this page (or its upload route), not a server path or a URL",
        print_exception=False,
    )


class Gate:
    """ASGI middleware in front of the whole server (:func:`serve`; what is open is listed in docs/app.md).

    * ``/docs``, ``/redoc``, ``/openapi.json``: off (404), FastAPI's and the mounted Gradio app's own; the
      API is described at ``/gradio_api/info``, behind the login when there is one.
    * with a login (``login=True``, ``--auth``): every other route answers 401 without a valid session
      cookie, except ``/health`` and what the login page itself loads. Gradio checks the login route by
      route and leaves some open (``/gradio_api/reset``, ``/cancel``, ``/heartbeat``, ``/stream``, ...);
      here nothing is open unless listed. The cookie is checked as Gradio's own ``login_check`` does
      (``access-token[-unsecure]-<cookie_id>`` in the Gradio app's ``tokens``)."""

    OFF = ("/docs", "/redoc", "/openapi.json")
    OPEN = (
        "/health",
        "/",
        "/login",
        "/login/",
        "/logout",
        "/favicon.ico",
        "/robots.txt",
        "/manifest.json",
        "/theme.css",
        "/gradio_api/theme.css",
        "/gradio_api/login_check",
    )
    OPEN_FOLDERS = ("/assets/", "/static/", "/svelte/", "/pwa_icon")  # the page's own files

    def __init__(self, app, *, gradio_app=None, login: bool = False):
        self.app = app
        self.gradio_app = gradio_app
        self.login = login

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path = scope["path"]
        root = scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        if any(path == p or path.startswith(p + "/") for p in self.OFF):
            return await self._refuse(scope, receive, send, 404, {"detail": "Not Found"})
        if self.login and not self._open(path) and not self._logged_in(scope):
            body = {"detail": {"error": "Not authenticated", "auth_message": None}}  # Gradio's own answer
            return await self._refuse(scope, receive, send, 401, body)
        return await self.app(scope, receive, send)

    def _open(self, path: str) -> bool:
        return path in self.OPEN or path.startswith(self.OPEN_FOLDERS)

    def _logged_in(self, scope) -> bool:
        from starlette.requests import HTTPConnection

        cookies = HTTPConnection(scope).cookies
        app = self.gradio_app
        token = cookies.get(f"access-token-{app.cookie_id}") or cookies.get(
            f"access-token-unsecure-{app.cookie_id}"
        )
        return token is not None and app.tokens.get(token) is not None

    @staticmethod
    async def _refuse(scope, receive, send, status: int, body: dict) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        from starlette.responses import JSONResponse

        await JSONResponse(body, status_code=status)(scope, receive, send)


def mounted_gradio_app(app):
    """The Gradio app that ``gr.mount_gradio_app`` mounted into ``app`` (it holds the login tokens)."""
    from starlette.routing import Mount

    return next(r.app for r in app.routes if isinstance(r, Mount))
