"""Durable chat history: the Trio-side API of the SQLite store the handlers and the app use.

Each call puts a work item on the writer thread's queue (:mod:`signald.history.writer`) when it
starts, so operations are applied in the order the calls were made, and waits on a
:class:`trio.Event`. The thread runs what arrived together in one transaction and hands the batch
back with one ``run_sync_soon``; there the ``on_commit`` callbacks run in commit order, each just
before its waiter is woken, so fan-out from ``on_commit`` follows ``seq`` order even when many
connections send at once (Trio does not wake tasks in FIFO order). :meth:`HistoryStore.send_nowait`
takes a ``then(result, error)`` callback instead (a connection's reader goes on while its message
is stored); a lone one on an idle store is committed inline (:mod:`signald.history.inline`). A
batch's callbacks run inside ``completion_scope`` (the hub's fan-out cork: one write per
connection per batch). ``on_commit`` runs only when the operation changed something (not for an
idempotent retry, a repeated soft delete, a reaction or receipt already in place); it must be quick.

Resource handling: :meth:`HistoryStore.open` (or ``async with``) starts the thread, which opens
the file and migrates it (``read_only``: opens it ``mode=ro`` and needs the current schema);
:meth:`HistoryStore.aclose` lets the thread finish what is queued, commit and close, waiting at
most ``close_timeout_s``, shielded from cancellation. The queue is unbounded: callers are
rate-limited (the server's token buckets). A store is bound to the Trio run that opened it.

Errors: expected failures raise :class:`~signald.errors.SignalError` (``NOT_FOUND``,
``FORBIDDEN``, ``CONFLICT``, ``INVALID_PAYLOAD``); SQLite failures and a closed store raise
:class:`StorageError` (``INTERNAL``); a file written by a newer signald raises
:class:`~signald.history.schema.SchemaError`. An exception from a callback is logged and affects
nothing else. Cancelling a waiting caller does not cancel its operation, only the result is lost.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Final, TypeVar

from signald.history import queries, rules
from signald.history.contract import HistoryStats, SchemaError
from signald.history.inline import INLINE_SYNC_MODES, InlineCommits, tasks_runnable
from signald.history.operations import StoreOperations
from signald.history.queries import Connection, Rejoin
from signald.history.rejoins import SharedRejoins
from signald.history.retention import Retention
from signald.history.rules import Deleted
from signald.history.schema import SCHEMA_VERSION
from signald.history.transactions import Transactions
from signald.history.work import SKIP, Op, StorageError
from signald.history.writer import Writer

__all__ = ["Deleted", "HistoryStats", "HistoryStore", "Rejoin", "SchemaError", "StorageError"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

SYNCHRONOUS_MODES: Final = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})


class HistoryStore(StoreOperations):
    """Chat history in one SQLite file (or ``":memory:"``); see the module docstring."""

    _writer: Writer

    def __init__(
        self, path: str | os.PathLike[str], *, synchronous: str = "NORMAL", inline: bool = True,
        read_only: bool = False, retention_max_age_s: float = 0, retention_max_count: int = 0,
        clock: Callable[[], float] = time.time, retention_interval_s: float = 10.0,
        busy_timeout_s: float = 5.0, close_timeout_s: float = 10.0,
        completion_scope: AbstractContextManager[Any] | None = None,
    ) -> None:
        sync = synchronous.upper()
        if sync not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {sorted(SYNCHRONOUS_MODES)}, got {synchronous!r}")
        self.path = os.fspath(path)
        self.memory = self.path in ("", ":memory:")
        if read_only and (self.memory or retention_max_age_s or retention_max_count):
            raise ValueError("a read-only store needs a file and no retention")
        self.synchronous = sync
        self.read_only = read_only
        self._txns = Transactions(clock)
        self._alloc = self._txns
        self._retention = Retention(self._txns, max_age_s=retention_max_age_s, max_count=retention_max_count,
                                    interval_s=retention_interval_s)
        inline = inline and not read_only and (self.memory or sync in INLINE_SYNC_MODES)
        self._writer = Writer(self.path, synchronous=sync, inline=inline, read_only=read_only,
                              busy_timeout_s=busy_timeout_s, txns=self._txns, retention=self._retention,
                              deliver=self._delivered)
        self._queue = self._writer.queue
        self._inline = InlineCommits(self._writer, self._txns, enabled=inline, checkpoints=not self.memory,
                                     complete=self._complete, request_checkpoint=self._request_checkpoint,
                                     queue=self._put_many)
        self._close_timeout_s = close_timeout_s
        # Each batch's callbacks run inside it (the hub's fan-out cork: one write per member per batch).
        self._completion_scope = completion_scope
        self._init_lifecycle()
        self._in_flight = 0  # ops handed to the thread and not yet completed (Trio thread only)
        self._rejoins = SharedRejoins(self._put)  # room.join reads: one per room and range while queued

    @property
    def commits(self) -> int:
        """Committed transactions in which a write succeeded (group commit makes it < writes)."""
        return self._txns.commits

    @property
    def inline_commits(self) -> int:
        """Of :attr:`commits`, those made in the Trio thread by :meth:`send_nowait` on an idle store."""
        return self._inline.count

    @property
    def checkpoints(self) -> int:
        """WAL checkpoints run by the writer thread."""
        return self._writer.checkpoints

    def _starting(self, opener: Op[None]) -> None:
        self._in_flight = 1  # the opener
        self._writer.start(opener)
        self._inline.start()

    def _stopping(self) -> None:
        self._inline.stop()

    def _put_closer(self, closer: Op[None]) -> None:
        self._put(closer)

    # ------------------------------------------------------------------ hand-off to the writer thread

    def _put(self, op: Op[Any]) -> None:
        if self._inline.pending:  # sends deferred to the end of this pass go first (call order)
            self._inline.flush()
        self._writer.put(op)
        self._in_flight += 1

    def _put_many(self, ops: list[Op[Any]]) -> None:
        """Queue sends that were deferred for an inline commit (in order, ahead of anything later)."""
        for i, op in enumerate(ops):
            try:
                self._writer.put(op)
            except StorageError as exc:  # the thread is gone: these fail now (never silently lost)
                for failed in ops[i:]:
                    failed.error, failed.event = exc, SKIP
                self._complete(ops[i:])
                return
            self._in_flight += 1

    async def _call(
        self,
        fn: Callable[[sqlite3.Connection], tuple[T, Any]],
        *,
        write: bool,
        on_commit: Callable[[Any], None] | None = None,
        counts: bool = False,
    ) -> T:
        """Run ``fn`` in the writer thread; ``counts``: it reads the ``rooms`` table, which is
        brought up to date with the room counters (earlier operations of its batch included) first."""
        if self._state != "open":
            raise StorageError(f"history store is {self._state}")
        op: Op[T] = Op("write" if write else "counts" if counts else "read", fn, on_commit)
        self._put(op)
        await op.done.wait()
        if op.error is not None:
            raise op.error
        return op.value  # type: ignore[return-value]  # set whenever error is None

    async def run_on_connection(
        self, fn: Callable[[sqlite3.Connection], tuple[T, Any]], *, write: bool,
        on_commit: Callable[[Any], None] | None = None,
    ) -> T:
        """Run ``fn(conn)`` on the writer thread in order with every other operation (maintenance,
        tests). ``fn`` returns ``(result, on_commit argument or SKIP)`` like the store's own
        operations and runs in its batch's transaction (a ``write`` in a savepoint of its own)."""
        return await self._call(fn, write=write, on_commit=on_commit)

    @property
    def queued(self) -> int:
        """Operations handed to the writer thread that it has not taken yet."""
        return self._queue.qsize()

    @property
    def connection_busy(self) -> bool:
        """Whether a thread (the writer's, or the Trio thread's inline commit) holds the connection."""
        return self._writer.conn_lock.locked()

    def _request_checkpoint(self) -> None:
        """After inline commits: have the writer thread checkpoint. Never fails the commit that asked.

        Not counted in :attr:`_in_flight`: the thread copies the WAL on a connection of its own,
        and sends made meanwhile are committed inline as before instead of waiting for the copy
        (~10 ms every :data:`~signald.history.inline.CHECKPOINT_INLINE` inline commits)."""
        try:
            self._writer.put(Op("checkpoint"))
        except StorageError:  # the thread stopped; it checkpointed when it closed the connection
            logger.warning("history writer thread is gone; WAL checkpoint skipped")

    def _delivered(self, batch: list[Op[Any]]) -> None:
        self._in_flight -= sum(op.kind != "checkpoint" for op in batch)
        self._complete(batch)

    # ------------------------------------------------------------------ the primitives of StoreOperations

    async def _write(self, fn: Callable[[Connection], tuple[T, Any]], on_commit: Callable[[Any], None] | None) -> T:
        return await self._call(fn, write=True, on_commit=on_commit)

    async def _read(self, fn: Callable[[Connection], T]) -> T:
        return await self._call(lambda conn: (fn(conn), SKIP), write=False)

    def _submit(self, op: Op[Any]) -> None:
        """Hand a send over. On an idle store (nothing queued or in progress, a ``synchronous`` mode
        that does not fsync, no other connection holding the write lock) it is committed in the Trio
        thread (:mod:`signald.history.inline`): right here when no other task waits to run and no
        inline commit was made yet in this turn of the Trio loop (``on_commit`` and ``then`` have
        run when this returns), else with the other sends of this scheduler pass, in one
        transaction, in the next pass. Otherwise it is queued for the writer thread."""
        if self._state != "open":
            raise StorageError(f"history store is {self._state}")
        inline = self._inline
        if self._in_flight == 0 and inline.running:
            if not inline.spent and not inline.pending and tasks_runnable() == 0 and inline.commit([op]):
                return
            inline.defer(op)  # committed with the other sends of this pass, in the next pass
            return
        self._put(op)

    async def run_retention(self) -> int:
        """Apply retention now, completely; returns how many messages were removed."""
        return await self._call(lambda conn: (self._retention.run_all(conn), SKIP), write=True)

    # ------------------------------------------------------------------ reads

    async def rejoin(
        self, *, user_id: str, room: str, since: int | None, limit: int, since_rev: int | None = None
    ) -> Rejoin:
        """``unread``, the room's ``rev``, ``missed`` (with ``since``) and ``changes`` (with
        ``since_rev``) for ``room.join``: one read, at one point of the commit order."""
        rules.check_limit(limit, "`limit`")
        if self._state != "open":
            raise StorageError(f"history store is {self._state}")
        return await self._rejoins.rejoin(user_id, room, since, since_rev, limit)  # shared while queued

    async def rooms(self) -> list[str]:
        """Rooms that have stored messages, sorted by name."""
        # A read-only reader cannot bring the rooms table up to date: it counts around it.
        sql = queries.ROOMS_TRUE_SQL if self.read_only else queries.ROOMS_SQL
        return await self._call(lambda conn: ([row[0] for row in conn.execute(sql)], SKIP), write=False, counts=True)

    async def stats(self) -> HistoryStats:
        """Counts for ``system.stats`` and operators."""
        sql = queries.ROOM_TOTALS_TRUE_SQL if self.read_only else queries.ROOM_TOTALS_SQL

        rooms, messages = await self._call(lambda conn: (conn.execute(sql).fetchone(), SKIP), write=False, counts=True)
        return HistoryStats(
            rooms=rooms, messages=messages, db_bytes=self.db_bytes(), schema_version=SCHEMA_VERSION,
            commits=self.commits, pending=self.queued, synchronous=self.synchronous, backend="sqlite",
        )

    def db_bytes(self) -> int:
        """Size of the database file plus its WAL (0 in memory); no round trip to the thread."""
        if self.memory:
            return 0
        total = 0
        for name in (self.path, self.path + "-wal"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(name)
        return total
