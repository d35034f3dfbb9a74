"""The last reads of a WebSocket that is closing (:meth:`signald.transport.websocket.ServerWebSocket.close`).

Resource handling: both stop at the end of the stream and read a bounded amount; the caller
bounds their time and closes the stream.
"""

from __future__ import annotations

import trio
from wsproto.connection import Connection, ConnectionState
from wsproto.events import CloseConnection

from signald.transport.handshake import receive_bytes


async def discard_until_closed(stream: trio.abc.Stream, limit: int) -> None:
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
