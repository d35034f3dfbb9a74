"""A live view of one room, kept exact by revision: messages, members, presence, typing, ``rev``.

Pure: the client core feeds it join acks, ``changes`` pages, history pages and live events; it
never does I/O. The rules are those of docs/protocol.md, "Exact resume" → "What a client does":

- :attr:`Room.rev` is the resume point: the highest of the last join ack's ``rev`` and the
  ``rev`` of every live change event since. Pages never move it (live events below a page's
  revisions may still be on their way).
- A page entry or live event whose ``rev`` is not above the ``rev`` the view already holds for
  that message (or for its hard deletion) is skipped: that is how "nothing twice, nothing stale"
  holds when ``chat.changes`` pages reach into what also arrives live.
- While the view is not in sync (a (re)join's ack or pages are on their way) a delta event (soft
  delete, redact, reaction) waits: the message it changes may come in a page at a lower ``rev``
  than the event (the server delivers what was committed during its read before the ack, and a
  page's reply may be overtaken by an event). It is applied on top of that page entry, or on top of
  what the view holds once in sync (:meth:`Room.caught_up`). Applied at once, it would be lost on a
  message not yet held, or applied to a stale copy that the page's older entry then cannot correct.
- In sync, a delta event for a message the view does not hold is skipped: the view only lacks
  messages that retention removed.
"""

from __future__ import annotations

from typing import Any, Final

Msg = dict[str, Any]
CHANGE_EVENTS: Final = frozenset({"chat.message", "chat.edited", "chat.deleted", "chat.redacted",
                                  "chat.reaction.update"})


def own_change(request_type: str, data: Msg, result: Any, user_id: str | None) -> tuple[str, Msg] | None:
    """The ack of our own delete, redact or reaction, shaped as the event others get (None: nothing)."""
    if not isinstance(result, dict) or "rev" not in result:
        return None  # a reaction that changed nothing, or not a change
    if request_type == "chat.reaction":
        return "chat.reaction.update", {"message_id": data["message_id"], "user_id": user_id,
                                        "reaction": data["reaction"], "action": data["action"], "rev": result["rev"]}
    if request_type == "chat.delete":
        return "chat.deleted", {**result, "mode": data.get("mode", "soft")}
    if request_type == "chat.redact":
        return "chat.redacted", dict(result)
    return None


def apply_own(rooms: dict[str, Room], request_type: str, data: Msg, result: Any, user_id: str | None) -> None:
    """Our own change's ack: into the views as the event would be (by revision, resume point unmoved)."""
    if request_type in ("chat.send", "chat.edit") and isinstance(result, dict):
        room = rooms.get(str(result.get("room")))
        if room is not None:
            room.apply_entry(result)
        return
    change = own_change(request_type, data, result, user_id)
    if change is not None:
        kind, delta = change
        for room in rooms.values():
            if room.message(str(delta["message_id"])) is not None:
                room.apply_event(kind, delta, live=False)


class Room:
    """One room as the client sees it; :attr:`messages` in ``seq`` order, hard-deleted ones gone."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rev = 0
        self.members: dict[str, Msg] = {}  # user id -> {user_id, status, devices, last_seen?}
        self.typing: set[str] = set()  # user ids typing now
        self.synced = False  # False while (re)joining: messages may still be behind
        self.left = False  # the program left, or the room was left by a kick: not rejoined
        self._messages: dict[str, Msg] = {}
        self._gone: dict[str, int] = {}  # hard-deleted message id -> the deletion's rev
        self._waiting: dict[str, list[tuple[str, Msg]]] = {}  # message id -> delta events received while syncing

    @property
    def messages(self) -> list[Msg]:
        """The current messages in ascending ``seq`` (soft-deleted ones as tombstones)."""
        return sorted(self._messages.values(), key=lambda m: int(m["seq"]))

    @property
    def presence(self) -> dict[str, str]:
        """Each member's status (``online``, ``away``, ``busy``, ``offline``)."""
        return {user: str(member["status"]) for user, member in self.members.items()}

    def message(self, message_id: str) -> Msg | None:
        return self._messages.get(message_id)

    def max_seq(self) -> int:
        return max((int(m["seq"]) for m in self._messages.values()), default=0)

    def _known(self, message_id: str) -> int:
        if message_id in self._gone:
            return self._gone[message_id]
        message = self._messages.get(message_id)
        return -1 if message is None else int(message["rev"])

    # --- joins and pages -------------------------------------------------------------------

    def joined(self, ack: Msg) -> None:
        """A ``room.join`` ack: members replace ours; ``rev`` becomes a resume point."""
        self.members = {str(m["user_id"]): dict(m) for m in ack.get("members", [])}
        self.typing.clear()  # the server repeats ``typing: true`` only on a change; stale otherwise
        self.rev = max(self.rev, int(ack["rev"]))

    def caught_up(self) -> None:
        """The (re)join's last page is in: apply the delta events that waited, in ``rev`` order."""
        self.synced = True
        waiting, self._waiting = self._waiting, {}
        self._apply_waiting([event for events in waiting.values() for event in events])

    def reset(self) -> None:
        """``changes_reset``: forget every message; a history reload follows."""
        self._messages.clear()
        self._gone.clear()

    def apply_entry(self, entry: Msg) -> bool:
        """One ``changes`` entry or ``chat.history`` message; True if it was new to the view."""
        message_id = str(entry["id"])
        if int(entry["rev"]) <= self._known(message_id):
            return False
        waiting = self._waiting.pop(message_id, [])
        if entry.get("removed"):
            self._messages.pop(message_id, None)
            self._gone[message_id] = int(entry["rev"])
            return False
        new = message_id not in self._messages
        self._messages[message_id] = dict(entry)
        self._apply_waiting(waiting)  # those above the entry's rev
        return new

    # --- live events -----------------------------------------------------------------------

    def apply_event(self, kind: str, data: Msg, *, live: bool = True) -> bool:
        """One event of this room; True if it changed the view's messages.

        ``live=False`` applies the result of one of our own requests (the ack of a ``chat.delete``,
        say, shaped as its event): by revision like a page entry, without moving :attr:`rev`.
        """
        if kind in CHANGE_EVENTS:
            return self._apply_change(kind, data, live)
        if kind == "member.joined":
            self.members.setdefault(str(data["user_id"]), {"user_id": data["user_id"], "status": "online",
                                                           "devices": []})
        elif kind == "member.left":
            self.members.pop(str(data["user_id"]), None)
            self.typing.discard(str(data["user_id"]))
        elif kind == "chat.typing.user":
            (self.typing.add if data["typing"] else self.typing.discard)(str(data["user_id"]))
        return False

    def apply_user_event(self, kind: str, data: Msg) -> None:
        """``presence.update`` and ``device.online``/``device.offline``: they name a user, not a room."""
        member = self.members.get(str(data["user_id"]))
        if member is None:
            return
        if kind == "presence.update":
            member["status"] = data["status"]
        elif kind == "device.online" and data["device_id"] not in member["devices"]:
            member["devices"] = [*member["devices"], data["device_id"]]
        elif kind == "device.offline":
            member["devices"] = [d for d in member["devices"] if d != data["device_id"]]

    def _apply_waiting(self, events: list[tuple[str, Msg]]) -> None:
        for kind, data in sorted(events, key=lambda event: int(event[1]["rev"])):
            self._apply_change(kind, data, live=False, waited=True)

    def _apply_change(self, kind: str, data: Msg, live: bool, waited: bool = False) -> bool:
        rev = int(data["rev"])
        if live:  # the resume point moves with live events only: an ack may overtake an event below it
            self.rev = max(self.rev, rev)
        message_id = str(data["id"] if kind in ("chat.message", "chat.edited") else data["message_id"])
        if rev <= self._known(message_id):
            return False  # a chat.changes page already showed this message at (or after) this revision
        if kind in ("chat.message", "chat.edited"):
            self._messages[message_id] = dict(data)
            return True
        if kind == "chat.deleted" and data["mode"] == "hard":
            self._messages.pop(message_id, None)
            self._gone[message_id] = rev
            return True
        current = self._messages.get(message_id)
        if not (self.synced or waited):  # a page on its way may bring a newer state below this rev: wait for it
            self._waiting.setdefault(message_id, []).append((kind, data))
            return current is not None  # passed on as it would be at once (the view applies it later)
        if current is None:
            return False  # not held (removed by retention before we loaded): nothing to change
        message = self._messages[message_id] = {**current, "rev": rev}
        if kind == "chat.deleted":
            message.update(body="", attachments=[], reactions={}, deleted_at=data["deleted_at"])
        elif kind == "chat.redacted":
            message.update(body=data["new_body"], attachments=[], redacted=True)
        else:
            reactions = {name: list(users) for name, users in message["reactions"].items()}
            users = reactions.setdefault(str(data["reaction"]), [])
            if data["action"] == "add":
                if data["user_id"] not in users:
                    users.append(data["user_id"])
            elif data["user_id"] in users:
                users.remove(data["user_id"])
            if not users:
                del reactions[str(data["reaction"])]
            message["reactions"] = reactions
        return True

    def __repr__(self) -> str:
        return f"Room({self.name!r}, rev={self.rev}, messages={len(self._messages)}, members={sorted(self.members)})"
