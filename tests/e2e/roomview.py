"""A client's view of one room, kept as a client library keeps it: from join acks and live events.

The exact-resume tests compare such views: the view of a client that left and came back with
``since_rev`` must equal that of one that never left (or the room as ``chat.history`` shows it).
:class:`RoomView` also asserts "nothing twice": no revision reaches it twice, whether in
``changes`` or live, and "nothing stale": every live event after a join is above the ack's ``rev``.
"""

from __future__ import annotations

from typing import Any

from signald.client import SignaldClient

Msg = dict[str, Any]
CHANGE_EVENTS = frozenset({"chat.message", "chat.edited", "chat.deleted", "chat.redacted", "chat.reaction.update"})


class RoomView:
    """Messages by id in their current state, and the revision to resume from (:attr:`rev`).

    Applied as a client library applies them, by revision: a state (a message or a tombstone) or
    a delta (an event) at or below what the view already holds for that message is skipped. That
    only happens when ``chat.changes`` pages, read after the join, reach past the ack's ``rev``
    into what also comes live; the join ack and the live events themselves never overlap, which
    :meth:`apply_event` and :meth:`join` assert.
    """

    def __init__(self, room: str) -> None:
        self.room = room
        self.messages: dict[str, Msg] = {}
        self.gone: dict[str, int] = {}  # hard-deleted message id -> the deletion's rev
        self.rev = 0
        self.joined_at = 0  # the rev of the last join ack: live events must be above it
        self.live_revs: list[int] = []  # of live events since the last join: ascending, each once

    def _known(self, message_id: str) -> int:
        if message_id in self.gone:
            return self.gone[message_id]
        message = self.messages.get(message_id)
        return -1 if message is None else int(message["rev"])

    def apply_change(self, entry: Msg) -> None:
        """One entry of ``changes``: a message in its current state, or a tombstone."""
        assert entry["room"] == self.room
        # Not a resume point: a page read after the join may be ahead of live events still on their
        # way. The view resumes from the ack's rev or the last live event, whichever is higher.
        if entry["rev"] <= self._known(entry["id"]):
            return
        if entry.get("removed"):
            self.messages.pop(entry["id"], None)
            self.gone[entry["id"]] = entry["rev"]
        else:
            self.messages[entry["id"]] = entry

    def apply_event(self, kind: str, data: Msg) -> None:
        """One live ``chat.*`` change event (others are ignored)."""
        if kind not in CHANGE_EVENTS:
            return
        rev = data["rev"]
        assert rev > self.joined_at, f"live {kind} at rev {rev}, at or below the join's rev {self.joined_at}"
        assert not self.live_revs or rev > self.live_revs[-1], f"live rev {rev} after {self.live_revs[-1]}"
        self.live_revs.append(rev)
        self.rev = max(self.rev, rev)
        message_id = data["id"] if kind in ("chat.message", "chat.edited") else data["message_id"]
        if rev <= self._known(message_id):
            return  # a chat.changes page already showed this message at (or after) this revision
        if kind in ("chat.message", "chat.edited"):
            self.messages[message_id] = data
            return
        if kind == "chat.deleted" and data["mode"] == "hard":
            del self.messages[message_id]
            self.gone[message_id] = rev
            return
        message = self.messages[message_id] = {**self.messages[message_id], "rev": rev}
        if kind == "chat.deleted":
            message.update(body="", attachments=[], reactions={}, deleted_at=data["deleted_at"])
        elif kind == "chat.redacted":
            message.update(body=data["new_body"], attachments=[], redacted=True)
        else:
            reactions = {name: list(users) for name, users in message["reactions"].items()}
            users = reactions.setdefault(data["reaction"], [])
            if data["action"] == "add":
                users.append(data["user_id"])
            else:
                users.remove(data["user_id"])
                if not users:
                    del reactions[data["reaction"]]
            message["reactions"] = reactions

    def apply_pending(self, client: SignaldClient) -> None:
        """Apply the events that have arrived so far (what a client has when its connection drops)."""
        for event in client.pending_events():
            self.apply_event(event["type"], event["data"])

    async def join(self, client: SignaldClient, *, since_rev: int | None = None) -> Msg:
        """``room.join`` with ``since_rev`` (default: the view's), paging on with ``chat.changes``."""
        after = self.rev if since_rev is None else since_rev
        ack: Msg = await client.request("room.join", {"room": self.room, "since_rev": after})
        assert not ack.get("changes_reset"), ack
        self.joined_at, self.live_revs = ack["rev"], []
        entries, more = ack["changes"], ack["changes_truncated"]
        revs = [e["rev"] for e in entries]
        assert revs == sorted(set(revs)) and all(after < rev <= ack["rev"] for rev in revs), (after, ack)
        while True:
            for entry in entries:
                self.apply_change(entry)
            if not more:
                break
            after = entries[-1]["rev"]
            page = await client.request("chat.changes", {"room": self.room, "after_rev": after})
            entries, more = page["changes"], page["has_more"]
            revs = [e["rev"] for e in entries]
            assert revs == sorted(set(revs)) and all(rev > after for rev in revs), page
        self.rev = max(self.rev, ack["rev"])
        return ack

    def as_history(self) -> list[Msg]:
        """The messages as ``chat.history`` lists them (ascending ``seq``)."""
        return sorted(self.messages.values(), key=lambda m: m["seq"])
