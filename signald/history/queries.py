"""The SQL of the history reads, and rows turned into :class:`~signald.protocol.ChatMessage`.

Sans-IO: these functions run the statements they build on whatever connection they are given
(the store's, on its writer thread or inline, or the read-only one of ``signald history``) and
import neither ``sqlite3`` nor an event loop; :class:`Connection` is the part of
``sqlite3.Connection`` they use.

Paging follows ``chat.history`` (docs/protocol.md): no bounds, the newest ``limit``; ``before``,
the newest below it; ``after``, the oldest above it; both, the oldest part of the open interval.
``has_more`` is about the paging direction (older without ``after``, newer or the rest of the
interval with it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final, Protocol

import msgspec

from signald.protocol import Attachment, ChatMessage

__all__ = [
    "AGE_EXPIRED_ROOMS_SQL",
    "COLUMNS",
    "ROOM_TOTALS_SQL",
    "ROOMS_SQL",
    "Connection",
    "Cursor",
    "get_message",
    "last_read",
    "last_seen",
    "message_from_row",
    "page",
    "reactions",
    "unread",
]

COLUMNS: Final = (
    "id, room, seq, user_id, body, attachments, parent_id, created_at, edited_at, deleted_at, redacted"
)
"""The columns of a message, in the order :func:`message_from_row` reads them."""

ROOMS_SQL: Final = "SELECT room FROM rooms WHERE count > 0 ORDER BY room"
"""Rooms with stored messages (the ``rooms`` table must be up to date: see the counters)."""
ROOM_TOTALS_SQL: Final = "SELECT count(*), coalesce(sum(count), 0) FROM rooms WHERE count > 0"
"""``(rooms, messages)`` from an up-to-date ``rooms`` table."""

# The same two from a table that may be behind (a running daemon keeps counters in memory, a crash
# loses them): a room's true count is its row's plus its messages above the row's last_seq.
_TRUE_COUNTS: Final = (
    "SELECT room, count + (SELECT count(*) FROM messages m WHERE m.room = rooms.room"
    " AND m.seq > rooms.last_seq) AS n FROM rooms"
)
ROOMS_TRUE_SQL: Final = f"SELECT room FROM ({_TRUE_COUNTS}) WHERE n > 0 ORDER BY room"
"""Like :data:`ROOMS_SQL`, for a ``rooms`` table that may be behind (a read-only reader)."""
ROOM_TOTALS_TRUE_SQL: Final = f"SELECT count(*), coalesce(sum(n), 0) FROM ({_TRUE_COUNTS}) WHERE n > 0"
"""Like :data:`ROOM_TOTALS_SQL`, for a ``rooms`` table that may be behind."""

AGE_EXPIRED_ROOMS_SQL: Final = (
    "SELECT room FROM rooms WHERE (SELECT created_ts FROM messages m"
    " WHERE m.room = rooms.room ORDER BY m.seq LIMIT 1) < ? ORDER BY room"
)
"""Rooms whose oldest message (by ``seq``) was created before the cutoff (``?``)."""
OLDEST_SQL: Final = "SELECT seq, created_ts FROM messages WHERE room = ? ORDER BY seq LIMIT ?"
"""A room's oldest messages, ``(seq, created_ts)``."""
OLDEST_KEYS_SQL: Final = "SELECT room, seq FROM messages WHERE room = ? ORDER BY seq LIMIT ?"
"""A room's oldest messages, ``(room, seq)``: the rows count retention removes."""
OVER_COUNT_SQL: Final = "SELECT room FROM rooms WHERE count > ?"
"""Rooms whose written count is above the limit (``?``)."""

_CHUNK: Final = 500  # bound variables per IN (...) query
_attachments_decoder: Final = msgspec.json.Decoder(list[Attachment])


class Cursor(Protocol):
    """What a statement returns: rows, and how many rows a write changed."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """The part of ``sqlite3.Connection`` the history uses."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor: ...


def _decode_attachments(text: str) -> list[Attachment]:
    return [] if text == "[]" else _attachments_decoder.decode(text)


def message_from_row(row: Sequence[Any], reactions: dict[str, list[str]]) -> ChatMessage:
    """A message from a row of :data:`COLUMNS` and its folded reactions."""
    return ChatMessage(
        id=row[0], room=row[1], seq=row[2], user_id=row[3], body=row[4],
        attachments=_decode_attachments(row[5]), parent_id=row[6], created_at=row[7],
        edited_at=row[8], deleted_at=row[9], redacted=bool(row[10]), reactions=reactions,
    )


def reactions(conn: Connection, room: str, lo: int, hi: int) -> dict[int, dict[str, list[str]]]:
    """``seq -> reaction -> users`` for ``lo <= seq <= hi``, each list in the order they reacted."""
    found: dict[int, dict[str, list[str]]] = {}
    for seq, reaction, user_id in conn.execute(
        "SELECT seq, reaction, user_id FROM reactions WHERE room = ? AND seq BETWEEN ? AND ? ORDER BY rowid",
        (room, lo, hi),
    ):
        found.setdefault(seq, {}).setdefault(reaction, []).append(user_id)
    return found


def get_message(conn: Connection, message_id: str) -> ChatMessage | None:
    """The folded message, or None if it does not exist (or was hard-deleted)."""
    row = conn.execute(f"SELECT {COLUMNS} FROM messages WHERE id = ?", (message_id,)).fetchone()
    if row is None:
        return None
    folded = reactions(conn, row[1], row[2], row[2])
    return message_from_row(row, folded.get(row[2], {}))


def page(
    conn: Connection, room: str, before: int | None, after: int | None, limit: int
) -> tuple[list[ChatMessage], bool]:
    """One page of ``room`` in ascending ``seq`` (see the module docstring) and ``has_more``."""
    select = f"SELECT {COLUMNS} FROM messages WHERE room = ?"
    if after is not None:  # oldest first: after alone, or the oldest part of (after, before)
        if before is not None:
            rows = conn.execute(
                f"{select} AND seq > ? AND seq < ? ORDER BY seq LIMIT ?", (room, after, before, limit + 1)
            ).fetchall()
        else:
            rows = conn.execute(f"{select} AND seq > ? ORDER BY seq LIMIT ?", (room, after, limit + 1)).fetchall()
        more = len(rows) > limit
        del rows[limit:]
    else:  # newest first, then reversed
        if before is not None:
            rows = conn.execute(
                f"{select} AND seq < ? ORDER BY seq DESC LIMIT ?", (room, before, limit + 1)
            ).fetchall()
        else:
            rows = conn.execute(f"{select} ORDER BY seq DESC LIMIT ?", (room, limit + 1)).fetchall()
        more = len(rows) > limit
        del rows[limit:]
        rows.reverse()
    if not rows:
        return [], more
    folded = reactions(conn, room, rows[0][2], rows[-1][2])
    return [message_from_row(row, folded.get(row[2], {})) for row in rows], more


def last_read(conn: Connection, user_id: str, room: str) -> int | None:
    """The ``seq`` of the user's read receipt in ``room``, or None."""
    row = conn.execute("SELECT seq FROM read_receipts WHERE user_id = ? AND room = ?", (user_id, room)).fetchone()
    return None if row is None else int(row[0])


def unread(conn: Connection, user_id: str, room: str) -> int:
    """Not-deleted messages of ``room`` above the user's read receipt (all if none)."""
    last = last_read(conn, user_id, room) or 0
    count = conn.execute(
        "SELECT count(*) FROM messages WHERE room = ? AND seq > ? AND deleted_at IS NULL", (room, last)
    ).fetchone()
    return int(count[0])


def last_seen(conn: Connection, user_ids: list[str]) -> dict[str, str]:
    """Last-seen times of those of ``user_ids`` that were ever recorded."""
    found: dict[str, str] = {}
    for i in range(0, len(user_ids), _CHUNK):
        chunk = user_ids[i : i + _CHUNK]
        marks = ",".join("?" * len(chunk))
        found.update(conn.execute(f"SELECT user_id, at FROM last_seen WHERE user_id IN ({marks})", chunk))
    return found

