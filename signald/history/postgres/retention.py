"""Age and count retention on PostgreSQL, in bounded steps: the rules of SQLite's.

The rules are those of :mod:`signald.history.retention`: age goes room by room in ``seq`` order
up to the first message that is not expired, count keeps each room's newest ``max_count``;
tombstones go with the messages of their age or below the oldest one kept; ``pruned_rev`` rises
to what was removed, so a resume from below it answers ``changes_reset``.

:func:`step` removes at most :data:`RETENTION_BATCH` messages (and as many expired tombstones) in
the caller's transaction and says whether there is more: the writer thread runs one step per
transaction, between write batches, so a big prune (a lowered limit, a long-idle room) never holds
the rooms' row locks, or a transaction open, for long. Every look-up goes down an index — the
rooms' oldest messages by ``(room, seq)`` — never a scan of all messages (there is no index on
``created_ts``: it would cost every insert).
"""

from __future__ import annotations

from typing import Any, Final

import psycopg

from signald.history.postgres.sql import Adapter
from signald.history.queries import AGE_EXPIRED_ROOMS_SQL, OLDEST_SQL

__all__ = ["RETENTION_BATCH", "step"]

RETENTION_BATCH: Final = 500
"""Most messages (and, apart, tombstones) one step removes: SQLite's bound."""

_AGE_TOMBSTONES: Final = """
WITH gone AS (
    DELETE FROM tombstones WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM tombstones WHERE created_ts < %(cutoff)s LIMIT %(limit)s))
    RETURNING room, rev
), pruned AS (
    UPDATE rooms SET pruned_rev = GREATEST(pruned_rev, g.rev)
    FROM (SELECT room, max(rev) AS rev FROM gone GROUP BY room) AS g WHERE rooms.room = g.room
)
SELECT count(*) FROM gone
"""
_OVER_COUNT: Final = "SELECT room, count FROM rooms WHERE count > %s ORDER BY room"
_NTH_SEQ: Final = "SELECT seq FROM messages WHERE room = %s ORDER BY seq OFFSET %s LIMIT 1"
_PRUNE_ROOM: Final = """
UPDATE rooms SET pruned_rev = GREATEST(pruned_rev,
    coalesce((SELECT max(rev) FROM messages WHERE room = %(room)s AND seq <= %(seq)s), 0),
    coalesce((SELECT max(rev) FROM tombstones WHERE room = %(room)s AND seq <= %(seq)s), 0)),
    count = count - (SELECT count(*) FROM messages WHERE room = %(room)s AND seq <= %(seq)s)
WHERE room = %(room)s
"""
_REMOVE: Final = (
    "DELETE FROM tombstones WHERE room = %(room)s AND seq <= %(seq)s",
    "DELETE FROM client_msgs WHERE message_id IN (SELECT id FROM messages WHERE room = %(room)s AND seq <= %(seq)s)",
    "DELETE FROM reactions WHERE room = %(room)s AND seq <= %(seq)s",
    "DELETE FROM messages WHERE room = %(room)s AND seq <= %(seq)s",
)


def step(conn: psycopg.Connection[Any], now: float, max_age_s: float, max_count: int,
         limit: int = RETENTION_BATCH) -> tuple[int, bool]:
    """One bounded step in the running transaction: ``(messages removed, more to do)``."""
    budget = limit
    more = False
    if max_age_s > 0:
        cutoff = now - max_age_s
        row = conn.execute(_AGE_TOMBSTONES, {"cutoff": cutoff, "limit": limit}).fetchone()
        more = row is not None and int(row[0]) >= limit
        adapter = Adapter(conn)
        for (room,) in adapter.execute(AGE_EXPIRED_ROOMS_SQL, (cutoff,)).fetchall():
            highest = None
            taken = 0
            for seq, created_ts in adapter.execute(OLDEST_SQL, (room, budget)).fetchall():
                if created_ts >= cutoff:
                    break
                highest, taken = int(seq), taken + 1
            if highest is not None:
                _remove(conn, room, highest)
                budget -= taken
            if budget == 0:
                return limit, True
    if max_count > 0:
        for room, count in conn.execute(_OVER_COUNT, (max_count,)).fetchall():
            n = min(int(count) - max_count, budget)
            row = conn.execute(_NTH_SEQ, (room, n - 1)).fetchone()
            if row is not None:
                _remove(conn, room, int(row[0]))
                budget -= n
            if budget == 0:
                return limit, True
    return limit - budget, more


def _remove(conn: psycopg.Connection[Any], room: str, seq: int) -> None:
    """Remove ``room``'s messages up to ``seq`` (its oldest), their tombstones, keys and reactions."""
    keys = {"room": room, "seq": seq}
    conn.execute(_PRUNE_ROOM, keys)
    for statement in _REMOVE:
        conn.execute(statement, keys)
