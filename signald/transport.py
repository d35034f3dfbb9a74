"""Our transport layer under trio-websocket: one writer per connection, direct writes when idle.

Fan-out is the daemon's hot path. trio-websocket's ``send_message`` costs a wsproto encode, a lock,
a checkpoint and a scheduler pass per recipient. Instead, each event is framed once
(:class:`signald.fanout.Frame`), and :meth:`signald.fanout.Outbox.push` writes it straight into the
socket with a non-blocking ``send`` when that connection has nothing queued; only what does not fit
goes through the connection's writer task.

For that to be safe there must be exactly one writer of the connection's bytes. :func:`attach`
replaces the stream trio-websocket writes to with a :class:`RoutedStream`, which queues
trio-websocket's own frames (pongs, pings, the close frame) in order behind ours.

These are trio-websocket internals (``WebSocketConnection._stream``), so trio-websocket is pinned to
``>=0.12,<0.13``; ``tests/test_transport.py`` fails loudly if they change shape. On TLS
(``trio.SSLStream``) there is no direct write: everything goes through the writer task.
"""

from __future__ import annotations

import os
from typing import Any

import trio
from trio_websocket import WebSocketConnection

from signald.fanout import DirectWrite, Outbox

CLOSE_FRAME_START = b"\x88"  # FIN + opcode 0x8 (close), as wsproto frames it for a server


def direct_writer(stream: trio.abc.Stream) -> DirectWrite | None:
    """A non-blocking ``send`` on the stream's socket, or None where bytes need a task (TLS)."""
    if not isinstance(stream, trio.SocketStream):
        return None
    sock = stream.socket

    def write(data: bytes) -> int:
        fd = sock.fileno()
        if fd < 0:
            return 0  # closed
        try:
            return os.write(fd, data)  # trio keeps its sockets non-blocking
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            return 0  # broken: the writer task meets the error and ends the connection

    return write


class RoutedStream(trio.abc.Stream):
    """What trio-websocket writes to: its bytes join the outbox, in order with our frames."""

    def __init__(self, real: trio.abc.Stream, outbox: Outbox) -> None:
        self.real = real
        self.outbox = outbox
        self.writer_running = False
        self.broken = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.broken:
            raise trio.BrokenResourceError("connection broken")
        if data[:1] == CLOSE_FRAME_START:
            self.outbox.closed = True  # RFC 6455 5.5.1: no data frames after our close frame
        if self.writer_running:
            control = self.outbox.push_control(bytes(data))
            if control is None:
                return
            await control.done.wait()
            if control.written:
                return
            if self.broken:
                raise trio.BrokenResourceError("connection broken")
        await self.real.send_all(data)  # the writer is gone: nobody else writes now

    async def wait_send_all_might_not_block(self) -> None:
        await self.real.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.real.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.real.aclose()

    def __getattr__(self, name: str) -> Any:  # e.g. ``socket``, ``transport_stream``
        return getattr(self.real, name)


def attach(ws: WebSocketConnection, outbox: Outbox) -> RoutedStream:
    """Route every write of ``ws`` through ``outbox``; enable direct writes where possible."""
    real = ws._stream
    if not isinstance(real, trio.abc.Stream) or not hasattr(ws, "_stream_lock"):
        raise RuntimeError("trio-websocket internals changed: WebSocketConnection._stream")
    routed = RoutedStream(real, outbox)
    ws._stream = routed
    outbox.direct_write = direct_writer(real)
    return routed
