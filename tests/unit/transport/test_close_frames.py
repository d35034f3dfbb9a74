"""The server's close frames, built by signald (signald.transport.framing.close_frame) instead of wsproto.

Two things must hold for that to change nothing: the bytes are wsproto's, for every code and reason
the server sends (a reason over 123 bytes cut as wsproto cuts it), and wsproto, told of our frame
only when something asks for its state, ends up where it would have been had it built the frame
itself. The second is checked by running each closing scenario twice on a real socket pair: on
``ServerWebSocket`` as it is, and on a reference whose close frames wsproto builds (its state
follows at once); the reader's results, what the client receives, and wsproto's state at the end
must be the same.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from conftest import client_wire
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection
from wsproto.frame_protocol import CloseReason

from signald.delivery.outbox import Outbox, direct_writer
from signald.transport.framing import close_frame
from signald.transport.websocket import ServerWebSocket

# ---------------------------------------------------------------------- the bytes


def wsproto_frame(code: int, reason: str) -> bytes:
    return bytes(Connection(ConnectionType.SERVER).send(CloseConnection(code=code, reason=reason)))


SERVER_CLOSES = [  # every close signald sends, with its reason (grep CLOSE_ and session.close)
    (1000, ""),
    (1001, "server shutting down"),
    (1001, "heartbeat timeout"),
    (1008, "rate limit exceeded repeatedly"),
    (1008, "message in more than 64 frames"),
    (1009, "message over 1048576 bytes"),
    (1012, "room events were missed while the broker was away: resume"),
    (1013, "send queue full"),
    (4001, "session expired"),
    (4003, "session revoked"),
    # a failure wsproto found: its enum and its message
    (CloseReason.PROTOCOL_ERROR, "Reserved bits set unexpectedly"),
    (CloseReason.INVALID_FRAME_PAYLOAD_DATA, "Invalid UTF-8 in TEXT frame"),
    # the echo of a peer's close: the code alone, none at all for a close without code
    (3000, ""),
    (4999, ""),
    (CloseReason.NO_STATUS_RCVD, ""),
]
REASONS_TO_CUT = [
    "x" * 123,  # fits exactly
    "x" * 124,
    "é" * 100,  # 2 bytes each: 61 fit, 122 bytes
    "x" + "€" * 41,  # 124 bytes: the cut falls inside the last character, which goes
    "€" * 42,  # 126 bytes: 41 fit exactly
    "🙂" * 31 + "z",  # 4-byte characters: 30 fit, 120 bytes
]


@pytest.mark.parametrize(("code", "reason"), SERVER_CLOSES + [(1000, r) for r in REASONS_TO_CUT]
                         + [(4001, r) for r in REASONS_TO_CUT])
def test_our_close_frame_is_wsprotos(code: int, reason: str) -> None:
    assert close_frame(code, reason) == wsproto_frame(code, reason)


def test_a_cut_reason_keeps_whole_characters_within_123_bytes() -> None:
    for reason in REASONS_TO_CUT:
        frame = close_frame(1000, reason)
        payload = frame[2:]
        assert frame[1] == len(payload) <= 125 and payload[2:].decode() == reason[:len(payload[2:].decode())]
    assert close_frame(1000, "x" + "€" * 41)[4:] == ("x" + "€" * 40).encode()  # 121 bytes: the cut one went


def test_the_echo_of_a_close_without_code_is_empty_however_1005_is_spelled() -> None:
    """The reader's fast path reports a close without code as a plain 1005, wsproto as its enum: both
    are echoed with an empty close frame, as wsproto echoes its enum (a plain 1005 it would send as 1000)."""
    assert close_frame(1005, "") == close_frame(CloseReason.NO_STATUS_RCVD, "") == b"\x88\x00"
    assert wsproto_frame(CloseReason.NO_STATUS_RCVD, "") == b"\x88\x00"


@pytest.mark.parametrize("code", [1006, 1015])
def test_a_code_that_may_not_be_sent_goes_out_as_1000_like_wsprotos(code: int) -> None:
    assert close_frame(code, "x") == wsproto_frame(code, "x") == close_frame(1000, "x")


@given(code=st.one_of(st.integers(1000, 1003), st.integers(1007, 1014), st.integers(3000, 4999)),
       reason=st.text(max_size=130))
@settings(max_examples=300, deadline=None)
def test_any_code_and_reason_give_wsprotos_bytes(code: int, reason: str) -> None:
    assert close_frame(code, reason) == wsproto_frame(code, reason)


# ---------------------------------------------------------------------- wsproto's state, told later


class WsprotoBuilt(ServerWebSocket):
    """The reference: close frames built by wsproto, whose state follows at once."""

    def _our_close(self, code: int, reason: str) -> bytes:
        self._closing = True
        if code == CloseReason.NO_STATUS_RCVD:  # the fast path's plain 1005, echoed empty before too
            code = CloseReason.NO_STATUS_RCVD
        return bytes(self._wsproto().send(CloseConnection(code=code, reason=reason)))


@asynccontextmanager
async def socket_pair(kind: type[ServerWebSocket]) -> AsyncIterator[tuple[ServerWebSocket, trio.SocketStream]]:
    """A ``kind`` on one end of a real socket pair, its outbox writing directly; the other end."""
    server_sock, client_sock = trio.socket.socketpair()
    server_end, client_end = trio.SocketStream(server_sock), trio.SocketStream(client_sock)
    outbox = Outbox(8, binary=False, on_overflow=lambda: None)
    outbox.attach_writer(direct_writer(server_end), lambda: None)
    async with client_end:
        yield kind(server_end, Connection(ConnectionType.SERVER), outbox, max_message_bytes=1 << 20), client_end


def from_client(code: int | None, reason: str = "") -> bytes:
    """A client's close frame (masked)."""
    event = CloseConnection(code=CloseReason.NO_STATUS_RCVD if code is None else code, reason=reason)
    return bytes(Connection(ConnectionType.CLIENT).send(event))


REQUEST = client_wire('{"type":"presence.ping","id":1}')
PING = b"\x89\x80\x00\x00\x00\x00"  # a client's empty ping
BAD = b"\xc1\x80\x00\x00\x00\x00"  # RSV1 without an extension: wsproto fails it with 1002

Trace = list[Any]
Scenario = Callable[[ServerWebSocket, trio.SocketStream], Awaitable[Trace]]


async def sent_apart(ws: ServerWebSocket, client: trio.SocketStream, *writes: bytes,
                     then: Callable[[], object] | None = None) -> Trace:
    """What ``receive_message`` returns while the client sends ``writes``, each read on its own; with
    ``then``, what it returns first, called once the reader waits (as close_all meets most readers)."""
    first: Trace = []
    got: Trace = []
    async with trio.open_nursery() as nursery:
        async def read() -> None:
            got.append(await ws.receive_message())

        nursery.start_soon(read)
        if then is not None:
            await trio.testing.wait_all_tasks_blocked()
            first.append(then())
        for wire in writes:
            await trio.testing.wait_all_tasks_blocked()
            if got:
                break
            await client.send_all(wire)
    return first + got


async def closing_with(ws: ServerWebSocket, client: trio.SocketStream, code: int, reason: str, *writes: bytes,
                       eof: bool = False) -> Trace:
    """``close(code, reason)`` while the client sends ``writes`` (then ends its side if ``eof``)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ws.close, code, reason)
        for wire in writes:
            await trio.testing.wait_all_tasks_blocked()
            await client.send_all(wire)
        if eof:
            await client.send_eof()
    return [ws.failure, ws.broken]


def shutdown(ws: ServerWebSocket) -> Callable[[], bool]:
    return lambda: ws.send_close_now(1001, "server shutting down")


async def shutdown_reply_alone(ws: ServerWebSocket, client: trio.SocketStream) -> Trace:
    return [*await sent_apart(ws, client, from_client(1001), then=shutdown(ws)), ws.close_now()]


async def shutdown_reply_after_a_request_in_one_read(ws: ServerWebSocket, client: trio.SocketStream) -> Trace:
    return [*await sent_apart(ws, client, REQUEST + from_client(1001), then=shutdown(ws)), ws.close_now()]


async def shutdown_reply_after_a_request_and_a_ping_read_apart(ws: ServerWebSocket,
                                                               client: trio.SocketStream) -> Trace:
    return [*await sent_apart(ws, client, REQUEST, PING, from_client(1001), then=shutdown(ws)), ws.close_now()]


async def shutdown_reply_cut_in_two(ws: ServerWebSocket, client: trio.SocketStream) -> Trace:
    reply = from_client(1001)
    return [*await sent_apart(ws, client, reply[:3], reply[3:], then=shutdown(ws)), ws.close_now()]


async def shutdown_before_the_reader_waits(ws: ServerWebSocket, client: trio.SocketStream) -> Trace:
    return [ws.send_close_now(1001, "server shutting down"),
            *await sent_apart(ws, client, REQUEST + from_client(1001)), ws.close_now()]


async def shutdown_while_a_message_of_the_last_read_waits(ws: ServerWebSocket, client: trio.SocketStream) -> Trace:
    await client.send_all(client_wire("first") + client_wire("second"))
    trace: Trace = [await ws.receive_message(), ws.send_close_now(1001, "server shutting down")]
    return trace + await sent_apart(ws, client, from_client(1001)) + [ws.close_now()]


async def shutdown_twice_then_no_reply(ws: ServerWebSocket, client: trio.SocketStream) -> Trace:
    pong = b"\x8a\x80\x00\x00\x00\x00"  # what parking offers the reader: no pong is taken after our close
    trace = [ws.send_close_now(1001, "server shutting down"), ws.take_pong(pong), ws.send_close_now(1000, ""),
             ws.close_now()]
    with trio.fail_after(5):
        await ws.close(1000, "")
    return trace


async def close_reply_alone(ws: ServerWebSocket, client: trio.SocketStream) -> Trace:
    return await closing_with(ws, client, 1013, "send queue full", from_client(1013))


async def close_reply_after_a_request(ws: ServerWebSocket, client: trio.SocketStream) -> Trace:
    return await closing_with(ws, client, 4001, "é" * 100, REQUEST, from_client(4001))


async def close_reply_after_a_request_in_one_read(ws: ServerWebSocket, client: trio.SocketStream) -> Trace:
    return await closing_with(ws, client, 1001, "heartbeat timeout", REQUEST + from_client(1001))


async def close_after_a_protocol_error(ws: ServerWebSocket, client: trio.SocketStream) -> Trace:
    trace = await sent_apart(ws, client, BAD)
    return trace + await closing_with(ws, client, 1000, "", REQUEST, from_client(1002), eof=True)


def reader_done(ws: ServerWebSocket) -> bool:
    """What run_connection does once the reader returned: no writer may start (then close_now may act)."""
    return ws.outbox.stop_writer()


async def peer_closes_first(ws: ServerWebSocket, client: trio.SocketStream) -> Trace:
    return [*await sent_apart(ws, client, from_client(4000, "bye")), ws.peer_close_code,
            ws.send_close_now(1001, "server shutting down"), reader_done(ws), ws.close_now()]


async def peer_closes_first_without_code(ws: ServerWebSocket, client: trio.SocketStream) -> Trace:
    return [*await sent_apart(ws, client, from_client(None)), ws.peer_close_code, reader_done(ws), ws.close_now()]


async def peer_closes_first_cut_in_two(ws: ServerWebSocket, client: trio.SocketStream) -> Trace:
    close = from_client(1000)
    return [*await sent_apart(ws, client, close[:2], close[2:]), ws.peer_close_code, reader_done(ws),
            ws.close_now()]


async def peer_closes_first_while_our_socket_is_full(ws: ServerWebSocket, client: trio.SocketStream) -> Trace:
    """The echo does not fit: close_now keeps it, and close, told that the echo began, sends the rest."""
    trace = await sent_apart(ws, client, from_client(1000))
    reader_done(ws)
    assert ws._socket is not None
    filled = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            filled += os.write(ws._socket.fileno(), b"x" * 65536)
    trace += [ws.close_now(), ws.close_now()]  # the second finds a ws_frame half written: still not done
    received = b""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ws.close, 1001, "not sent: the handshake is under way")
        while chunk := await client.receive_some():
            received += chunk
    return [*trace, len(received) - filled, received[filled:]]


async def peer_closes_first_then_close(ws: ServerWebSocket, client: trio.SocketStream) -> Trace:
    trace = [*await sent_apart(ws, client, from_client(1001)), ws.peer_close_code]
    return trace + await closing_with(ws, client, 1000, "")


SCENARIOS: list[Scenario] = [
    shutdown_reply_alone, shutdown_reply_after_a_request_in_one_read,
    shutdown_reply_after_a_request_and_a_ping_read_apart, shutdown_reply_cut_in_two,
    shutdown_before_the_reader_waits, shutdown_while_a_message_of_the_last_read_waits, shutdown_twice_then_no_reply,
    close_reply_alone, close_reply_after_a_request, close_reply_after_a_request_in_one_read,
    close_after_a_protocol_error, peer_closes_first, peer_closes_first_without_code, peer_closes_first_cut_in_two,
    peer_closes_first_while_our_socket_is_full, peer_closes_first_then_close,
]


async def played(kind: type[ServerWebSocket], scenario: Scenario) -> Trace:
    """The scenario's trace, then what the client received until TCP closed, and wsproto's state."""
    async with socket_pair(kind) as (ws, client):
        with trio.fail_after(5):
            trace = await scenario(ws, client)
            received = b""
            while chunk := await client.receive_some():
                received += chunk
        assert ws.gone
        return [*trace, received, ws._wsproto().state, ws.peer_close_code]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
async def test_a_close_we_build_leaves_everything_as_wsproto_building_it_would(scenario: Scenario) -> None:
    assert await played(ServerWebSocket, scenario) == await played(WsprotoBuilt, scenario)


async def test_a_message_read_before_our_close_frame_but_handled_after_it_is_dropped() -> None:
    """wsproto is told of our close frame before it parses the rest of the read (as when it built it)."""
    trace = await played(ServerWebSocket, shutdown_while_a_message_of_the_last_read_waits)
    assert trace[:4] == ["first", True, None, True]  # "second" is not handed over: it followed our close
    assert trace[4] == close_frame(1001, "server shutting down")


async def test_after_our_close_frame_a_ping_gets_no_pong_and_a_request_no_handling() -> None:
    trace = await played(ServerWebSocket, shutdown_reply_after_a_request_and_a_ping_read_apart)
    assert trace[:3] == [True, None, True] and trace[3] == close_frame(1001, "server shutting down")
