"""A server's close that lingers: a client behind on its reads, that kept sending, still gets the close frame.

On real TCP (a socket pair would not reset): the client's receive buffer is small and full, so our
frames and then our close frame wait in the server's socket; the client keeps sending requests the
server never reads. Closing the socket then resets the connection and drops what was not
delivered (the client sees 1006). ``ServerWebSocket.close`` with ``linger_until`` half-closes
instead and reads until the client closes too; without it (how it closed before) the scenario
must still end in a reset, or this test would prove nothing.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from conftest import client_wire
from rawwire import OP_CLOSE, OP_TEXT, close_payload, masked
from wsproto.connection import Connection, ConnectionType

from signald.delivery.outbox import Outbox
from signald.delivery.wsframe import websocket_frame
from signald.transport.closing import DISCARD_BYTES
from signald.transport.websocket import ServerWebSocket

REQUEST = client_wire('{"type":"presence.ping","id":1}')
CLOSE = bytes((0x80 | OP_CLOSE, 17)) + close_payload(4003, b"session revoked")


@asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[ServerWebSocket, trio.SocketStream]]:
    """A ServerWebSocket on an accepted loopback TCP connection, and a client end with a 4 KiB receive buffer."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = trio.socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await client.connect(listener.getsockname())
    server_sock, _ = await listener.accept()
    listener.close()
    outbox = Outbox(8, binary=False, on_overflow=lambda box: None)
    ws = ServerWebSocket(trio.SocketStream(server_sock), Connection(ConnectionType.SERVER), outbox,
                         max_message_bytes=1000)
    async with trio.SocketStream(client) as client_end:
        yield ws, client_end


def fill(ws: ServerWebSocket) -> bytes:
    """Frames that the client is behind on, all it will be sent before the close frame: the server's
    socket takes them until it is full, the rest (the frame cut there, 20 more) waits as the unsent
    tail that the close writes first."""
    frame = websocket_frame(b"x" * 1000, OP_TEXT)
    fd = ws.stream.socket.fileno()  # type: ignore[attr-defined]
    whole, n = -1, len(frame)
    while n == len(frame):
        whole += 1
        try:
            n = os.write(fd, frame)
        except BlockingIOError:
            n = 0
    ws.outbox.keep_unsent(frame[n:] + frame * 20)
    return frame * (whole + 21)


async def behind_then_read(client: trio.SocketStream, behind_s: float) -> bytes:
    """Keep sending requests and read nothing for ``behind_s``, then read until the server closes, and close."""
    with trio.move_on_after(behind_s):
        while True:
            try:
                await client.send_all(REQUEST)
            except trio.BrokenResourceError:
                break  # reset
            await trio.sleep(0.01)
    got = b""
    try:
        while chunk := await client.receive_some(65536):
            got += chunk
    except trio.BrokenResourceError:
        pass
    await client.aclose()
    return got


@pytest.mark.parametrize("lingers", [True, False])
async def test_a_close_that_lingers_reaches_a_client_behind_on_its_reads(lingers: bool) -> None:
    async with tcp_pair() as (ws, client):
        expected = fill(ws) + CLOSE
        now = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: ws.close(4003, "session revoked", reply_by=now + 0.2,
                                                linger_until=now + 5.0 if lingers else None))
            got = await behind_then_read(client, 0.5)  # past reply_by
        assert trio.current_time() - now < 2  # the server closed once the client did, not at linger_until
        if lingers:
            assert got == expected
        else:  # the reset this is about: what the server's socket held is lost
            assert len(got) < len(expected) and not got.endswith(CLOSE)


async def test_the_linger_ends_at_its_deadline_for_a_client_that_never_reads_nor_closes() -> None:
    async with tcp_pair() as (ws, _):
        fill(ws)
        start = trio.current_time()
        await ws.close(1001, "server shutting down", reply_by=start + 0.1, linger_until=start + 0.4)
        assert 0.4 <= trio.current_time() - start < 1.5
        assert ws.stream.socket.fileno() < 0  # type: ignore[attr-defined]


async def test_a_client_that_floods_the_linger_is_given_up_on_after_discard_bytes() -> None:
    async with tcp_pair() as (ws, client):
        chunk = REQUEST * (65536 // len(REQUEST))
        sent = 0

        async def flood() -> None:
            nonlocal sent
            with contextlib.suppress(trio.BrokenResourceError):
                while True:
                    await client.send_all(chunk)
                    sent += len(chunk)

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)
            await ws.close(1008, "rate limit exceeded repeatedly", reply_by=start, linger_until=start + 30)
            assert trio.current_time() - start < 10  # the bytes ended it, not the 30 s
        assert DISCARD_BYTES <= sent < 64 * DISCARD_BYTES


async def test_the_linger_ends_with_the_clients_close_reply() -> None:
    """A client that answers our close frame late has all of ours: no need to wait for its TCP close."""
    async with tcp_pair() as (ws, client):
        expected = fill(ws) + CLOSE
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: ws.close(4003, "session revoked", reply_by=start + 0.1,
                                                linger_until=start + 30))
            await trio.sleep(0.3)  # past reply_by: the server lingers
            got = b""
            while not got.endswith(CLOSE):
                got += await client.receive_some(65536)
            await client.send_all(masked(OP_CLOSE, close_payload(4003)))
        assert trio.current_time() - start < 5  # the reply ended it, not the 30 s (the client never closed)
        assert got == expected and await client.receive_some(1) == b""


async def test_a_failed_peers_close_frame_does_not_end_the_linger_when_our_close_frame_was_late() -> None:
    """After a failure (here 1009) nothing more of the peer's is parsed, its close frame neither
    (RFC 6455 7.1.7): only its TCP close ends the linger. Also when writing our close frame took
    past ``reply_by`` (the peer was behind on its reads), which once parsed the peer's bytes as a reply."""
    async with tcp_pair() as (ws, client):
        ws.failure = (1009, "message too big")
        expected = fill(ws) + bytes((0x80 | OP_CLOSE, 17)) + close_payload(1009, b"message too big")
        start = trio.current_time()
        closed_at = client_closed_at = 0.0

        async def close() -> None:
            nonlocal closed_at
            await ws.close(1009, "message too big", reply_by=start + 0.1, linger_until=start + 30)
            closed_at = trio.current_time()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(close)
            await client.send_all(masked(OP_CLOSE, close_payload(1000)))  # what a failed peer may still send
            await trio.sleep(0.3)  # past reply_by, not reading: the server's close frame waits in its socket
            got = b""
            while not got.endswith(expected[-19:]):
                got += await client.receive_some(65536)
            await trio.sleep(0.3)
            assert not closed_at  # still lingering: the peer's close frame was not taken for a reply
            client_closed_at = trio.current_time()
            await client.aclose()
        assert got == expected
        assert client_closed_at <= closed_at < start + 5  # ended by the peer's TCP close, not the 30 s
