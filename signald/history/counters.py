"""Per-room ``(last_seq, count, last_rev)`` of the history store, kept in memory and changed transactionally.

Storing a message used to update the room's ``rooms`` row in the same transaction, which costs a
B-tree page (two WAL writes) on every commit. The history store instead keeps each room's counters
here and writes them to ``rooms`` only with the writer thread's transactions (an inline commit
only creates the row, with the first message of a room it has not seen), so a lone ``chat.send``
writes the ``messages`` row and its ``id`` index entry (and its idempotency key, if it has one).
What makes that safe is an invariant on the database file:

    a room's true ``last_seq`` is ``max(rooms.last_seq, max(seq))``, its true ``count`` is
    ``rooms.count`` plus the number of messages with ``seq > rooms.last_seq``, and its true
    ``last_rev`` is ``max(rooms.last_rev, max(rev))``.

It holds because only inserts (which always take a ``seq`` above the counter) go unwritten: every
transaction that deletes messages also writes the counters of the rooms it touched. After a crash
:data:`RECONCILE_SQL` brings ``rooms`` up to date with one statement when the store opens.

This module is sans-IO: :class:`RoomCounters` never touches SQLite itself; the store passes a
``load`` function for a room it has not seen yet and writes what :meth:`RoomCounters.unwritten`
returns. Changes are staged in two layers that mirror the store's ``SAVEPOINT`` per operation and
its transaction per batch: :meth:`RoomCounters.end_op` keeps or drops one operation's changes,
:meth:`RoomCounters.end_transaction` keeps (committed) or drops (rolled back) the transaction's.
So a failed operation or commit never leaves a ``seq`` or ``count`` ahead of the database.

Resource handling: at most :data:`MAX_CLEAN` rooms whose row is up to date are remembered; beyond
that they are all forgotten at once (and read again from ``rooms`` when next used: one indexed
read). Rooms with unwritten counters are always kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

__all__ = ["MAX_CLEAN", "RECONCILE_SQL", "RoomCounters"]

MAX_CLEAN: Final = 10_000
"""How many rooms with up-to-date ``rooms`` rows stay in memory."""

RECONCILE_SQL: Final = """
UPDATE rooms SET
    count = count + (SELECT count(*) FROM messages m WHERE m.room = rooms.room AND m.seq > rooms.last_seq),
    last_seq = (SELECT max(m.seq) FROM messages m WHERE m.room = rooms.room),
    last_rev = max(last_rev, (SELECT max(m.rev) FROM messages m WHERE m.room = rooms.room))
WHERE EXISTS (SELECT 1 FROM messages m WHERE m.room = rooms.room AND m.seq > rooms.last_seq)
"""
"""Brings every ``rooms`` row up to date after counters were lost (a crash): see the invariant."""

Counter = list[int]  # [last_seq, count, last_rev], changed in place by the operation that got it
Values = tuple[int, int, int]


class RoomCounters:
    """Committed, transaction-staged and operation-staged ``[last_seq, count, last_rev]`` per room.

    Not thread-safe: the history store uses it only while holding its connection lock.
    """

    def __init__(self) -> None:
        self._committed: dict[str, Values] = {}
        self._txn: dict[str, Values] = {}
        self._op: dict[str, Counter] = {}
        self._unwritten: set[str] = set()  # committed values not in the rooms table yet
        self._written: dict[str, Values] = {}  # written in the open transaction

    def get(self, room: str, load: Callable[[str], Values]) -> Counter:
        """The current operation's ``[last_seq, count, last_rev]`` of ``room``; change it in place."""
        counter = self._op.get(room)
        if counter is None:
            value = self._txn.get(room) or self._committed.get(room)
            counter = self._op[room] = list(value if value is not None else load(room))
        return counter

    def end_op(self, ok: bool) -> None:
        """The operation succeeded (its changes join the transaction) or was rolled back."""
        if ok:
            for room, (last_seq, count, last_rev) in self._op.items():
                self._txn[room] = (last_seq, count, last_rev)
        self._op.clear()

    def unwritten(self) -> list[tuple[str, int, int, int]]:
        """``(room, last_seq, count, last_rev)`` whose ``rooms`` row is behind; call after :meth:`end_op`.

        The caller writes them in the open transaction; :meth:`end_transaction` then knows they
        were written.
        """
        rows = []
        for room in self._unwritten | self._txn.keys():
            value = self._txn.get(room) or self._committed[room]
            if self._written.get(room) != value:
                rows.append((room, *value))
                self._written[room] = value
        return rows

    def end_transaction(self, committed: bool) -> None:
        """The transaction committed (staged changes become committed) or was rolled back."""
        self._op.clear()
        if committed:
            self._committed.update(self._txn)
            self._unwritten.update(self._txn)
            for room, value in self._written.items():
                if self._committed.get(room) == value:
                    self._unwritten.discard(room)
            if len(self._committed) > MAX_CLEAN + len(self._unwritten):
                self._committed = {room: self._committed[room] for room in self._unwritten}
        self._txn.clear()
        self._written.clear()

    def changed(self) -> set[str]:
        """Rooms whose ``rooms`` row may be behind: not written yet, or changed in the transaction."""
        return self._unwritten | self._txn.keys() | self._op.keys()

    @property
    def pending(self) -> int:
        """Rooms whose committed counters are not in the ``rooms`` table yet."""
        return len(self._unwritten)
