"""The history store on PostgreSQL: the contract of :mod:`signald.history.contract`.

Writes go to one writer thread (:mod:`signald.history.postgres.writer`) in the order the calls
were made and commit in groups, as on SQLite, except sends, which the Trio thread commits itself
in groups on a connection of their own (:mod:`signald.history.postgres.sendpath`; ``trio_sends``
False: on the writer thread too), in turn with the writer; ``on_commit`` callbacks run in commit order on the
Trio thread inside ``completion_scope`` (the hub's fan-out cork). Reads run on a small pool of
reader connections through ``trio.to_thread`` (at most ``readers`` at once), each in one
``REPEATABLE READ`` transaction, so a ``rejoin`` sees one snapshot; they see every write that
returned before them. The rules and the statements are those both stores share
(:mod:`signald.history.rules`, :mod:`~signald.history.writes`, :mod:`~signald.history.queries`).

Resource handling: :meth:`PostgresStore.open` starts the writer thread, which connects and
migrates (under an advisory lock); :meth:`PostgresStore.aclose` lets it commit what is queued and
closes every connection, waiting at most ``close_timeout_s``, shielded from cancellation.

Errors: the URL's password never appears in a message or a log line (``shown`` is the URL
without it). A server that cannot be reached at ``open``: :class:`StorageError` with one line
saying why. Lost while running: operations fail with ``INTERNAL`` "history store unavailable"
until the writer (or a reader) connects again; none of them was acked.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import urllib.parse
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import psycopg
import trio

from signald.errors import SignalError
from signald.history import queries, rules
from signald.history.contract import HistoryStats, SchemaError, StorageError
from signald.history.operations import StoreOperations
from signald.history.postgres import schema
from signald.history.postgres.sendpath import SendPath
from signald.history.postgres.sql import Adapter, Allocator, alive
from signald.history.postgres.writer import UNAVAILABLE, PgWriter, connect, database_size
from signald.history.queries import Rejoin
from signald.history.work import SKIP, Op

__all__ = ["PostgresStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class PostgresStore(StoreOperations):
    """Chat history in a PostgreSQL database; see the module docstring."""

    _writer: PgWriter

    def __init__(
        self, url: str, *, shown: str | None = None, read_only: bool = False, retention_max_age_s: float = 0,
        retention_max_count: int = 0, clock: Callable[[], float] = time.time, retention_interval_s: float = 10.0,
        completion_scope: AbstractContextManager[Any] | None = None, close_timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0, readers: int = 4, db_bytes_max_age_s: float = 5.0, trio_sends: bool = True,
    ) -> None:
        if retention_max_age_s < 0 or retention_max_count < 0 or retention_interval_s <= 0:
            raise ValueError("retention settings must be >= 0 and the interval > 0")
        self.url = url
        self.shown = shown or url
        self.read_only = read_only
        self._password = urllib.parse.urlsplit(url).password
        self._alloc = Allocator(clock)
        self._writer = PgWriter(
            url, read_only=read_only, connect_timeout_s=connect_timeout_s, clock=clock,
            retention=(retention_max_age_s, retention_max_count, retention_interval_s),
            deliver=self._delivered, scrub=self.scrub)
        self._connect_timeout_s = connect_timeout_s
        self._close_timeout_s = close_timeout_s
        self._completion_scope = completion_scope
        self._idle: list[psycopg.Connection[Any]] = []  # reader connections not in use
        self._readers = trio.CapacityLimiter(readers)
        self._init_lifecycle()
        self._db_bytes_max_age_s = db_bytes_max_age_s
        self._sized_at = -math.inf  # time.monotonic() of the last size asked for
        self._sizing = False  # a size is being measured by the writer thread
        self._handed: set[int] = set()  # id() of the operations handed to the writer thread, unfinished
        self._writer_idle = trio.Event()
        self._writer_idle.set()
        self._sends: SendPath | None = None if read_only or not trio_sends else SendPath(
            lambda: connect(url, connect_timeout_s, "sends"), to_writer=self._to_writer,
            writer_busy=lambda: bool(self._handed), writer_idle=lambda: self._writer_idle.wait(),
            complete=self._complete, scrub=self.scrub, committed=self._writer.failures.succeeded)

    def scrub(self, text: str) -> str:
        """``text`` on one line, with the URL's password (if it has one) replaced."""
        if self._password:
            text = text.replace(self._password, "***")
        return " ".join(text.split())

    @property
    def commits(self) -> int:
        return self._writer.commits + (self._sends.commits if self._sends is not None else 0)

    async def open(self) -> None:
        """Start the writer thread (which connects and migrates), then the Trio-side send path."""
        await super().open()
        if self._sends is not None:
            await self._sends.start()

    @property
    def available(self) -> bool:
        """Whether the writer's last attempt to reach the database succeeded (and the send path's)."""
        return self._writer.available and not (self._sends is not None and self._sends.down)

    def _open_error(self, error: BaseException) -> BaseException:
        if isinstance(error, psycopg.Error):
            return StorageError(f"history store {self.shown}: {self.scrub(str(error))}")
        if isinstance(error, SchemaError):
            return SchemaError(f"{self.shown}: {error}")
        return error

    def _put_closer(self, closer: Op[None]) -> None:
        if self._sends is None or not self._sends.take(closer):  # behind the sends queued there
            self._writer.put(closer)

    def _stopped(self) -> None:
        if self._sends is not None:
            self._sends.close()
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # ------------------------------------------------------------------ the writer thread

    def _delivered(self, batch: list[Op[Any]]) -> None:
        handed = self._handed
        if handed:
            for op in batch:
                handed.discard(id(op))
            if not handed:
                self._writer_idle.set()
        self._complete(batch)

    def _put(self, op: Op[Any]) -> None:
        """Every write, in the order made: to the send path or, in turn, to the writer thread."""
        if self._state != "open":
            raise StorageError(f"history store is {self._state}")
        if self._sends is None or not self._sends.take(op):
            self._to_writer(op)

    def _to_writer(self, op: Op[Any]) -> None:
        """Hand ``op`` to the writer thread, counted unfinished until it comes back; one it no
        longer takes fails (from the send path, which cannot take the error itself)."""
        try:
            self._writer.put(op)
        except StorageError as exc:
            if self._sends is None or self._state == "open":
                raise
            op.error = exc
            self._complete([op])
            return
        if not self._handed:
            self._writer_idle = trio.Event()
        self._handed.add(id(op))

    _submit = _put

    async def _write(self, fn: Callable[[Adapter], tuple[T, Any]], on_commit: Callable[[Any], None] | None) -> T:
        op: Op[T] = Op("write", fn, on_commit)
        self._put(op)
        await op.done.wait()
        if op.error is not None:
            raise op.error
        return op.value  # type: ignore[return-value]  # set whenever error is None

    # ------------------------------------------------------------------ reader connections

    async def _read(self, fn: Callable[[Adapter], T]) -> T:
        """``fn`` on a reader connection, in one read-only snapshot, off the Trio thread."""
        if self._state != "open":
            raise StorageError(f"history store is {self._state}")
        async with self._readers:
            pooled = self._idle.pop() if self._idle else None
            handoff = _Handoff()
            try:  # abandoned when cancelled: a hung server must not hold up a stopping daemon
                conn, result, error = await trio.to_thread.run_sync(
                    self._read_on, pooled, fn, handoff, abandon_on_cancel=True)
            except trio.Cancelled:
                handoff.abandon()
                raise
            if conn is not None and conn is not pooled:  # connected: the server is there, writes may try now
                self._writer.retry_now()
                if self._sends is not None:
                    self._sends.retry_now()
            if conn is not None:
                if self._state == "open":
                    self._idle.append(conn)
                else:
                    conn.close()
        if error is not None:
            raise error
        return result  # type: ignore[return-value]  # set whenever error is None

    def _read_on(
        self, conn: psycopg.Connection[Any] | None, fn: Callable[[Adapter], T], handoff: _Handoff
    ) -> tuple[psycopg.Connection[Any] | None, T | None, BaseException | None]:
        """In a worker thread: (the connection to keep or None, result, error)."""
        outcome = self._read_with(conn, fn)
        handoff.finished(outcome[0])
        return outcome

    def _read_with(
        self, conn: psycopg.Connection[Any] | None, fn: Callable[[Adapter], T]
    ) -> tuple[psycopg.Connection[Any] | None, T | None, BaseException | None]:
        try:
            if conn is not None and not conn.closed and not alive(conn.pgconn):  # lost while idle
                conn.close()
            if conn is None or conn.closed or conn.broken:
                conn = connect(self.url, self._connect_timeout_s, "reader")
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                result = fn(Adapter(conn))
            finally:
                if not conn.broken:
                    conn.execute("ROLLBACK")  # read only: nothing to commit
            return conn, result, None
        except SignalError as exc:
            return conn, None, exc
        except psycopg.Error as exc:
            lost = isinstance(exc, psycopg.OperationalError) or conn is None or conn.broken
            logger.error("history read failed: %s", self.scrub(str(exc)))
            if conn is not None and lost:
                conn.close()
            return (None if lost else conn), None, StorageError(UNAVAILABLE if lost else "history storage failed")

    # ------------------------------------------------------------------ writes

    async def run_retention(self) -> int:
        """Everything expired now, one bounded step (its own transaction) after the other."""
        total, more = 0, True
        while more:
            removed, more = await self._write(lambda c: (self._writer.retention_step(c.raw), SKIP), None)
            total += removed
        return total

    # ------------------------------------------------------------------ reads

    async def rejoin(
        self, *, user_id: str, room: str, since: int | None, limit: int, since_rev: int | None = None
    ) -> Rejoin:
        rules.check_limit(limit, "`limit`")
        return await self._read(lambda c: queries.rejoin(c, user_id, room, since, since_rev, limit))

    async def rooms(self) -> list[str]:
        return await self._read(lambda c: [row[0] for row in c.execute(queries.ROOMS_SQL)])

    async def stats(self) -> HistoryStats:
        def fn(conn: Adapter) -> tuple[int, int, int, str]:
            rooms, messages = conn.execute(queries.ROOM_TOTALS_SQL).fetchone() or (0, 0)
            size, sync = conn.raw.execute(
                "SELECT pg_database_size(current_database()), current_setting('synchronous_commit')"
            ).fetchone() or (0, "")
            return int(rooms), int(messages), int(size), str(sync)

        rooms, messages, self._writer.db_bytes, sync = await self._read(fn)
        return HistoryStats(
            rooms=rooms, messages=messages, db_bytes=self._writer.db_bytes, schema_version=schema.SCHEMA_VERSION,
            commits=self.commits, pending=self._writer.queue.qsize(), synchronous=sync, backend="postgresql",
        )

    def db_bytes(self) -> int:
        """The database's size (``pg_database_size``) as last measured; never waits.

        Measured when the store opens and by :meth:`stats`; a call that finds the measure older
        than ``db_bytes_max_age_s`` also asks the writer thread for a new one, which the next
        call sees. So a metrics scrape (every 15 s or so) shows the size of one scrape ago at
        worst, and nobody asking costs nothing.
        """
        now = time.monotonic()
        if self._state == "open" and not self._sizing and now - self._sized_at >= self._db_bytes_max_age_s:
            self._sized_at, self._sizing = now, True

            def measured(size: int | None, error: BaseException | None) -> None:
                self._sizing = False
                if size is not None:
                    self._writer.db_bytes = size

            try:
                self._writer.put(Op("read", lambda c: (database_size(c.raw), SKIP), then=measured))
            except StorageError:
                self._sizing = False
        return self._writer.db_bytes


class _Handoff:
    """A read's connection between its worker thread and a Trio task that may abandon it: the one
    that comes second (the thread finishing, or the task abandoning) closes it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._abandoned = False
        self._conn: psycopg.Connection[Any] | None = None
        self._finished = False

    def finished(self, conn: psycopg.Connection[Any] | None) -> None:
        with self._lock:
            self._conn, self._finished, abandoned = conn, True, self._abandoned
        if abandoned and conn is not None:
            conn.close()

    def abandon(self) -> None:
        with self._lock:
            self._abandoned, conn = True, self._conn if self._finished else None
        if conn is not None:  # finished, but its result never reached the task
            conn.close()
