"""One connection's life (signald.transport.connection) and how it ends: its writer, its close frame,
and the server's shutdown.

The transport tests run a :class:`ServerWebSocket` on a real socket pair, served by
:func:`run_connection` for a minimal owner, and read the server's bytes with a wsproto client.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing
from conftest import make_config
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, Event, TextMessage

from signald.client.raw import connect
from signald.delivery.frames import Frame
from signald.delivery.outbox import Outbox
from signald.protocol import RoomActiveEvent, RoomData
from signald.server import RunningServer, serve_signald
from signald.transport.connection import run_connection
from signald.transport.websocket import ServerWebSocket


@attrs.define(eq=False)
class Owner:
    """The least a connection needs of its session."""

    outbox: Outbox
    session_id: str = "s-test"
    cancel_scope: trio.CancelScope | None = None
    closes: list[tuple[int, str]] = attrs.field(factory=list)

    def close(self, code: int, reason: str, *, flush: bool = True, grace_s: float = 5.0) -> None:
        self.closes.append((code, reason))
        self.outbox.close(drop=not flush)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(ours, peer): ours is the server side, peer the client's."""
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.setblocking(False)
    with ours, peer:
        yield ours, peer


async def read_all(peer: trio.socket.SocketType, client: Connection) -> list[Event]:
    """What the server sends until it closes TCP, answering its close frame like a client."""
    events: list[Event] = []
    while data := await peer.recv(1 << 20):
        client.receive_data(data)
        for event in client.events():
            events.append(event)
            if isinstance(event, CloseConnection):
                await peer.send(client.send(event.response()))
    return events


WRITER_PLACES = pytest.mark.parametrize("in_helpers", [False, True], ids=["own nursery", "server's nursery"])


@WRITER_PLACES
async def test_a_writer_cancelled_mid_write_still_lets_the_close_frame_out_after_the_frame(
    pair: tuple[socket.socket, socket.socket], in_helpers: bool,
) -> None:
    """Shutdown cancels a writer blocked on a peer that reads slowly: the frame it was writing is
    finished, then the 1001 close frame follows (not a cut frame and a bare TCP close). The writer
    runs in the connection's own nursery, or in the server's (``helpers``) beside the reader."""
    ours, theirs = pair
    outbox = Outbox(8, binary=False, on_overflow=lambda: None)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    ws = ServerWebSocket(stream, Connection(ConnectionType.SERVER), outbox, max_message_bytes=1000)
    owner = Owner(outbox)
    big = Frame(RoomActiveEvent(data=RoomData(room="x" * 4_000_000)))  # far more than the socket buffers hold

    async def on_message(message: str | bytes) -> None:
        raise AssertionError("the peer sends nothing")  # pragma: no cover

    serving = trio.CancelScope()

    async def serve(helpers: trio.Nursery | None) -> None:
        with serving:
            await run_connection(ws, owner, on_message, helpers=helpers)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, nursery if in_helpers else None)
        await trio.testing.wait_all_tasks_blocked()
        assert outbox.push(big)  # what fits is written directly, the writer blocks on the rest
        await trio.testing.wait_all_tasks_blocked()
        assert outbox.writing
        serving.cancel()  # the server shuts down
    assert not outbox.writing  # cleared, although the write was cancelled
    peer = trio.socket.from_stdlib_socket(theirs)
    client = Connection(ConnectionType.CLIENT)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ws.close, 1001, "server shutting down")
            events = await read_all(peer, client)
    *parts, close = events
    assert all(isinstance(part, TextMessage) for part in parts)
    assert "".join(part.data for part in parts if isinstance(part, TextMessage)) == big.text  # the whole frame
    assert isinstance(close, CloseConnection)
    assert (close.code, close.reason) == (1001, "server shutting down")


@WRITER_PLACES
async def test_a_stream_writer_cancelled_mid_write_marks_the_stream_broken(in_helpers: bool) -> None:
    """Where bytes go through a stream (TLS), a cancelled ``send_all`` leaves it in an unknown state:
    no close frame may follow, and the flag that says a write is under way is cleared all the same."""
    client_end, server_end = trio.testing.lockstep_stream_pair()  # send_all waits for the reader
    outbox = Outbox(8, binary=False, on_overflow=lambda: None)
    ws = ServerWebSocket(server_end, Connection(ConnectionType.SERVER), outbox, max_message_bytes=1000)

    async def on_message(message: str | bytes) -> None:
        raise AssertionError("the peer sends nothing")  # pragma: no cover

    serving = trio.CancelScope()

    async def serve(helpers: trio.Nursery | None) -> None:
        with serving:
            await run_connection(ws, Owner(outbox), on_message, helpers=helpers)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, nursery if in_helpers else None)
        await trio.testing.wait_all_tasks_blocked()
        frame = _frame("a")
        assert outbox.push(frame)  # no direct write here: the writer takes it and blocks
        await trio.testing.wait_all_tasks_blocked()
        assert outbox.writing
        serving.cancel()
    assert ws.broken and not outbox.writing
    received = b""
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ws.close, 1001, "server shutting down")
            while data := await client_end.receive_some():
                received += data
    assert frame.wire_text.startswith(received)  # what the cut write let through, then the end: no close frame


def _frame(room: str) -> Frame:
    return Frame(RoomActiveEvent(data=RoomData(room=room)))


async def test_a_peer_protocol_error_is_reported_to_the_owner_and_ends_the_connection(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    outbox = Outbox(8, binary=False, on_overflow=lambda: None)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    ws = ServerWebSocket(stream, Connection(ConnectionType.SERVER), outbox, max_message_bytes=1000)
    owner = Owner(outbox)
    received: list[str | bytes] = []
    ran: list[str] = []

    async def on_message(message: str | bytes) -> None:
        received.append(message)

    async def side_task() -> None:
        ran.append("started")
        await trio.sleep_forever()

    client = Connection(ConnectionType.CLIENT)
    theirs.send(client.send(TextMessage(data="hello")) + b"\x81\x05hello")  # then an unmasked frame: 1002
    with trio.fail_after(5):
        await run_connection(ws, owner, on_message, side_tasks=[side_task])
    assert received == ["hello"] and ran == ["started"]
    assert [code for code, _ in owner.closes] == [1002]
    assert owner.cancel_scope is not None  # what closing the owner cancels (after a grace)


@attrs.define
class Server:
    running: RunningServer
    scope: trio.CancelScope


async def start_cancellable_server(nursery: trio.Nursery, tmp_path: Path) -> Server:
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await serve_signald(make_config(tmp_path), task_status=task_status)

    running: RunningServer = await nursery.start(run)
    return Server(running, scope)


async def test_shutdown_closes_every_client_with_1001(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await start_cancellable_server(nursery, tmp_path)
    async with connect(server.running.url, user="alice") as alice, connect(server.running.url, user="bob") as bob:
        await alice.request("room.join", {"room": "lobby"})
        server.scope.cancel()
        with trio.fail_after(5):
            await alice.closed.wait()
            await bob.closed.wait()
        for client in (alice, bob):
            assert client.ws.closed is not None
            assert (client.ws.closed.code, client.ws.closed.reason) == (1001, "server shutting down")


async def test_a_connection_cancelled_for_another_reason_is_not_reported_as_a_shutdown(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await start_cancellable_server(nursery, tmp_path)
    async with connect(server.running.url, user="alice") as alice, connect(server.running.url, user="bob") as bob:
        (session,) = server.running.hub.sessions_by_user["bob"].values()
        assert session.cancel_scope is not None
        session.cancel_scope.cancel()  # ended by the server, with no close code recorded
        with trio.fail_after(5):
            await bob.closed.wait()
        assert bob.ws.closed is not None and bob.ws.closed.code == 1000
        assert (await alice.request_raw("presence.ping"))["type"] == "presence.pong"  # the server runs on
    server.scope.cancel()


async def _nothing_expected(message: str | bytes) -> None:
    raise AssertionError("the peer sends no message")  # pragma: no cover


async def test_a_peer_that_closes_first_is_answered_at_once(pair: tuple[socket.socket, socket.socket]) -> None:
    """Its close frame ends the reader; the echo goes straight into the socket and TCP closes, with
    no wait (``close_now``)."""
    ours, theirs = pair
    outbox = Outbox(8, binary=False, on_overflow=lambda: None)
    ws = ServerWebSocket(trio.SocketStream(trio.socket.from_stdlib_socket(ours)), Connection(ConnectionType.SERVER),
                         outbox, max_message_bytes=1000)
    client = Connection(ConnectionType.CLIENT)
    theirs.sendall(client.send(CloseConnection(code=4000, reason="bye")))
    with trio.fail_after(10):
        await run_connection(ws, Owner(outbox), _nothing_expected)
    assert ws.peer_close_code == 4000
    assert ws.close_now()
    client.receive_data(theirs.recv(100))
    (reply,) = client.events()
    assert isinstance(reply, CloseConnection) and reply.code == 4000
    assert theirs.recv(100) == b""  # and TCP is closed


async def test_a_peer_that_vanished_is_let_go_at_once(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    outbox = Outbox(8, binary=False, on_overflow=lambda: None)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    ws = ServerWebSocket(stream, Connection(ConnectionType.SERVER), outbox, max_message_bytes=1000)
    theirs.close()
    with trio.fail_after(10):
        await run_connection(ws, Owner(outbox), _nothing_expected)
    assert ws.broken and ws.close_now()
    assert stream.socket.fileno() == -1


def server_side(ours: socket.socket) -> tuple[ServerWebSocket, Outbox]:
    outbox = Outbox(8, binary=False, on_overflow=lambda: None)
    ws = ServerWebSocket(trio.SocketStream(trio.socket.from_stdlib_socket(ours)), Connection(ConnectionType.SERVER),
                         outbox, max_message_bytes=1000)
    return ws, outbox


async def test_a_close_reply_that_does_not_fit_follows_what_fills_the_socket(
    pair: tuple[socket.socket, socket.socket]
) -> None:
    """The peer's close comes while our socket is full (it reads nothing for a while): the reply
    ``close_now`` cannot write waits, and ``close`` sends it, once, when the peer reads on."""
    ours, theirs = pair
    ws, outbox = server_side(ours)
    theirs.sendall(Connection(ConnectionType.CLIENT).send(CloseConnection(code=1001)))
    filled = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            filled += ours.send(b"x" * 65536)
    with trio.fail_after(10):
        await run_connection(ws, Owner(outbox), _nothing_expected)
        assert ws.peer_close_code == 1001
        assert not ws.close_now()  # no room for the reply
        peer = trio.socket.from_stdlib_socket(theirs)
        got = b""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ws.close, 1000, "")
            while data := await peer.recv(1 << 20):
                got += data
    assert len(got) == filled + 4 and got[filled:] == b"\x88\x02\x03\xe9"  # the echo, once, then TCP closed


async def test_a_shutdown_after_the_peer_closed_echoes_its_close_and_sends_none_of_its_own(
    pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, theirs = pair
    ws, outbox = server_side(ours)
    theirs.sendall(Connection(ConnectionType.CLIENT).send(CloseConnection(code=4000, reason="bye")))
    with trio.fail_after(10):
        await run_connection(ws, Owner(outbox), _nothing_expected)
    assert not ws.send_close_now(1001, "server shutting down")  # what close_all tries on every connection
    assert ws.peer_close_code == 4000
    assert ws.close_now()
    assert theirs.recv(100) == b"\x88\x02\x0f\xa0"
    assert theirs.recv(100) == b""
