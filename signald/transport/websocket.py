"""signald's server side of RFC 6455 after the handshake: one connection's messages, on wsproto.

Why not trio-websocket on the server: per connection it runs a reader task beside the handler
task, keeps the HTTP handshake state and a message channel for the connection's whole life, and
writes every frame under a lock with a checkpoint. signald needs less, and idle connections are
what a signalling server holds most of:

- the connection's own task reads (:meth:`ServerWebSocket.receive_message`), answering pings
  and noting when the peer was last heard from; the whole messages a read starts with, a lone pong
  or a plain close frame skip wsproto (:mod:`signald.transport.framing`);
- every outgoing byte (events, replies, pongs, heartbeat pings) goes through the connection's
  :class:`signald.delivery.outbox.Outbox`, which writes directly when the socket is idle and leaves
  the rest to the connection's writer task (:mod:`signald.transport.connection`), so there is exactly
  one writer;
- heartbeats are one hub-wide sweep (:mod:`signald.state.heartbeat`), not a task per connection;
- only the close frame is written by the connection itself, and how it closes is the business of
  its base class, :class:`signald.transport.closing.ClosableWebSocket`.

The handshake is :mod:`signald.transport.handshake`; clients (the tests) keep using trio-websocket.

Names: a *message* is what the peer sent (text or bytes, maybe in several frames); a *ws_frame* is one
RFC 6455 frame; *wire* is bytes as they travel (a ``delivery.frames.Frame`` is an outbound message).

Error handling: a protocol violation by the peer (bad framing, invalid UTF-8, ...) ends the
connection with the close code wsproto names (1002, 1007, ...); a message over the transport cap
with 1009; a message in more than :data:`MAX_FRAGMENTS` frames, or pings and pongs sent too fast
(the session's FloodGuard, ``flood``, counts them), with 1008. None of them raises:
:meth:`ServerWebSocket.receive_message` returns None and :attr:`ServerWebSocket.failure` says why.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable
from typing import Final

import trio
from wsproto.connection import Connection, ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from signald.delivery.outbox import Outbox
from signald.state.ratelimit import FloodGuard, Verdict
from signald.transport.closing import ClosableWebSocket
from signald.transport.framing import PING_FRAME, is_lone_pong, leading_messages, lone_close
from signald.transport.handshake import RECEIVE_BYTES, receive_bytes
from signald.transport.parking import Parking, wait_readable

# A peer whose messages come this close together talks: its reader waits for the next one in Trio rather
# than in signald.transport.parking, until our next heartbeat ping (see ServerWebSocket._read). A peer
# that goes on sending at least every heartbeat_s is never pinged: it never parks, sends no pongs.
TALKING_S: Final = 1.0
CLOSE_POLICY: Final = 1008
CLOSE_TOO_BIG: Final = 1009
MAX_FRAGMENTS: Final = 64  # frames one message may come in; more closes with 1008


class ServerWebSocket(ClosableWebSocket):
    """One accepted WebSocket: messages in, pongs out through the outbox, a clean close (the base class's).

    ``heard_at`` (``trio.current_time()`` of the last bytes received) and ``ping_sent_at`` are
    what :class:`signald.state.heartbeat.Heartbeats` looks at; :meth:`send_ping` and ``on_silent``
    are what it calls.
    """

    __slots__ = ("_drained", "_fileno", "_fragments", "_parts", "_queued", "_size", "_spoke_at",
                 "_talking", "flood", "heard_at", "max_message_bytes", "on_silent", "parking", "ping_sent_at")

    def __init__(self, stream: trio.abc.Stream, conn: Connection, outbox: Outbox, *, max_message_bytes: int) -> None:
        super().__init__(stream, conn, outbox)
        self.max_message_bytes = max_message_bytes
        self.heard_at = trio.current_time()
        self.ping_sent_at: float | None = None
        self.on_silent: Callable[[], None] | None = None
        self._parts: list[str | bytes] = []
        self._size = 0
        self._fragments = 0  # frames of the message under way so far
        # Whole messages of the last read parsed ahead of wsproto (framing.leading_messages): handled
        # before the events wsproto makes of the rest of that read.
        self._queued: deque[str | bytes] = deque()
        # Counts every frame the peer sends besides whole messages (those are counted where they are
        # handled): pings and pongs are checked, fragments charged (signald.state.ratelimit).
        self.flood: FloodGuard | None = None
        # Plain TCP is read with os.read after waiting for readability (see _read); TLS through
        # the stream. wsproto's frame decoder is looked at to tell a lone pong or a whole message
        # from the tail of a ws_frame that wsproto holds the start of.
        self._fileno = self._socket.fileno if self._socket is not None else None
        self._drained = True
        self.parking: Parking | None = None  # where the reader waits when idle (the hub's), if anywhere
        self._spoke_at = -math.inf  # when the peer's last message (not a pong) arrived
        self._talking = False  # two messages within TALKING_S since our last ping: don't park

    # ------------------------------------------------------------------ reading

    async def receive_message(self) -> str | bytes | None:
        """The next complete message; None once the connection is ending.

        It ends when the peer sent a close frame, the stream ended or failed (``broken``), or this
        layer decided to close (``failure``: protocol error, message over ``max_message_bytes``).
        """
        # What is left of the last read is parsed knowing that our close frame went out (send_close_now
        # while a message of it was being handled): wsproto is told of the frame first.
        conn = self._conn if self._untold is None else self._wsproto()
        while True:
            queued = self._queued
            while queued:
                ahead = queued.popleft()
                if conn.state is ConnectionState.OPEN:  # else sent after our close frame: not handled
                    self._spoke()
                    return self._add(ahead, True)  # None if it is too big: failure says so
            for event in self._events:
                kind = type(event)
                if kind is TextMessage or kind is BytesMessage:
                    assert isinstance(event, (TextMessage, BytesMessage))
                    if conn.state is not ConnectionState.OPEN:  # sent after our close frame: not handled
                        continue
                    message = self._add(event.data, event.message_finished, event.frame_finished)
                    if message is not None:
                        self._spoke()
                        return message
                    if self.failure is not None:
                        return None
                elif kind is Ping:
                    assert isinstance(event, Ping)
                    verdict = self._check_control()
                    if verdict is Verdict.CLOSE:
                        return None
                    # No pong when limited, nor after the peer's close (a ping right before it).
                    if verdict is Verdict.ALLOW and conn.state is ConnectionState.OPEN:
                        self.outbox.push_pong(conn.send(event.response()))
                elif kind is CloseConnection:
                    assert isinstance(event, CloseConnection)
                    if conn.state is ConnectionState.REMOTE_CLOSING:
                        self._peer_close = event
                    elif conn.state is not ConnectionState.CLOSED:  # CLOSED: our close answered; else ParseFailed
                        self.failure = (event.code, event.reason or "protocol error")
                    return None
                elif self._check_control() is Verdict.CLOSE:  # a Pong: having heard from the peer is all
                    return None  # it is for, but it is a frame like any other
            wire = await self._read()
            if not wire:
                self.broken = True
                return None
            self.heard_at = trio.current_time()
            decoder = self._decoder
            # wire starts a ws_frame (none is half received): the fast paths may look at it
            # (self._at_frame_start(), inlined: a method call is a few % of a small message's read)
            starts = decoder is not None and decoder.header is None and not len(decoder.buffer)
            if self._closing:  # our close frame went out (send_close_now): its reply is all we wait for
                if starts and lone_close(wire) is not None:
                    self._answered = True  # the handshake is done
                    return None
                conn = self._wsproto()  # told of our close frame, if it was not, before it parses what follows it
            elif starts and conn.state is ConnectionState.OPEN:
                if is_lone_pong(wire):  # the answer to a heartbeat: having heard from the peer is all it is for
                    if self._check_control() is Verdict.CLOSE:
                        return None
                    continue
                if not self._parts:  # no fragmented message under way
                    messages, end = leading_messages(wire)
                    if messages:
                        if end == len(wire) and len(messages) == 1:  # the usual read: one request
                            self._spoke()
                            return self._add(messages[0], True)  # None if it is too big: failure says so
                        self._queued.extend(messages)
                        wire = wire[end:]  # starts a ws_frame: wsproto parses it after the queued messages
                        if not wire:
                            continue
                    else:
                        code = lone_close(wire)
                        if code is not None:  # the peer leaves: close_now answers, wsproto is told only if needed
                            self._fast_close = (wire, code)
                            return None
            conn.receive_data(wire)
            del wire  # not kept alive while waiting for more
            self._events = conn.events()

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
                return await receive_bytes(self.stream)
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
                    await wait_readable(fd)
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

    def take_pong(self, wire: bytes) -> bool:
        """If ``wire`` is a lone pong, note that the peer was heard from and say so (for signald.transport.parking)."""
        if is_lone_pong(wire) and self._at_frame_start() and self._conn.state is ConnectionState.OPEN \
                and not self._closing:
            self.heard_at = trio.current_time()
            return True
        return False

    def _check_control(self) -> Verdict:
        """Count a ping or pong: ``LIMITED`` (not answered) or ``CLOSE`` (``failure`` set) when sent too fast."""
        flood = self.flood
        if flood is None:
            return Verdict.ALLOW
        verdict = flood.check(self.heard_at)
        if verdict is Verdict.CLOSE:
            self.failure = (CLOSE_POLICY, "rate limit exceeded repeatedly")
        return verdict

    def _add(self, data: str | bytes | bytearray, finished: bool, frame_done: bool = True) -> str | bytes | None:
        """One piece of a message (``frame_done``: it ends a frame): the message once it is complete, else None.

        A message costs memory in proportion to its bytes, not its frames (empty fragments are
        not kept), at most ``max_message_bytes`` (else 1009) in at most :data:`MAX_FRAGMENTS`
        frames (else 1008); every frame before the last is charged to the rate limiter.
        """
        if isinstance(data, bytearray):
            data = bytes(data)
        if finished and not self._parts:
            if _bytes_of(data) > self.max_message_bytes:
                self._too_big()
                return None
            return data
        self._fragments += frame_done
        if self._fragments > MAX_FRAGMENTS:
            self._parts, self._size, self._fragments = [], 0, 0
            self.failure = (CLOSE_POLICY, f"message in more than {MAX_FRAGMENTS} frames")
            return None
        self._size += _bytes_of(data)
        if self._size > self.max_message_bytes:
            self._too_big()
            return None
        if data or not self._parts:  # the first part says whether it is text or bytes
            self._parts.append(data)
        if not finished:
            if frame_done and self.flood is not None:
                self.flood.charge(self.heard_at)
            return None
        parts, self._parts, self._size, self._fragments = self._parts, [], 0, 0
        if isinstance(parts[0], str):
            return "".join(parts)  # type: ignore[arg-type]
        return b"".join(parts)  # type: ignore[arg-type]

    def _too_big(self) -> None:
        self._parts, self._size, self._fragments = [], 0, 0
        self.failure = (CLOSE_TOO_BIG, f"message over {self.max_message_bytes} bytes")

    # ------------------------------------------------------------------ heartbeats

    def send_ping(self) -> None:
        """Ping the peer, silent for a heartbeat interval: its reader parks from the pong on."""
        self.outbox.push_control(PING_FRAME)
        self._talking = False

    def silent(self) -> None:
        if self.on_silent is not None:
            self.on_silent()


def _bytes_of(data: str | bytes) -> int:
    """The size of ``data`` on the wire: text counts its UTF-8 bytes (``isascii`` is O(1) in CPython:
    only text that is not ASCII is encoded to count them)."""
    if isinstance(data, str) and not data.isascii():
        return len(data.encode("utf-8"))
    return len(data)
