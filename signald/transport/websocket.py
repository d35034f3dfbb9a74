"""signald's server side of RFC 6455, on wsproto: the upgrade handshake, then one connection's frames.

Why not trio-websocket on the server: per connection it runs a reader task beside the handler
task, keeps the HTTP handshake state and a message channel for the connection's whole life, and
writes every frame under a lock with a checkpoint. signald needs less, and idle connections are
what a signalling server holds most of:

- the connection's own task reads (:meth:`ServerWebSocket.receive_message`), answering pings
  and noting when the peer was last heard from;
- every outgoing byte (events, replies, pongs, heartbeat pings) goes through the connection's
  :class:`signald.delivery.fanout.Outbox`, which writes directly when the socket is idle and leaves the
  rest to the connection's writer task, so there is exactly one writer;
- heartbeats are one hub-wide sweep (:mod:`signald.state.heartbeat`), not a task per connection;
- only the close frame is written here, by :meth:`ServerWebSocket.close`, once the writer is gone.

Clients (:mod:`signald.client`, the tests) keep using trio-websocket.

Error handling: a protocol violation by the peer (bad framing, invalid UTF-8, ...) ends the
connection with the close code wsproto names (1002, 1007, ...); a message over the transport cap
with 1009. Neither raises: :meth:`ServerWebSocket.receive_message` returns None and
:attr:`ServerWebSocket.failure` says why.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable

import attrs
import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import FrameDecoder
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from signald.delivery.fanout import DirectWrite, Outbox
from signald.transport.parking import Parking

RECEIVE_BYTES = 16384
PING_FRAME = b"\x89\x00"  # FIN + ping, empty payload, unmasked (server to client)
# The answer to PING_FRAME: FIN + pong, masked, empty payload, then the 4-byte masking key.
PONG_HEAD = b"\x8a\x80"
PONG_SIZE = 6
# A peer whose messages come this close together talks: its reader waits for the next one in Trio
# rather than in signald.transport.parking, until our next heartbeat ping (see ServerWebSocket._read). A
# peer that goes on sending at least every heartbeat_s is never pinged, so it never parks; it
# sends no pongs for parking to take either.
TALKING_S = 1.0
CLOSE_ABNORMAL = 1006
CLOSE_TOO_BIG = 1009


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


class Handshake:
    """The HTTP/1.1 upgrade of one accepted stream (wsproto's :class:`H11Handshake`).

    Resource handling: the handshake state is dropped once :meth:`accept` returns; the caller
    bounds :meth:`read_request` with its connect timeout and closes the stream when refusing.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._h11 = H11Handshake(ConnectionType.SERVER)

    async def read_request(self) -> Upgrade | None:
        """Read until the client's upgrade request.

        None if the stream ended first, or the request was not a WebSocket upgrade (it was
        answered ``400``/``426`` as wsproto suggests).
        """
        while True:
            for event in self._h11.events():
                if isinstance(event, Request):
                    return Upgrade(event.target, tuple(event.extra_headers), tuple(event.subprotocols))
            try:
                data = await _receive(self.stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if not data:
                return None
            try:
                self._h11.receive_data(data)
            except RemoteProtocolError as exc:
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


def direct_writer(stream: trio.abc.Stream) -> DirectWrite | None:
    """A non-blocking ``send`` on the stream's socket, or None where bytes need a task (TLS)."""
    if not isinstance(stream, trio.SocketStream):
        return None
    fileno = stream.socket.fileno

    def write(data: bytes) -> int:
        fd = fileno()
        if fd < 0:
            return 0  # closed
        try:
            return os.write(fd, data)  # trio keeps its sockets non-blocking
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            return 0  # broken: the writer task meets the error and ends the connection

    return write


class ServerWebSocket:
    """One accepted WebSocket: messages in, pongs out through the outbox, a clean close.

    ``heard_at`` (``trio.current_time()`` of the last bytes received) and ``ping_sent_at`` are
    what :class:`signald.state.heartbeat.Heartbeats` looks at; :meth:`send_ping` and ``on_silent``
    are what it calls.
    """

    __slots__ = ("_conn", "_decoder", "_drained", "_events", "_fileno", "_parts", "_peer_close", "_size",
                 "_spoke_at", "_talking", "broken", "failure", "gone", "heard_at", "max_message_bytes",
                 "on_silent", "outbox", "parking", "ping_sent_at", "stream")

    def __init__(self, stream: trio.abc.Stream, conn: Connection, outbox: Outbox, *, max_message_bytes: int) -> None:
        self.stream = stream
        self.outbox = outbox
        self.max_message_bytes = max_message_bytes
        self.heard_at = trio.current_time()
        self.ping_sent_at: float | None = None
        self.on_silent: Callable[[], None] | None = None
        self.failure: tuple[int, str] | None = None  # a close this layer decided (1009, 1002, 1007...)
        self.broken = False  # the TCP stream ended or failed: no close handshake is possible
        self.gone = False  # closed: heartbeats forget it
        self._conn = conn
        self._events: list[Event] = []
        self._parts: list[str | bytes] = []
        self._size = 0
        self._peer_close: CloseConnection | None = None
        # Plain TCP is read with os.read after waiting for readability (see _read); TLS through
        # the stream. The frame decoder is looked at to tell a lone pong or a whole frame from the
        # tail of a frame that wsproto holds the start of.
        self._fileno = stream.socket.fileno if isinstance(stream, trio.SocketStream) else None
        self._drained = True
        self._decoder = frame_decoder(conn)
        self.parking: Parking | None = None  # where the reader waits when idle (the hub's), if anywhere
        self._spoke_at = -math.inf  # when the peer's last message (not a pong) arrived
        self._talking = False  # two messages within TALKING_S since our last ping: don't park

    # ------------------------------------------------------------------ reading

    async def receive_message(self) -> str | bytes | None:
        """The next complete message; None once the connection is ending.

        It ends when the peer sent a close frame, the stream ended or failed (``broken``), or this
        layer decided to close (``failure``: protocol error, message over ``max_message_bytes``).
        """
        events = self._events
        conn = self._conn
        while True:
            while events:
                event = events.pop(0)
                kind = type(event)
                if kind is TextMessage or kind is BytesMessage:
                    assert isinstance(event, (TextMessage, BytesMessage))
                    message = self._add(event.data, event.message_finished)
                    if message is not None:
                        self._spoke()
                        return message
                    if self.failure is not None:
                        return None
                elif kind is Ping:
                    assert isinstance(event, Ping)
                    self.outbox.push_control(conn.send(event.response()))
                elif kind is CloseConnection:
                    assert isinstance(event, CloseConnection)
                    if conn.state is ConnectionState.REMOTE_CLOSING:
                        self._peer_close = event
                    else:  # wsproto's ParseFailed: the peer broke the protocol
                        self.failure = (event.code, event.reason or "protocol error")
                    return None
                # Pong: having heard from the peer is all it is for.
            data = await self._read()
            if not data:
                self.broken = True
                return None
            self.heard_at = trio.current_time()
            if self._is_lone_pong(data):
                continue  # the answer to a heartbeat: having heard from the peer is all it is for
            payload = self._whole_frame(data)
            if payload is not None:
                self._spoke()
                return self._add(payload, True)  # None if it is too big: failure says so
            conn.receive_data(data)
            del data  # not kept alive while waiting for more
            events.extend(conn.events())

    async def _read(self) -> bytes:
        """The next bytes from the peer; ``b""`` once the stream ended, failed or was closed.

        On plain TCP an idle connection (its last read drained the socket) waits for readability
        first instead of trying a read that would fail, and reads with ``os.read``: the pong of an
        idle connection costs one wake-up and one system call. A connection that had more to read
        checkpoints (lets other tasks run, may be cancelled) and reads straight away.
        """
        fileno = self._fileno
        if fileno is None:
            try:
                return await _receive(self.stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return b""
        wait = self._drained
        if not wait:
            await trio.lowlevel.checkpoint()
        while True:
            fd = fileno()
            if fd < 0:
                return b""  # closed by this side
            if wait:
                wait = False
                parking = self.parking
                if parking is None or not parking.available or self._talking:
                    # A peer that talks likely talks on: its next message should wake this task
                    # directly, not the parking task first (one scheduler pass less per message).
                    # After a heartbeat ping (a full interval of silence) the pong wakes it here
                    # once more, and from then on it parks. (No timer or cancel scope: either
                    # costs each wait more than the hop it saves.)
                    await _wait_readable(fd)
                    continue
                try:
                    data = await parking.wait(self, fd)
                except trio.ClosedResourceError:
                    return b""
                if data is None:
                    continue  # readable: read it here
                self._drained = len(data) < RECEIVE_BYTES
                return data
            try:
                data = os.read(fd, RECEIVE_BYTES)
            except (BlockingIOError, InterruptedError):
                wait = True
                continue
            except OSError:
                return b""  # reset by the peer: broken
            self._drained = len(data) < RECEIVE_BYTES
            return data

    def _spoke(self) -> None:
        """A message arrived: a second one within TALKING_S makes the peer one that talks."""
        if self.heard_at - self._spoke_at < TALKING_S:
            self._talking = True
        self._spoke_at = self.heard_at

    def take_pong(self, data: bytes) -> bool:
        """If ``data`` is a lone pong, note that the peer was heard from and say so (for signald.transport.parking)."""
        if self._is_lone_pong(data):
            self.heard_at = trio.current_time()
            return True
        return False

    def _is_lone_pong(self, data: bytes) -> bool:
        """``data`` is exactly the answer to :data:`PING_FRAME`, and starts a frame: no part of one
        is waiting in wsproto's decoder."""
        if len(data) != PONG_SIZE or data[:2] != PONG_HEAD:
            return False
        decoder = self._decoder
        return decoder is not None and decoder.header is None and not len(decoder.buffer) \
            and self._conn.state is ConnectionState.OPEN

    def _whole_frame(self, data: bytes) -> str | bytes | None:
        """The payload if ``data`` is exactly one whole text or binary message, else None.

        That is: one unfragmented, masked frame with a 7- or 16-bit length and no RSV bits (no
        extension is negotiated), starting where no other frame or fragmented message is under
        way, on an open connection; text must be valid UTF-8. This is what a client sends one
        request at a time, and it skips wsproto's frame parser (about four fifths of the cost of
        receiving a small message). Anything else (None) goes through wsproto, which also reports
        every protocol error; the decoder state is checked as for :meth:`_is_lone_pong`.
        """
        size = len(data)
        if size < 6 or self._parts:
            return None
        first, second = data[0], data[1]
        if (first != 0x81 and first != 0x82) or second < 0x80:  # FIN + text/binary, masked
            return None
        n = second & 0x7F
        start = 6
        if n == 126:
            if size < 8:
                return None
            n, start = int.from_bytes(data[2:4], "big"), 8
            if n < 126:  # not the shortest length encoding: wsproto fails the connection
                return None
        elif n == 127:
            return None
        if start + n != size:
            return None
        decoder = self._decoder
        if decoder is None or decoder.header is not None or len(decoder.buffer) \
                or self._conn.state is not ConnectionState.OPEN:
            return None
        key = data[start - 4:start]
        mask = int.from_bytes((key * ((n >> 2) + 1))[:n], "little")
        payload = (int.from_bytes(data[start:], "little") ^ mask).to_bytes(n, "little")
        if first == 0x82:
            return payload
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            return None  # wsproto closes with 1007

    def _add(self, data: str | bytes | bytearray, finished: bool) -> str | bytes | None:
        if isinstance(data, bytearray):
            data = bytes(data)
        if finished and not self._parts:
            if len(data) > self.max_message_bytes:
                self._too_big()
                return None
            return data
        self._size += len(data)
        if self._size > self.max_message_bytes:
            self._too_big()
            return None
        self._parts.append(data)
        if not finished:
            return None
        parts, self._parts, self._size = self._parts, [], 0
        if isinstance(parts[0], str):
            return "".join(parts)  # type: ignore[arg-type]
        return b"".join(parts)  # type: ignore[arg-type]

    def _too_big(self) -> None:
        self._parts, self._size = [], 0
        self.failure = (CLOSE_TOO_BIG, f"message over {self.max_message_bytes} bytes")

    # ------------------------------------------------------------------ heartbeats

    def send_ping(self) -> None:
        """Ping the peer, silent for a heartbeat interval: its reader parks from the pong on."""
        self.outbox.push_control(PING_FRAME)
        self._talking = False

    def silent(self) -> None:
        if self.on_silent is not None:
            self.on_silent()

    # ------------------------------------------------------------------ closing

    async def close(self, code: int, reason: str) -> None:
        """Finish the connection: a close frame, the peer's close reply if we spoke first, the TCP close.

        The reply to a peer's close echoes its code; a ``failure`` of this layer wins over
        ``code``. Call it once the connection's writer has stopped; bound it with a cancel scope.

        Resource handling: the stream is always closed on the way out, forcefully when a frame
        was cut in the middle (a close frame then would be garbage) or the wait is cancelled.
        """
        self.gone = True
        try:
            if self.broken or self.outbox.mid_frame:
                return
            conn = self._conn
            if conn.state is ConnectionState.REMOTE_CLOSING:
                await self.stream.send_all(conn.send(CloseConnection(code=self._peer_close_code())))
                return  # RFC 6455 7.1.1: the server closes TCP right after the closing handshake
            if conn.state is not ConnectionState.OPEN:
                return
            if self.failure is not None:
                code, reason = self.failure
            await self.stream.send_all(conn.send(CloseConnection(code=code, reason=_short(reason))))
            await self._await_close_reply()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(self.stream)

    def _peer_close_code(self) -> int:
        """The code to echo: the peer's close may still wait in ``_events`` if the reader was cancelled."""
        closes = [self._peer_close] + [e for e in self._events if isinstance(e, CloseConnection)]
        for event in closes:
            if event is not None:
                return event.response().code
        return 1000

    async def _await_close_reply(self) -> None:
        conn = self._conn
        self._events.clear()
        while conn.state is not ConnectionState.CLOSED:
            data = await _receive(self.stream)
            if not data:
                return
            conn.receive_data(data)
            if any(isinstance(event, CloseConnection) for event in conn.events()):
                return


async def _wait_readable(fd: int) -> None:
    with contextlib.suppress(trio.ClosedResourceError):  # closed meanwhile: the next read sees fd -1
        await trio.lowlevel.wait_readable(fd)


def frame_decoder(conn: Connection) -> FrameDecoder | None:
    """wsproto's frame decoder inside ``conn`` (its ``header`` and ``buffer``), or None if it moved.

    Only the fast paths of :class:`ServerWebSocket` (a lone pong, a whole message in one read) use
    it; without it everything goes through wsproto. tests/test_websocket.py fails if a wsproto
    release moves it.
    """
    decoder = getattr(getattr(conn, "_proto", None), "_frame_decoder", None)
    if isinstance(decoder, FrameDecoder) and hasattr(decoder, "header") and hasattr(decoder, "buffer"):
        return decoder
    return None


async def _receive(stream: trio.abc.Stream) -> bytes:
    data = await stream.receive_some(RECEIVE_BYTES)
    return data if isinstance(data, bytes) else bytes(data)


def _short(reason: str) -> str:
    """A close reason fits in 123 bytes of UTF-8 (RFC 6455 5.5: control frames carry at most 125)."""
    encoded = reason.encode("utf-8")
    return reason if len(encoded) <= 123 else encoded[:123].decode("utf-8", "ignore")
