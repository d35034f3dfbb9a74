"""How a server WebSocket closes: the base of :class:`signald.transport.websocket.ServerWebSocket`.

:class:`ClosableWebSocket` holds what a connection needs to end it: the stream, the outbox, wsproto's
connection and what of the closing handshake was done without telling wsproto; it writes our close
frame (``close``, or ``send_close_now`` from any task) and closes TCP (``close_now``, ``close``). The
reader, in the subclass, only records what it read, in the attributes defined here (``_events``,
``_fast_close``, ``_peer_close``, ``_answered``; wsproto's ``_decoder``, asked through
``_at_frame_start`` except on the reader's hot path). Below it, the last reads of a closing connection.

Three steps of the closing handshake are done without wsproto. The peer's close frame, read by the
reader's fast path, and our close frame or close reply, built by
:func:`signald.transport.framing.close_frame` (wsproto's ``send`` costs ~8 µs), wsproto is told of
late, and only when something asks for its state (:meth:`ClosableWebSocket._wsproto`): then it
reads the peer's frame as it came and "sends" ours, building the same bytes again, dropped. The
peer's reply to our close frame, read by a fast path too, it never needs to hear of (``_answered``).
A stopping server's connection whose client answers its close frame plainly closes without wsproto
doing anything.

A connection is never closed with bytes of the peer's unread, nor while the peer may still send,
if ``close`` can help it: the kernel would answer with a TCP reset, which throws away what it had not
delivered yet, our close frame included when the peer is behind on its reads (it then sees 1006,
not our code). A close whose reply does not come in time (and a failed peer's at once) lingers
instead, as HTTP servers do: the rest of our frames, a half-close (TCP FIN), then the peer's bytes
read and dropped until it closes too, within the caller's deadline and :data:`DISCARD_BYTES`.

Resource handling: the reads stop at the end of the stream and read a bounded amount; the caller
bounds their time (``reply_by``, ``linger_until``), and the stream is always closed on the way out
of ``close``.
"""

from __future__ import annotations

import contextlib
import errno
import math
import socket
from collections.abc import Iterator
from typing import Final

import trio
from wsproto.connection import Connection, ConnectionState
from wsproto.events import CloseConnection, Event

from signald.delivery.outbox import Outbox, direct_writer
from signald.transport.framing import close_frame, lone_close
from signald.transport.handshake import receive_bytes
from signald.transport.wsproto_probe import frame_decoder


class ClosableWebSocket:
    """One accepted WebSocket's stream, outbox and wsproto connection, and its clean close.

    ``failure`` is a close the reader decided (1009, 1002, 1007...), ``broken`` says the TCP stream
    ended or failed (no close handshake is possible), ``gone`` that it is closed (heartbeats forget it).
    """

    __slots__ = ("__weakref__", "_answered", "_closing", "_conn", "_decoder", "_events", "_fast_close", "_peer_close",
                 "_socket", "_untold", "broken", "failure", "gone", "outbox", "stream")

    def __init__(self, stream: trio.abc.Stream, conn: Connection, outbox: Outbox) -> None:
        self.stream = stream
        self.outbox = outbox
        self.failure: tuple[int, str] | None = None  # a close this layer decided (1009, 1002, 1007...)
        self.broken = False  # the TCP stream ended or failed: no close handshake is possible
        self.gone = False  # closed: heartbeats forget it
        self._conn = conn
        # wsproto's events, parsed lazily: a read full of tiny frames is parsed only as far as it is
        # used (a connection that is failed after 64 empty fragments does not parse the rest).
        self._events: Iterator[Event] = iter(())
        self._peer_close: CloseConnection | None = None
        # The peer's close frame and its code, read by the fast path and not yet given to wsproto (see _wsproto).
        self._fast_close: tuple[bytes, int] | None = None
        self._answered = False  # our close frame's reply, read by the fast path (wsproto not told): as CLOSED
        # Our close frame (or close reply) went out; built without wsproto, which is told of it (code,
        # reason) only when something needs its state (see _wsproto).
        self._closing = False
        self._untold: tuple[int, str] | None = None
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        # wsproto's frame decoder: a read may be taken by a fast path only when no ws_frame is half received.
        self._decoder = frame_decoder(conn)

    async def close(self, code: int, reason: str, *, reply_by: float = math.inf,
                    linger_until: float | None = None) -> None:
        """Finish the connection: a close frame, the peer's close reply if we spoke first, the TCP close.

        The reply to a peer's close echoes its code; a ``failure`` of this layer wins over
        ``code``, and then what the peer still sends is dropped unparsed, its close reply too. A
        ws_frame the writer left half sent (its tail kept in the outbox) is finished first, so the
        close frame that follows it is well-formed. Call it once the connection's writer has
        stopped, in a shielded scope if the caller may be cancelled.

        The reply is awaited until ``reply_by``. A connection whose close frame went out and was not
        answered by then, or was not all written, then lingers until ``linger_until`` when it is
        given (:meth:`_linger`: the rest of our frames, a half-close, the peer's bytes read and
        dropped until it closes too), so that closing it does not reset it (a TCP reset throws away
        what the peer's kernel had not been given yet: our close frame); without ``linger_until``
        it is closed then. A failed peer's connection always lingers, until ``linger_until``, else
        until the caller's cancel scope ends it.

        Resource handling: the stream is always closed on the way out, forcefully when the stream
        broke or the wait is cancelled.
        """
        self.gone = True
        try:
            if self.broken:
                return
            # what is left if reply_by cuts our part short: a failed peer's bytes are never parsed, even then
            left = _LINGER if self.failure is None else _DISCARD
            with trio.move_on_at(reply_by):
                left = await self._handshake(code, reason)
            if left == _DONE or (left == _LINGER and linger_until is None) or self.broken:
                return
            with trio.move_on_at(math.inf if linger_until is None else linger_until):
                # (the reply still answers our close frame, parsed; a failed peer's bytes are not)
                await self._linger(left == _LINGER and self._wsproto().state is ConnectionState.LOCAL_CLOSING)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:  # a plain socket closes as in SocketStream.aclose, without aclose_forcefully's Cancelled
            if self._socket is None:
                await trio.aclose_forcefully(self.stream)
            else:
                self._socket.close()

    async def _handshake(self, code: int, reason: str) -> int:
        """Our part of the closing handshake; what is left of it: _DONE, _LINGER (our close frame went
        out, or in part, and no reply came), _DISCARD (a failed peer: linger without waiting for more)."""
        unsent = self.outbox.take_unsent()
        conn = self._wsproto()
        if conn.state is ConnectionState.REMOTE_CLOSING:
            await self.send_wire(unsent + self._our_close(self.peer_close_code or 1000, ""))
            return _DONE  # RFC 6455 7.1.1: the server closes TCP right after the closing handshake
        if conn.state is not ConnectionState.OPEN:  # close_now began the reply, or send_close_now our close: the rest
            if unsent:
                await self.send_wire(unsent)
            return _LINGER if conn.state is ConnectionState.LOCAL_CLOSING and not self._answered else _DONE
        if failed := self.failure is not None:
            code, reason = self.failure
        await self.send_wire(unsent + self._our_close(code, reason))
        if failed:  # RFC 6455 7.1.7: process nothing more from a failed peer, not even its close
            return _DISCARD
        self._events = iter(())
        await self._await_close_reply()
        return _DONE

    async def _linger(self, until_reply: bool) -> None:
        """Close our half only (TCP FIN) once all our frames are written, and read what the peer still
        sends until it closes its own, or (``until_reply``) its close frame answers ours: then it has
        all of ours. At most :data:`DISCARD_BYTES` are read; what is not the reply is dropped.

        Closing a socket with bytes of the peer's unread, or receiving some after the close, makes
        the kernel reset the connection, and what it had not delivered of ours (our close frame, if
        the peer is behind on its reads) is lost: the peer sees 1006. Reading meanwhile also keeps a
        peer that writes before it reads from waiting on us. Under TLS there is no half-close: only
        the reads. A peer that sends more than DISCARD_BYTES is given up on at once; the caller bounds
        the time.
        """
        unsent = self.outbox.take_unsent()
        if not unsent:
            self._half_close()
            await self._drain(until_reply)
            return
        async with trio.open_nursery() as nursery:  # (errors are caught in each task: no ExceptionGroup)
            nursery.start_soon(self._finish, unsent, nursery.cancel_scope)
            try:
                over = await self._drain(until_reply)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                over = False
            if not over:  # flooding or reset: no more waiting for our frames to go out
                nursery.cancel_scope.cancel()

    async def _drain(self, until_reply: bool) -> bool:
        """Read until the peer closes or (``until_reply``, within its first :data:`REPLY_PARSE_BYTES`)
        answers our close frame (True), or until :data:`DISCARD_BYTES` are read (False)."""
        left = DISCARD_BYTES
        while left > 0:
            data = await receive_bytes(self.stream)
            if not data or (until_reply and self._answers(data)):
                return True
            left -= len(data)
            until_reply = until_reply and left > DISCARD_BYTES - REPLY_PARSE_BYTES  # then its TCP close ends it
        return False

    async def _finish(self, unsent: bytes, linger: trio.CancelScope) -> None:
        """Write the rest of our frames, then half-close; the linger ends if the stream broke."""
        try:
            await self.send_wire(unsent)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            linger.cancel()
            return
        self._half_close()

    def _half_close(self) -> None:
        """TCP FIN after what we wrote (plain TCP; once)."""
        sock = self._socket
        if sock is not None and not sock.did_shutdown_SHUT_WR:
            with contextlib.suppress(OSError):  # reset by the peer already: the reads say so
                sock.shutdown(socket.SHUT_WR)

    async def send_wire(self, wire: bytes) -> None:
        """Write ``wire`` (whole ws_frames) like ``send_all``, but on plain TCP with the socket's own
        ``send``, knowing what went out: cancelled or failed midway, the unsent tail is kept in the
        outbox (:meth:`~signald.delivery.outbox.Outbox.keep_unsent`), so that what follows (our close
        frame) starts on a frame boundary and a lingering close can finish it. Under TLS a cancelled
        ``send_all`` leaves the stream broken, and it is marked so.

        Error handling: raises :exc:`trio.BrokenResourceError` (failed) or
        :exc:`trio.ClosedResourceError` (closed by this side), as ``send_all`` does.
        """
        sock = self._socket
        if sock is None:
            try:
                await self.stream.send_all(wire)
            except trio.Cancelled:
                self.broken = True  # how much of the ws_frame went out is unknown
                raise
            return
        unsent = memoryview(wire)
        try:
            while unsent:
                unsent = unsent[await sock.send(unsent):]
        except OSError as exc:
            if exc.errno == errno.EBADF:
                raise trio.ClosedResourceError("socket was already closed") from exc
            raise trio.BrokenResourceError from exc
        finally:
            if unsent:
                self.outbox.keep_unsent(bytes(unsent))

    def send_close_now(self, code: int, reason: str) -> bool:
        """Write our close frame of an open plain-TCP connection through its idle outbox, from any task.

        True if it went out: the outbox's writer is stopped (nothing follows the close frame), and the
        connection's reader returns None on the peer's close reply. False, with nothing written, when
        frames are queued or being written, or the connection is not open: then stop the connection
        and close it as usual. A frame the socket takes only in part is finished by ``close``.
        """
        if self._socket is None or self.broken:
            return False
        outbox, write = self.outbox, self.outbox.direct_write
        if (write is None or self._wsproto().state is not ConnectionState.OPEN or outbox.mid_frame
                or outbox.queued_bytes or not outbox.stop_writer()):
            return False
        wire = self._our_close(code, reason)
        sent = write(wire)
        if sent < len(wire):  # the socket is full: the reply may never come, the deadline ends the wait
            outbox.keep_unsent(wire[sent:])
        return True

    def close_now(self) -> bool:
        """Finish at once when nothing needs waiting for (True): on plain TCP, when the stream broke,
        the peer answered our close frame (:meth:`send_close_now`), or the peer closed first and the
        close reply fits into the socket. Else (False) call :meth:`close`, which also sends what did
        not fit. Costs no task switch nor cancel scope."""
        sock, outbox = self._socket, self.outbox
        if sock is None or outbox.mid_frame or outbox.direct_write is not None:  # a writer is still attached
            return False
        # Our close frame, if wsproto was not told of it (OPEN to it), reads here as LOCAL_CLOSING would
        # (neither CLOSED nor REMOTE_CLOSING); a close reply only partly written is mid_frame above.
        conn, fast = self._conn, self._fast_close
        if not (self.broken or self._answered or conn.state is ConnectionState.CLOSED):  # answered: our close frame
            if fast is not None:  # the peer's close, read by the fast path: echoed, wsproto not told of either
                reply = self._our_close(fast[1], "")
            elif conn.state is ConnectionState.REMOTE_CLOSING:
                reply = self._our_close(self.peer_close_code or 1000, "")
            else:
                return False
            write = direct_writer(self.stream)
            sent = write(reply) if write is not None else 0
            if sent < len(reply):  # close() sends the rest (wsproto told of both closes then)
                outbox.keep_unsent(reply[sent:])
                return False
        self.gone = True
        sock.close()
        return True

    @property
    def peer_close_code(self) -> int | None:
        """The code of the peer's close frame (to echo, and for the logs): None if no close frame came,
        1005 if one came without a code. The close may still wait in ``_events`` if the reader was
        cancelled."""
        if self._fast_close is not None:
            return self._fast_close[1]
        closes = [self._peer_close] + [e for e in self._events if isinstance(e, CloseConnection)]
        return next((event.response().code for event in closes if event is not None), None)

    def _our_close(self, code: int, reason: str) -> bytes:
        """Our close frame, built without wsproto (``send`` costs ~8 µs), which is told of it only when
        something asks for its state (:meth:`_wsproto`)."""
        self._closing, self._untold = True, (code, reason)
        return close_frame(code, reason)

    def _at_frame_start(self) -> bool:
        """No ws_frame is half received (wsproto's decoder holds none): the next read starts one, and the
        fast paths may look at it. False when the decoder cannot be looked at (every read goes to wsproto)."""
        decoder = self._decoder
        return decoder is not None and decoder.header is None and not len(decoder.buffer)

    def _wsproto(self) -> Connection:
        """wsproto's connection, told first of what the fast paths did without it: the peer's close frame
        they read, then our close frame they wrote. Its state is then what it would be had it parsed and
        built them itself (REMOTE_CLOSING, LOCAL_CLOSING, CLOSED after both), for whatever looks at it."""
        conn, fast, ours = self._conn, self._fast_close, self._untold
        if fast is not None:
            self._fast_close = None
            conn.receive_data(fast[0])
            for event in conn.events():
                if isinstance(event, CloseConnection):
                    self._peer_close = event
        if ours is not None:
            self._untold = None
            conn.send(CloseConnection(code=ours[0], reason=ours[1]))  # the bytes are those we wrote
        return conn

    async def _await_close_reply(self) -> None:
        """Read until the peer's close frame answers ours (or the stream ends)."""
        while (data := await receive_bytes(self.stream)) and not self._answers(data):
            pass

    def _answers(self, data: bytes) -> bool:
        """Whether ``data``, read after our close frame, holds the peer's close (the handshake is done).

        A plain close frame alone in a read, with no frame half received before it, is taken
        without wsproto, as in the reader; anything else is parsed by wsproto, whose state must be
        LOCAL_CLOSING (our close frame told: see :meth:`_wsproto`).
        """
        if self._at_frame_start() and lone_close(data) is not None:
            self._answered = True
            return True
        conn = self._wsproto()
        conn.receive_data(data)
        return any(isinstance(event, CloseConnection) for event in conn.events())


DISCARD_BYTES: Final = 1 << 20  # what a peer may still send after our close frame before we hang up
# How much of that a lingering close parses for the peer's close reply (wsproto: ~0.5 s a MiB of small frames).
REPLY_PARSE_BYTES: Final = 1 << 16
# What is left of a closing handshake after our part of it (ClosableWebSocket._handshake).
_DONE: Final = 0
_LINGER: Final = 1  # our close frame is out, no reply came: linger if the caller allows it
_DISCARD: Final = 2  # a failed peer: linger at once
