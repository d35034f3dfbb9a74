"""Transactions on the history connection: a batch of operations, one commit, the room counters.

:class:`Transactions` is used by whichever thread holds the store's connection lock: the writer
thread for its batches, retention and checkpoints, the Trio thread for an inline commit. Nothing
here is thread-specific; the lock makes its use exclusive.

Each write runs inside a ``SAVEPOINT``: one that fails (e.g. ``SignalError("FORBIDDEN")``) is
rolled back alone and the rest of the batch still commits; a write alone in its transaction
needs no savepoint, and when it fails its transaction is rolled back and nothing commits. Reads
may run inside a batch's transaction; their result, too, is released only after that
transaction committed. A failed commit fails every operation of its batch, none of which is then
acked or announced.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

from signald.history.counters import Counter, RoomCounters
from signald.history.work import SKIP, FailureLog, Op, op_failed, storage_error

__all__ = ["Transactions"]

logger = logging.getLogger(__name__)


class Transactions:
    """Runs batches of :class:`~signald.history.work.Op` and keeps the room counters with them."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        """The wall clock of the operations (``created_at``, ``edited_at``, age retention)."""
        self.counters = RoomCounters()
        self.commits = 0
        """Committed transactions in which a write succeeded (group commit makes it < writes)."""
        self.rooms_to_trim: set[str] | None = None
        """Rooms count retention should look at next, None for all (owned by the retention)."""
        self.failures = FailureLog(logger)
        """The log of failed operations and transactions: one traceback, then a line per interval
        (and one when a write commits again after failures it did not log)."""

    def counter(self, conn: sqlite3.Connection, room: str) -> Counter:
        """``[last_seq, count, last_rev]`` of ``room`` for the running operation; change it in place."""
        return self.counters.get(room, lambda room: _load_counter(conn, room))

    def execute(
        self, conn: sqlite3.Connection, batch: list[Op[Any]], *, begun: bool = False, write_counters: bool = True
    ) -> bool:
        """Run ``batch`` in one transaction (``begun``: already open) and commit; errors go to the ops.

        Returns whether a write committed (what :attr:`commits` counts). ``write_counters``: bring
        the ``rooms`` table up to date with the room counters before each operation that reads it
        (``counts``) and at the end of a batch that wrote; inline commits leave that to the thread.
        The caller holds the connection lock and completes the batch afterwards.
        """
        writes = any(op.kind == "write" for op in batch)
        try:
            if not begun:
                conn.execute("BEGIN IMMEDIATE" if writes else "BEGIN")
            try:
                if writes and len(batch) == 1:  # its own transaction: no savepoint needed
                    if not self._run_alone(conn, batch[0]):
                        return False  # rolled back: nothing to commit
                    wrote = True
                else:
                    wrote = False
                    for op in batch:
                        if op.kind == "counts" and write_counters:  # outside any savepoint
                            self.write_counters(conn)
                        if self._run(conn, op) and op.kind == "write":
                            wrote = True
                if write_counters and writes:
                    self.write_counters(conn)
            except BaseException:
                self._roll_back(conn)
                raise
            self._commit(conn)
        except Exception as exc:
            return self._failed(batch, exc)
        if wrote:
            self.commits += 1
            self.failures.succeeded()
        return wrote

    def execute_unguarded(self, conn: sqlite3.Connection, batch: list[Op[Any]]) -> bool | None:
        """Run the writes of ``batch`` in the open transaction without a savepoint each, and commit.

        Two statements per operation fewer than :meth:`execute`, for batches that almost never
        fail (the sends of a scheduler pass). If one operation raises, the whole transaction is
        rolled back, every operation is reset and None is returned: the caller runs the batch
        again with :meth:`execute` (where the failure is the operation's alone). Otherwise as
        :meth:`execute` (without writing the room counters): whether a write committed.
        """
        try:
            for op in batch:
                assert op.fn is not None
                try:
                    op.value, op.event = op.fn(conn)
                except Exception:
                    self._roll_back(conn)
                    for undone in batch:
                        undone.value, undone.event = None, SKIP
                    return None
                self.counters.end_op(ok=True)
            self._commit(conn)
        except Exception as exc:
            return self._failed(batch, exc)
        self.commits += 1
        self.failures.succeeded()
        return True

    def _commit(self, conn: sqlite3.Connection) -> None:
        """COMMIT the open transaction; if that fails, roll back and raise."""
        try:
            conn.execute("COMMIT")
        except BaseException:
            self._roll_back(conn)
            raise
        self.counters.end_transaction(committed=True)

    def _failed(self, batch: list[Op[Any]], exc: Exception) -> bool:
        """The transaction failed as a whole: every operation of ``batch`` gets the error (False)."""
        self.failures.failed(exc, "history transaction failed; failing its %d operations", len(batch))
        for op in batch:
            op.error, op.event = storage_error(exc), SKIP
        return False

    def _run_alone(self, conn: sqlite3.Connection, op: Op[Any]) -> bool:
        """A write that is the whole transaction; on failure roll it back (returns False)."""
        assert op.fn is not None
        try:
            op.value, op.event = op.fn(conn)
        except Exception as exc:
            self._roll_back(conn)
            op_failed(op, exc, failures=self.failures)
            return False
        self.counters.end_op(ok=True)
        return True

    def _run(self, conn: sqlite3.Connection, op: Op[Any]) -> bool:
        """One operation of a batch, a write in a savepoint of its own; returns whether it succeeded."""
        assert op.fn is not None
        write = op.kind == "write"
        if write:
            conn.execute("SAVEPOINT op")
        try:
            op.value, op.event = op.fn(conn)
        except Exception as exc:
            if write:  # undo this operation only; the rest of the batch goes on
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
            self.counters.end_op(ok=False)
            op_failed(op, exc, failures=self.failures)
            return False
        self.counters.end_op(ok=True)
        if write:
            conn.execute("RELEASE op")
        return True

    def _roll_back(self, conn: sqlite3.Connection) -> None:
        """Roll the open transaction and the room counters it changed back."""
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        finally:
            self.counters.end_transaction(committed=False)

    @contextlib.contextmanager
    def transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; on any error roll back (counters too) and re-raise."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            self._roll_back(conn)
            raise
        self.counters.end_transaction(committed=True)

    def take_seq_rev(self, conn: sqlite3.Connection, room: str) -> tuple[int, int]:
        """A new message's ``seq`` and ``rev`` (:class:`~signald.history.writes.Allocator`).

        Only the operation's layer of the counters moves: a failed insert drops it with the rest
        of the operation, so no ``seq`` is lost or taken twice.
        """
        counter = self.counter(conn, room)
        counter[0] += 1
        counter[1] += 1
        counter[2] += 1
        if self.rooms_to_trim is not None:
            self.rooms_to_trim.add(room)
        return counter[0], counter[2]

    def removed(self, conn: sqlite3.Connection, room: str) -> None:
        """A message of ``room`` was hard-deleted: one fewer in its count."""
        self.counter(conn, room)[1] -= 1

    def duplicate_id(self, exc: Exception) -> bool:
        """Whether ``exc`` is ``messages.id`` refusing a duplicate (a random id collided)."""
        return isinstance(exc, sqlite3.IntegrityError) and "messages.id" in str(exc)

    def next_rev(self, conn: sqlite3.Connection, room: str) -> int:
        """Take ``room``'s next revision for a change made by the running operation."""
        counter = self.counter(conn, room)
        counter[2] += 1
        return counter[2]

    def write_counters(self, conn: sqlite3.Connection) -> None:
        """Write the room counters that the ``rooms`` table does not have yet (in a transaction)."""
        rows = self.counters.unwritten()
        if rows:
            conn.executemany(
                "INSERT INTO rooms (room, last_seq, count, last_rev) VALUES (?, ?, ?, ?) ON CONFLICT (room)"
                " DO UPDATE SET last_seq = excluded.last_seq, count = excluded.count, last_rev = excluded.last_rev",
                rows,
            )

    def save_counters(self, conn: sqlite3.Connection) -> None:
        """Write the room counters not in the ``rooms`` table yet, in a transaction of their own."""
        if not self.counters.pending:
            return
        try:
            with self.transaction(conn):
                self.write_counters(conn)
        except sqlite3.Error:  # they stay pending; the store reconciles them when it next opens
            logger.exception("writing the history room counters failed")


def _load_counter(conn: sqlite3.Connection, room: str) -> tuple[int, int, int]:
    """A room's ``(last_seq, count, last_rev)`` from its ``rooms`` row, which is created if missing.

    The row is up to date when it is read: a room's counters are read only while they are not in
    memory, which they leave only once written (see :mod:`signald.history.counters`), and after a
    crash the store reconciled the table when it opened.
    """
    row = conn.execute("SELECT last_seq, count, last_rev FROM rooms WHERE room = ?", (room,)).fetchone()
    if row is None:
        conn.execute("INSERT INTO rooms (room, last_seq, count) VALUES (?, 0, 0)", (room,))
        return 0, 0, 0
    return int(row[0]), int(row[1]), int(row[2])
