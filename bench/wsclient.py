"""The load client: one lean asyncio WebSocket client that speaks all three servers' dialects.

Why not each server's own client library: at 500 members a run delivers hundreds of thousands of
frames per second to the client process, and a full client (python-socketio's, trio-websocket,
websockets) spends more CPU per frame than the servers under test do; the client core would be
the bottleneck and every server would look alike. This client

- writes the HTTP upgrade by hand, offers no extension (no permessage-deflate, for every server)
  and does not verify ``Sec-WebSocket-Accept``;
- masks its frames with the all-zero key (legal on the wire: servers unmask with XOR; it makes
  masking free);
- parses frame headers only, counts fan-out events by their prefix (``{"type":"chat.message"``
  or socket.io's ``42["chat"``) without decoding them, and decodes nothing but the op id of
  replies;
- answers WebSocket pings (signald, websockets) and engine.io pings (``2`` → ``3``) so idle
  connections stay up through heartbeats;
- runs on uvloop when installed (the ``bench`` extra has it), which roughly halves the client's
  own per-frame cost. The servers under test keep their defaults (asyncio's loop, Trio).

socket.io is spoken as raw engine.io v4 frames over the WebSocket transport
(``/socket.io/?EIO=4&transport=websocket``): ``0{...}`` open → client ``40`` → ``40{"sid"}``
(counted as the welcome), events ``42["chat",{...}]``, acked emits ``42<id>[...]`` → ``43<id>[...]``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar, cast

ZERO_MASK: Final = b"\x00\x00\x00\x00"
T = TypeVar("T")


class ServerError(Exception):
    """The server answered a request with an error frame."""


class Dialect:
    """How one server family spells join, send, replies and events (all as bytes)."""

    name = "base"
    subprotocol: str | None = None
    welcome_prefix = b""
    event_prefix = b""

    def path(self, user: str) -> str:
        raise NotImplementedError

    def join(self, op_id: int, room: str) -> bytes:
        raise NotImplementedError

    def send(self, op_id: int, room: str, body: str) -> bytes:
        raise NotImplementedError

    def reply_id(self, payload: bytes) -> tuple[int, bool] | None:
        """``(op_id, ok)`` if ``payload`` is a reply to a request, else None."""
        raise NotImplementedError

    def control(self, conn: Conn, payload: bytes) -> None:
        """A frame that is neither reply nor counted event (presence, room events, engine.io)."""


class EnvelopeDialect(Dialect):
    """signald's envelope (also spoken by the bench's ``websockets`` server)."""

    name = "envelope"
    welcome_prefix = b'{"type":"welcome"'
    event_prefix = b'{"type":"chat.message"'
    _ack = b'{"type":"ack","data":{"op_id":'
    _error = b'{"type":"error","data":{"op_id":'

    def __init__(self, subprotocol: str | None = None) -> None:
        self.subprotocol = subprotocol

    def path(self, user: str) -> str:
        return f"/?user={user}"

    def join(self, op_id: int, room: str) -> bytes:
        return b'{"type":"room.join","id":%d,"data":{"room":"%s"}}' % (op_id, room.encode())

    def send(self, op_id: int, room: str, body: str) -> bytes:
        return b'{"type":"chat.send","id":%d,"data":{"scope":"%s","body":"%s"}}' % (
            op_id, room.encode(), body.encode())

    def reply_id(self, payload: bytes) -> tuple[int, bool] | None:
        if payload.startswith(self._ack):
            start, ok = len(self._ack), True
        elif payload.startswith(self._error):
            start, ok = len(self._error), False
        else:
            return None
        end = start
        while end < len(payload) and payload[end] in b"0123456789":
            end += 1
        return (int(payload[start:end]), ok) if end > start else None


class SocketIODialect(Dialect):
    """python-socketio over raw engine.io v4 WebSocket frames."""

    name = "socketio"
    welcome_prefix = b"40"
    event_prefix = b'42["chat"'

    def path(self, user: str) -> str:
        return f"/socket.io/?EIO=4&transport=websocket&user={user}"

    def join(self, op_id: int, room: str) -> bytes:
        return b'42%d["join","%s"]' % (op_id, room.encode())

    def send(self, op_id: int, room: str, body: str) -> bytes:
        return b'42%d["chat",{"room":"%s","body":"%s"}]' % (op_id, room.encode(), body.encode())

    def reply_id(self, payload: bytes) -> tuple[int, bool] | None:
        if not payload.startswith(b"43"):
            return None
        end = 2
        while end < len(payload) and payload[end] in b"0123456789":
            end += 1
        return int(payload[2:end]), True

    def control(self, conn: Conn, payload: bytes) -> None:
        if payload == b"2":  # engine.io ping
            conn.send_raw(b"3")
        elif payload.startswith(b"0{"):  # engine.io open: connect to the default namespace
            conn.send_raw(b"40")


DIALECTS: dict[str, Dialect] = {
    "signald": EnvelopeDialect("signald.v1"),
    "websockets": EnvelopeDialect(None),
    "socketio": SocketIODialect(),
}


class Stats:
    """Counters shared by all connections of one load client."""

    __slots__ = ("closed", "done", "errors", "events", "frames", "target")

    def __init__(self) -> None:
        self.frames = 0  # every data frame received
        self.events = 0  # fan-out events received (the dialect's event_prefix)
        self.errors = 0  # error replies
        self.closed = 0  # connections lost
        self.target = -1
        self.done = asyncio.Event()

    def expect(self, events: int) -> None:
        """Reset the event counter; ``done`` is set when ``events`` more have arrived."""
        self.events = 0
        self.target = events
        self.done = asyncio.Event()
        if events <= 0:
            self.done.set()


def _retrieve(fut: asyncio.Future[float]) -> None:
    """Mark a failed ``ready`` as seen (its waiter may have timed out already)."""
    if not fut.cancelled():
        fut.exception()


def _frame(payload: bytes, opcode: int = 1) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, 0x80 | n)) + ZERO_MASK + payload
    if n < 65536:
        return bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big") + ZERO_MASK + payload
    return bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big") + ZERO_MASK + payload


class Conn(asyncio.Protocol):
    """One client WebSocket connection (asyncio protocol, no task of its own)."""

    def __init__(self, dialect: Dialect, stats: Stats, host: str, path: str) -> None:
        self.dialect = dialect
        self.stats = stats
        self.host = host
        self.path = path
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.upgraded = False
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[float] = loop.create_future()  # welcome received (perf_counter)
        self.ready.add_done_callback(_retrieve)
        self.pending: dict[int, asyncio.Future[bytes]] = {}
        self.next_id = 1
        self._loop = loop
        # Called with each counted event's payload when set (the reconnect storm reads its ``rev``).
        self.on_event: Callable[[bytes], None] | None = None
        self.on_lost: Callable[[Conn], None] | None = None  # called once the connection is gone
        self.close_code: int | None = None  # from the server's close frame
        self.http_status: int | None = None  # of a refused handshake

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        key = base64.b64encode(os.urandom(16)).decode()
        transport = self.transport
        lines = [
            f"GET {self.path} HTTP/1.1", f"Host: {self.host}", "Upgrade: websocket", "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
        ]
        if self.dialect.subprotocol:
            lines.append(f"Sec-WebSocket-Protocol: {self.dialect.subprotocol}")
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.closed += 1
        if self.on_lost is not None:
            self.on_lost(self)
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost before welcome: {exc}"))
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("connection lost"))
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.upgraded:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                status = buf[:head_end].split(b"\r\n", 1)[0].decode("latin-1")
                with contextlib.suppress(ValueError, IndexError):
                    self.http_status = int(status.split()[1])
                if not self.ready.done():
                    self.ready.set_exception(ConnectionError(f"handshake refused: {status}"))
                assert self.transport is not None
                self.transport.abort()
                return
            self.upgraded = True
            buf = buf[head_end + 4:]
        pos, n = 0, len(buf)
        stats = self.stats
        dialect = self.dialect
        event_prefix = dialect.event_prefix
        while n - pos >= 2:
            b0, length = buf[pos], buf[pos + 1] & 0x7F
            header = 2
            if length == 126:
                if n - pos < 4:
                    break
                length, header = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, header = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            start = pos + header
            end = start + length
            if end > n:
                break
            opcode = b0 & 0x0F
            if opcode == 1 or opcode == 2:
                stats.frames += 1
                if buf.startswith(event_prefix, start):
                    stats.events += 1
                    if stats.events == stats.target:
                        stats.done.set()
                    if self.on_event is not None:
                        self.on_event(buf[start:end])
                else:
                    self._other(buf[start:end])
            elif opcode == 9:  # ping
                self._write(_frame(buf[start:end], 0xA))
            elif opcode == 8:  # close: echo it; the server closes the TCP connection (RFC 6455 7.1.1)
                if end - start >= 2:
                    self.close_code = int.from_bytes(buf[start:start + 2], "big")
                self._write(_frame(buf[start:start + 2], 0x8))
            pos = end
        self.buf = buf[pos:]

    # ------------------------------------------------------------------ frames

    def _other(self, payload: bytes) -> None:
        if not self.ready.done():
            if payload.startswith(self.dialect.welcome_prefix):
                self.ready.set_result(time.perf_counter())
                return
            self.dialect.control(self, payload)
            return
        reply = self.dialect.reply_id(payload)
        if reply is None:
            self.dialect.control(self, payload)
            return
        op_id, ok = reply
        fut = self.pending.pop(op_id, None)
        if not ok:
            self.stats.errors += 1
        if fut is not None and not fut.done():
            if ok:
                fut.set_result(payload)
            else:
                fut.set_exception(ServerError(payload[:300].decode("utf-8", "replace")))

    def _write(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def send_raw(self, payload: bytes) -> None:
        """Send one text frame."""
        self._write(_frame(payload))

    def request(self, make: Callable[[int], bytes]) -> asyncio.Future[bytes]:
        """Send ``make(op_id)``; the future resolves with the reply's payload (raises on an error reply)."""
        op_id = self.next_id
        self.next_id += 1
        fut: asyncio.Future[bytes] = self._loop.create_future()
        self.pending[op_id] = fut
        self.send_raw(make(op_id))
        return fut

    def join(self, room: str) -> asyncio.Future[bytes]:
        return self.request(lambda op_id: self.dialect.join(op_id, room))

    def chat(self, room: str, body: str) -> asyncio.Future[bytes]:
        return self.request(lambda op_id: self.dialect.send(op_id, room, body))

    def close(self, code: int = 1000) -> asyncio.Future[None]:
        """Start a clean close (our close frame, the server's reply, its TCP close); the future
        resolves once the connection is gone."""
        gone: asyncio.Future[None] = self._loop.create_future()
        self.on_lost = lambda _c: gone.done() or gone.set_result(None)
        if self.transport is None or self.transport.is_closing():
            gone.set_result(None)
        else:
            self._write(_frame(code.to_bytes(2, "big"), 0x8))
        return gone

    def abort(self) -> None:
        """Drop the connection at once (RST: no TIME_WAIT left behind on either side)."""
        if self.transport is not None:
            self.transport.abort()


async def connect(
    dialect: Dialect, host: str, port: int, user: str, stats: Stats,
    *, local_host: str | None = None, timeout_s: float = 30.0,
) -> Conn:
    """Open a connection and wait for the welcome (socket.io: the namespace ``40`` reply)."""
    loop = asyncio.get_running_loop()
    _, conn = await asyncio.wait_for(loop.create_connection(
        lambda: Conn(dialect, stats, f"{host}:{port}", dialect.path(user)), host, port,
        local_addr=(local_host, 0) if local_host else None,
    ), timeout_s)
    try:
        await asyncio.wait_for(asyncio.shield(conn.ready), timeout_s)
    except BaseException:
        conn.abort()
        raise
    return conn


async def connect_many(
    dialect: Dialect, host: str, port: int, users: list[str], stats: Stats,
    *, concurrency: int = 100, local_hosts: list[str] | None = None, timeout_s: float = 30.0,
    rooms: list[str] | None = None,
) -> tuple[list[Conn], int]:
    """Connect ``users`` (``concurrency`` handshakes in flight), optionally joining ``rooms[i]``.

    Returns the connections that made it and the number that failed.
    """
    conns: list[Conn | None] = [None] * len(users)
    failed = 0
    next_index = 0

    async def worker() -> None:
        nonlocal next_index, failed
        while next_index < len(users):
            i = next_index
            next_index += 1
            src = local_hosts[i % len(local_hosts)] if local_hosts else None
            try:
                conn = await connect(dialect, host, port, users[i], stats, local_host=src, timeout_s=timeout_s)
                if rooms is not None:
                    await asyncio.wait_for(conn.join(rooms[i]), timeout_s)
                conns[i] = conn
            except (OSError, TimeoutError, ServerError):
                failed += 1

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(users)) or 1)))
    return [c for c in conns if c is not None], failed


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when it is installed (a cheaper loop: more headroom for the load
    client), else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def quiet(stats: Stats, *, interval: float = 0.3, limit_s: float = 120.0) -> None:
    """Wait until no frame has arrived for ``interval`` seconds (setup chatter has drained)."""
    deadline = time.monotonic() + limit_s
    last = -1
    while stats.frames != last and time.monotonic() < deadline:
        last = stats.frames
        await asyncio.sleep(interval)
