"""Presence, automatic away, last seen and typing indicators (sans-IO).

:class:`PresenceTracker` is plain synchronous state: no awaits, no sockets, no clock reads. Callers
pass ``now`` (monotonic seconds, never decreasing between calls) and, where last seen is recorded,
``wall`` (wall-clock epoch seconds as a float; the caller formats it as ISO 8601 for the wire).
Operations return :class:`signald.state.send.Send` lists in delivery order; a ``Send`` never has empty
``conns``.

Recipients
    ``presence.update``, ``device.online`` and ``device.offline`` go to ``peers(user)``, a callable
    given to the constructor (the daemon passes ``RoomRegistry.peers_of_user``): every connection
    sharing a room with the user, the user's own other devices included. It is a set, so a
    connection sharing several rooms gets each event once. The connection that caused the event
    is excluded (``set_status``: the requester, which gets the ack; ``connect``/``disconnect``:
    the device itself). Events the server derives (auto-away, its end, calls) exclude no one.
    ``chat.typing.user`` goes to ``room_conns(room)`` (the daemon passes ``RoomRegistry.conns_in``)
    minus the typing device, computed when the event is emitted, so an expiry uses current members.

Call order for the daemon
    On disconnect call ``presence.disconnect`` *before* ``rooms.disconnect``: recipients are the
    device's room peers, which are gone once the rooms forget it. Call ``activity`` for every
    inbound message *before* handling it (so ``presence.set online`` is not immediately away).

Status
    * Per user: the connected devices, the *chosen* status (``presence.set``; the most recent set
      from any device wins) and the *effective* status others see. A user's state lives while they
      have a connected device; a user who reconnects after being fully offline starts ``online``.
    * Effective status, first rule that applies: no device -> ``offline``; chosen ``offline``
      (invisible) -> ``offline`` (a call does not reveal an invisible user); in a call -> ``busy``;
      chosen ``online`` and idle -> ``away``; otherwise the chosen status.
    * ``presence.update {user_id, status}`` is emitted only when the effective status changes: first
      device connected (offline -> effective), last device gone (-> ``offline``), ``set_status``,
      idle start/end, call start/end. Devices: ``device.online`` / ``device.offline
      {device_id, user_id}`` for every device, before the ``presence.update`` they cause.
    * Automatic away: a user with no ``activity`` (or ``connect``) for ``away_after_s`` seconds
      becomes idle in ``tick``; idle only shows (as ``away``) when the chosen status is ``online`` —
      an explicit ``away``/``busy``/``offline`` is left alone. The next activity ends idleness and
      restores the chosen status. ``away_after_s = 0`` disables it. ``next_deadline`` tells the
      timer task when ``tick`` has work (``None``: nothing pending). An activity learned late
      (``activity(..., ago=s)``: another node's, ``s`` seconds old when heard) counts from when it
      happened; one already older than ``away_after_s`` ends no idleness.
    * Calls: ``set_in_call(user, True/False)``; while in a call the user shows ``busy`` and then
      returns to what the other rules give. Ignored for users with no connected device.
    * Last seen: per user, updated by ``activity`` and ``disconnect`` (the ``wall`` they get).
      A connected user's value is kept with the user's state; once the user goes offline it moves
      to a map of at most ``last_seen_cap`` offline users, which forgets the least recently seen
      first (in auth mode ``none`` every anonymous connection is a new guest id: without a cap the
      map would grow for ever). Connected users are never forgotten. ``drain_last_seen()`` returns
      the entries changed since the previous drain, for the daemon to persist; ``load_last_seen``
      seeds values read back from storage without overriding fresher ones.

Typing (ephemeral, never stored)
    * Per (room, user) the set of devices currently typing, each with its own expiry deadline.
    * ``typing: true`` from a device: ``chat.typing.user {scope, user_id, typing: true}`` goes out
      only when the user goes from not typing to typing in that room; renewals only push the
      deadline to ``now + timeout_s`` (receivers rely on the server's ``typing: false``).
    * ``typing: false``, expiry in ``tick`` and ``clear_typing`` (room leave, kick, disconnect) stop
      that device; ``typing: false`` goes out when the user's last typing device in the room stops.
      Stopping a device that was not typing emits nothing. Membership is checked by the caller.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from typing import Final

import attrs

from signald.protocol import (
    ChatTypingUserEvent,
    DeviceData,
    DeviceOfflineEvent,
    DeviceOnlineEvent,
    Outbound,
    PresenceUpdateData,
    PresenceUpdateEvent,
    Status,
    TypingUserData,
)
from signald.state.changes import Changes
from signald.state.idle import Idleness
from signald.state.send import Send

__all__ = ["LAST_SEEN_CAP", "PresenceTracker"]

LAST_SEEN_CAP: Final = 10_000  # offline users whose last seen is kept in memory (storage has the rest)

Peers = Callable[[str], Collection[str]]


@attrs.define(slots=True)
class _User:
    devices: set[str]
    chosen: Status = "online"
    in_call: bool = False
    idle: bool = False
    shown: Status = "offline"  # the effective status others were last told
    seen: float | None = None  # last seen (wall-clock epoch seconds) while connected

    def effective(self) -> Status:
        if not self.devices or self.chosen == "offline":
            return "offline"
        if self.in_call:
            return "busy"
        if self.chosen == "online" and self.idle:
            return "away"
        return self.chosen


def _send(out: list[Send], conns: Collection[str], event: Outbound, exclude: str | None = None) -> None:
    targets = frozenset(conns).difference((exclude,)) if exclude is not None else frozenset(conns)
    if targets:
        out.append(Send(targets, event))


class PresenceTracker:
    """Online/away/busy/offline per user, devices, last seen and typing. See the module docstring."""

    def __init__(self, peers: Peers, room_conns: Peers, *, away_after_s: float = 300.0,
                 last_seen_cap: int = LAST_SEEN_CAP) -> None:
        if away_after_s < 0:
            raise ValueError("away_after_s must be >= 0")
        if last_seen_cap < 0:
            raise ValueError("last_seen_cap must be >= 0")
        self._peers = peers
        self._room_conns = room_conns
        self._away_after = away_after_s
        self._users: dict[str, _User] = {}
        self._conn_user: dict[str, str] = {}
        self._idleness = Idleness(away_after_s)  # when each non-idle connected user goes idle
        # Last seen of offline users, least recently seen first, at most ``last_seen_cap`` of them.
        self._offline_seen: OrderedDict[str, float] = OrderedDict()
        self._seen_cap = last_seen_cap
        self._seen_dirty: dict[str, float] = {}  # changed since the last drain
        self._typing: dict[tuple[str, str], dict[str, float]] = {}  # (room, user) -> conn -> deadline
        self._typing_of: dict[str, dict[str, str]] = {}  # conn -> room -> user
        self._typing_heap: list[tuple[float, int, str, str, str]] = []  # deadline, n, room, user, conn
        self._counter = itertools.count()
        # Users whose status, devices or last seen may have changed (the app's member lists read it).
        self.changed: Changes[str] = Changes()

    # ------------------------------------------------------------------ devices

    def connect(self, conn: str, user: str, now: float) -> list[Send]:
        """A device of ``user`` connected; counts as activity."""
        state = self._users.get(user)
        if state is None:
            state = self._users[user] = _User(devices=set(), seen=self._offline_seen.pop(user, None))
        state.devices.add(conn)
        self._conn_user[conn] = user
        sends: list[Send] = []
        _send(sends, self._peers(user), DeviceOnlineEvent(data=DeviceData(device_id=conn, user_id=user)),
              exclude=conn)
        self._touch(user, now)
        self._publish(user, sends, exclude=conn)
        return sends

    def disconnect(self, conn: str, now: float, wall: float, *, announce: bool = True) -> list[Send]:
        """A device went away: clears its typing, ``device.offline``, maybe ``presence.update``.

        Without ``announce`` the state changes the same (last seen included) but no event is made:
        a stopping server, whose every peer is leaving too."""
        user = self._conn_user.pop(conn, None)
        if user is None:
            return []
        sends = self.clear_typing(conn, None)
        state = self._users[user]
        state.devices.discard(conn)
        self._set_last_seen(user, wall)
        if announce:
            _send(sends, self._peers(user), DeviceOfflineEvent(data=DeviceData(device_id=conn, user_id=user)),
                  exclude=conn)
            self._publish(user, sends, exclude=conn)
        else:
            state.shown = state.effective()  # what the others would have been told
        if not state.devices:
            del self._users[user]
            self._idleness.forget(user)
            self._remember_offline(user, wall)
        return sends

    # ------------------------------------------------------------------ status

    def set_status(self, conn: str, user: str, status: Status, now: float) -> list[Send]:
        """``presence.set`` from ``conn``: the user's chosen status (last writer wins)."""
        state = self._users.get(user)
        if state is None:
            return []
        state.chosen = status
        sends: list[Send] = []
        self._publish(user, sends, exclude=conn)
        return sends

    def activity(self, user: str, now: float, wall: float, *, ago: float = 0.0) -> list[Send]:
        """Any inbound message from any device of ``user`` (``ago`` seconds before ``now`` and
        ``wall``: one learned late): ends idleness, records last seen."""
        state = self._users.get(user)
        if state is None:
            return []
        if ago > 0:
            now, wall = now - ago, max(wall - ago, state.seen or 0.0)
            if 0 < self._away_after <= ago:  # that activity is idle again by now
                state.seen = self._seen_dirty[user] = wall
                return []
        state.seen = self._seen_dirty[user] = wall
        self._touch(user, now)
        sends: list[Send] = []
        self._publish(user, sends)
        return sends

    def set_in_call(self, user: str, in_call: bool) -> list[Send]:
        """The user entered (``True``) or left (``False``) an answered call."""
        state = self._users.get(user)
        if state is None:
            return []
        state.in_call = in_call
        sends: list[Send] = []
        self._publish(user, sends)
        return sends

    def status_of(self, user: str) -> Status:
        """The effective status others see (``offline`` for an unknown user)."""
        state = self._users.get(user)
        return state.effective() if state is not None else "offline"

    def chosen_status(self, user: str) -> Status:
        """The user's own chosen status (``offline`` for an unknown user)."""
        state = self._users.get(user)
        return state.chosen if state is not None else "offline"

    def devices_of(self, user: str) -> frozenset[str]:
        """The connected devices of ``user``."""
        state = self._users.get(user)
        return frozenset(state.devices) if state is not None else frozenset()

    def user_of(self, conn: str) -> str | None:
        """The user of connected device ``conn``, or None."""
        return self._conn_user.get(conn)

    def device_count(self, user: str) -> int:
        """How many devices ``user`` has connected (without copying them)."""
        state = self._users.get(user)
        return len(state.devices) if state is not None else 0

    def is_online(self, user: str) -> bool:
        """Whether ``user`` has at least one connected device."""
        return user in self._users

    def device_total(self) -> int:
        """How many devices are connected, all users together."""
        return sum(len(state.devices) for state in self._users.values())

    @property
    def user_count(self) -> int:
        """Number of users with at least one connected device."""
        return len(self._users)

    def last_seen(self, user: str) -> float | None:
        """Wall-clock epoch seconds of the user's last activity or disconnect, if still in memory."""
        state = self._users.get(user)
        if state is not None:
            return state.seen
        return self._offline_seen.get(user)

    @property
    def last_seen_count(self) -> int:
        """How many users' last seen is held in memory (connected users plus the capped offline map)."""
        return sum(state.seen is not None for state in self._users.values()) + len(self._offline_seen)

    def drain_last_seen(self) -> dict[str, float]:
        """Last-seen entries changed since the previous call (for persistence)."""
        changed, self._seen_dirty = self._seen_dirty, {}
        return changed

    def undrain_last_seen(self, entries: Mapping[str, float]) -> None:
        """Entries a drain returned that could not be persisted: changed again (newer ones win)."""
        for user, wall in entries.items():
            self._seen_dirty.setdefault(user, wall)

    def load_last_seen(self, entries: Mapping[str, float]) -> None:
        """Seed last-seen values (e.g. from storage) without marking them changed.

        A value already in memory is newer than storage's (storage only has what was drained), so
        it is kept; offline users loaded here count against ``last_seen_cap`` like any other.
        """
        for user, wall in entries.items():
            state = self._users.get(user)
            if state is not None:
                if state.seen is None:
                    state.seen = wall
            elif user not in self._offline_seen:
                self._remember_offline(user, wall)
            self.changed.add(user)

    # ------------------------------------------------------------------ typing

    def typing(
        self, conn: str, user: str, room: str, typing: bool, now: float, timeout_s: float
    ) -> list[Send]:
        """``chat.typing`` from ``conn`` (a member of ``room``, checked by the caller)."""
        if not typing:
            return self._stop_typing(conn, room)
        devices = self._typing.setdefault((room, user), {})
        started = not devices
        deadline = now + timeout_s
        devices[conn] = deadline
        self._typing_of.setdefault(conn, {})[room] = user
        heapq.heappush(self._typing_heap, (deadline, next(self._counter), room, user, conn))
        sends: list[Send] = []
        if started:
            event = ChatTypingUserEvent(data=TypingUserData(scope=room, user_id=user, typing=True))
            _send(sends, self._room_conns(room), event, exclude=conn)
        return sends

    def clear_typing(self, conn: str, room: str | None) -> list[Send]:
        """Stop ``conn`` typing in ``room`` (leave, kick) or in every room (``None``: disconnect)."""
        rooms = [room] if room is not None else sorted(self._typing_of.get(conn, ()))
        sends: list[Send] = []
        for name in rooms:
            sends.extend(self._stop_typing(conn, name))
        return sends

    def is_typing(self, user: str, room: str) -> bool:
        """Whether any device of ``user`` is typing in ``room``."""
        return (room, user) in self._typing

    def _stop_typing(self, conn: str, room: str) -> list[Send]:
        rooms = self._typing_of.get(conn)
        if rooms is None or room not in rooms:
            return []
        user = rooms.pop(room)
        if not rooms:
            del self._typing_of[conn]
        devices = self._typing[(room, user)]
        del devices[conn]
        sends: list[Send] = []
        if not devices:
            del self._typing[(room, user)]
            event = ChatTypingUserEvent(data=TypingUserData(scope=room, user_id=user, typing=False))
            _send(sends, self._room_conns(room), event, exclude=conn)
        return sends

    # ------------------------------------------------------------------ timers

    def tick(self, now: float) -> list[Send]:
        """Expire idle users (auto-away) and unrenewed typing whose deadline is ``<= now``."""
        sends: list[Send] = []
        for user in self._idleness.expire(now):
            self._users[user].idle = True
            self._publish(user, sends)
        heap = self._typing_heap
        while heap and heap[0][0] <= now:
            deadline, _, room, user, conn = heapq.heappop(heap)
            if self._typing.get((room, user), {}).get(conn) == deadline:
                sends.extend(self._stop_typing(conn, room))
        return sends

    def next_deadline(self) -> float | None:
        """The earliest ``now`` at which :meth:`tick` has work, or ``None``."""
        heap = self._typing_heap
        while heap and self._typing.get((heap[0][2], heap[0][3]), {}).get(heap[0][4]) != heap[0][0]:
            heapq.heappop(heap)  # drop entries superseded by a renewal or a stop
        deadlines = [heap[0][0]] if heap else []
        idle_at = self._idleness.next_deadline()
        if idle_at is not None:
            deadlines.append(idle_at)
        return min(deadlines) if deadlines else None

    # ------------------------------------------------------------------ internals

    def _touch(self, user: str, now: float) -> None:
        if self._idleness.touch(user, now):  # not when a later activity is known: nothing changes
            self._users[user].idle = False

    def _set_last_seen(self, user: str, wall: float) -> None:
        self._users[user].seen = self._seen_dirty[user] = wall
        self.changed.add(user)

    def _remember_offline(self, user: str, wall: float) -> None:
        seen = self._offline_seen
        seen[user] = wall
        seen.move_to_end(user)
        self.changed.add(user)
        while len(seen) > self._seen_cap:
            self.changed.add(seen.popitem(last=False)[0])

    def _publish(self, user: str, sends: list[Send], exclude: str | None = None) -> None:
        """Every change of a user's state ends here: tell others if the status they see changed."""
        self.changed.add(user)
        state = self._users[user]
        status = state.effective()
        if status != state.shown:
            state.shown = status
            event = PresenceUpdateEvent(data=PresenceUpdateData(user_id=user, status=status))
            _send(sends, self._peers(user), event, exclude=exclude)
