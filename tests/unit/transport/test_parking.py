"""signald.transport.parking: idle readers wait in one epoll set; pongs are taken without waking them."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from signald.transport.parking import HAS_EPOLL, Parking

pytestmark = pytest.mark.skipif(not HAS_EPOLL, reason="parking needs epoll (Linux)")

PONG = b"\x8a\x80\x00\x00\x00\x00"


class Conn:
    def __init__(self) -> None:
        self.pongs = 0

    def take_pong(self, data: bytes) -> bool:
        if data == PONG:
            self.pongs += 1
            return True
        return False


@pytest.fixture
async def parking(nursery: trio.Nursery) -> Parking:
    """A Parking served by its task, as the hub runs it."""
    parking = Parking()
    nursery.start_soon(parking.run)
    await trio.testing.wait_all_tasks_blocked()
    return parking


async def park(
    nursery: trio.Nursery, parking: Parking, ours: socket.socket, conn: Conn | None = None
) -> list[bytes | None]:
    """Start a reader parked on ``ours``; the returned list gets what it wakes with."""
    got: list[bytes | None] = []

    async def reader() -> None:
        got.append(await parking.wait(conn or Conn(), ours.fileno()))

    nursery.start_soon(reader)
    await trio.testing.wait_all_tasks_blocked()
    return got


async def test_pongs_are_taken_without_waking_the_reader_and_other_bytes_wake_it(
    nursery: trio.Nursery, parking: Parking, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, peer = pair
    conn = Conn()
    got = await park(nursery, parking, ours, conn)
    assert len(parking) == 1
    for _ in range(3):
        peer.send(PONG)
        await trio.testing.wait_all_tasks_blocked()
    assert conn.pongs == 3 and got == [] and len(parking) == 1  # still asleep
    peer.send(b"hello")
    await trio.testing.wait_all_tasks_blocked()
    assert got == [b"hello"] and len(parking) == 0


async def test_a_peer_that_goes_away_wakes_the_reader_to_find_out_itself(
    nursery: trio.Nursery, parking: Parking, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, peer = pair
    got = await park(nursery, parking, ours)
    peer.close()
    await trio.testing.wait_all_tasks_blocked()
    assert got in ([None], [b""])  # woken: the reader's own read then sees the end of the stream
    assert ours.recv(10) == b""


async def test_a_cancelled_reader_leaves_the_set_and_its_socket_can_park_again(
    parking: Parking, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, peer = pair
    async with trio.open_nursery() as readers:
        await park(readers, parking, ours)
        assert len(parking) == 1
        readers.cancel_scope.cancel()
    assert len(parking) == 0
    peer.send(b"x")
    with trio.fail_after(5):
        assert await parking.wait(Conn(), ours.fileno()) == b"x"


async def test_readers_still_parked_when_the_hub_stops_are_let_go(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, _peer = pair
    parking = Parking()
    async with trio.open_nursery() as nursery:
        serving = trio.CancelScope()

        async def serve() -> None:
            with serving:
                await parking.run()

        nursery.start_soon(serve)
        await trio.testing.wait_all_tasks_blocked()
        assert parking.available
        got = await park(nursery, parking, ours)
        serving.cancel()
    assert got == [None] and not parking.available  # it reads (or waits in Trio) by itself now


async def test_a_talking_peers_reader_waits_in_trio_until_a_heartbeat_ping(
    nursery: trio.Nursery, parking: Parking, pair: tuple[socket.socket, socket.socket],
    mock_clock: trio.testing.MockClock,
) -> None:
    """Two messages within a second make a peer talk: its reader waits in Trio for the next one,
    which then wakes it directly; after our next ping, the pong wakes it once more and it parks."""
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import TextMessage

    from signald.delivery.outbox import Outbox
    from signald.transport.websocket import TALKING_S, ServerWebSocket

    ours, peer = pair
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    ws = ServerWebSocket(stream, Connection(ConnectionType.SERVER),
                         Outbox(8, binary=False, on_overflow=lambda box: None), max_message_bytes=1000)
    ws.parking = parking
    client = Connection(ConnectionType.CLIENT)
    got: list[str | bytes | None] = []

    async def reader() -> None:
        while True:
            got.append(await ws.receive_message())

    async def say(text: str) -> None:
        peer.send(client.send(TextMessage(data=text)))
        await trio.testing.wait_all_tasks_blocked()

    nursery.start_soon(reader)
    await trio.testing.wait_all_tasks_blocked()
    assert len(parking) == 1  # silent so far: parked
    await say("join")
    mock_clock.jump(TALKING_S)
    await say("hello, a while later")
    assert got == ["join", "hello, a while later"] and len(parking) == 1  # one message now and then
    await say("and again")
    assert len(got) == 3 and len(parking) == 0  # talking: waits where its next message wakes it
    await say("and again")
    assert len(got) == 4 and len(parking) == 0
    ws.send_ping()  # a heartbeat interval of silence
    peer.send(PONG)
    await trio.testing.wait_all_tasks_blocked()
    assert len(parking) == 1 and len(got) == 4  # the pong woke it once more; now it is parked
    heard = ws.heard_at
    mock_clock.jump(1)
    peer.send(PONG)
    await trio.testing.wait_all_tasks_blocked()
    assert ws.heard_at > heard and len(parking) == 1  # taken by the parking task, reader asleep
