"""RoomRegistry: membership bookkeeping and the member.* / room.active / room.waiting rules."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from signald.errors import SignalError
from signald.protocol import (
    MemberJoinedEvent,
    MemberLeftEvent,
    RoomActiveEvent,
    RoomUserData,
    RoomWaitingEvent,
    type_of,
)
from signald.state.rooms import RoomRegistry
from signald.state.send import Send

Ev = tuple[str, str, str | None, frozenset[str]]  # (type, room, user_id or None, recipients)


def norm(sends: list[Send]) -> list[Ev]:
    out: list[Ev] = []
    for s in sends:
        assert s.conns, "a Send must have recipients"
        data = getattr(s.event, "data")  # noqa: B009 - Outbound itself declares no data
        user = data.user_id if isinstance(data, RoomUserData) else None
        # member.* go to everyone in the room: marked so, the app may batch them (delivery.feeds)
        assert s.room == (data.room if isinstance(s.event, (MemberJoinedEvent, MemberLeftEvent)) else None)
        out.append((type_of(type(s.event)), data.room, user, s.conns))
    return out


def fs(*conns: str) -> frozenset[str]:
    return frozenset(conns)


MAX = 5


def test_first_join_creates_room_and_waiting_after_ack() -> None:
    reg = RoomRegistry()
    out = reg.join("a1", "alice", "lobby", max_rooms=MAX)
    assert out.sends == []
    assert norm(out.after_ack) == [("room.waiting", "lobby", None, fs("a1"))]
    assert out.first_device_in and not out.active and not out.already_member
    assert reg.members("lobby") == [("alice", ["a1"])]
    assert reg.room_count == 1 and reg.conns_in("lobby") == fs("a1")


def test_second_user_joined_and_active() -> None:
    reg = RoomRegistry()
    reg.join("a1", "alice", "lobby", max_rooms=MAX)
    reg.join("a2", "alice", "lobby", max_rooms=MAX)
    out = reg.join("b1", "bob", "lobby", max_rooms=MAX)
    assert norm(out.sends) == [
        ("member.joined", "lobby", "bob", fs("a1", "a2")),
        ("room.active", "lobby", None, fs("a1", "a2")),
    ]
    assert out.after_ack == [] and out.active and out.first_device_in
    assert reg.members("lobby") == [("alice", ["a1", "a2"]), ("bob", ["b1"])]
    assert isinstance(out.sends[0].event, MemberJoinedEvent)
    assert isinstance(out.sends[1].event, RoomActiveEvent)


def test_third_user_gets_no_room_active() -> None:
    reg = RoomRegistry()
    reg.join("a1", "alice", "r", max_rooms=MAX)
    reg.join("b1", "bob", "r", max_rooms=MAX)
    out = reg.join("c1", "carol", "r", max_rooms=MAX)
    assert norm(out.sends) == [("member.joined", "r", "carol", fs("a1", "b1"))]
    assert out.active


def test_second_device_of_present_user_is_silent() -> None:
    reg = RoomRegistry()
    reg.join("a1", "alice", "r", max_rooms=MAX)
    reg.join("b1", "bob", "r", max_rooms=MAX)
    out = reg.join("b2", "bob", "r", max_rooms=MAX)
    assert out.sends == [] and out.after_ack == []
    assert not out.first_device_in and out.active
    assert reg.devices_of("bob", "r") == fs("b1", "b2")


def test_second_device_of_lone_user_gets_waiting_only_itself() -> None:
    reg = RoomRegistry()
    reg.join("a1", "alice", "r", max_rooms=MAX)
    out = reg.join("a2", "alice", "r", max_rooms=MAX)
    assert out.sends == []
    assert norm(out.after_ack) == [("room.waiting", "r", None, fs("a2"))]
    assert not out.active and not out.first_device_in


def test_double_join_is_idempotent() -> None:
    reg = RoomRegistry()
    reg.join("a1", "alice", "r", max_rooms=MAX)
    reg.join("b1", "bob", "r", max_rooms=MAX)
    again = reg.join("b1", "bob", "r", max_rooms=MAX)
    assert again.sends == [] and again.after_ack == []
    assert again.already_member and again.active and not again.first_device_in
    assert reg.members("r") == [("alice", ["a1"]), ("bob", ["b1"])]
    alone = reg.join("a1", "alice", "r", max_rooms=1)  # at the limit, but already in: fine
    assert alone.already_member


def test_max_rooms() -> None:
    reg = RoomRegistry()
    reg.join("a1", "alice", "r1", max_rooms=2)
    reg.join("a1", "alice", "r2", max_rooms=2)
    with pytest.raises(SignalError) as exc:
        reg.join("a1", "alice", "r3", max_rooms=2)
    assert exc.value.code == "LIMIT_EXCEEDED"
    assert reg.rooms_of("a1") == fs("r1", "r2") and reg.room_count == 2
    reg.join("a2", "alice", "r3", max_rooms=2)  # the limit is per connection
    reg.leave("a1", "r1")
    reg.join("a1", "alice", "r3", max_rooms=2)


def test_check_join_refuses_what_join_would_and_changes_nothing() -> None:
    reg = RoomRegistry()
    reg.join("a1", "alice", "r1", max_rooms=2)
    reg.join("a1", "alice", "r2", max_rooms=2)
    reg.check_join("a1", "alice", "r2", max_rooms=2)  # already in: never counts against the limit
    reg.check_join("b1", "bob", "r3", max_rooms=2)
    with pytest.raises(SignalError) as exc:
        reg.check_join("a1", "alice", "r3", max_rooms=2)
    assert exc.value.code == "LIMIT_EXCEEDED"
    with pytest.raises(ValueError):
        reg.check_join("a1", "bob", "r3", max_rooms=MAX)
    assert reg.rooms_of("a1") == fs("r1", "r2") and reg.rooms_of("b1") == fs() and reg.room_count == 2


def test_conn_bound_to_one_user() -> None:
    reg = RoomRegistry()
    reg.join("x", "alice", "r", max_rooms=MAX)
    with pytest.raises(ValueError):
        reg.join("x", "bob", "r2", max_rooms=MAX)


def test_leave_not_member() -> None:
    reg = RoomRegistry()
    with pytest.raises(SignalError) as exc:
        reg.leave("a1", "nowhere")
    assert exc.value.code == "NOT_IN_ROOM"
    reg.join("a1", "alice", "r", max_rooms=MAX)
    with pytest.raises(SignalError):
        reg.leave("b1", "r")
    with pytest.raises(SignalError):
        reg.leave("a1", "other")


def test_leave_last_device_member_left_and_waiting() -> None:
    reg = RoomRegistry()
    reg.join("a1", "alice", "r", max_rooms=MAX)
    reg.join("a2", "alice", "r", max_rooms=MAX)
    reg.join("b1", "bob", "r", max_rooms=MAX)
    reg.join("b2", "bob", "r", max_rooms=MAX)
    assert reg.leave("b1", "r") == []  # bob still has b2
    sends = reg.leave("b2", "r")
    assert norm(sends) == [
        ("member.left", "r", "bob", fs("a1", "a2")),
        ("room.waiting", "r", None, fs("a1", "a2")),
    ]
    assert isinstance(sends[0].event, MemberLeftEvent)
    assert isinstance(sends[1].event, RoomWaitingEvent)


def test_leave_three_to_two_no_waiting_and_empty_room_dropped() -> None:
    reg = RoomRegistry()
    for conn, user in (("a1", "alice"), ("b1", "bob"), ("c1", "carol")):
        reg.join(conn, user, "r", max_rooms=MAX)
    assert norm(reg.leave("c1", "r")) == [("member.left", "r", "carol", fs("a1", "b1"))]
    reg.leave("b1", "r")
    assert reg.leave("a1", "r") == []
    assert reg.room_count == 0 and reg.conns_in("r") == frozenset() and reg.rooms_of("a1") == frozenset()
    assert reg.user_of("a1") is None


def test_disconnect_leaves_all_rooms() -> None:
    reg = RoomRegistry()
    reg.join("a1", "alice", "r1", max_rooms=MAX)
    reg.join("a1", "alice", "r2", max_rooms=MAX)
    reg.join("b1", "bob", "r1", max_rooms=MAX)
    reg.join("b1", "bob", "r2", max_rooms=MAX)
    reg.join("c1", "carol", "r2", max_rooms=MAX)
    assert norm(reg.disconnect("b1")) == [
        ("member.left", "r1", "bob", fs("a1")),
        ("room.waiting", "r1", None, fs("a1")),
        ("member.left", "r2", "bob", fs("a1", "c1")),
    ]
    assert reg.rooms_of("b1") == frozenset()
    assert reg.disconnect("b1") == [] and reg.disconnect("never") == []


def test_kick_removes_all_devices() -> None:
    reg = RoomRegistry()
    reg.join("a1", "alice", "r", max_rooms=MAX)
    reg.join("b1", "bob", "r", max_rooms=MAX)
    reg.join("b2", "bob", "r", max_rooms=MAX)
    reg.join("b2", "bob", "other", max_rooms=MAX)
    assert norm(reg.kick("r", "bob")) == [
        ("member.left", "r", "bob", fs("a1")),
        ("room.waiting", "r", None, fs("a1")),
    ]
    assert reg.users_in("r") == fs("alice") and reg.rooms_of("b2") == fs("other")
    with pytest.raises(SignalError) as exc:
        reg.kick("r", "bob")
    assert exc.value.code == "NOT_IN_ROOM"


def test_queries_and_peers() -> None:
    reg = RoomRegistry()
    reg.join("a1", "alice", "r1", max_rooms=MAX)
    reg.join("a2", "alice", "r2", max_rooms=MAX)
    reg.join("b1", "bob", "r1", max_rooms=MAX)
    reg.join("b1", "bob", "r2", max_rooms=MAX)
    reg.join("c1", "carol", "r3", max_rooms=MAX)
    assert reg.peers_of_user("alice") == {"a1", "a2", "b1"}
    assert reg.peers_of_user("carol") == {"c1"}
    assert reg.peers_of_user("nobody") == set()
    assert reg.shares_room("alice", "bob") and not reg.shares_room("alice", "carol")
    assert reg.rooms_of_user("alice") == fs("r1", "r2")
    assert reg.is_member("a1", "r1") and not reg.is_member("a1", "r2")
    assert reg.users_in("r1") == fs("alice", "bob")
    assert reg.user_of("b1") == "bob"
    assert reg.room_names() == ["r1", "r2", "r3"]
    assert reg.members("nope") == []


# --------------------------------------------------------------------------- stateful model test

USERS = ("u0", "u1", "u2", "u3")
CONNS = tuple(f"{u}/d{i}" for u in USERS for i in range(2))
ROOMS = ("r0", "r1", "r2")
MAX_ROOMS = 2


def user_of(conn: str) -> str:
    return conn.split("/")[0]


class Model:
    """The obvious model: a set of (conn, room) pairs, events derived from before/after states."""

    def __init__(self) -> None:
        self.pairs: set[tuple[str, str]] = set()

    def conns(self, room: str) -> frozenset[str]:
        return frozenset(c for c, r in self.pairs if r == room)

    def users(self, room: str) -> set[str]:
        return {user_of(c) for c in self.conns(room)}

    def rooms(self, conn: str) -> set[str]:
        return {r for c, r in self.pairs if c == conn}

    def join(self, conn: str, room: str) -> tuple[list[Ev], list[Ev]]:
        user, before = user_of(conn), self.users(room)
        others = self.conns(room)
        self.pairs.add((conn, room))
        sends: list[Ev] = []
        if user not in before and others:
            sends.append(("member.joined", room, user, others))
            if len(before) == 1:
                sends.append(("room.active", room, None, others))
        after_ack: list[Ev] = [("room.waiting", room, None, fs(conn))] if self.users(room) == {user} else []
        return sends, after_ack

    def remove(self, conn: str, room: str) -> list[Ev]:
        user, before = user_of(conn), self.users(room)
        self.pairs.discard((conn, room))
        after = self.users(room)
        sends: list[Ev] = []
        if user not in after and self.conns(room):
            sends.append(("member.left", room, user, self.conns(room)))
            if len(before) >= 2 and len(after) == 1:
                sends.append(("room.waiting", room, None, self.conns(room)))
        return sends


class RoomsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.reg = RoomRegistry()
        self.model = Model()

    @rule(conn=st.sampled_from(CONNS), room=st.sampled_from(ROOMS))
    def join(self, conn: str, room: str) -> None:
        if (conn, room) in self.model.pairs:
            out = self.reg.join(conn, user_of(conn), room, max_rooms=MAX_ROOMS)
            assert out.already_member and out.sends == [] and out.after_ack == []
            assert out.active == (len(self.model.users(room)) >= 2)
            return
        if len(self.model.rooms(conn)) >= MAX_ROOMS:
            with pytest.raises(SignalError) as exc:
                self.reg.join(conn, user_of(conn), room, max_rooms=MAX_ROOMS)
            assert exc.value.code == "LIMIT_EXCEEDED"
            return
        first = user_of(conn) not in self.model.users(room)
        out = self.reg.join(conn, user_of(conn), room, max_rooms=MAX_ROOMS)
        sends, after_ack = self.model.join(conn, room)
        assert norm(out.sends) == sends
        assert norm(out.after_ack) == after_ack
        assert out.first_device_in == first and not out.already_member
        assert out.active == (len(self.model.users(room)) >= 2)
        assert self.reg.members(room) == sorted(
            (u, sorted(c for c in self.model.conns(room) if user_of(c) == u)) for u in self.model.users(room)
        )
        for s in out.sends:
            assert conn not in s.conns

    @rule(conn=st.sampled_from(CONNS), room=st.sampled_from(ROOMS))
    def leave(self, conn: str, room: str) -> None:
        if (conn, room) not in self.model.pairs:
            with pytest.raises(SignalError) as exc:
                self.reg.leave(conn, room)
            assert exc.value.code == "NOT_IN_ROOM"
            return
        assert norm(self.reg.leave(conn, room)) == self.model.remove(conn, room)

    @rule(conn=st.sampled_from(CONNS))
    def disconnect(self, conn: str) -> None:
        expected: list[Ev] = []
        for room in sorted(self.model.rooms(conn)):
            expected += self.model.remove(conn, room)
        assert norm(self.reg.disconnect(conn)) == expected

    @rule(user=st.sampled_from(USERS), room=st.sampled_from(ROOMS))
    def kick(self, user: str, room: str) -> None:
        devices = sorted(c for c in self.model.conns(room) if user_of(c) == user)
        if not devices:
            with pytest.raises(SignalError):
                self.reg.kick(room, user)
            return
        expected: list[Ev] = []
        for conn in devices:
            expected += self.model.remove(conn, room)
        assert norm(self.reg.kick(room, user)) == expected

    @invariant()
    def consistent(self) -> None:
        model, reg = self.model, self.reg
        live_rooms = {r for _, r in model.pairs}
        assert set(reg.room_names()) == live_rooms and reg.room_count == len(live_rooms)
        for room in ROOMS:
            assert reg.conns_in(room) == model.conns(room)
            assert reg.users_in(room) == model.users(room)
            for user in USERS:
                assert reg.devices_of(user, room) == {c for c in model.conns(room) if user_of(c) == user}
        for conn in CONNS:
            assert reg.rooms_of(conn) == model.rooms(conn)
            assert reg.user_of(conn) == (user_of(conn) if model.rooms(conn) else None)
            for room in ROOMS:
                assert reg.is_member(conn, room) == ((conn, room) in model.pairs)
        for user in USERS:
            peers = {c for room in live_rooms if user in model.users(room) for c in model.conns(room)}
            assert reg.peers_of_user(user) == peers


TestRoomsStateful = RoomsMachine.TestCase
TestRoomsStateful.settings = settings(
    max_examples=120, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
