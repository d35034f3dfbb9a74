"""signald.parking: idle readers wait in one epoll set; pongs are taken without waking them."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from signald.parking import HAS_EPOLL, Parking

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


async def test_pongs_are_taken_without_waking_the_reader_and_other_bytes_wake_it(nursery: trio.Nursery) -> None:
    parking = Parking()
    nursery.start_soon(parking.run)
    await trio.testing.wait_all_tasks_blocked()
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    conn = Conn()
    got: list[bytes | None] = []

    async def reader() -> None:
        got.append(await parking.wait(conn, ours.fileno()))

    nursery.start_soon(reader)
    await trio.testing.wait_all_tasks_blocked()
    assert len(parking) == 1
    for _ in range(3):
        peer.send(PONG)
        await trio.testing.wait_all_tasks_blocked()
    assert conn.pongs == 3 and got == [] and len(parking) == 1  # still asleep
    peer.send(b"hello")
    await trio.testing.wait_all_tasks_blocked()
    assert got == [b"hello"] and len(parking) == 0
    ours.close()
    peer.close()


async def test_a_peer_that_goes_away_wakes_the_reader_to_find_out_itself(nursery: trio.Nursery) -> None:
    parking = Parking()
    nursery.start_soon(parking.run)
    await trio.testing.wait_all_tasks_blocked()
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    got: list[bytes | None] = []

    async def reader() -> None:
        got.append(await parking.wait(Conn(), ours.fileno()))

    nursery.start_soon(reader)
    await trio.testing.wait_all_tasks_blocked()
    peer.close()
    await trio.testing.wait_all_tasks_blocked()
    assert got in ([None], [b""])  # woken: the reader's own read then sees the end of the stream
    assert ours.recv(10) == b""
    ours.close()


async def test_a_cancelled_reader_leaves_the_set_and_its_socket_can_park_again(nursery: trio.Nursery) -> None:
    parking = Parking()
    nursery.start_soon(parking.run)
    await trio.testing.wait_all_tasks_blocked()
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    with trio.move_on_after(0.01):
        await parking.wait(Conn(), ours.fileno())
    assert len(parking) == 0
    peer.send(b"x")
    with trio.fail_after(5):
        assert await parking.wait(Conn(), ours.fileno()) == b"x"
    ours.close()
    peer.close()


async def test_readers_still_parked_when_the_hub_stops_are_let_go() -> None:
    parking = Parking()
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    got: list[bytes | None] = []
    async with trio.open_nursery() as nursery:
        serving = trio.CancelScope()

        async def serve() -> None:
            with serving:
                await parking.run()

        nursery.start_soon(serve)
        await trio.testing.wait_all_tasks_blocked()
        assert parking.available

        async def reader() -> None:
            got.append(await parking.wait(Conn(), ours.fileno()))

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        serving.cancel()
    assert got == [None] and not parking.available  # it reads (or waits in Trio) by itself now
    ours.close()
    peer.close()
