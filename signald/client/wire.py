"""What both adapters put on and take off the wire: subprotocol, frame codec, URL, token header.

Pure (msgspec only): no socket, no event loop.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import msgspec

from signald.client.view import Msg
from signald.protocol import SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK

TokenSource = Callable[[], str | Awaitable[str]]
OPEN_TIMEOUT_S = 10.0  # a TCP connection whose WebSocket upgrade gets no answer: give up, reconnect
WELCOME_TIMEOUT_S = 10.0  # a server that accepted the socket but sends no welcome: give up, reconnect
CLOSE_TIMEOUT_S = 2.0  # a closing handshake the server does not answer: drop the connection after this


def subprotocol(binary: bool) -> str:
    return SUBPROTOCOL_MSGPACK if binary else SUBPROTOCOL_JSON


def encode(message: Msg, binary: bool) -> str | bytes:
    if binary:
        return msgspec.msgpack.encode(message)
    return msgspec.json.encode(message).decode()


def decode(frame: str | bytes) -> Msg:
    """One frame as a dict; MessagePack when binary (on a JSON connection binary frames are not sent)."""
    value = msgspec.msgpack.decode(frame) if isinstance(frame, bytes) else msgspec.json.decode(frame)
    if not isinstance(value, dict):
        raise ValueError(f"a frame that is not an object: {value!r}")
    return value


def url_with_user(url: str, user: str | None) -> str:
    if user is None:
        return url
    return url + ("&" if "?" in url else "?") + urlencode({"user": user})


def auth_headers(token: str | None) -> list[tuple[str, str]]:
    """The token goes in ``Authorization`` (never in the URL, where proxies log it)."""
    return [] if not token else [("Authorization", f"Bearer {token}")]


def retry_after(headers: Any) -> float | None:
    """The ``Retry-After`` seconds of a refused handshake's headers (pairs of str or bytes), if any."""
    for name, value in headers or ():
        name = name.decode() if isinstance(name, bytes) else str(name)
        if name.lower() == "retry-after":
            try:
                return float(value.decode() if isinstance(value, bytes) else value)
            except ValueError:
                return None
    return None


async def fetch_token(get_token: TokenSource) -> str:
    """Call the program's ``get_token`` (plain or async) and return the token."""
    token = get_token()
    if inspect.isawaitable(token):
        token = await token
    if not isinstance(token, str) or not token:
        raise ValueError(f"get_token returned {token!r}, not a token")
    return token


def refusal_retry_after(first: Msg) -> float | None:
    """``retry_after_s`` of the one ``error`` frame a refused connection gets instead of ``welcome``
    (``server.refusals = "close"``: then the server closes with 4401, 4403 or 4429)."""
    value = (first.get("data") or {}).get("retry_after_s")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
