"""The writer puts a room's consecutive events in one PUBLISH, and keeps every command's order."""

from __future__ import annotations

from signald.cluster.wire import ROOM_DECODER, RoomEnvelope, RoomEvent
from signald.cluster.writer import Command, Writer


def test_a_rooms_consecutive_events_travel_in_one_message_in_order() -> None:
    writer = Writer(client=None, origin="n1", up=lambda: None, down=lambda exc: None)
    a1, a2, a3 = (RoomEvent(None, True, b'{"n":%d}' % i) for i in range(3))
    b1 = RoomEvent("c7", False, b'{"b":1}')
    commands: list[Command] = [
        ("hset", "conns", {"c1": b"r"}),
        ("room", "room.a", a1), ("room", "room.a", a2),  # one message
        ("room", "room.b", b1),  # another room: its own
        ("publish", "state", b"op"),  # a state change between: the next event of room a comes after it
        ("room", "room.a", a3),
    ]
    out = writer.coalesced(commands)
    assert [(verb, key) for verb, key, _ in out] == [
        ("hset", "conns"), ("publish", "room.a"), ("publish", "room.b"), ("publish", "state"), ("publish", "room.a")]
    assert ROOM_DECODER.decode(out[1][2]) == RoomEnvelope("n1", [a1, a2])
    assert ROOM_DECODER.decode(out[2][2]) == RoomEnvelope("n1", [b1])
    assert ROOM_DECODER.decode(out[4][2]) == RoomEnvelope("n1", [a3])
