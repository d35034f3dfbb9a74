"""Member lists keep their entries between joins: after any sequence of presence and room changes
the list must equal one built from scratch (what a joiner would have got without the kept entries)."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from signald.app.members import MemberLists
from signald.protocol import Member
from signald.state.changes import Changes
from signald.state.presence import PresenceTracker
from signald.state.rooms import RoomRegistry
from signald.timefmt import iso_utc

USERS = ("ann", "bob", "cat", "dan")  # dan never connects
CONNS = ("c1", "c2", "c3", "c4", "c5")
OWNER = {"c1": "ann", "c2": "ann", "c3": "bob", "c4": "bob", "c5": "cat"}  # two users with two devices
ROOMS = ("r1", "r2")
STATUSES = ("online", "away", "busy", "offline")


class MembersMachine(RuleBasedStateMachine):
    @initialize(cap=st.sampled_from([2, 1000]), seen_cap=st.sampled_from([1, 100]))
    def start(self, cap: int, seen_cap: int) -> None:
        self.rooms = RoomRegistry()
        self.presence = PresenceTracker(self.rooms.peers_of_user, self.rooms.conns_in, away_after_s=10,
                                        last_seen_cap=seen_cap)
        self.rooms.changed = Changes(cap)  # a small cap: the "too much changed" path too
        self.presence.changed = Changes(cap)
        self.kept = MemberLists(self.rooms, self.presence)
        self.user_of: dict[str, str] = {}  # connected conn -> user
        self.now = 0.0
        self.wall = 1.7e9

    def _tick_clock(self) -> None:
        self.now += 1
        self.wall += 1.5

    def _connect(self, conn: str) -> None:
        if conn not in self.user_of:
            self._tick_clock()
            self.user_of[conn] = OWNER[conn]
            self.presence.connect(conn, OWNER[conn], self.now)

    @rule(conn=st.sampled_from(CONNS))
    def disconnect(self, conn: str) -> None:
        if conn not in self.user_of:
            return
        self._tick_clock()
        self.presence.disconnect(conn, self.now, self.wall)
        self.rooms.disconnect(conn)
        del self.user_of[conn]

    @rule(conn=st.sampled_from(CONNS), room=st.sampled_from(ROOMS))
    def join(self, conn: str, room: str) -> None:
        self._connect(conn)  # a device connects, then joins
        self.rooms.join(conn, self.user_of[conn], room, max_rooms=5)

    @rule(conn=st.sampled_from(CONNS), room=st.sampled_from(ROOMS))
    def leave(self, conn: str, room: str) -> None:
        if self.rooms.is_member(conn, room):
            self.rooms.leave(conn, room)

    @rule(user=st.sampled_from(USERS), room=st.sampled_from(ROOMS))
    def kick(self, user: str, room: str) -> None:
        if user in self.rooms.users_in(room):
            self.rooms.kick(room, user)

    @rule(conn=st.sampled_from(CONNS), status=st.sampled_from(STATUSES))
    def set_status(self, conn: str, status: str) -> None:
        if conn in self.user_of:
            self.presence.set_status(conn, self.user_of[conn], status, self.now)  # type: ignore[arg-type]

    @rule(user=st.sampled_from(USERS))
    def activity(self, user: str) -> None:
        self._tick_clock()
        self.presence.activity(user, self.now, self.wall)

    @rule(user=st.sampled_from(USERS), in_call=st.booleans())
    def in_call(self, user: str, in_call: bool) -> None:
        self.presence.set_in_call(user, in_call)

    @rule(seconds=st.sampled_from([1, 11]))
    def time_passes(self, seconds: int) -> None:  # 11 s: idle users go away
        self.now += seconds
        self.presence.tick(self.now)

    @rule(user=st.sampled_from(USERS))
    def stored_last_seen(self, user: str) -> None:
        self.presence.load_last_seen({user: 1.6e9})

    @rule(room=st.sampled_from(ROOMS))
    def look(self, room: str) -> None:
        """A join reads the list: the kept entries must be what a list built now holds."""
        fresh = []
        for user in sorted(self.rooms.users_in(room)):
            seen = self.presence.last_seen(user)
            fresh.append(Member(user_id=user, status=self.presence.status_of(user),
                                devices=sorted(self.rooms.devices_of(user, room)),
                                last_seen=None if seen is None else iso_utc(seen)))
        assert self.kept.of(room) == fresh


TestMemberLists = MembersMachine.TestCase
TestMemberLists.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def test_a_device_leaving_changes_its_users_entry_and_a_new_status_shows() -> None:
    rooms = RoomRegistry()
    presence = PresenceTracker(rooms.peers_of_user, rooms.conns_in)
    lists = MemberLists(rooms, presence)
    for conn in ("c1", "c2"):
        presence.connect(conn, "ann", 0.0)
        rooms.join(conn, "ann", "r", max_rooms=5)
    presence.connect("c3", "bob", 0.0)
    rooms.join("c3", "bob", "r", max_rooms=5)
    assert [(m.user_id, m.devices, m.status) for m in lists.of("r")] == [
        ("ann", ["c1", "c2"], "online"), ("bob", ["c3"], "online")]
    rooms.leave("c1", "r")  # ann is still in the room on c2: no presence change, no member event
    presence.set_status("c3", "bob", "busy", 1.0)
    assert [(m.user_id, m.devices, m.status) for m in lists.of("r")] == [
        ("ann", ["c2"], "online"), ("bob", ["c3"], "busy")]
