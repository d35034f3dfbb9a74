"""Plain HTTP/1.1 on one stream, on h11: requests that are not WebSocket upgrades.

:func:`serve_http` reads requests (the first from the bytes the WebSocket handshake already read,
see :attr:`signald.transport.handshake.Handshake.plain`), hands each to a handler, and writes its
response; a client that keeps the connection alive may send more requests on it. :class:`Routes`
is the handler that picks a function by path and method. Parsing is h11's, never ours.

Resource handling: a request body is read only up to ``max_body_bytes`` (a larger one is answered
400 ``TOO_LARGE`` and the connection closed, unread); a connection idle for ``idle_timeout_s`` between requests,
or slower than that to send one, is closed. The caller closes the stream.

Error handling: bytes that are not HTTP get 400 and the connection is closed; a handler that
raises is logged and answered 500 ``INTERNAL``; nothing here reaches the listener.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Final
from urllib.parse import parse_qsl, urlsplit

import attrs
import h11
import trio

from signald.errors import ErrorCode
from signald.protocol.serverapi import STATUS_OF, error_body
from signald.transport.upgrade import MAX_HEAD_BYTES, head_bytes

log = logging.getLogger("signald.http")

RECEIVE_BYTES: Final = 16384
#: What a refused client may still send after our answer, and for how long, before we hang up anyway.
LINGER_BYTES: Final = 1 << 20
LINGER_S: Final = 5.0


@attrs.frozen
class HttpRequest:
    """One request: ``path`` without the query, ``query`` decoded (the last of a repeated name wins)."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: tuple[tuple[bytes, bytes], ...]  # lower-cased names
    body: bytes
    peer: str  # the TCP peer; who the client is behind proxies is the handler's business

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (lower case), or None; repeated headers joined with ``,``."""
        key = name.encode()
        values = [v.decode("latin-1") for k, v in self.headers if k == key]
        return ",".join(values) if values else None


@attrs.frozen
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False  # close the connection after this response


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


def error_response(code: ErrorCode, message: str, *, close: bool = False,
                   headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    """``{"error": {"code", "message"}}`` with the code's HTTP status."""
    return HttpResponse(STATUS_OF[code], error_body(code, message), headers=headers, close=close)


class Routes:
    """A handler that dispatches on the exact path, then the method; ``fallback`` gets other paths.

    A known path asked with a method it does not serve answers 405 with ``Allow``; ``HEAD`` is
    served as ``GET`` (h11 leaves the body out).
    """

    def __init__(self, fallback: Handler) -> None:
        self._fallback = fallback
        self._routes: dict[str, dict[str, Handler]] = {}

    def add(self, method: str, path: str, handler: Handler) -> None:
        self._routes.setdefault(path, {})[method] = handler

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        by_method = self._routes.get(request.path)
        if by_method is None:
            return await self._fallback(request)
        handler = by_method.get("GET" if request.method == "HEAD" else request.method)
        if handler is None:
            allow = ", ".join(sorted(by_method))
            return HttpResponse(405, error_body("BAD_REQUEST", f"{request.path} answers {allow} only"),
                                headers=(("allow", allow),))
        return await handler(request)


class _Refused(Exception):
    """The request cannot be served; answer ``response`` and close."""

    def __init__(self, response: HttpResponse) -> None:
        super().__init__(response.status)
        self.response = response


async def serve_http(
    stream: trio.abc.Stream, handler: Handler, *, peer: str, initial: bytes = b"",
    max_body_bytes: int, idle_timeout_s: float,
) -> None:
    """Serve HTTP requests on ``stream`` until the client closes, goes idle, or asks to close."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    if initial:  # b"" would tell h11 the client closed
        conn.receive_data(initial)
    while True:
        try:
            with trio.fail_after(idle_timeout_s):
                request = await _read_request(conn, stream, peer, max_body_bytes)
        except trio.TooSlowError:
            return
        except _Refused as refused:
            await _respond(conn, stream, refused.response, head=False)
            await linger(stream)
            return
        if request is None:
            return
        try:
            response = await handler(request)
        except Exception:
            log.exception("HTTP %s %s from %s failed", request.method, request.path, peer)
            response = error_response("INTERNAL", "internal error")
        await _respond(conn, stream, response, head=request.method == "HEAD")
        if response.close or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            await linger(stream)
            return
        conn.start_next_cycle()


async def linger(stream: trio.abc.Stream) -> None:
    """Before the caller closes ``stream``: half-close it (TCP FIN after our answer; plain TCP only)
    and read and drop what the client still sends until it closes its end, at most
    :data:`LINGER_BYTES` for at most :data:`LINGER_S`, as HTTP servers do (nginx's lingering close).

    Closing with the client's bytes unread (the body after a refused head, a body over the limit)
    makes the kernel reset the connection: a client still writing fails its write, or loses our
    answer before it reads it. :meth:`signald.transport.closing.ClosableWebSocket._linger` does the
    same for a WebSocket, around its outbox and close frames.
    """
    with trio.move_on_after(LINGER_S), contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        if isinstance(stream, trio.abc.HalfCloseableStream):
            await stream.send_eof()
        left = LINGER_BYTES
        while left > 0 and (data := await stream.receive_some(RECEIVE_BYTES)):
            left -= len(data)


async def _receive(conn: h11.Connection, stream: trio.abc.Stream) -> None:
    try:
        data = await stream.receive_some(RECEIVE_BYTES)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        data = b""
    conn.receive_data(bytes(data))


async def _read_request(
    conn: h11.Connection, stream: trio.abc.Stream, peer: str, max_body_bytes: int
) -> HttpRequest | None:
    """The next whole request, None if the client closed; raises :class:`_Refused`."""
    head: h11.Request | None = None
    body = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise _Refused(HttpResponse(exc.error_status_hint, b"bad HTTP request\n", "text/plain", close=True)) \
                from None
        if event is h11.NEED_DATA:
            await _receive(conn, stream)
        elif isinstance(event, h11.Request):
            head = event
            if head_bytes(event) > MAX_HEAD_BYTES:  # h11 bounds only an incomplete head
                raise _Refused(HttpResponse(431, b"request header fields too large\n", "text/plain", close=True))
            length = _content_length(event)
            if length is not None and length > max_body_bytes:
                raise _Refused(error_response("TOO_LARGE", f"the body is over {max_body_bytes} bytes", close=True))
            if conn.they_are_waiting_for_100_continue:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_body_bytes:
                raise _Refused(error_response("TOO_LARGE", f"the body is over {max_body_bytes} bytes", close=True))
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            try:
                target = urlsplit(head.target.decode("latin-1"))
            except ValueError:  # h11 takes any visible characters; "http://[zz]/" is no URL
                raise _Refused(HttpResponse(400, b"bad HTTP request\n", "text/plain", close=True)) from None
            return HttpRequest(
                method=head.method.decode("latin-1").upper(), path=target.path or "/",
                query=dict(parse_qsl(target.query, keep_blank_values=True)),  # ``limt=``: still a name
                headers=tuple((k.lower(), v) for k, v in head.headers), body=bytes(body), peer=peer,
            )
        else:  # ConnectionClosed, or PAUSED after a request we did not finish (never: we always answer)
            return None


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)  # h11 has checked that it is a number
    return None


async def _respond(conn: h11.Connection, stream: trio.abc.Stream, response: HttpResponse, *, head: bool) -> None:
    headers = [("content-type", response.content_type), ("content-length", str(len(response.body))),
               *response.headers]
    if response.close:
        headers.append(("connection", "close"))
    try:
        data = conn.send(h11.Response(status_code=response.status, headers=headers)) or b""
        if response.body and not head:
            data += conn.send(h11.Data(data=response.body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
    except h11.LocalProtocolError:  # the request was too broken to answer in HTTP/1.1 terms
        return
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(data)
