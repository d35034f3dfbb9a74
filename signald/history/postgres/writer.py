"""The PostgreSQL store's writer thread: group commit on one connection, reconnecting when lost.

Trio tasks put :class:`~signald.history.work.Op` items on a thread-safe queue; the thread takes
everything queued (up to :data:`MAX_BATCH`), runs it in ONE transaction (a ``SAVEPOINT`` per write
unless it is alone, as on SQLite), commits, and hands the batch back to Trio with one
``run_sync_soon``, where ``on_commit`` callbacks run in commit order. With ``synchronous_commit``
on (PostgreSQL's default) a commit is on disk when it returns: nothing is acked before that.

Two daemons on one database can lock two rooms crosswise; PostgreSQL then aborts one
transaction (deadlock detected) and the thread runs that batch again from the start
(:data:`~signald.history.postgres.sql.RETRYABLE`, at most :data:`RETRIES` times): nothing of it
had been delivered.

Error handling: a connection that is lost fails the batch it was running (``INTERNAL``, "history
store unavailable"; none of it is acked) and the thread reconnects before the next one, waiting
:data:`BACKOFF_MIN_S` doubling to :data:`BACKOFF_MAX_S` between attempts, failing what arrives
meanwhile at once. :attr:`PgWriter.available` says whether the last attempt succeeded.

Resource handling: the thread opens its connection (migrating the schema unless read-only) and
closes it when it takes the close request, after everything queued before it. It is a daemon
thread: a hung server cannot keep the process alive.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import time
from collections.abc import Callable
from typing import Any, Final

import psycopg

from signald.history.contract import SchemaError, StorageError
from signald.history.postgres import schema
from signald.history.postgres.batch import store_sends
from signald.history.postgres.sql import RETRYABLE, Adapter, expire
from signald.history.thread import WriterThread
from signald.history.work import SKIP, Op, op_failed
from signald.history.writes import SendOp

__all__ = ["BACKOFF_MAX_S", "BACKOFF_MIN_S", "MAX_BATCH", "RETRIES", "PgWriter", "UNAVAILABLE"]

logger = logging.getLogger(__name__)

MAX_BATCH: Final = 1024
RETRIES: Final = 5
BACKOFF_MIN_S: Final = 0.2
BACKOFF_MAX_S: Final = 5.0
UNAVAILABLE: Final = "history store unavailable"


def connect(url: str, timeout_s: float, *, prepare: bool = True) -> psycopg.Connection[Any]:
    """An autocommit connection whose tables are the ``signald`` schema's.

    ``prepare=False``: no server-side prepared statements. The writer's connection runs batches in
    pipeline mode, and a statement prepared in a pipeline that then fails is not there on the
    server although psycopg believes it is ("prepared statement ... does not exist" ever after).
    """
    conn = psycopg.connect(url, autocommit=True, connect_timeout=max(1, round(timeout_s)),
                           options=f"-c search_path={schema.SCHEMA}")
    if not prepare:
        conn.prepare_threshold = None
    return conn


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
        self.available = True
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
        conn = connect(self.url, self.connect_timeout_s, prepare=False)
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
        except BaseException:
            conn.close()
            raise
        return conn

    def _w_loop(self) -> Op[Any] | None:
        retention = self.max_age_s > 0 or self.max_count > 0
        next_check = time.monotonic() + self.interval_s
        while True:
            timeout = max(0.0, next_check - time.monotonic()) if retention else None
            try:
                first = self.queue.get(timeout=timeout)
            except queue.Empty:
                next_check = time.monotonic() + self.interval_s
                self._w_batch([Op("write", lambda conn: (self.expire(conn.raw), SKIP))])
                continue
            batch = [first]
            closer = first if first.kind == "close" else None
            while closer is None and len(batch) < MAX_BATCH:
                try:
                    op = self.queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(op)
                if op.kind == "close":
                    closer = op
            work = batch if closer is None else batch[:-1]
            try:
                if work:
                    self._w_batch(work)
            finally:
                if work:
                    self._w_deliver(work)
            if closer is not None:
                return closer

    def expire(self, conn: psycopg.Connection[Any]) -> int:
        """Retention now, in the running transaction (see :func:`~signald.history.postgres.sql.expire`)."""
        return expire(conn, self.clock(), self.max_age_s, self.max_count)

    def _w_connected(self) -> psycopg.Connection[Any] | None:
        """The connection, reconnected if it was lost (at most once per backoff period)."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        if time.monotonic() < self._retry_at:
            return None
        try:
            self._conn = conn = connect(self.url, self.connect_timeout_s, prepare=False)
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
        """Run ``ops`` in one transaction and commit; errors go to the ops (none is acked then)."""
        for _attempt in range(RETRIES):
            conn = self._w_connected()
            if conn is None:
                break
            for op in ops:
                op.value, op.error, op.event = None, None, SKIP
            try:
                wrote = self._w_transaction(Adapter(conn), ops)
            except RETRYABLE as exc:
                logger.warning("history batch of %d retried: %s", len(ops), type(exc).__name__)
                continue
            except psycopg.Error as exc:
                if conn.closed or conn.broken or isinstance(exc, psycopg.OperationalError):
                    logger.error("history store lost: %s", self._scrub(str(exc)))
                    self.available = False
                    break
                logger.exception("history transaction failed; failing its %d operations", len(ops))
                self._w_fail(ops, "history storage failed")
                return
            if wrote:
                self.commits += 1
            return
        self._w_fail(ops, UNAVAILABLE)

    def _w_fail(self, ops: list[Op[Any]], message: str) -> None:
        for op in ops:
            op.value, op.error, op.event = None, StorageError(message), SKIP

    def _w_transaction(self, conn: Adapter, ops: list[Op[Any]]) -> bool:
        """One transaction over ``ops``; whether a write committed. Driver errors that are not one
        operation's own (lost connection, deadlock) propagate, after a rollback when possible."""
        raw = conn.raw
        sends = [op.fn for op in ops if isinstance(op.fn, SendOp)]
        if sends and len(sends) == len(ops) and self._w_sends(conn, ops, sends):
            return True
        raw.execute("BEGIN")
        try:
            if len(ops) == 1:  # alone in its transaction: no savepoint needed
                op = ops[0]
                try:
                    op.value, op.event = op.fn(conn) if op.fn is not None else (None, SKIP)
                except Exception as exc:
                    if not _own(exc, raw):
                        raise
                    raw.execute("ROLLBACK")
                    op_failed(op, exc, psycopg.Error)
                    return False
                raw.execute("COMMIT")
                return True
            wrote = False
            for op in ops:
                raw.execute("SAVEPOINT op")
                try:
                    op.value, op.event = op.fn(conn) if op.fn is not None else (None, SKIP)
                except Exception as exc:
                    if not _own(exc, raw):
                        raise
                    raw.execute("ROLLBACK TO SAVEPOINT op")
                    op_failed(op, exc, psycopg.Error)
                    continue
                raw.execute("RELEASE SAVEPOINT op")
                wrote = True
            raw.execute("COMMIT")
            return wrote
        except BaseException:
            if not raw.closed and not raw.broken:
                with contextlib.suppress(psycopg.Error):
                    raw.execute("ROLLBACK")
            raise

    def _w_sends(self, conn: Adapter, ops: list[Op[Any]], sends: list[SendOp]) -> bool:
        """A batch of sends stored at once (:mod:`~signald.history.postgres.batch`) and committed;
        False (rolled back, nothing done) where one savepoint per send must decide instead."""
        raw = conn.raw
        try:
            with raw.pipeline():  # round trips only where a result is needed, and one at the end
                raw.execute("BEGIN")
                results = store_sends(conn, sends)
                if results is not None:
                    raw.execute("COMMIT")
        except Exception as exc:
            if not raw.closed and not raw.broken:
                with contextlib.suppress(psycopg.Error):
                    raw.execute("ROLLBACK")
            if not _own(exc, raw):
                raise
            return False  # e.g. a random id collided: the savepoints sort it out
        if results is None:
            raw.execute("ROLLBACK")
            return False
        for op, (value, event) in zip(ops, results, strict=True):
            op.value, op.event = value, event
        return True

def _own(exc: Exception, raw: psycopg.Connection[Any]) -> bool:
    """Whether ``exc`` fails only its operation (a rule, a constraint), not the whole batch."""
    return not (isinstance(exc, (*RETRYABLE, psycopg.OperationalError)) or raw.closed or raw.broken)
