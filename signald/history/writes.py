"""Each write the store offers, run on a database connection: the rules applied, in portable SQL.

Both stores run these functions: SQLite on its writer thread (or inline on the Trio thread),
PostgreSQL on its writer thread, each inside the operation's ``SAVEPOINT`` (or its own
transaction). They return ``(result, on_commit argument)``;
:data:`~signald.history.work.SKIP` as the second means "nothing changed, announce nothing".
Raising :class:`~signald.errors.SignalError` rolls the operation back alone.

Sans-IO: the statements use ``?`` placeholders and SQL both dialects run (the PostgreSQL
connection adapter turns ``?`` into ``%s``); what differs per dialect — how a room's ``seq`` and
``rev`` are taken, how a hard delete is counted — is the :class:`Allocator` each store passes.
The decisions (who may edit, what conflicts, what a soft delete or a redaction keeps) are
:mod:`signald.history.rules`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

import msgspec

from signald.history import rules
from signald.history.queries import Connection, get_message
from signald.history.rules import EMPTY_ATTACHMENTS, SOFT_DELETED_BODY, Deleted, Facts
from signald.protocol import Attachment, ChatMessage, DeleteMode, ReactionAction
from signald.timefmt import iso_utc

__all__ = [
    "SKIP", "Allocator", "Deleted", "SendOp", "delete", "edit", "facts", "mark_read", "react", "redact", "send",
    "send_fn", "set_last_seen",
]

SKIP: Final[Any] = object()
"""The ``on_commit`` argument of an operation that changed nothing: its callback does not run."""

_FACTS_SQL: Final = "SELECT room, seq, user_id, deleted_at, redacted, rev, created_ts FROM messages WHERE id = ?"


class Allocator(Protocol):
    """How a store numbers a room's changes, inside the operation's transaction.

    SQLite: per-room counters in memory, written lazily (:mod:`signald.history.counters`).
    PostgreSQL: the room's row, updated (and so locked) by the inserting transaction.
    """

    @property
    def clock(self) -> Callable[[], float]:
        """The wall clock of the operations (``created_at``, ``edited_at``, age retention)."""

    def take_seq_rev(self, conn: Any, room: str) -> tuple[int, int]:
        """The next ``seq`` and ``rev`` of ``room`` for a message being stored (counted in)."""

    def next_rev(self, conn: Any, room: str) -> int:
        """The next ``rev`` of ``room`` for a change made by the running operation."""

    def removed(self, conn: Any, room: str) -> None:
        """A message of ``room`` was hard-deleted by the running operation."""

    def duplicate_id(self, exc: Exception) -> bool:
        """Whether ``exc`` is the unique index of ``messages.id`` refusing an insert."""


def facts(conn: Connection, message_id: str) -> Facts | None:
    """What the rules need of a stored message, or None."""
    row = conn.execute(_FACTS_SQL, (message_id,)).fetchone()
    if row is None:
        return None
    return Facts(row[0], int(row[1]), row[2], row[3], bool(row[4]), int(row[5]), float(row[6]))


class SendOp:
    """The operation that stores a message (:func:`send`), with its arguments in view (a store may
    store several at once, see ``signald.history.postgres.batch``); attachments encoded once."""

    __slots__ = ("alloc", "attachments", "body", "client_msg_id", "encoded", "parent_id", "room", "user_id")

    def __init__(
        self, alloc: Allocator, room: str, user_id: str, body: str, attachments: Sequence[Attachment],
        parent_id: str | None, client_msg_id: str | None,
    ) -> None:
        rules.check_text(body=body, client_msg_id=client_msg_id)  # before it is queued: it never runs
        self.alloc, self.room, self.user_id, self.body = alloc, room, user_id, body
        self.attachments = list(attachments)
        self.encoded = msgspec.json.encode(self.attachments).decode() if self.attachments else EMPTY_ATTACHMENTS
        self.parent_id, self.client_msg_id = parent_id, client_msg_id

    def __call__(self, conn: Connection) -> tuple[tuple[ChatMessage, bool], Any]:
        return send(conn, self.alloc, self.room, self.user_id, self.body, self.attachments, self.encoded,
                    self.parent_id, self.client_msg_id)


def send_fn(
    alloc: Allocator, room: str, user_id: str, body: str, attachments: Sequence[Attachment],
    parent_id: str | None, client_msg_id: str | None,
) -> SendOp:
    """The operation that stores a message (:func:`send`)."""
    return SendOp(alloc, room, user_id, body, attachments, parent_id, client_msg_id)


def send(
    conn: Connection,
    alloc: Allocator,
    room: str,
    user_id: str,
    body: str,
    attachments: list[Attachment],
    encoded: str,
    parent_id: str | None,
    client_msg_id: str | None,
) -> tuple[tuple[ChatMessage, bool], Any]:
    """Store a message (``encoded``: its attachments as JSON); ``((message, created), event)``."""
    if client_msg_id is not None:
        row = conn.execute(
            "SELECT message_id FROM client_msgs WHERE user_id = ? AND room = ? AND client_msg_id = ?",
            (user_id, room, client_msg_id),
        ).fetchone()
        if row is not None:
            original = get_message(conn, row[0])
            rules.check_retry(original is not None)
            assert original is not None
            return (original, False), SKIP
    if parent_id is not None:
        row = conn.execute("SELECT room FROM messages WHERE id = ?", (parent_id,)).fetchone()
        rules.check_parent(parent_id, None if row is None else row[0], room)
    now = alloc.clock()
    created_at = iso_utc(now)
    seq, rev = alloc.take_seq_rev(conn, room)
    for attempt in range(5):
        message_id = rules.new_id(now)
        try:
            conn.execute(
                "INSERT INTO messages (id, room, seq, rev, user_id, body, attachments, parent_id, created_at,"
                " created_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (message_id, room, seq, rev, user_id, body, encoded, parent_id, created_at, now),
            )
            break
        except Exception as exc:  # pragma: no cover - a 48-bit random id collided
            if attempt == 4 or not alloc.duplicate_id(exc):  # (room, seq) taken: never retry
                raise
    if client_msg_id is not None:
        conn.execute(
            "INSERT INTO client_msgs (user_id, room, client_msg_id, message_id) VALUES (?, ?, ?, ?)",
            (user_id, room, client_msg_id, message_id),
        )
    message = ChatMessage(
        id=message_id, room=room, seq=seq, rev=rev, user_id=user_id, body=body, attachments=attachments,
        parent_id=parent_id, created_at=created_at, edited_at=None, deleted_at=None, redacted=False,
        reactions={},
    )
    return (message, True), message


def edit(conn: Connection, alloc: Allocator, message_id: str, user_id: str, new_body: str) -> tuple[ChatMessage, Any]:
    """Replace the body of the author's message and set ``edited_at``."""
    rules.check_text(new_body=new_body)
    found = rules.check_edit(message_id, facts(conn, message_id), user_id)
    sql = "UPDATE messages SET body = ?, edited_at = ?, rev = ? WHERE id = ?"
    rev = alloc.next_rev(conn, found.room)
    return _updated(conn, message_id, sql, (new_body, iso_utc(alloc.clock()), rev, message_id))


def delete(
    conn: Connection, alloc: Allocator, message_id: str, user_id: str, mode: DeleteMode, moderator: bool
) -> tuple[Deleted, Any]:
    """Soft- or hard-delete a message (author, or anyone with ``moderator``)."""
    found = rules.check_delete(message_id, facts(conn, message_id), user_id, moderator)
    room, seq = found.room, found.seq
    if rules.is_repeat_delete(found, mode):
        assert found.deleted_at is not None
        return Deleted(room, found.deleted_at, found.rev), SKIP
    now = iso_utc(alloc.clock())
    rev = alloc.next_rev(conn, room)
    conn.execute("DELETE FROM reactions WHERE room = ? AND seq = ?", (room, seq))
    if mode == "soft":
        conn.execute(
            "UPDATE messages SET body = ?, attachments = ?, deleted_at = ?, rev = ? WHERE id = ?",
            (SOFT_DELETED_BODY, EMPTY_ATTACHMENTS, now, rev, message_id),
        )
    else:
        conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))
        conn.execute(
            "INSERT INTO tombstones (room, rev, id, seq, created_ts) VALUES (?, ?, ?, ?, ?)",
            (room, rev, message_id, seq, found.created_ts),
        )
        alloc.removed(conn, room)
    result = Deleted(room, now, rev)
    return result, result


def redact(conn: Connection, alloc: Allocator, message_id: str, mask: str) -> tuple[ChatMessage, Any]:
    """Replace the body with ``mask`` and mark it redacted (the caller checks permission)."""
    rules.check_text(mask=mask)
    found = rules.check_redact(message_id, facts(conn, message_id))
    sql = "UPDATE messages SET body = ?, attachments = ?, redacted = 1, rev = ? WHERE id = ?"
    return _updated(conn, message_id, sql, (mask, EMPTY_ATTACHMENTS, alloc.next_rev(conn, found.room), message_id))


def react(
    conn: Connection, alloc: Allocator, message_id: str, user_id: str, reaction: str,
    action: ReactionAction, room: str,
) -> tuple[int | None, Any]:
    """Add or remove a reaction (idempotent); the result is the change's revision, None if nothing changed."""
    rules.check_text(reaction=reaction)
    found = rules.check_react(message_id, facts(conn, message_id), room, action)
    key = (room, found.seq, reaction, user_id)
    if action == "add":
        cur = conn.execute(
            "INSERT INTO reactions (room, seq, reaction, user_id) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING", key)
    else:
        cur = conn.execute(
            "DELETE FROM reactions WHERE room = ? AND seq = ? AND reaction = ? AND user_id = ?", key
        )
    if cur.rowcount <= 0:
        return None, SKIP
    rev = alloc.next_rev(conn, room)
    conn.execute("UPDATE messages SET rev = ? WHERE room = ? AND seq = ?", (rev, room, found.seq))
    return rev, rev


def mark_read(conn: Connection, user_id: str, room: str, message_id: str) -> tuple[bool, Any]:
    """Move the user's read receipt in ``room`` up to the message; the result says whether it moved."""
    found = rules.check_receipt(message_id, facts(conn, message_id), room)
    cur = conn.execute(
        "INSERT INTO read_receipts (user_id, room, seq) VALUES (?, ?, ?) "
        "ON CONFLICT (user_id, room) DO UPDATE SET seq = excluded.seq "
        "WHERE excluded.seq > read_receipts.seq",
        (user_id, room, found.seq),
    )
    moved = cur.rowcount > 0
    return moved, (True if moved else SKIP)


def set_last_seen(conn: Connection, rows: Sequence[tuple[str, str]]) -> tuple[None, Any]:
    """Record when users were last seen, ``(user id, ISO 8601 time)`` each."""
    conn.executemany(
        "INSERT INTO last_seen (user_id, at) VALUES (?, ?) ON CONFLICT (user_id) DO UPDATE SET at = excluded.at",
        rows,
    )
    return None, SKIP


def _updated(conn: Connection, message_id: str, sql: str, args: tuple[Any, ...]) -> tuple[ChatMessage, Any]:
    """Run the ``UPDATE`` of one existing message and return it as stored (result and event)."""
    conn.execute(sql, args)
    message = get_message(conn, message_id)
    assert message is not None
    return message, message
