"""The PostgreSQL dialect of the history: a connection adapter and the allocator.

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
from psycopg import pq

__all__ = ["RETRYABLE", "Adapter", "Allocator", "alive"]

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


def alive(pg: pq.abc.PGconn) -> bool:
    """Whether an idle connection is still usable, asked before it is given work: what the server
    sent meanwhile is read without waiting (a terminated backend's FATAL, a restart's end of the
    socket). One found dead was sent nothing of that work, which can go to a new connection
    instead of failing as "unavailable" on a server that is up again."""
    try:
        for _ in range(2):  # a read that got data does not look for the end after it: the FATAL, then EOF
            pg.consume_input()
    except psycopg.OperationalError:
        return False
    return pg.status == pq.ConnStatus.OK


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
