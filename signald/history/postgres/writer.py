"""The PostgreSQL store's writer thread: group commit on one connection, reconnecting when lost.

Trio tasks put :class:`~signald.history.work.Op` items on a thread-safe queue; the thread takes
everything queued (up to :data:`MAX_BATCH`) and stores it in the order it was queued: each run of
consecutive sends in one statement (:mod:`~signald.history.postgres.batch`), each run of other
writes in one transaction (a ``SAVEPOINT`` per write unless it is alone, as on SQLite); it hands
the batch back to Trio with one ``run_sync_soon``, where ``on_commit`` callbacks run in commit
order. With ``synchronous_commit``
on (PostgreSQL's default) a commit is on disk when it returns: nothing is acked before that.

Sends lock their rooms in sorted order, so two daemons' sends never deadlock; other writes lock
rooms in the order of the batch, and two daemons can lock two rooms crosswise: PostgreSQL then
aborts one transaction (deadlock detected) and the thread runs that part again from the start
(:data:`~signald.history.postgres.sql.RETRYABLE`, at most :data:`RETRIES` times): nothing of it
had been delivered.

Error handling: a connection that is lost fails the batch it was running (``INTERNAL``, "history
store unavailable"; none of it is acked) and the thread reconnects before the next one, waiting
:data:`BACKOFF_MIN_S` doubling to :data:`BACKOFF_MAX_S` between attempts, failing what arrives
meanwhile at once; a reader that connects meanwhile (``/readyz``'s, say) ends the wait
(:meth:`PgWriter.retry_now`). :attr:`PgWriter.available` says whether the last attempt succeeded. A
connection found dead before a batch is sent on it (the server restarted, the backend terminated
while idle: :func:`~signald.history.postgres.sql.alive`) is replaced first: nothing fails for it.
Failed operations and transactions are logged by a :class:`~signald.history.work.FailureLog`,
as on SQLite: the first with its traceback, then at most one line per interval counting the rest.

Resource handling: the thread opens its connection (migrating the schema unless read-only) and
closes it when it takes the close request, after everything queued before it. It is a daemon
thread: a hung server cannot keep the process alive.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import psycopg

from signald.history.contract import SchemaError, StorageError
from signald.history.postgres import retention, schema
from signald.history.postgres.batch import store_sends
from signald.history.postgres.sql import RETRYABLE, Adapter, alive
from signald.history.thread import MAX_BATCH, WriterThread
from signald.history.work import SKIP, FailureLog, Op, op_failed
from signald.history.writes import SendOp

__all__ = ["BACKOFF_MAX_S", "BACKOFF_MIN_S", "MAX_BATCH", "RETENTION_EVERY", "RETRIES", "PgWriter", "UNAVAILABLE"]

logger = logging.getLogger(__name__)

RETRIES: Final = 5
BACKOFF_MIN_S: Final = 0.2
BACKOFF_MAX_S: Final = 5.0
UNAVAILABLE: Final = "history store unavailable"
RETENTION_EVERY: Final = 64
"""Under sustained load, one retention step runs after this many write batches (as on SQLite)."""


def connect(url: str, timeout_s: float, role: str) -> psycopg.Connection[Any]:
    """An autocommit connection whose tables are the ``signald`` schema's, named ``signald-<role>``
    in ``pg_stat_activity`` (``writer``, ``sends``, ``reader``) unless the URL names it."""
    return psycopg.connect(url, autocommit=True, connect_timeout=max(1, round(timeout_s)),
                           options=f"-c search_path={schema.SCHEMA}", fallback_application_name=f"signald-{role}")


def database_size(conn: psycopg.Connection[Any]) -> int:
    """The size of the connection's database on disk, in bytes."""
    row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row is not None else 0


class PgWriter(WriterThread):
    """The thread, its queue and its connection; see the module docstring."""

    thread_name = "signald-history-pg"

    def __init__(
        self, url: str, *, read_only: bool, connect_timeout_s: float, clock: Callable[[], float],
        retention: tuple[float, int, float], deliver: Callable[[list[Op[Any]]], None],
        scrub: Callable[[str], str],
    ) -> None:
        self.url = url
        self.read_only = read_only
        self.connect_timeout_s = connect_timeout_s
        self.clock = clock
        self.max_age_s, self.max_count, self.interval_s = retention
        self._scrub = scrub  # what may be logged of a driver error (no password)
        super().__init__(deliver)
        self.commits = 0
        self.failures = FailureLog(logger)
        """The log of failed operations and transactions (one traceback, then a line per interval),
        told of the send path's commits too (a store that recovered says so)."""
        self.available = True
        self.db_bytes = 0
        """The database's size as last measured (at open, then when the store asks)."""
        self._conn: psycopg.Connection[Any] | None = None
        self._retry_at = 0.0
        self._backoff = BACKOFF_MIN_S

    # ------------------------------------------------------------------ writer thread

    def _w_main(self, opener: Op[None]) -> None:
        try:
            self._conn = self._w_open()
        except BaseException as exc:
            opener.error = exc
            self._w_stop(None, [opener])
            return
        self._w_deliver([opener])
        closer: Op[Any] | None = None
        try:
            closer = self._w_loop()
        except BaseException:  # pragma: no cover - a bug; fail what is queued rather than hang
            logger.exception("history writer thread crashed")
        finally:
            if self._conn is not None:
                with contextlib.suppress(psycopg.Error):
                    self._conn.close()
            self._w_stop(closer, [])

    def _w_open(self) -> psycopg.Connection[Any]:
        conn = connect(self.url, self.connect_timeout_s, "writer")
        try:
            if self.read_only:
                version = schema.schema_version(conn)
                schema.check_version(version)
                if version < schema.SCHEMA_VERSION:
                    raise SchemaError(
                        f"database schema version {version} is older than this signald's ({schema.SCHEMA_VERSION});"
                        " run 'signald history migrate' to upgrade it")
            else:
                schema.migrate(conn)
            self.db_bytes = database_size(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _w_loop(self) -> Op[Any] | None:
        """Batches until the close request; retention steps when idle or every RETENTION_EVERY batches."""
        enabled = self.max_age_s > 0 or self.max_count > 0
        due = enabled  # a retention step should run (there may be something to remove)
        next_check = time.monotonic() + self.interval_s
        batches = 0  # since the last retention step
        while True:
            if enabled and time.monotonic() >= next_check:
                due, next_check = True, time.monotonic() + self.interval_s
            if due and (batches >= RETENTION_EVERY or self.queue.empty()):
                due, batches = self._w_retention_step(), 0
                continue
            timeout = max(0.0, next_check - time.monotonic()) if enabled else None
            taken = self._w_take(timeout)
            if taken is None:
                continue
            work, closer = taken
            try:
                if work:
                    self._w_batch(work)
                    batches += 1
            finally:
                if work:
                    self._w_deliver(work)
            if closer is not None:
                return closer

    def _w_retention_step(self) -> bool:
        """One retention step in a transaction of its own; whether there is more to do."""
        step: Op[tuple[int, bool]] = Op("write", lambda conn: (self.retention_step(conn.raw), SKIP))
        self._w_attempts([step], functools.partial(self._w_transaction, ops=[step]))
        if step.error is not None:
            logger.error("history retention failed: %s", self._scrub(str(step.error)))
        return step.value is not None and step.value[1]

    def retention_step(self, conn: psycopg.Connection[Any]) -> tuple[int, bool]:
        """One bounded retention step in the running transaction (:func:`~signald.history.postgres.
        retention.step`): ``(messages removed, more to do)``."""
        return retention.step(conn, self.clock(), self.max_age_s, self.max_count)

    def retry_now(self) -> None:
        """Another connection reached the server: the next batch connects again without waiting
        out the backoff (``/readyz`` said 200, sends must not fail for seconds more)."""
        self._retry_at = 0.0

    def _w_connected(self) -> psycopg.Connection[Any] | None:
        """The connection, reconnected if it was lost (at most once per backoff period)."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            if alive(conn.pgconn):
                return conn
            logger.warning("history store: the writer's connection was lost while idle; connecting again")
            conn.close()
        if time.monotonic() < self._retry_at:
            return None
        try:
            self._conn = conn = connect(self.url, self.connect_timeout_s, "writer")
        except psycopg.Error as exc:
            logger.error("history store: reconnecting failed (next attempt in %.1f s): %s",
                         self._backoff, self._scrub(str(exc)))
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(BACKOFF_MAX_S, self._backoff * 2)
            self.available = False
            return None
        logger.warning("history store: reconnected")
        self._backoff, self.available = BACKOFF_MIN_S, True
        return conn

    def _w_batch(self, ops: list[Op[Any]]) -> None:
        """Store ``ops`` in the order they were queued; errors go to the ops (none is acked then).

        Each run of consecutive sends is one statement (:mod:`~signald.history.postgres.batch`),
        then the sends it left out (a retry, a key twice, a parent not found, or all of them when
        one made it fail) one savepoint each; each run of other writes is one transaction with a
        savepoint per write. So writes commit, and are delivered, in the order they were made (a
        room's ``rev`` announced rising), and a batch of sends alone is one commit.
        """
        start = 0
        while start < len(ops):
            sends = isinstance(ops[start].fn, SendOp)
            end = start + 1
            while end < len(ops) and isinstance(ops[end].fn, SendOp) == sends:
                end += 1
            run = ops[start:end]
            if sends:
                left: list[Op[Any]] = []
                self._w_attempts(run, functools.partial(self._w_sends, ops=run, left=left))
                if left:
                    self._w_attempts(left, functools.partial(self._w_transaction, ops=left))
            else:
                self._w_attempts(run, functools.partial(self._w_transaction, ops=run))
            start = end

    def _w_attempts(self, ops: list[Op[Any]], run: Callable[[Adapter], bool]) -> None:
        """``run`` (one transaction over ``ops``), again after a deadlock; errors go to ``ops``."""
        for _attempt in range(RETRIES):
            conn = self._w_connected()
            if conn is None:
                break
            for op in ops:
                op.value, op.error, op.event = None, None, SKIP
            try:
                wrote = run(Adapter(conn))
            except RETRYABLE as exc:
                logger.warning("history batch of %d retried: %s", len(ops), type(exc).__name__)
                continue
            except psycopg.Error as exc:
                if conn.closed or conn.broken or isinstance(exc, psycopg.OperationalError):
                    logger.error("history store lost: %s", self._scrub(str(exc)))
                    self.available = False
                    break
                self.failures.failed(exc, "history transaction failed; failing its %d operations", len(ops))
                self._w_fail(ops, "history storage failed")
                return
            if wrote:
                self.commits += 1
                self.failures.succeeded()
            return
        self._w_fail(ops, UNAVAILABLE)

    def _w_fail(self, ops: list[Op[Any]], message: str) -> None:
        for op in ops:
            op.value, op.error, op.event = None, StorageError(message), SKIP

    def _w_transaction(self, conn: Adapter, ops: list[Op[Any]]) -> bool:
        """One transaction over ``ops``; whether a write committed. Driver errors that are not one
        operation's own (lost connection, deadlock) propagate, after a rollback when possible."""
        raw = conn.raw
        raw.execute("BEGIN")
        try:
            if len(ops) == 1:  # alone in its transaction: no savepoint needed
                if not _attempt(ops[0], conn, "ROLLBACK", self.failures):
                    return False
                raw.execute("COMMIT")
                return ops[0].kind == "write"
            wrote = False
            for op in ops:
                raw.execute("SAVEPOINT op")
                if _attempt(op, conn, "ROLLBACK TO SAVEPOINT op", self.failures):
                    raw.execute("RELEASE SAVEPOINT op")
                    wrote = wrote or op.kind == "write"
            raw.execute("COMMIT")
            return wrote
        except BaseException:
            if not raw.closed and not raw.broken:
                with contextlib.suppress(psycopg.Error):
                    raw.execute("ROLLBACK")
            raise

    def _w_sends(self, conn: Adapter, ops: list[Op[Any]], left: list[Op[Any]]) -> bool:
        """The sends ``ops`` stored by one statement (committed when it returns); those it left
        out, or all of them when it failed for one send's sake, are put in ``left``."""
        left.clear()
        try:
            results = store_sends(conn, [op.fn for op in ops if isinstance(op.fn, SendOp)])
        except Exception as exc:
            if not _own(exc, conn.raw):
                raise
            logger.warning("history batch of %d sends is stored one by one: %s", len(ops),
                           self._scrub(f"{type(exc).__name__}: {exc}"))
            left.extend(ops)  # nothing was stored: each send on its own decides who failed
            return False
        for op, result in zip(ops, results, strict=True):
            if result is None:
                left.append(op)
            else:
                op.value, op.event = result
        return len(left) < len(ops)


def _attempt(op: Op[Any], conn: Adapter, undo: str, failures: FailureLog) -> bool:
    """Run ``op``; if it fails for its own sake, ``undo`` its changes and fail it alone (logged
    through ``failures``). Whether it succeeded; an error that is not the operation's own
    propagates (the batch fails)."""
    try:
        op.value, op.event = op.fn(conn) if op.fn is not None else (None, SKIP)
    except Exception as exc:
        if not _own(exc, conn.raw):
            raise
        conn.raw.execute(undo)
        op_failed(op, exc, psycopg.Error, failures)
        return False
    return True


def _own(exc: Exception, raw: psycopg.Connection[Any]) -> bool:
    """Whether ``exc`` fails only its operation (a rule, a constraint), not the whole batch."""
    return not (isinstance(exc, (*RETRYABLE, psycopg.OperationalError)) or raw.closed or raw.broken)
