"""The SQL of the history reads, and rows turned into :class:`~signald.protocol.ChatMessage`.

Sans-IO: these functions run the statements they build on whatever connection they are given
(the SQLite store's, on its writer thread or inline, or the read-only one of ``signald history``;
one of the PostgreSQL store's) and import neither a driver nor an event loop; :class:`Connection`
is the part of ``sqlite3.Connection`` they use. The statements are SQL both dialects run, with
``?`` placeholders (the PostgreSQL adapter turns them into ``%s``); reaction order is the
``rowid`` of ``reactions`` (an identity column of that name on PostgreSQL).

Paging follows ``chat.history`` (docs/protocol.md): no bounds, the newest ``limit``; ``before``,
the newest below it; ``after``, the oldest above it; both, the oldest part of the open interval.
``has_more`` is about the paging direction (older without ``after``, newer or the rest of the
interval with it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final, NamedTuple, Protocol

import msgspec

from signald.protocol import Attachment, Change, ChangesPage, ChatMessage, Tombstone

__all__ = [
    "AGE_EXPIRED_ROOMS_SQL",
    "Rejoin",
    "RoomRevs",
    "changes",
    "changes_page",
    "rejoin",
    "rejoin_many",
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
    "reactions_of",
    "room_revs",
    "unread",
]

COLUMNS: Final = (
    "id, room, seq, rev, user_id, body, attachments, parent_id, created_at, edited_at, deleted_at, redacted"
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
ROOMS_TRUE_SQL: Final = f"SELECT room FROM ({_TRUE_COUNTS}) AS t WHERE n > 0 ORDER BY room"
"""Like :data:`ROOMS_SQL`, for a ``rooms`` table that may be behind (a read-only reader)."""
ROOM_TOTALS_TRUE_SQL: Final = f"SELECT count(*), coalesce(sum(n), 0) FROM ({_TRUE_COUNTS}) AS t WHERE n > 0"
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
        id=row[0], room=row[1], seq=row[2], rev=row[3], user_id=row[4], body=row[5],
        attachments=_decode_attachments(row[6]), parent_id=row[7], created_at=row[8],
        edited_at=row[9], deleted_at=row[10], redacted=bool(row[11]), reactions=reactions,
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
    return _unread_above(conn, room, last_read(conn, user_id, room) or 0)


def _unread_above(conn: Connection, room: str, last: int) -> int:
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



# ---------------------------------------------------------------------------- revisions (exact resume)

_ROOM_REVS_SQL: Final = (  # scalar max() is SQLite's, GREATEST PostgreSQL's: the max is taken here
    "SELECT (SELECT last_rev FROM rooms WHERE room = ?), (SELECT max(rev) FROM messages WHERE room = ?),"
    " (SELECT max(rev) FROM tombstones WHERE room = ?), (SELECT pruned_rev FROM rooms WHERE room = ?)"
)


class RoomRevs(NamedTuple):
    """A room's current revision and the highest revision retention removed."""

    rev: int
    pruned: int

    def complete_after(self, after_rev: int) -> bool:
        """Whether the store still holds every change after ``after_rev`` (else: a reset).

        A revision above the room's own (a client of another database) cannot be resumed either.
        """
        return self.pruned <= after_rev <= self.rev


def room_revs(conn: Connection, room: str) -> RoomRevs:
    """The room's revision as stored, including changes not yet in its ``rooms`` row."""
    # The rooms row may lag behind the messages (see signald.history.counters), never ahead; the
    # newest change is on a message or a tombstone unless retention removed it, and then the row
    # holds it. Two index probes and a primary-key read.
    last_rev, messages_rev, tombstones_rev, pruned = conn.execute(_ROOM_REVS_SQL, (room,) * 4).fetchone()
    return RoomRevs(max(last_rev or 0, messages_rev or 0, tombstones_rev or 0), int(pruned or 0))


def changes(conn: Connection, room: str, after_rev: int, limit: int) -> tuple[list[Change], bool]:
    """Every message and tombstone of ``room`` changed after ``after_rev``, ascending ``rev``, at
    most ``limit`` (in their current state); the bool says there are more."""
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM messages WHERE room = ? AND rev > ? ORDER BY rev LIMIT ?",
        (room, after_rev, limit + 1),
    ).fetchall()
    tombs = conn.execute(
        "SELECT id, room, seq, rev FROM tombstones WHERE room = ? AND rev > ? ORDER BY rev LIMIT ?",
        (room, after_rev, limit + 1),
    ).fetchall()
    folded = reactions_of(conn, room, [row[2] for row in rows])
    found: list[Change] = [message_from_row(row, folded.get(row[2], {})) for row in rows]
    found.extend(Tombstone(id=t[0], room=t[1], seq=t[2], rev=t[3]) for t in tombs)
    found.sort(key=lambda change: change.rev)
    more = len(found) > limit
    del found[limit:]
    return found, more


def reactions_of(conn: Connection, room: str, seqs: list[int]) -> dict[int, dict[str, list[str]]]:
    """Like :func:`reactions`, for the given ``seqs`` of ``room`` (not a range)."""
    found: dict[int, dict[str, list[str]]] = {}
    for i in range(0, len(seqs), _CHUNK):
        chunk = seqs[i : i + _CHUNK]
        marks = ",".join("?" * len(chunk))
        for seq, reaction, user_id in conn.execute(
            f"SELECT seq, reaction, user_id FROM reactions WHERE room = ? AND seq IN ({marks}) ORDER BY rowid",
            (room, *chunk),
        ):
            found.setdefault(seq, {}).setdefault(reaction, []).append(user_id)
    return found


def changes_page(conn: Connection, room: str, after_rev: int, limit: int) -> ChangesPage:
    """``chat.changes``: :func:`changes` with the room's revision, or ``changes_reset``."""
    revs = room_revs(conn, room)
    if not revs.complete_after(after_rev):
        return ChangesPage(changes=[], rev=revs.rev, has_more=False, changes_reset=True)
    found, more = changes(conn, room, after_rev, limit)
    return ChangesPage(changes=found, rev=revs.rev, has_more=more)


class Rejoin(NamedTuple):
    """What ``room.join`` needs from history, read at one point of the commit order.

    ``rev`` is the room's revision there. ``missed``/``truncated`` are None without ``since``;
    ``changes``/``changes_truncated`` None without ``since_rev`` or when ``changes_reset``.
    """

    missed: list[ChatMessage] | None
    truncated: bool | None
    unread: int
    rev: int = 0
    changes: list[Change] | None = None
    changes_truncated: bool | None = None
    changes_reset: bool = False


def rejoin(
    conn: Connection, user_id: str, room: str, since: int | None, since_rev: int | None, limit: int
) -> Rejoin:
    """``unread``, the room's ``rev``, ``missed`` (with ``since``) and ``changes`` (with ``since_rev``)."""
    return rejoin_many(conn, [user_id], room, since, since_rev, limit)[user_id]


def rejoin_many(
    conn: Connection, user_ids: Iterable[str], room: str, since: int | None, since_rev: int | None, limit: int
) -> dict[str, Rejoin]:
    """:func:`rejoin` for several users joining ``room`` with the same ``since``/``since_rev``: the
    room's part is read once, ``unread`` once per distinct read receipt (the answers share their
    lists, which nobody changes)."""
    revs = room_revs(conn, room)
    missed = truncated = found = more = None
    if since is not None:
        missed, truncated = page(conn, room, None, since, limit)
    reset = since_rev is not None and not revs.complete_after(since_rev)
    if since_rev is not None and not reset:
        found, more = changes(conn, room, since_rev, limit)
    counts: dict[int, int] = {}
    answers: dict[str, Rejoin] = {}
    for user_id in user_ids:
        if user_id in answers:
            continue
        last = last_read(conn, user_id, room) or 0
        count = counts.get(last)
        if count is None:
            count = counts[last] = _unread_above(conn, room, last)
        answers[user_id] = Rejoin(missed, truncated, count, revs.rev, found, more, reset)
    return answers
