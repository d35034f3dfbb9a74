"""The last writes and reads of a WebSocket that is closing (:class:`signald.transport.websocket.ServerWebSocket`).

Resource handling: the reads stop at the end of the stream and read a bounded amount; the caller
bounds their time and closes the stream.
"""

from __future__ import annotations

from typing import Final

import trio
from wsproto.connection import Connection, ConnectionState
from wsproto.events import CloseConnection

from signald.delivery.outbox import Outbox
from signald.transport.framing import fit_close_reason
from signald.transport.handshake import receive_bytes


def close_frame_now(conn: Connection, outbox: Outbox, code: int, reason: str) -> bool:
    """Write the close frame of an open plain-TCP connection through its idle outbox, from any task.

    True if it went out: the outbox's writer is stopped (nothing follows the close frame), and the
    connection's reader returns None on the peer's close reply. False, with nothing written, when
    frames are queued or being written, or the connection is not open: then stop the connection
    and close it as usual. A frame the socket takes only in part is finished by ``close``.
    """
    write = outbox.direct_write
    if (write is None or conn.state is not ConnectionState.OPEN or outbox.mid_frame or outbox.queued_bytes
            or not outbox.stop_writer()):
        return False
    wire = conn.send(CloseConnection(code=code, reason=fit_close_reason(reason)))
    sent = write(wire)
    if sent < len(wire):  # the socket is full: the reply may never come, the deadline ends the wait
        outbox.keep_unsent(wire[sent:])
    return True


DISCARD_BYTES: Final = 1 << 20  # what a failed peer may still send after our close frame before we hang up


async def discard_until_closed(stream: trio.abc.Stream, limit: int = DISCARD_BYTES) -> None:
    """Say we are done (TCP FIN after our close frame), then read and drop what the peer still
    sends, unparsed, until it closes too (at most ``limit`` bytes): closing with unread bytes would
    reset the connection, and the peer might lose our close frame."""
    if isinstance(stream, trio.abc.HalfCloseableStream):
        await stream.send_eof()
    left = limit
    while left > 0:
        data = await receive_bytes(stream)
        if not data:
            return
        left -= len(data)


async def await_close_reply(conn: Connection, stream: trio.abc.Stream) -> None:
    """Read until the peer's close frame answers ours (or the stream ends)."""
    while conn.state is not ConnectionState.CLOSED:
        data = await receive_bytes(stream)
        if not data:
            return
        conn.receive_data(data)
        if any(isinstance(event, CloseConnection) for event in conn.events()):
            return
