"""PresenceTracker: devices, status rules, auto-away, calls, last seen and typing."""

from __future__ import annotations

import pytest

from signald.protocol import DeviceData, PresenceUpdateData, TypingUserData, type_of
from signald.state.presence import PresenceTracker
from signald.state.rooms import RoomRegistry
from signald.state.send import Send

Ev = tuple[str, tuple[object, ...], frozenset[str]]


def norm(sends: list[Send]) -> list[Ev]:
    out: list[Ev] = []
    for s in sends:
        assert s.conns, "a Send must have recipients"
        d = getattr(s.event, "data")  # noqa: B009 - Outbound itself declares no data
        if isinstance(d, DeviceData):
            key: tuple[object, ...] = (d.device_id, d.user_id)
        elif isinstance(d, PresenceUpdateData):
            key = (d.user_id, d.status)
        else:
            assert isinstance(d, TypingUserData)
            key = (d.scope, d.user_id, d.typing)
        out.append((type_of(type(s.event)), key, s.conns))
    return out


def fs(*conns: str) -> frozenset[str]:
    return frozenset(conns)


class World:
    """A registry and a tracker wired the way the daemon wires them."""

    def __init__(self, away_after_s: float = 0.0, **options: int) -> None:
        self.rooms = RoomRegistry()
        self.p = PresenceTracker(self.rooms.peers_of_user, self.rooms.conns_in, away_after_s=away_after_s,
                                 **options)

    def arrive(self, conn: str, user: str, *rooms: str, now: float = 0.0) -> None:
        self.p.connect(conn, user, now)
        for room in rooms:
            self.rooms.join(conn, user, room, max_rooms=10)

    def leave_all(self, conn: str, now: float = 0.0, wall: float = 0.0) -> list[Ev]:
        sends = self.p.disconnect(conn, now, wall)  # before rooms.disconnect, as documented
        self.rooms.disconnect(conn)
        return norm(sends)


def test_first_device_online_last_device_offline() -> None:
    w = World()
    w.arrive("b1", "bob", "r")
    # alice's first device: in no room yet, nobody to tell
    assert w.p.connect("a1", "alice", 0.0) == []
    assert w.p.status_of("alice") == "online" and w.p.is_online("alice")
    w.rooms.join("a1", "alice", "r", max_rooms=10)
    # second device: device.online to every peer, alice's own a1 included; no presence change
    assert norm(w.p.connect("a2", "alice", 1.0)) == [("device.online", ("a2", "alice"), fs("a1", "b1"))]
    assert w.p.devices_of("alice") == fs("a1", "a2")
    w.rooms.join("a2", "alice", "r", max_rooms=10)
    assert w.leave_all("a1") == [("device.offline", ("a1", "alice"), fs("a2", "b1"))]
    assert w.p.status_of("alice") == "online"
    assert w.leave_all("a2") == [
        ("device.offline", ("a2", "alice"), fs("b1")),
        ("presence.update", ("alice", "offline"), fs("b1")),
    ]
    assert not w.p.is_online("alice") and w.p.status_of("alice") == "offline"
    assert w.p.user_count == 1
    assert w.p.disconnect("a2", 0.0, 0.0) == []  # unknown conn: nothing


def test_reconnect_starts_online_again() -> None:
    w = World()
    w.arrive("a1", "alice", "r")
    w.p.set_status("a1", "alice", "busy", 0.0)
    w.leave_all("a1")
    w.arrive("a1", "alice", "r")
    assert w.p.status_of("alice") == "online" and w.p.chosen_status("alice") == "online"


def test_status_last_writer_wins_and_only_on_change() -> None:
    w = World()
    w.arrive("a1", "alice", "r")
    w.arrive("a2", "alice", "r")
    w.arrive("b1", "bob", "r")
    assert norm(w.p.set_status("a1", "alice", "busy", 1.0)) == [
        ("presence.update", ("alice", "busy"), fs("a2", "b1")),  # requester a1 gets the ack instead
    ]
    assert w.p.set_status("a2", "alice", "busy", 2.0) == []  # no change, no event
    assert norm(w.p.set_status("a2", "alice", "away", 3.0)) == [
        ("presence.update", ("alice", "away"), fs("a1", "b1")),
    ]
    assert w.p.status_of("alice") == "away"


def test_presence_update_once_per_connection_sharing_several_rooms() -> None:
    w = World()
    w.arrive("a1", "alice", "r1", "r2", "r3")
    w.arrive("b1", "bob", "r1", "r2", "r3")
    w.arrive("c1", "carol", "r2")
    sends = w.p.set_status("a1", "alice", "busy", 0.0)
    assert len(sends) == 1 and sends[0].conns == fs("b1", "c1")


def test_invisible_stays_offline_and_back() -> None:
    w = World()
    w.arrive("a1", "alice", "r")
    w.arrive("b1", "bob", "r")
    assert norm(w.p.set_status("a1", "alice", "offline", 0.0)) == [
        ("presence.update", ("alice", "offline"), fs("b1")),
    ]
    assert w.p.set_in_call("alice", True) == []  # a call does not reveal an invisible user
    w.p.set_in_call("alice", False)
    assert w.leave_all("a1") == [("device.offline", ("a1", "alice"), fs("b1"))]  # already offline


def test_auto_away_and_return() -> None:
    w = World(away_after_s=60)
    w.arrive("a1", "alice", "r", now=0.0)
    w.arrive("b1", "bob", "r", now=30.0)
    assert w.p.next_deadline() == 60.0
    assert w.p.tick(59.0) == []
    assert norm(w.p.tick(60.0)) == [("presence.update", ("alice", "away"), fs("a1", "b1"))]
    assert w.p.status_of("alice") == "away" and w.p.chosen_status("alice") == "online"
    assert w.p.next_deadline() == 90.0
    assert norm(w.p.activity("alice", 70.0, 1000.0)) == [
        ("presence.update", ("alice", "online"), fs("a1", "b1")),
    ]
    assert w.p.activity("alice", 71.0, 1001.0) == []
    assert w.p.next_deadline() == 90.0  # bob is now the earliest
    assert norm(w.p.tick(200.0)) == [
        ("presence.update", ("bob", "away"), fs("a1", "b1")),
        ("presence.update", ("alice", "away"), fs("a1", "b1")),
    ]
    assert w.p.next_deadline() is None


def test_activity_on_any_device_defers_away_and_connect_counts() -> None:
    w = World(away_after_s=10)
    w.arrive("a1", "alice", "r", now=0.0)
    w.arrive("b1", "bob", "r", now=0.0)
    w.p.activity("alice", 8.0, 8.0)
    assert [s.event.data.user_id for s in w.p.tick(10.0)] == ["bob"]  # type: ignore[attr-defined]
    w.p.connect("b2", "bob", 12.0)  # a new device is activity
    assert w.p.status_of("bob") == "online"


def test_auto_away_only_when_chosen_online() -> None:
    w = World(away_after_s=10)
    w.arrive("a1", "alice", "r")
    w.arrive("b1", "bob", "r")
    w.p.set_status("a1", "alice", "busy", 0.0)
    assert all(s.event.data.user_id != "alice" for s in w.p.tick(100.0))  # type: ignore[attr-defined]
    assert w.p.status_of("alice") == "busy"
    # idle but busy: choosing online now shows away until the next activity
    assert norm(w.p.set_status("a1", "alice", "online", 101.0)) == [
        ("presence.update", ("alice", "away"), fs("b1")),
    ]


def test_away_disabled_with_zero() -> None:
    w = World(away_after_s=0)
    w.arrive("a1", "alice", "r")
    w.p.activity("alice", 1.0, 1.0)
    assert w.p.next_deadline() is None
    assert w.p.tick(1e9) == []
    assert w.p.status_of("alice") == "online"
    with pytest.raises(ValueError):
        PresenceTracker(w.rooms.peers_of_user, w.rooms.conns_in, away_after_s=-1)


def test_busy_during_call_and_restore() -> None:
    w = World(away_after_s=10)
    w.arrive("a1", "alice", "r")
    w.arrive("b1", "bob", "r")
    assert norm(w.p.set_in_call("alice", True)) == [("presence.update", ("alice", "busy"), fs("a1", "b1"))]
    w.p.tick(50.0)  # idle during the call: still busy
    assert w.p.status_of("alice") == "busy"
    assert norm(w.p.set_in_call("alice", False)) == [("presence.update", ("alice", "away"), fs("a1", "b1"))]
    w.p.set_status("a1", "alice", "away", 51.0)
    w.p.set_in_call("alice", True)
    assert norm(w.p.set_in_call("alice", False)) == [("presence.update", ("alice", "away"), fs("a1", "b1"))]
    assert w.p.set_in_call("nobody", True) == []


def test_last_seen() -> None:
    w = World()
    w.arrive("a1", "alice", "r")
    assert w.p.last_seen("alice") is None
    w.p.activity("alice", 1.0, 1000.0)
    assert w.p.last_seen("alice") == 1000.0
    assert w.p.drain_last_seen() == {"alice": 1000.0}
    assert w.p.drain_last_seen() == {}
    w.leave_all("a1", now=2.0, wall=1005.0)
    assert w.p.last_seen("alice") == 1005.0  # kept after going offline
    assert w.p.drain_last_seen() == {"alice": 1005.0}
    assert w.p.activity("alice", 3.0, 2000.0) == [] and w.p.last_seen("alice") == 1005.0  # offline: ignored
    w.p.load_last_seen({"carol": 5.0})
    assert w.p.last_seen("carol") == 5.0 and w.p.drain_last_seen() == {}


def test_offline_last_seen_is_capped_and_forgets_the_least_recently_seen_first() -> None:
    w = World(last_seen_cap=3)
    w.arrive("a1", "alice", "r")
    w.p.activity("alice", 0.0, 1.0)
    for n in range(100):  # anonymous guests: a new user id per connection
        w.arrive(f"g{n}", f"guest-{n}", "r")
        w.p.activity(f"guest-{n}", 0.0, 10.0 + n)
        w.leave_all(f"g{n}", wall=20.0 + n)
    assert w.p.last_seen_count == 1 + 3  # alice (connected) and the three most recent guests
    assert [w.p.last_seen(f"guest-{n}") for n in (96, 97, 98, 99)] == [None, 117.0, 118.0, 119.0]
    assert w.p.last_seen("alice") == 1.0  # a connected user is never forgotten, however idle
    # a user coming back takes their value along; going offline again puts it back, most recent
    w.arrive("g97b", "guest-97", "r")
    assert w.p.last_seen("guest-97") == 117.0 and w.p.last_seen_count == 1 + 3
    w.leave_all("g97b", wall=200.0)
    w.arrive("b1", "bob", "r")
    w.leave_all("b1", wall=201.0)
    assert [w.p.last_seen(u) for u in ("guest-98", "guest-99", "guest-97", "bob")] == [None, 119.0, 200.0, 201.0]
    # every change still reaches the drain once, forgotten or not (the daemon persists them)
    drained = w.p.drain_last_seen()
    assert len(drained) == 1 + 100 + 1 and drained["guest-0"] == 20.0 and w.p.drain_last_seen() == {}


def test_loaded_last_seen_never_overrides_a_fresher_value_and_obeys_the_cap() -> None:
    w = World(last_seen_cap=2)
    w.arrive("a1", "alice", "r")
    w.p.load_last_seen({"alice": 5.0})
    assert w.p.last_seen("alice") == 5.0  # connected, nothing newer known: storage's value shows
    w.p.activity("alice", 0.0, 50.0)
    w.p.load_last_seen({"alice": 6.0, "x": 1.0, "y": 2.0, "z": 3.0})
    assert w.p.last_seen("alice") == 50.0
    assert [w.p.last_seen(u) for u in ("x", "y", "z")] == [None, 2.0, 3.0]
    assert w.p.drain_last_seen() == {"alice": 50.0}
    with pytest.raises(ValueError):
        World(last_seen_cap=-1)


def test_typing_start_renew_expire() -> None:
    w = World()
    w.arrive("a1", "alice", "r")
    w.arrive("a2", "alice", "r")
    w.arrive("b1", "bob", "r")
    assert norm(w.p.typing("a1", "alice", "r", True, 0.0, 5.0)) == [
        ("chat.typing.user", ("r", "alice", True), fs("a2", "b1")),
    ]
    assert w.p.typing("a1", "alice", "r", True, 3.0, 5.0) == []  # renewal: silent, deadline pushed
    assert w.p.next_deadline() == 8.0
    assert w.p.tick(7.9) == []
    assert norm(w.p.tick(8.0)) == [("chat.typing.user", ("r", "alice", False), fs("a2", "b1"))]
    assert not w.p.is_typing("alice", "r") and w.p.next_deadline() is None


def test_typing_explicit_stop_and_multi_device() -> None:
    w = World()
    w.arrive("a1", "alice", "r")
    w.arrive("a2", "alice", "r")
    w.arrive("b1", "bob", "r")
    assert w.p.typing("b1", "bob", "r", False, 0.0, 5.0) == []  # was not typing
    w.p.typing("a1", "alice", "r", True, 0.0, 5.0)
    assert w.p.typing("a2", "alice", "r", True, 1.0, 5.0) == []  # alice is already typing
    assert w.p.typing("a1", "alice", "r", False, 2.0, 5.0) == []  # a2 still typing
    assert norm(w.p.typing("a2", "alice", "r", False, 2.0, 5.0)) == [
        ("chat.typing.user", ("r", "alice", False), fs("a1", "b1")),
    ]
    assert w.p.tick(100.0) == [] and w.p.next_deadline() is None


def test_typing_cleared_on_leave_and_disconnect() -> None:
    w = World()
    w.arrive("a1", "alice", "r1", "r2")
    w.arrive("b1", "bob", "r1", "r2")
    w.p.typing("a1", "alice", "r1", True, 0.0, 5.0)
    w.p.typing("a1", "alice", "r2", True, 0.0, 5.0)
    w.rooms.leave("a1", "r1")
    assert norm(w.p.clear_typing("a1", "r1")) == [("chat.typing.user", ("r1", "alice", False), fs("b1"))]
    assert w.p.clear_typing("a1", "r1") == []
    assert w.leave_all("a1") == [
        ("chat.typing.user", ("r2", "alice", False), fs("b1")),
        ("device.offline", ("a1", "alice"), fs("b1")),
        ("presence.update", ("alice", "offline"), fs("b1")),
    ]
    assert w.p.tick(100.0) == []


def test_typing_expiry_uses_current_members() -> None:
    w = World()
    w.arrive("a1", "alice", "r")
    w.arrive("b1", "bob", "r")
    w.p.typing("a1", "alice", "r", True, 0.0, 5.0)
    w.arrive("c1", "carol", "r")
    w.rooms.leave("b1", "r")
    assert norm(w.p.tick(5.0)) == [("chat.typing.user", ("r", "alice", False), fs("c1"))]
