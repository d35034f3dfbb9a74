"""The PostgreSQL dialect of the history: a connection adapter, the allocator, retention.

The shared reads and writes (:mod:`signald.history.queries`, :mod:`signald.history.writes`)
use ``?`` placeholders; :class:`Adapter` turns them into psycopg's ``%s`` (once per statement
text) and runs them on an autocommit connection whose transactions the caller opens.

``seq`` and ``rev`` are taken from the room's row by the transaction that inserts the message
(:class:`Allocator`): the ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` locks the row until
that transaction ends, so daemons sharing the database take turns per room and never produce a
gap or a duplicate; a rolled-back insert gives its number back with the rest of the transaction.
The ``rooms`` row is always up to date (no lazy counters as on SQLite).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import psycopg

__all__ = ["RETRYABLE", "Adapter", "Allocator", "expire"]

RETRYABLE: Final = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
"""Errors after which a batch is run again from the start (two daemons locked rooms crosswise)."""

_TAKE_SEQ_REV: Final = (
    "INSERT INTO rooms (room, last_seq, count, last_rev) VALUES (%s, 1, 1, 1) ON CONFLICT (room) DO UPDATE"
    " SET last_seq = rooms.last_seq + 1, count = rooms.count + 1, last_rev = rooms.last_rev + 1"
    " RETURNING last_seq, last_rev"
)
_NEXT_REV: Final = (
    "INSERT INTO rooms (room, last_rev) VALUES (%s, 1) ON CONFLICT (room) DO UPDATE"
    " SET last_rev = rooms.last_rev + 1 RETURNING last_rev"
)


class Adapter:
    """The part of a connection :mod:`~signald.history.queries` uses, on a psycopg connection."""

    __slots__ = ("raw",)

    _texts: dict[str, str] = {}  # shared: the statements are few and fixed

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    @classmethod
    def _text(cls, sql: str) -> str:
        text = cls._texts.get(sql)
        if text is None:
            text = cls._texts[sql] = sql.replace("%", "%%").replace("?", "%s")
        return text

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        return self.raw.execute(self._text(sql), parameters)

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> psycopg.Cursor[Any]:
        cur = self.raw.cursor()
        cur.executemany(self._text(sql), parameters)
        return cur


class Allocator:
    """:class:`signald.history.writes.Allocator` on the ``rooms`` table, row-locked."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock

    def take_seq_rev(self, conn: Adapter, room: str) -> tuple[int, int]:
        seq, rev = conn.raw.execute(_TAKE_SEQ_REV, (room,)).fetchone() or (0, 0)
        return int(seq), int(rev)

    def next_rev(self, conn: Adapter, room: str) -> int:
        row = conn.raw.execute(_NEXT_REV, (room,)).fetchone()
        assert row is not None
        return int(row[0])

    def removed(self, conn: Adapter, room: str) -> None:
        conn.raw.execute("UPDATE rooms SET count = count - 1 WHERE room = %s", (room,))

    def duplicate_id(self, exc: Exception) -> bool:
        # A failed statement aborts the transaction up to the operation's savepoint: no retry in
        # it. The operation fails (INTERNAL) with a chance of 2**-48 per message in a millisecond.
        return False


# --------------------------------------------------------------------------- retention

_AGE_TOMBSTONES: Final = """
WITH gone AS (DELETE FROM tombstones WHERE created_ts < %(cutoff)s RETURNING room, rev)
UPDATE rooms SET pruned_rev = GREATEST(pruned_rev, g.rev)
FROM (SELECT room, max(rev) AS rev FROM gone GROUP BY room) AS g WHERE rooms.room = g.room
"""
_AGE_MESSAGES: Final = """
SELECT room, seq FROM messages m WHERE created_ts < %(cutoff)s AND NOT EXISTS (
    SELECT 1 FROM messages k WHERE k.room = m.room AND k.seq < m.seq AND k.created_ts >= %(cutoff)s)
"""
_OVER_COUNT: Final = """
SELECT m.room, m.seq FROM rooms r CROSS JOIN LATERAL (
    SELECT room, seq FROM messages WHERE room = r.room ORDER BY seq LIMIT r.count - %(keep)s) AS m
WHERE r.count > %(keep)s
"""
_PRUNE_ROOM: Final = """
UPDATE rooms SET pruned_rev = GREATEST(pruned_rev,
    coalesce((SELECT max(rev) FROM messages WHERE room = %(room)s AND seq <= %(seq)s), 0),
    coalesce((SELECT max(rev) FROM tombstones WHERE room = %(room)s AND seq <= %(seq)s), 0)),
    count = count - (SELECT count(*) FROM messages WHERE room = %(room)s AND seq <= %(seq)s)
WHERE room = %(room)s
"""


def expire(conn: psycopg.Connection[Any], now: float, max_age_s: float, max_count: int) -> int:
    """Remove what retention removes now, in the caller's transaction; how many messages went.

    The same rules as SQLite's (:mod:`signald.history.retention`): age goes room by room in
    ``seq`` order up to the first message that is not expired, count keeps each room's newest
    ``max_count``; tombstones go with the messages of their age or below the oldest one kept, and
    ``pruned_rev`` rises to what was removed. One statement each, not in bounded steps.
    """
    doomed: list[tuple[str, int]] = []
    if max_age_s > 0:
        cutoff = {"cutoff": now - max_age_s}
        conn.execute(_AGE_TOMBSTONES, cutoff)
        doomed.extend(conn.execute(_AGE_MESSAGES, cutoff).fetchall())
    removed = _remove(conn, doomed)
    if max_count > 0:
        removed += _remove(conn, conn.execute(_OVER_COUNT, {"keep": max_count}).fetchall())
    return removed


def _remove(conn: psycopg.Connection[Any], rows: list[tuple[str, int]]) -> int:
    """Remove messages ``(room, seq)`` (each room's oldest), their tombstones below, keys, reactions."""
    below: dict[str, int] = {}
    for room, seq in rows:
        below[room] = max(seq, below.get(room, 0))
    for room, seq in sorted(below.items()):
        keys = {"room": room, "seq": seq}
        conn.execute(_PRUNE_ROOM, keys)
        conn.execute("DELETE FROM tombstones WHERE room = %(room)s AND seq <= %(seq)s", keys)
        conn.execute("DELETE FROM client_msgs WHERE message_id IN"
                     " (SELECT id FROM messages WHERE room = %(room)s AND seq <= %(seq)s)", keys)
        conn.execute("DELETE FROM reactions WHERE room = %(room)s AND seq <= %(seq)s", keys)
        conn.execute("DELETE FROM messages WHERE room = %(room)s AND seq <= %(seq)s", keys)
    return len(rows)
