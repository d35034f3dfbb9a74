"""The upgrade on a real socket pair (signald.transport.handshake): the request read at once when it
is all there, or awaited when it is not; the 101 sent with the first message in one write; what is
not an upgrade kept for the plain-HTTP server or refused."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing
from conftest import handshake_over

from signald.transport.handshake import Handshake, send_now

REQUEST = (b"GET /?user=ann HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
           b"Sec-WebSocket-Protocol: signald.v1.json\r\n\r\n")
ACCEPT_TOKEN = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 1.3's example key


def server_stream(ours: socket.socket) -> trio.SocketStream:
    return trio.SocketStream(trio.socket.from_stdlib_socket(ours))


async def test_a_request_that_is_all_there_is_read_at_once_and_answered_with_the_first_message(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = pair
    peer.sendall(REQUEST)
    handshake = Handshake(server_stream(ours))
    request = handshake.read_now()
    assert request is not None
    assert (request.path, request.subprotocols) == ("/?user=ann", ("signald.v1.json",))
    assert (b"host", b"example") not in request.headers
    answer, connection = handshake.upgrade("signald.v1.json")
    await send_now(handshake.stream, answer + b"\x81\x02hi")
    received = peer.recv(65536)
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"Sec-WebSocket-Accept: " + ACCEPT_TOKEN in head
    assert rest == b"\x81\x02hi"  # the first message right behind the answer, in the same write
    assert connection is not None


async def test_a_request_in_pieces_is_awaited_after_read_now(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    handshake = Handshake(server_stream(ours))
    assert handshake.read_now() is None  # nothing yet
    peer.sendall(REQUEST[:30])
    assert handshake.read_now() is None  # a part only: read, and kept
    results = []

    async def read() -> None:
        results.append(await handshake.read_request())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        assert not results  # still waiting for the rest
        peer.sendall(REQUEST[30:])
    assert results[0] is not None and results[0].path == "/?user=ann"


async def test_plain_http_is_kept_for_the_http_server(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    plain = b"GET /health HTTP/1.1\r\nHost: example\r\n\r\n"
    peer.sendall(plain)
    handshake = Handshake(server_stream(ours), keep_plain=True)
    assert handshake.read_now() is None
    assert await handshake.read_request() is None
    assert handshake.plain == plain
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(100)  # left unanswered: the HTTP server answers it


async def test_plain_http_without_an_http_server_is_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    _, upgrade, answer = await handshake_over(pair, b"GET /health HTTP/1.1\r\nHost: example\r\n\r\n")
    assert upgrade is None
    assert answer.startswith(b"HTTP/1.1 400 ")  # wsproto's answer to a request with no Upgrade


async def test_a_stream_that_ends_before_its_request_gives_none(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    peer.sendall(REQUEST[:30])
    peer.shutdown(socket.SHUT_WR)
    handshake = Handshake(server_stream(ours))
    assert handshake.read_now() is None
    assert await handshake.read_request() is None
