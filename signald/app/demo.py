"""The browser demo (``signald serve --demo``): a few fixed files at ``/demo/`` on the WebSocket port.

The page is ``examples/web/`` and the JavaScript client it imports is ``clients/js/signald.js``;
neither is copied by hand. An installed signald (a wheel) carries them in ``signald/_demo/``, put
there by the build (``setup.py``'s ``build_py``); a source checkout (``./dev``, an editable
install) reads them where they live. :func:`load_demo` reads them once, at start-up, so a missing
file stops the daemon at once with one line instead of answering 404 later.

Only the names of :data:`FILES` are served, looked up by the exact request path: ``..``, encoded
dots, other names and directories are 404 (nothing here joins a request path to a directory).
Without ``--demo`` every ``/demo`` path is 404 too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import attrs

from signald.errors import StartupError
from signald.transport.http import HttpRequest, HttpResponse, error_response

PREFIX: Final = "/demo/"
PACKAGED: Final = "_demo"  # signald/_demo/<name> in a wheel

#: Served name -> (where it lives in a source checkout, content type).
FILES: Final[dict[str, tuple[str, str]]] = {
    "index.html": ("examples/web/index.html", "text/html; charset=utf-8"),
    "demo.js": ("examples/web/demo.js", "text/javascript; charset=utf-8"),
    "style.css": ("examples/web/style.css", "text/css; charset=utf-8"),
    "signald.js": ("clients/js/signald.js", "text/javascript; charset=utf-8"),
}

# The page runs its own scripts only; it talks to any signald the user types in (ws:, wss:) and to
# the token URL it is given (?token_url=, maybe the app's own backend), and shows camera and
# microphone streams (blob:/mediastream:).
HEADERS: Final = (
    ("cache-control", "no-cache"),
    ("x-content-type-options", "nosniff"),
    ("content-security-policy", "default-src 'self'; connect-src 'self' ws: wss: http: https:; "
                                "media-src 'self' blob: mediastream:; img-src 'self' data:; frame-ancestors 'none'"),
)


def _read(name: str, in_checkout: str) -> bytes:
    import importlib.resources  # only with --demo: 2-3 ms of every start-up otherwise

    packaged = importlib.resources.files("signald").joinpath(PACKAGED, name)
    if packaged.is_file():
        return packaged.read_bytes()
    checkout = Path(__file__).resolve().parents[2] / in_checkout
    try:
        return checkout.read_bytes()
    except OSError as exc:
        raise StartupError(f"server.demo: the demo file {name} is not installed "
                           f"(not in signald/{PACKAGED}/ nor at {checkout}: {exc.strerror or exc})") from None


@attrs.frozen
class DemoPages:
    """The demo's files, read once; :meth:`answer` serves ``/demo`` paths (off: every one is 404)."""

    files: dict[str, HttpResponse]  # request path -> its response

    async def answer(self, request: HttpRequest) -> HttpResponse:
        if not self.files:
            return error_response("NOT_FOUND", "the demo is off (start signald with --demo)")
        if request.path == PREFIX.rstrip("/"):
            return HttpResponse(308, b"", "text/plain", headers=(("location", PREFIX),))
        response = self.files.get(request.path)
        if response is None:
            return error_response("NOT_FOUND", f"no such demo file: {request.path}")
        if request.method not in ("GET", "HEAD"):
            return HttpResponse(405, b"", "text/plain", headers=(("allow", "GET, HEAD"),))
        return response


def load_demo(enabled: bool) -> DemoPages:
    """The demo's pages, read now; raises :class:`StartupError` naming a file that is missing."""
    if not enabled:
        return DemoPages({})
    files: dict[str, HttpResponse] = {}
    for name, (in_checkout, content_type) in FILES.items():
        response = HttpResponse(200, _read(name, in_checkout), content_type, headers=HEADERS)
        files[PREFIX + name] = response
        if name == "index.html":
            files[PREFIX] = response
    return DemoPages(files)


def is_demo_path(path: str) -> bool:
    return path == PREFIX.rstrip("/") or path.startswith(PREFIX)
