"""The chat rules of the history: each write the store offers, run on the database connection.

Each function runs inside the operation's ``SAVEPOINT`` (or its own transaction) on the writer
thread, or inline on the Trio thread for a lone ``send``, and returns ``(result, on_commit
argument)``; :data:`~signald.history.work.SKIP` as the second means "nothing changed, announce
nothing". Raising :class:`~signald.errors.SignalError` rolls the operation back alone.

Semantics chosen where the protocol is silent
---------------------------------------------
- ``seq`` is assigned when the message is stored, from a per-room counter kept in memory and
  written to ``rooms`` by the writer thread (:mod:`signald.history.counters`): gap-free per room at
  assignment time, never reused after hard deletes, retention or a crash.
- Message ids are 24 hex digits: 12 of creation time in milliseconds, 12 random.
- ``send`` with a ``parent_id`` that is not a stored message of the same room: ``NOT_FOUND``.
  A retry (same user, room and ``client_msg_id``) returns the original message, folded, with
  ``created=False`` and no ``on_commit``; if the original was hard-deleted meanwhile: ``CONFLICT``
  (never silently re-created).
- ``edit``: author only (``FORBIDDEN``); unknown or hard-deleted: ``NOT_FOUND``; soft-deleted or
  redacted: ``CONFLICT`` (an author cannot undo a moderator's redaction by editing).
- ``delete``: author or moderator; a soft delete empties ``body``, ``attachments`` and
  ``reactions`` and sets ``deleted_at``; repeating it returns the first ``deleted_at``.
- ``redact``: sets ``body`` to the mask, empties ``attachments`` (the content being removed may be
  the attachment), sets ``redacted``; a soft-deleted message: ``CONFLICT``.
- ``react``: ``add`` on a soft-deleted message is ``CONFLICT``; reactions map each reaction to its
  users in the order they reacted; keys are ordered by their earliest current reaction.
- ``mark_read`` never moves a receipt backwards; ``unread`` counts not-deleted messages above it.
- Every change to a room's history takes the room's next revision (:meth:`Transactions.next_rev`)
  and stores it on the message: a send, an edit, a soft delete, a redaction, a reaction that
  changed the set. A hard delete stores it on the message's tombstone. Read receipts, idempotent
  retries, repeated soft deletes and reactions already in place take none.
"""

from __future__ import annotations

import math
import os
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import msgspec

from signald.errors import SignalError
from signald.history.queries import get_message
from signald.history.transactions import Transactions
from signald.history.work import SKIP
from signald.protocol import Attachment, ChatMessage, DeleteMode, ReactionAction
from signald.timefmt import iso_utc

__all__ = ["Deleted", "delete", "edit", "mark_read", "react", "redact", "send", "send_fn", "set_last_seen"]


class Deleted(NamedTuple):
    """Result of :meth:`~signald.history.store.HistoryStore.delete`; ``rev`` that of the deletion
    (for a repeated soft delete, the message's current one)."""

    room: str
    deleted_at: str
    rev: int


def _new_id(now: float) -> str:
    return f"{math.floor(now * 1000) & 0xFFFFFFFFFFFF:012x}{os.urandom(6).hex()}"


def send_fn(
    txns: Transactions, room: str, user_id: str, body: str, attachments: Sequence[Attachment],
    parent_id: str | None, client_msg_id: str | None,
) -> Callable[[sqlite3.Connection], tuple[tuple[ChatMessage, bool], Any]]:
    """The operation that stores a message (:func:`send`); its attachments are encoded here, once."""
    items = list(attachments)
    encoded = msgspec.json.encode(items).decode() if items else "[]"

    def fn(conn: sqlite3.Connection) -> tuple[tuple[ChatMessage, bool], Any]:
        return send(conn, txns, room, user_id, body, items, encoded, parent_id, client_msg_id)

    return fn


def send(
    conn: sqlite3.Connection,
    txns: Transactions,
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
            if original is None:
                raise SignalError("CONFLICT", "the message sent with this client_msg_id was deleted")
            return (original, False), SKIP
    if parent_id is not None:
        row = conn.execute("SELECT room FROM messages WHERE id = ?", (parent_id,)).fetchone()
        if row is None or row[0] != room:
            raise SignalError("NOT_FOUND", f"parent message {parent_id!r} not found in room {room!r}")
    now = txns.clock()
    created_at = iso_utc(now)
    counter = txns.counter(conn, room)
    seq, rev = counter[0] + 1, counter[2] + 1
    for attempt in range(5):
        message_id = _new_id(now)
        try:
            conn.execute(
                "INSERT INTO messages (id, room, seq, rev, user_id, body, attachments, parent_id, created_at,"
                " created_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (message_id, room, seq, rev, user_id, body, encoded, parent_id, created_at, now),
            )
            break
        except sqlite3.IntegrityError as exc:  # pragma: no cover - a 48-bit random id collided
            if attempt == 4 or "messages.id" not in str(exc):  # (room, seq) taken: never retry
                raise
    if client_msg_id is not None:
        conn.execute(
            "INSERT INTO client_msgs (user_id, room, client_msg_id, message_id) VALUES (?, ?, ?, ?)",
            (user_id, room, client_msg_id, message_id),
        )
    counter[0], counter[1], counter[2] = seq, counter[1] + 1, rev
    if txns.rooms_to_trim is not None:
        txns.rooms_to_trim.add(room)
    message = ChatMessage(
        id=message_id, room=room, seq=seq, rev=rev, user_id=user_id, body=body, attachments=attachments,
        parent_id=parent_id, created_at=created_at, edited_at=None, deleted_at=None, redacted=False,
        reactions={},
    )
    return (message, True), message


def edit(
    conn: sqlite3.Connection, txns: Transactions, message_id: str, user_id: str, new_body: str
) -> tuple[ChatMessage, Any]:
    """Replace the body of the author's message and set ``edited_at``."""
    row = conn.execute(
        "SELECT user_id, deleted_at, redacted, room FROM messages WHERE id = ?", (message_id,)).fetchone()
    if row is None:
        raise SignalError("NOT_FOUND", f"message {message_id!r} not found")
    if row[0] != user_id:
        raise SignalError("FORBIDDEN", "only the author can edit a message")
    if row[1] is not None:
        raise SignalError("CONFLICT", "the message was deleted")
    if row[2]:
        raise SignalError("CONFLICT", "the message was redacted")
    sql = "UPDATE messages SET body = ?, edited_at = ?, rev = ? WHERE id = ?"
    rev = txns.next_rev(conn, row[3])
    return _updated(conn, message_id, sql, (new_body, iso_utc(txns.clock()), rev, message_id))


def delete(
    conn: sqlite3.Connection, txns: Transactions, message_id: str, user_id: str, mode: DeleteMode, moderator: bool
) -> tuple[Deleted, Any]:
    """Soft- or hard-delete a message (author, or anyone with ``moderator``)."""
    row = conn.execute(
        "SELECT room, seq, user_id, deleted_at, rev, created_ts FROM messages WHERE id = ?", (message_id,)
    ).fetchone()
    if row is None:
        raise SignalError("NOT_FOUND", f"message {message_id!r} not found")
    room, seq, author, deleted_at, rev, created_ts = row
    if author != user_id and not moderator:
        raise SignalError("FORBIDDEN", "only the author or a moderator can delete a message")
    if mode == "soft" and deleted_at is not None:
        return Deleted(room, deleted_at, rev), SKIP
    now = iso_utc(txns.clock())
    rev = txns.next_rev(conn, room)
    conn.execute("DELETE FROM reactions WHERE room = ? AND seq = ?", (room, seq))
    if mode == "soft":
        conn.execute(
            "UPDATE messages SET body = '', attachments = '[]', deleted_at = ?, rev = ? WHERE id = ?",
            (now, rev, message_id),
        )
    else:
        conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))
        conn.execute(
            "INSERT INTO tombstones (room, rev, id, seq, created_ts) VALUES (?, ?, ?, ?, ?)",
            (room, rev, message_id, seq, created_ts),
        )
        txns.counter(conn, room)[1] -= 1
    result = Deleted(room, now, rev)
    return result, result


def redact(conn: sqlite3.Connection, txns: Transactions, message_id: str, mask: str) -> tuple[ChatMessage, Any]:
    """Replace the body with ``mask`` and mark it redacted (the caller checks permission)."""
    row = conn.execute("SELECT deleted_at, room FROM messages WHERE id = ?", (message_id,)).fetchone()
    if row is None:
        raise SignalError("NOT_FOUND", f"message {message_id!r} not found")
    if row[0] is not None:
        raise SignalError("CONFLICT", "the message was deleted")
    sql = "UPDATE messages SET body = ?, attachments = '[]', redacted = 1, rev = ? WHERE id = ?"
    return _updated(conn, message_id, sql, (mask, txns.next_rev(conn, row[1]), message_id))


def react(
    conn: sqlite3.Connection, txns: Transactions, message_id: str, user_id: str, reaction: str,
    action: ReactionAction, room: str,
) -> tuple[int | None, Any]:
    """Add or remove a reaction (idempotent); the result is the change's revision, None if nothing changed."""
    row = conn.execute("SELECT room, seq, deleted_at FROM messages WHERE id = ?", (message_id,)).fetchone()
    if row is None or row[0] != room:
        raise SignalError("NOT_FOUND", f"message {message_id!r} not found in room {room!r}")
    key = (room, row[1], reaction, user_id)
    if action == "add":
        if row[2] is not None:
            raise SignalError("CONFLICT", "the message was deleted")
        cur = conn.execute("INSERT OR IGNORE INTO reactions (room, seq, reaction, user_id) VALUES (?, ?, ?, ?)", key)
    else:
        cur = conn.execute(
            "DELETE FROM reactions WHERE room = ? AND seq = ? AND reaction = ? AND user_id = ?", key
        )
    if cur.rowcount <= 0:
        return None, SKIP
    rev = txns.next_rev(conn, room)
    conn.execute("UPDATE messages SET rev = ? WHERE room = ? AND seq = ?", (rev, room, row[1]))
    return rev, rev


def mark_read(conn: sqlite3.Connection, user_id: str, room: str, message_id: str) -> tuple[bool, Any]:
    """Move the user's read receipt in ``room`` up to the message; the result says whether it moved."""
    row = conn.execute("SELECT room, seq FROM messages WHERE id = ?", (message_id,)).fetchone()
    if row is None or row[0] != room:
        raise SignalError("NOT_FOUND", f"message {message_id!r} not found in room {room!r}")
    cur = conn.execute(
        "INSERT INTO read_receipts (user_id, room, seq) VALUES (?, ?, ?) "
        "ON CONFLICT (user_id, room) DO UPDATE SET seq = excluded.seq "
        "WHERE excluded.seq > read_receipts.seq",
        (user_id, room, row[1]),
    )
    moved = cur.rowcount > 0
    return moved, (True if moved else SKIP)


def set_last_seen(conn: sqlite3.Connection, rows: Sequence[tuple[str, str]]) -> tuple[None, Any]:
    """Record when users were last seen, ``(user id, ISO 8601 time)`` each."""
    conn.executemany(
        "INSERT INTO last_seen (user_id, at) VALUES (?, ?) ON CONFLICT (user_id) DO UPDATE SET at = excluded.at",
        rows,
    )
    return None, SKIP


def _updated(conn: sqlite3.Connection, message_id: str, sql: str, args: tuple[Any, ...]) -> tuple[ChatMessage, Any]:
    """Run the ``UPDATE`` of one existing message and return it as stored (result and event)."""
    conn.execute(sql, args)
    message = get_message(conn, message_id)
    assert message is not None
    return message, message
