"""Room membership: who is in which room, and the events membership changes cause (sans-IO).

:class:`RoomRegistry` is plain synchronous state: no awaits, no sockets, no clocks. Every
mutating operation returns the events it causes as a list of :class:`~signald.state.send.Send` in
delivery order; the caller encodes each event once and delivers it to ``Send.conns``.

Identities
    A connection is an opaque ``str`` conn id and is one *device* (``device_id == conn id``). A user
    is a ``str`` user id. A user with a phone and a laptop in the same room is one *member* with
    two devices. A conn belongs to exactly one user; joining with another user id raises
    ``ValueError`` (a programming error, never a client error).

State
    Rooms exist while they have a connection: created on the first join, dropped when the last
    connection leaves. Both directions are indexed (room -> user -> conns, room -> conns,
    conn -> rooms, user -> conns that are in at least one room), so every query below is a lookup.

Rules (recipients never include the connection whose request caused the event: it gets the ack)
    ``join``
      * ``LIMIT_EXCEEDED`` when the conn is already in ``max_rooms`` rooms (joining a room it is
        already in never counts against the limit).
      * A join of a room the conn is already in is idempotent: same outcome shape, no events at all
        (not even ``room.waiting``), ``already_member=True``.
      * ``member.joined {room, user_id}`` goes to the room's other connections on the user's
        *first device in*; a second device of a user already in the room causes no event.
      * ``room.active {room}`` goes to every connection of the room except the joiner when the number
        of distinct users goes from 1 to 2. That can only happen on a first device in, so none of the
        joiner's own devices is in the room then; the joiner learns it from ``active`` in the ack.
      * ``room.waiting {room}`` goes to the joining conn, *after* its ack (``JoinOutcome.after_ack``),
        whenever the joiner's user is the only user in the room after a (non-idempotent) join — on
        the first device into an empty room and also on a further device of the lone user. The
        user's devices already in the room are not told again (nothing changed for them).
      * Order in ``sends``: ``member.joined`` then ``room.active``.
    ``leave`` (``NOT_IN_ROOM`` when the conn is not a member)
      * ``member.left {room, user_id}`` to the room's remaining connections on the user's *last
        device out*; a device leaving while another device of the user stays causes no event.
      * ``room.waiting {room}`` to the connections of the remaining user when the number of distinct
        users goes from 2 or more to exactly 1. Order: ``member.left`` then ``room.waiting``.
    ``disconnect``: leaves every room of the conn, in sorted room-name order, with the same events;
      never raises (an unknown conn returns ``[]``).
    ``kick``: removes all of a user's conns from the room (``NOT_IN_ROOM`` if the user is not in it)
      and returns ``member.left`` / ``room.waiting`` for the others. The caller sends ``room.kicked``
      to the kicked conns: read them with ``devices_of(user, room)`` *before* calling ``kick``.
    A :class:`Send` never has an empty ``conns``; events without recipients are not returned.

Presence fan-out
    ``peers_of_user(user)`` is every conn that shares at least one room with any device of the user,
    *including the user's own other devices that are in a room* (docs/protocol.md's echo rule: the
    sender's other devices are "other connections concerned"). Callers exclude the requesting conn.
"""

from __future__ import annotations

from bisect import bisect_left, insort

import attrs

from signald.errors import SignalError
from signald.protocol import (
    MemberJoinedEvent,
    MemberLeftEvent,
    Outbound,
    RoomActiveEvent,
    RoomData,
    RoomUserData,
    RoomWaitingEvent,
)
from signald.state.changes import Changes
from signald.state.send import Send

__all__ = ["JoinOutcome", "RoomRegistry"]


@attrs.frozen(slots=True)
class JoinOutcome:
    """Result of :meth:`RoomRegistry.join`.

    ``sends`` are delivered at once (before the ack); ``after_ack`` only after the joiner's ack.
    """

    room: str
    sends: list[Send]
    after_ack: list[Send]
    first_device_in: bool
    active: bool
    already_member: bool


def _send(out: list[Send], conns: set[str] | frozenset[str], event: Outbound, room: str | None = None) -> None:
    """``room``: ``conns`` are everyone in that room (its member events; see :class:`Send`)."""
    if conns:
        out.append(Send(frozenset(conns), event, room))


class RoomRegistry:
    """Membership of connections in rooms, grouped per user. See the module docstring for rules."""

    def __init__(self) -> None:
        self._members: dict[str, dict[str, set[str]]] = {}  # room -> user -> conns
        self._room_conns: dict[str, set[str]] = {}  # room -> conns
        self._conn_rooms: dict[str, set[str]] = {}  # conn -> rooms (only conns in >= 1 room)
        self._conn_user: dict[str, str] = {}  # conn -> user (only conns in >= 1 room)
        self._user_conns: dict[str, set[str]] = {}  # user -> conns in >= 1 room
        self._sorted_users: dict[str, list[str]] = {}  # room -> its users, sorted (kept so: joins are many)
        # (room, user) whose devices in the room changed (the app's member lists read it).
        self.changed: Changes[tuple[str, str]] = Changes()

    # ------------------------------------------------------------------ mutations

    def check_join(self, conn: str, user: str, room: str, *, max_rooms: int) -> None:
        """Raise what :meth:`join` would raise, changing nothing (for a join that reads first)."""
        known = self._conn_user.get(conn)
        if known is not None and known != user:
            raise ValueError(f"connection {conn!r} belongs to {known!r}, not {user!r}")
        rooms = self._conn_rooms.get(conn)
        if rooms is not None and room not in rooms and len(rooms) >= max_rooms:
            raise SignalError("LIMIT_EXCEEDED", f"a connection may be in at most {max_rooms} rooms")

    def join(self, conn: str, user: str, room: str, *, max_rooms: int) -> JoinOutcome:
        """Add ``conn`` (a device of ``user``) to ``room``; raises ``LIMIT_EXCEEDED``."""
        self.check_join(conn, user, room, max_rooms=max_rooms)
        rooms = self._conn_rooms.get(conn)
        if rooms is not None and room in rooms:
            users = self._members[room]
            return JoinOutcome(room, [], [], False, len(users) >= 2, True)

        users = self._members.setdefault(room, {})
        conns = self._room_conns.setdefault(room, set())
        first_device_in = user not in users
        sends: list[Send] = []
        if first_device_in:
            _send(sends, conns, MemberJoinedEvent(data=RoomUserData(room=room, user_id=user)), room)
            if len(users) == 1:
                _send(sends, conns, RoomActiveEvent(data=RoomData(room=room)))
            insort(self._sorted_users.setdefault(room, []), user)
        users.setdefault(user, set()).add(conn)
        self.changed.add((room, user))
        conns.add(conn)
        self._conn_rooms.setdefault(conn, set()).add(room)
        self._conn_user[conn] = user
        self._user_conns.setdefault(user, set()).add(conn)

        after_ack: list[Send] = []
        if len(users) == 1:
            _send(after_ack, {conn}, RoomWaitingEvent(data=RoomData(room=room)))
        return JoinOutcome(room, sends, after_ack, first_device_in, len(users) >= 2, False)

    def leave(self, conn: str, room: str) -> list[Send]:
        """Remove ``conn`` from ``room``; raises ``NOT_IN_ROOM`` if it is not a member."""
        if not self.is_member(conn, room):
            raise SignalError("NOT_IN_ROOM", f"not in room {room!r}")
        return self._remove(conn, room)

    def disconnect(self, conn: str, *, announce: bool = True) -> list[Send]:
        """Leave every room of ``conn`` (sorted by room name); never raises.

        Without ``announce`` no event is made (a stopping server: every peer is leaving too, and
        each event would cost a copy of its room's connections)."""
        sends: list[Send] = []
        for room in sorted(self._conn_rooms.get(conn, ())):
            sends.extend(self._remove(conn, room, announce))
        return sends

    def kick(self, room: str, user: str) -> list[Send]:
        """Remove every device of ``user`` from ``room``; events for the others only.

        Raises ``NOT_IN_ROOM`` when the user has no device in the room.
        """
        devices = self._members.get(room, {}).get(user)
        if not devices:
            raise SignalError("NOT_IN_ROOM", f"{user!r} is not in room {room!r}")
        sends: list[Send] = []
        for conn in sorted(devices):
            sends.extend(self._remove(conn, room))
        return sends

    def _remove(self, conn: str, room: str, announce: bool = True) -> list[Send]:
        users = self._members[room]
        conns = self._room_conns[room]
        user = self._conn_user[conn]
        devices = users[user]
        devices.discard(conn)
        conns.discard(conn)
        rooms = self._conn_rooms[conn]
        rooms.discard(room)
        if not rooms:
            del self._conn_rooms[conn]
            del self._conn_user[conn]
            own = self._user_conns[user]
            own.discard(conn)
            if not own:
                del self._user_conns[user]

        self.changed.add((room, user))
        sends: list[Send] = []
        if not devices:
            del users[user]
            ordered = self._sorted_users[room]
            del ordered[bisect_left(ordered, user)]  # found by halving, not compared one by one (rooms of hundreds)
            if announce:
                _send(sends, conns, MemberLeftEvent(data=RoomUserData(room=room, user_id=user)), room)
            if announce and len(users) == 1:
                (remaining,) = users.values()
                _send(sends, remaining, RoomWaitingEvent(data=RoomData(room=room)))
        if not users:
            del self._members[room]
            del self._room_conns[room]
            del self._sorted_users[room]
        return sends

    # ------------------------------------------------------------------ queries

    def rooms_of(self, conn: str) -> frozenset[str]:
        """The rooms ``conn`` is in."""
        return frozenset(self._conn_rooms.get(conn, ()))

    def conns_in(self, room: str) -> frozenset[str]:
        """Every connection in ``room`` (empty for an unknown room)."""
        return frozenset(self._room_conns.get(room, ()))

    def users_in(self, room: str) -> frozenset[str]:
        """The distinct users in ``room``."""
        return frozenset(self._members.get(room, ()))

    def devices_of(self, user: str, room: str) -> frozenset[str]:
        """The conns of ``user`` in ``room``."""
        return frozenset(self._members.get(room, {}).get(user, ()))

    def members(self, room: str) -> list[tuple[str, list[str]]]:
        """``[(user_id, sorted conn ids)]`` sorted by user id, for the ``room.join`` ack."""
        users = self._members.get(room)
        if users is None:
            return []
        return [(user, sorted(users[user])) for user in self._sorted_users[room]]

    def sorted_users(self, room: str) -> list[str]:
        """The distinct users in ``room``, sorted (do not modify)."""
        return self._sorted_users.get(room, [])

    def is_member(self, conn: str, room: str) -> bool:
        """Whether ``conn`` is in ``room``."""
        return room in self._conn_rooms.get(conn, ())

    def user_of(self, conn: str) -> str | None:
        """The user of ``conn`` while it is in at least one room, else ``None``."""
        return self._conn_user.get(conn)

    def rooms_of_user(self, user: str) -> frozenset[str]:
        """The rooms where ``user`` has at least one device."""
        return frozenset(r for c in self._user_conns.get(user, ()) for r in self._conn_rooms[c])

    def peers_of_user(self, user: str) -> set[str]:
        """Every conn sharing a room with any device of ``user``, the user's own devices included."""
        peers: set[str] = set()
        for room in self.rooms_of_user(user):
            peers |= self._room_conns[room]
        return peers

    def shares_room(self, user_a: str, user_b: str) -> bool:
        """Whether the two users have a device in at least one common room."""
        rooms_b = self.rooms_of_user(user_b)
        return any(r in rooms_b for r in self.rooms_of_user(user_a))

    @property
    def room_count(self) -> int:
        """Number of rooms (all non-empty)."""
        return len(self._members)

    def room_names(self) -> list[str]:
        """Every room name, sorted."""
        return sorted(self._members)
