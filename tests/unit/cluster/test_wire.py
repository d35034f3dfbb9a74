"""What the nodes put into Redis survives the trip: names per database, every op, both event kinds."""

from __future__ import annotations

import typing

import msgspec
import pytest

from signald.app import replica
from signald.cluster.wire import STATE_DECODER, STATE_ENCODER, Echo, Names, StateEnvelope, decode_event
from signald.delivery.frames import Frame
from signald.protocol import MemberJoinedEvent, RoomUserData, encode_app_event


def test_names_carry_the_database_so_two_clusters_on_one_redis_never_hear_each_other() -> None:
    one, two = Names("redis://127.0.0.1:6379/1"), Names("redis://:pw@127.0.0.1:6379/2")
    assert one.room("lobby") != two.room("lobby") and one.state != two.state
    assert Names("redis://127.0.0.1:6379").state == "{signald.0}.state"
    assert one.parse(one.room("a.b:c")) == ("room", "a.b:c")
    assert one.parse(one.user("alice")) == ("user", "alice")
    assert one.parse(one.state) == ("state", "")
    assert one.parse(two.room("x"))[0] == ""


OPS: list[replica.Op] = [
    replica.Connect("c1", "alice"), replica.Disconnect("c1"), replica.Disconnect("c1", "alice", 0.25),
    replica.Budget("alice", -0.5), replica.Join("c1", "alice", "lobby"),
    replica.Leave("c1", "lobby"), replica.Kick("lobby", "bob", "alice", None), replica.SetStatus("c1", "alice", "away"),
    replica.Typing("c1", "alice", "lobby", True), replica.Activity("alice"), replica.Activity("alice", 0.25),
    replica.Revoke("bob", "bye"),
    replica.CallOffered("alice", "c1", "bob", ["c2", "c3"], "video", {"type": "offer", "sdp": "v=0"}, "call-1"),
    replica.CallAnswered("bob", "c2", "alice", {"type": "answer", "sdp": "v=0"}, "call-1"),
    replica.CallIced("bob", "c2", "alice", {"candidate": "x"}, "call-1"),
    replica.CallEnded("alice", "c1", "bob", None, "call-1"),
    replica.CallOffered("carol", "c4", "bob", ["c2"], "audio", {"type": "offer", "sdp": "v=0"}, "call-2", "busy"),
    replica.CallTimedOut("call-1"), replica.SetStatus("", "alice", "busy", 12.5, "node-b"), replica.Resynced(),
]


def test_every_op_kind_is_tried() -> None:
    assert {type(op) for op in OPS} == set(typing.get_args(replica.Op))


@pytest.mark.parametrize("op", [*OPS, Echo()], ids=lambda op: type(op).__name__)
def test_an_op_survives_the_state_channel(op: replica.Op | Echo) -> None:
    assert STATE_DECODER.decode(STATE_ENCODER.encode(StateEnvelope("node-1", op))) == StateEnvelope("node-1", op)


class OldDisconnect(msgspec.Struct, array_like=True, tag="disconnect"):
    conn: str


class OldEnvelope(msgspec.Struct, array_like=True):
    origin: str
    op: OldDisconnect


def test_disconnects_decode_both_ways_between_this_release_and_the_one_before() -> None:
    """Nodes of the release before (whose ``Disconnect`` has the connection only) and of this one
    mix during a rolling upgrade: their ops take no budget level, and ours lose only the level there."""
    assert STATE_DECODER.decode(msgspec.msgpack.encode(["node-1", ["disconnect", "c1"]])).op == replica.Disconnect("c1")

    ours = STATE_ENCODER.encode(StateEnvelope("node-2", replica.Disconnect("c1", "alice", 0.5)))
    assert msgspec.msgpack.decode(ours, type=OldEnvelope).op == OldDisconnect("c1")


def test_our_events_come_back_as_their_structs_and_an_embedders_as_a_dict() -> None:
    ours = Frame(MemberJoinedEvent(data=RoomUserData(room="lobby", user_id="bob")))
    again = Frame.encoded(decode_event(ours.text.encode()), ours.text.encode())
    assert again.message == ours.message and again.wire_text == ours.wire_text and again.binary == ours.binary
    app = Frame(encode_app_event("app.tasks_updated", {"n": 1}))
    assert decode_event(app.text.encode()) == {"type": "app.tasks_updated", "data": {"n": 1}}
