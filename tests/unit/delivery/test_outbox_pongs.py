"""Pongs a peer does not read: at most one waits in the outbox, the newest (RFC 6455 5.5.3)."""

from __future__ import annotations

from signald.delivery.frames import Frame
from signald.delivery.outbox import Outbox
from signald.protocol import RoomActiveEvent, RoomData


async def test_a_queued_pong_is_replaced_in_its_place_by_the_newer_one() -> None:
    box = Outbox(8, binary=False, on_overflow=lambda: None)
    box.direct_write = lambda data: 0  # the peer reads nothing: everything queues
    event = Frame(RoomActiveEvent(data=RoomData(room="a")))
    box.push_pong(b"PONG-1")
    assert box.push(event)
    for n in range(2, 10_000):
        box.push_pong(f"PONG-{n}".encode())
    assert box.queued_bytes == len(b"PONG-9999") + len(event.wire_text)
    assert await box.get_batch() == [b"PONG-9999", event.wire_text]
    box.push_pong(b"PONG-next")  # the last one left: a new one queues again
    assert await box.get_batch() == [b"PONG-next"]


async def test_pongs_are_written_directly_when_the_socket_is_idle_and_not_after_a_close() -> None:
    written: list[bytes] = []
    box = Outbox(8, binary=False, on_overflow=lambda: None)
    box.direct_write = lambda data: written.append(data) or len(data)
    box.push_pong(b"P1")
    box.push_pong(b"P2")
    assert written == [b"P1", b"P2"] and box.queued_bytes == 0
    box.close(drop=True)
    box.push_pong(b"P3")
    assert written == [b"P1", b"P2"] and await box.get_batch() == []
