"""The HTTP/1.1 upgrade of one accepted stream, on wsproto's :class:`H11Handshake`.

The server reads the client's upgrade request (:meth:`Handshake.read_request`), vets it, then
either refuses it with an HTTP status (:meth:`Handshake.reject`) or answers ``101 Switching
Protocols`` (:meth:`Handshake.accept`), which hands back the wsproto connection that carries the
WebSocket frames from then on (:class:`signald.transport.websocket.ServerWebSocket`).
"""

from __future__ import annotations

import contextlib
from typing import Final

import attrs
import trio
from wsproto.connection import Connection, ConnectionType
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

RECEIVE_BYTES: Final = 16384


@attrs.frozen
class Upgrade:
    """What the client's upgrade request asked for."""

    path: str
    headers: tuple[tuple[bytes, bytes], ...]  # lower-cased names; Host and Sec-WebSocket-Protocol excluded
    subprotocols: tuple[str, ...]


def peer_address(stream: trio.abc.Stream) -> str:
    """The client's IP address (the TCP peer, under TLS too), or ``"-"``."""
    inner = getattr(stream, "transport_stream", stream)
    sock = getattr(inner, "socket", None)
    try:
        return str(sock.getpeername()[0]) if sock is not None else "-"
    except OSError:
        return "-"


async def receive_bytes(stream: trio.abc.Stream) -> bytes:
    """The next bytes from ``stream`` (at most :data:`RECEIVE_BYTES`); ``b""`` at its end."""
    data = await stream.receive_some(RECEIVE_BYTES)
    return data if isinstance(data, bytes) else bytes(data)


class Handshake:
    """The HTTP/1.1 upgrade of one accepted stream (wsproto's :class:`H11Handshake`).

    Resource handling: the handshake state is dropped once :meth:`accept` returns; the caller
    bounds :meth:`read_request` with its connect timeout and closes the stream when refusing.
    """

    def __init__(self, stream: trio.abc.Stream, *, keep_plain: bool = False) -> None:
        self.stream = stream
        self._h11 = H11Handshake(ConnectionType.SERVER)
        # keep_plain: a request that is not an upgrade is left unanswered, and the bytes read so far
        # kept in ``plain`` for the plain-HTTP server (signald.transport.http) to parse again.
        self._received: bytearray | None = bytearray() if keep_plain else None
        self.plain: bytes | None = None

    async def read_request(self) -> Upgrade | None:
        """Read until the client's upgrade request.

        None if the stream ended first, or the request was not a WebSocket upgrade: then, with
        ``keep_plain``, :attr:`plain` holds the bytes read, else it was answered ``400``/``426`` as
        wsproto suggests.
        """
        while True:
            for event in self._h11.events():
                if isinstance(event, Request):
                    self._received = None
                    return Upgrade(event.target, tuple(event.extra_headers), tuple(event.subprotocols))
            try:
                data = await receive_bytes(self.stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if not data:
                return None
            if self._received is not None:
                self._received += data
            try:
                self._h11.receive_data(data)
            except RemoteProtocolError as exc:
                if self._received is not None:
                    self.plain, self._received = bytes(self._received), None
                    return None
                if isinstance(exc.event_hint, RejectConnection):
                    await self._send(self._h11.send(exc.event_hint))
                return None

    async def reject(self, status: int, body: bytes, content_type: bytes = b"text/plain") -> None:
        """Refuse the upgrade with an HTTP status and a short body."""
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        data = self._h11.send(RejectConnection(status_code=status, headers=headers, has_body=True))
        data += self._h11.send(RejectData(data=body))
        await self._send(data)

    async def accept(self, subprotocol: str | None) -> Connection:
        """Answer ``101 Switching Protocols``; the returned connection carries the frames."""
        await self._send(self._h11.send(AcceptConnection(subprotocol=subprotocol)))
        connection = self._h11.connection
        assert connection is not None
        del self._h11  # the HTTP state is not needed any more
        return connection

    async def _send(self, data: bytes) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.send_all(data)
