"""Age and count retention of the history, run by the writer thread in bounded steps.

``retention_max_age_s`` and ``retention_max_count`` (0 = off) apply to every room. The writer
thread enforces them in transactions of at most :data:`RETENTION_BATCH` rows: when its queue is
idle, after every :data:`RETENTION_EVERY` write batches under sustained load, and at least every
``interval_s``. Removed messages take their reactions and idempotency keys with them.

Age retention removes each room's messages in ``seq`` order up to the first one that is not
expired (``seq`` order is creation order unless the wall clock stepped back; then a message may
outlive its age until the ones before it expire). It looks at every room's oldest message, so it
runs once per ``interval_s`` (until it is done), not every :data:`RETENTION_EVERY` batches.
Count retention looks at the rooms that received messages since its last step (all rooms at first).

Tombstones of hard-deleted messages go with the messages of their age: age retention removes those
of messages created before the cutoff, count retention those below the oldest message it keeps.
Whatever retention removes raises the room's ``pruned_rev`` to its revision, so that a resume from
below it answers ``changes_reset`` (the store no longer holds every change after it).
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Final

from signald.history.queries import AGE_EXPIRED_ROOMS_SQL, OLDEST_KEYS_SQL, OLDEST_SQL, OVER_COUNT_SQL
from signald.history.transactions import Transactions

__all__ = ["RETENTION_BATCH", "RETENTION_EVERY", "Retention"]

logger = logging.getLogger(__name__)

RETENTION_BATCH: Final = 500
"""Most messages one retention transaction removes."""
RETENTION_EVERY: Final = 64
_PRUNED_SQL: Final = "UPDATE rooms SET pruned_rev = max(pruned_rev, ?) WHERE room = ?"
"""Under sustained load, one retention step runs after this many write batches."""


class Retention:
    """What to remove and when; its steps run on the connection :class:`Transactions` drives."""

    def __init__(self, txns: Transactions, *, max_age_s: float, max_count: int, interval_s: float) -> None:
        if max_age_s < 0 or max_count < 0 or interval_s <= 0:
            raise ValueError("retention settings must be >= 0 and the interval > 0")
        self.txns = txns
        self.max_age_s = float(max_age_s)
        self.max_count = int(max_count)
        self.interval_s = float(interval_s)
        self.enabled = self.max_age_s > 0 or self.max_count > 0
        self.due = True
        """A step should run (there may be something to remove)."""
        self.age_due = True  # age retention looks at every room: once per interval (or if asked)
        self._commits_at_step = 0  # txns.commits when the last step ran

    def interval_elapsed(self) -> None:
        """The periodic check: look at everything again."""
        self.due = self.age_due = True

    def should_step(self, idle: bool) -> bool:
        """Whether to run a step now (``idle``: nothing is queued)."""
        busy_long = self.txns.commits - self._commits_at_step >= RETENTION_EVERY  # inline ones too
        if busy_long:
            self.due = True
        return self.due and (idle or busy_long)

    def step(self, conn: sqlite3.Connection) -> int:
        """One retention transaction; returns how many messages it removed (:attr:`due`: more to do)."""
        txns = self.txns
        self._commits_at_step = txns.commits
        try:
            with txns.transaction(conn):
                removed, self.due = self.expire(conn)
                txns.counters.end_op(ok=True)
                txns.write_counters(conn)
        except Exception:
            logger.exception("history retention failed")
            self.due, txns.rooms_to_trim, self.age_due = False, None, True
            return 0
        if removed:
            logger.debug("history retention removed %d messages", removed)
        return removed

    def run_all(self, conn: sqlite3.Connection) -> int:
        """Everything that is expired now, in the caller's transaction; returns how many went."""
        total = 0
        self.age_due = True
        while True:
            removed, more = self.expire(conn)
            total += removed
            if not more:
                return total

    def expire(self, conn: sqlite3.Connection) -> tuple[int, bool]:
        """Remove at most RETENTION_BATCH expired messages; returns (removed, more to do)."""
        budget = RETENTION_BATCH
        if self.max_age_s > 0 and self.age_due:
            # Per room, oldest seq first, up to the first message that is not expired (no index on
            # created_ts: it would cost every insert a page; seq order is creation order).
            cutoff = self.txns.clock() - self.max_age_s
            expired_tombstones = conn.execute(
                "SELECT room, max(rev) FROM tombstones WHERE created_ts < ? GROUP BY room", (cutoff,)
            ).fetchall()
            if expired_tombstones:  # few rows (hard deletes only): a scan once per interval
                conn.executemany(_PRUNED_SQL, [(rev, room) for room, rev in expired_tombstones])
                conn.execute("DELETE FROM tombstones WHERE created_ts < ?", (cutoff,))
            for (room,) in conn.execute(AGE_EXPIRED_ROOMS_SQL, (cutoff,)).fetchall():
                rows = []
                for seq, created_ts in conn.execute(OLDEST_SQL, (room, budget)):
                    if created_ts >= cutoff:
                        break
                    rows.append((room, seq))
                self._remove(conn, rows)
                budget -= len(rows)
                if budget == 0:
                    return RETENTION_BATCH, True
            self.age_due = False
        if self.max_count > 0:
            keep = self.max_count
            txns = self.txns
            if txns.rooms_to_trim is None:
                rows = conn.execute(OVER_COUNT_SQL, (keep,)).fetchall()
                candidates = {row[0] for row in rows} | txns.counters.changed()  # rows may be behind
                txns.rooms_to_trim = set()
            else:
                candidates = set(txns.rooms_to_trim)
                txns.rooms_to_trim.clear()
            over = []
            for room in sorted(candidates):
                count = txns.counter(conn, room)[1]
                if count > keep:
                    over.append((room, count))
            for room, count in over:
                n = min(count - keep, budget)
                if n > 0:
                    rows = conn.execute(OLDEST_KEYS_SQL, (room, n)).fetchall()
                    self._remove(conn, rows)
                    budget -= len(rows)
                if count - n > keep:
                    txns.rooms_to_trim.add(room)  # not done with this room yet
            if txns.rooms_to_trim:
                return RETENTION_BATCH - budget, True
        return RETENTION_BATCH - budget, False

    def _remove(self, conn: sqlite3.Connection, rows: list[tuple[str, int]]) -> None:
        """Remove messages ``(room, seq)``: each room's oldest ones, with the tombstones below them."""
        if not rows:
            return
        below: dict[str, int] = {}  # room -> highest seq removed
        for room, seq in rows:
            below[room] = max(seq, below.get(room, 0))
        for room, seq in below.items():
            conn.execute(
                "UPDATE rooms SET pruned_rev = max(pruned_rev,"
                " coalesce((SELECT max(rev) FROM messages WHERE room = ?1 AND seq <= ?2), 0),"
                " coalesce((SELECT max(rev) FROM tombstones WHERE room = ?1 AND seq <= ?2), 0)) WHERE room = ?1",
                (room, seq),
            )
            conn.execute("DELETE FROM tombstones WHERE room = ? AND seq <= ?", (room, seq))
        conn.executemany(
            "DELETE FROM client_msgs WHERE message_id = (SELECT id FROM messages WHERE room = ? AND seq = ?)",
            rows,
        )
        conn.executemany("DELETE FROM reactions WHERE room = ? AND seq = ?", rows)
        conn.executemany("DELETE FROM messages WHERE room = ? AND seq = ?", rows)
        for room, _seq in rows:
            self.txns.counter(conn, room)[1] -= 1
