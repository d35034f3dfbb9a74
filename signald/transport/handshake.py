"""The HTTP/1.1 upgrade of one accepted stream: the request parsed by h11, vetted by :mod:`signald.transport.upgrade`.

The server reads the client's upgrade request (:meth:`Handshake.read_request`), vets it, then
either refuses it with an HTTP status (:meth:`Handshake.reject`), refuses it where a browser can
see why (:meth:`Handshake.refuse_with_close`: the upgrade, one message, a close code), or answers
``101 Switching Protocols`` (:meth:`Handshake.upgrade`, sent with the first message by
:func:`send_now`), which hands back the wsproto connection that carries the WebSocket frames from
then on (:class:`signald.transport.websocket.ServerWebSocket`).
"""

from __future__ import annotations

import contextlib
import os
import select
from typing import Final

import h11
import trio
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, TextMessage

from signald.delivery.outbox import direct_writer
from signald.transport.framing import close_frame
from signald.transport.http import linger
from signald.transport.upgrade import (
    HEAD_TOO_LARGE,
    MAX_HEAD_BYTES,
    BadUpgrade,
    Upgrade,
    asks_for_websocket,
    head_bytes,
    switching_protocols,
    vet_request,
)

__all__ = ["RECEIVE_BYTES", "REFUSED_READ_BYTES", "Handshake", "Upgrade", "peer_address", "receive_bytes",
           "send_now", "stream_closed"]

RECEIVE_BYTES: Final = 16384
#: What a refused peer may send after the upgrade before its close reply; beyond it we stop waiting.
REFUSED_READ_BYTES: Final = 65536
#: poll(2) events of a socket whose peer closed its end (POLLRDHUP: Linux) or reset it.
_HUNG_UP: Final = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR


def peer_address(stream: trio.abc.Stream) -> str:
    """The client's IP address (the TCP peer, under TLS too), or ``"-"``."""
    inner = getattr(stream, "transport_stream", stream)
    sock = getattr(inner, "socket", None)
    try:
        return str(sock.getpeername()[0]) if sock is not None else "-"
    except OSError:
        return "-"


def stream_closed(stream: trio.abc.Stream) -> bool:
    """Whether ``stream``'s socket was closed by this side already (False when unknown)."""
    inner = getattr(stream, "transport_stream", stream)
    sock = getattr(inner, "socket", None)
    return sock is not None and sock.fileno() < 0


async def receive_bytes(stream: trio.abc.Stream) -> bytes:
    """The next bytes from ``stream`` (at most :data:`RECEIVE_BYTES`); ``b""`` at its end."""
    data = await stream.receive_some(RECEIVE_BYTES)
    return data if isinstance(data, bytes) else bytes(data)


class Handshake:
    """The HTTP/1.1 upgrade of one accepted stream: h11 parses the request, :func:`vet_request` vets it.

    Resource handling: the HTTP state is dropped once :meth:`upgrade` returns; the caller tries
    :meth:`read_now` first, bounds :meth:`read_request` with its connect timeout and closes the
    stream when refusing.

    Error handling: bytes h11 cannot parse, and a request that is not an acceptable upgrade, end
    the reading: with ``keep_plain`` the bytes are kept for the plain-HTTP server, unless the
    request asked for a WebSocket (:func:`asks_for_websocket`); else, and then, they are answered
    with :func:`vet_request`'s status (400 for what h11 refuses, 431 for a head over 16 KiB).
    """

    def __init__(self, stream: trio.abc.Stream, *, keep_plain: bool = False) -> None:
        self.stream = stream
        self._h11 = h11.Connection(h11.SERVER)
        # keep_plain: a request that is not an upgrade is left unanswered, and the bytes read so far
        # kept in ``plain`` for the plain-HTTP server (signald.transport.http) to parse again.
        self._received: bytearray | None = bytearray() if keep_plain else None
        self.plain: bytes | None = None
        self._fed = 0  # bytes given to h11: only a request after more than MAX_HEAD_BYTES is measured
        self._request: Upgrade | None = None  # the upgrade asked for, once all of it arrived
        self._ended = False  # the stream ended, or what it sent is not an upgrade
        self._answer: BadUpgrade | None = None  # the refusal of a bad request, not sent yet
        self.abandoned = False  # the client closed before we read its request (see read_now)

    def read_now(self) -> Upgrade | None:
        """The upgrade request if all of it has arrived already, read without waiting (plain TCP).

        Usually it has (it follows the TCP handshake at once): then no task switch, timeout or
        cancel scope is needed. Else None, and :meth:`read_request` goes on from what was read.
        """
        fd = self.stream.socket.fileno() if isinstance(self.stream, trio.SocketStream) else -1
        if fd < 0:
            return None
        try:
            data = os.read(fd, RECEIVE_BYTES)
        except OSError:  # nothing yet (BlockingIOError), or an error that read_request meets again
            return None
        if not data:
            self._ended = True
            return None
        request = self._feed(data)
        if request is not None and _hung_up(fd):
            # Its client closed after sending it: it gave up waiting in the listen queue (a storm of
            # reconnects fills it), and is trying again on a new connection. Answering would cost a
            # whole session's set-up and tear-down for nobody.
            self._ended = self.abandoned = True
            return None
        return request

    async def read_request(self) -> Upgrade | None:
        """Read until the client's upgrade request.

        None if the stream ended first, or the request was not a WebSocket upgrade: then, with
        ``keep_plain``, :attr:`plain` holds the bytes read, else it was answered ``400``/``426``/``431``
        (:func:`~signald.transport.upgrade.vet_request`), and what the client still sends is read and
        dropped until it closes its end, within the bounds of :func:`~signald.transport.http.linger`.
        """
        while not self._ended:
            if self._request is not None:
                return self._request
            try:
                data = await receive_bytes(self.stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if not data:
                return None
            self._feed(data)
        if self._answer is not None:
            answer, self._answer = self._answer, None
            await self._send(self._response(answer.status, [*answer.headers, (b"content-length", b"0")]))
            await linger(self.stream)  # the client may still be sending: no reset over our answer
        return None

    def _feed(self, data: bytes) -> Upgrade | None:
        """Parse ``data``: the upgrade request once h11 has all of it. Bytes that are not an upgrade
        end the reading (``_ended``), with the bytes kept in ``plain`` (``keep_plain``) or the
        refusal in ``_answer``."""
        if self._received is not None:
            self._received += data
        self._h11.receive_data(data)
        self._fed += len(data)
        event: h11.Request | None = None
        try:
            next_event = self._h11.next_event()  # the request, else NEED_DATA: nothing after it matters
        except h11.RemoteProtocolError as exc:  # not HTTP: the plain-HTTP server (if any) answers it as such
            vetted: Upgrade | BadUpgrade = BadUpgrade(exc.error_status_hint)  # 400, or 431 for a long head
        else:
            if not isinstance(next_event, h11.Request):
                return None
            event = next_event
            # h11 bounds only an incomplete head; one read may have completed a larger one.
            too_large = self._fed > MAX_HEAD_BYTES and head_bytes(event) > MAX_HEAD_BYTES
            vetted = HEAD_TOO_LARGE if too_large else vet_request(event)
        if isinstance(vetted, Upgrade):
            self._request, self._received = vetted, None
            return vetted
        self._ended = True
        # Kept for the plain-HTTP server: bytes that are not HTTP, and requests that never asked for a
        # WebSocket; one that asked but cannot be accepted is answered its status (RFC 6455 4.2.2).
        if self._received is not None and (event is None or not asks_for_websocket(event)):
            self.plain, self._received = bytes(self._received), None
        else:
            self._answer = vetted
        return None

    def _response(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> bytes:
        """A whole HTTP response, as h11 writes it."""
        data = self._h11.send(h11.Response(status_code=status, headers=headers)) or b""
        if body:
            data += self._h11.send(h11.Data(data=body)) or b""
        return data + (self._h11.send(h11.EndOfMessage()) or b"")

    async def reject(
        self, status: int, body: bytes, content_type: bytes = b"text/plain",
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        """Refuse the upgrade with an HTTP status, a short body and any extra ``headers`` (``Retry-After``)."""
        fields = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers]
        await self._send(self._response(status, fields, body))

    async def refuse_with_close(self, subprotocol: str | None, message: str | bytes, code: int, reason: str) -> None:
        """Complete the upgrade, send ``message`` (text or binary) and a close frame with ``code``.

        The three go out in one write; then the peer's close reply is awaited, so that a peer that
        reads gets the message and the code rather than a TCP reset over unread data.

        Resource handling: costs one handshake. Whatever the peer sends before its close reply is
        read and dropped, at most :data:`REFUSED_READ_BYTES` of it; the caller bounds the time (a
        peer that never reads or never replies is left behind when it runs out) and closes the stream.
        """
        data, conn = self.upgrade(subprotocol)
        data += conn.send(TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message))
        # Our close frame, not wsproto's (nothing asks wsproto's state here: the reads below end at
        # the first close event, the peer's reply or a protocol error, whatever state it leaves).
        data += close_frame(code, reason)
        await self._send(data)
        budget = REFUSED_READ_BYTES
        while budget > 0:
            try:
                received = await receive_bytes(self.stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not received:
                return
            budget -= len(received)
            conn.receive_data(received)
            if any(isinstance(event, CloseConnection) for event in conn.events()):  # a protocol error is one too
                return

    def upgrade(self, subprotocol: str | None) -> tuple[bytes, Connection]:
        """The ``101 Switching Protocols`` answer, not sent yet, and the connection that carries the
        frames from then on: the caller sends the answer with its first message in one write
        (:func:`send_now`). ``subprotocol`` must be one the client offered, or None."""
        request = self._request
        assert request is not None, "upgrade() before the request was read"
        if subprotocol is not None and subprotocol not in request.subprotocols:
            raise ValueError(f"subprotocol {subprotocol!r} was not offered")
        del self._h11, self._request  # the HTTP state is not needed any more
        return switching_protocols(request.key, subprotocol), Connection(ConnectionType.SERVER)

    async def _send(self, data: bytes) -> None:
        await send_now(self.stream, data)


def _hung_up(fd: int) -> bool:
    """Whether the peer of socket ``fd`` has closed its end or reset the connection (one poll(2))."""
    poller = select.poll()
    poller.register(fd, _HUNG_UP)
    return bool(poller.poll(0))


async def send_now(stream: trio.abc.Stream, data: bytes) -> None:
    """Write ``data``; a stream that broke or was closed is left for the reader to find.

    On plain TCP the bytes go straight into the socket when they fit (the usual case for a
    handshake's answer): no task switch and no cancel scope, which ``send_all`` costs every time.
    What did not fit, and anything under TLS, is written with ``send_all``.
    """
    write = direct_writer(stream)
    if write is not None:
        written = write(data)
        if written == len(data):
            return
        data = data[written:]
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(data)
