"""The ``members`` of a ``room.join`` ack (and of the server API's presence call).

A reconnect storm builds this list once per rejoin, for rooms of hundreds: 19,000 rejoins into
rooms of 380 built 7 million entries. Each entry is kept until its user's presence
(:attr:`PresenceTracker.changed`) or devices in the room (:attr:`RoomRegistry.changed`) change, so
a join rebuilds only the joiner's own entry; the last-seen text is formatted once per value.
"""

from __future__ import annotations

from typing import Final

from signald.protocol import Member
from signald.state.presence import PresenceTracker
from signald.state.rooms import RoomRegistry
from signald.timefmt import iso_utc

SEEN_TEXTS: Final = 65536  # last-seen texts kept formatted


class MemberLists:
    """Builds a room's member list: one entry per user, with status, devices and last seen."""

    def __init__(self, rooms: RoomRegistry, presence: PresenceTracker) -> None:
        self.rooms = rooms
        self.presence = presence
        self._entries: dict[str, dict[str, Member]] = {}  # room -> user -> entry, while unchanged
        self._seen_text: dict[float, str] = {}  # last-seen epoch -> its ISO text

    def of(self, room: str) -> list[Member]:
        """The room's members, sorted by user id (empty for an unknown room)."""
        self._forget_changed()
        users = self.rooms.sorted_users(room)
        if not users:
            return []
        entries = self._entries.get(room)
        if entries is None:
            entries = self._entries[room] = {}
        members = []
        for user in users:
            member = entries.get(user)
            if member is None:
                member = entries[user] = self._member(room, user)
            members.append(member)
        return members

    def _forget_changed(self) -> None:
        pairs, users = self.rooms.changed.drain(), self.presence.changed.drain()
        entries = self._entries
        if pairs is None or users is None:  # too much changed to say: start over
            entries.clear()
            return
        for room, user in pairs:
            kept = entries.get(room)
            if kept is not None:
                kept.pop(user, None)
                if not kept:
                    del entries[room]
        for user in users:
            for room in self.rooms.rooms_of_user(user):
                kept = entries.get(room)
                if kept is not None:
                    kept.pop(user, None)

    def _member(self, room: str, user: str) -> Member:
        presence = self.presence
        seen = presence.last_seen(user)
        text = None
        if seen is not None:
            text = self._seen_text.get(seen)
            if text is None:
                if len(self._seen_text) >= SEEN_TEXTS:
                    self._seen_text.clear()
                text = self._seen_text[seen] = iso_utc(seen)
        return Member(user_id=user, status=presence.status_of(user), devices=sorted(self.rooms.devices_of(user, room)),
                      last_seen=text)
