"""The history's writer thread: it owns the SQLite connection and runs the queued work on it.

Trio tasks put :class:`~signald.history.work.Op` items on a thread-safe queue (synchronously,
when the call starts, so operations are applied in the order the calls were made). The thread
takes everything queued (up to :data:`MAX_BATCH` items), runs it in ONE transaction (group
commit), commits, and only then hands the whole batch back to Trio with one
``TrioToken.run_sync_soon`` call. Between batches it runs retention steps and checkpoints.

Methods prefixed ``_w_`` run on the writer thread only. The connection is also used by the Trio
thread for inline commits (:mod:`signald.history.inline`), never by both at once:
:attr:`Writer.conn_lock` is held by whichever thread uses it. Between the thread's turns the
connection neither waits for another connection's write lock (``busy_timeout = 0``) nor
checkpoints on commit (``wal_autocheckpoint = 0``), so an inline commit never blocks the event
loop for long; the thread restores both for its own turns.

Durability: the database runs in WAL mode. ``synchronous`` ``NORMAL`` writes a commit to the WAL
without fsync: a committed (acked) message survives the process being killed, ``kill -9``
included, but the last commits before an OS crash or power loss may be lost (the database stays
consistent). Only checkpoints fsync; they run every :data:`WAL_CHECKPOINT_PAGES` WAL pages.
``FULL`` also survives power loss at one fsync per commit batch (see ``bench/history.py``).

Resource handling: the thread opens the connection (and runs the migrations of
:mod:`signald.history.schema`, unless read-only) and closes it when it takes the close request,
after everything queued before it (SQLite checkpoints the WAL on the last close). It is a daemon
thread, so a wedged disk cannot keep the process alive. SQLite's page cache is capped at
:data:`CACHE_KIB`; the WAL file is truncated to 64 MiB after checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, Final

from signald.history.counters import RECONCILE_SQL
from signald.history.retention import Retention
from signald.history.schema import SCHEMA_VERSION, SchemaError, migrate, user_version
from signald.history.thread import MAX_BATCH, WriterThread
from signald.history.transactions import Transactions
from signald.history.work import Op, storage_error

__all__ = ["CACHE_KIB", "MAX_BATCH", "WAL_CHECKPOINT_PAGES", "Writer"]

logger = logging.getLogger(__name__)

"""Most work items run in one transaction."""
CACHE_KIB: Final = 32 * 1024
"""Upper bound of SQLite's page cache (it grows only as pages are used)."""
WAL_CHECKPOINT_PAGES: Final = 10_000
"""WAL pages (~40 MiB) that trigger an automatic checkpoint; fewer checkpoints = fewer fsyncs."""


class Writer(WriterThread):
    """The thread, its queue and the connection; see the module docstring."""

    def __init__(
        self,
        path: str,
        *,
        synchronous: str,
        inline: bool,
        read_only: bool,
        busy_timeout_s: float,
        txns: Transactions,
        retention: Retention,
        deliver: Callable[[list[Op[Any]]], None],
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self.inline = inline
        self.read_only = read_only
        self.busy_timeout_s = busy_timeout_s
        self.txns = txns
        self.retention = retention
        super().__init__(deliver)
        self.conn: sqlite3.Connection | None = None
        """The connection while the thread has it open (for inline commits)."""
        self.conn_lock = threading.Lock()
        """Held by whichever thread is using the connection."""
        self.checkpoints = 0
        """WAL checkpoints run by the writer thread."""
        self._checkpointer: sqlite3.Connection | None = None
        """The thread's second connection, for checkpoints requested by inline commits."""

    # ------------------------------------------------------------------ writer thread

    def _w_main(self, opener: Op[None]) -> None:
        try:
            conn = self._w_connect()
        except BaseException as exc:
            opener.error = storage_error(exc, detail=True) if isinstance(exc, sqlite3.Error) else exc
            self._w_stop(None, [opener])
            return
        self.conn = conn
        self._w_deliver([opener])
        closer: Op[Any] | None = None
        try:
            closer = self._w_loop(conn)
        except BaseException:  # pragma: no cover - a bug; fail what is queued rather than hang
            logger.exception("history writer thread crashed")
        finally:
            with self.conn_lock:
                self.conn = None
                with contextlib.suppress(sqlite3.Error):
                    self._w_settle(conn, waiting=True)  # may wait for another writer, as turns do
                self.txns.save_counters(conn)
                if self._checkpointer is not None:  # closed first: the last close checkpoints
                    with contextlib.suppress(sqlite3.Error):
                        self._checkpointer.close()
                try:
                    conn.close()
                except sqlite3.Error:  # pragma: no cover
                    logger.exception("closing the history database failed")
            self._w_stop(closer, [])

    def _w_connect(self) -> sqlite3.Connection:
        if self.read_only:
            uri = f"file:{urllib.parse.quote(self.path)}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            try:
                _check_readable(conn, self.path)
            except BaseException:
                conn.close()
                raise
            return conn
        conn = sqlite3.connect(
            # Used by the Trio thread too (inline commits), never by both at once: see conn_lock.
            self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB:d}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES:d}")
            conn.execute("PRAGMA journal_size_limit = 67108864")
            conn.execute("PRAGMA temp_store = MEMORY")
            migrate(conn)
            conn.execute(RECONCILE_SQL)  # counters not written before a crash (see counters)
            if self.inline:
                self._w_settle(conn, waiting=False)
        except BaseException:
            conn.close()
            raise
        return conn

    def _w_loop(self, conn: sqlite3.Connection) -> Op[Any] | None:
        retention = self.retention
        next_check = time.monotonic() + retention.interval_s
        while True:
            timeout: float | None = None
            if retention.enabled:
                now = time.monotonic()
                if now >= next_check:
                    retention.interval_elapsed()
                    next_check = now + retention.interval_s
                if retention.should_step(idle=self.queue.empty()):
                    with self._w_turn(conn):
                        retention.step(conn)
                    continue
                timeout = max(0.0, next_check - now)
            taken = self._w_take(timeout)
            if taken is None:
                continue
            work, closer = taken
            # Checkpoint requests (from inline commits) only wake the thread; they are not part
            # of the transaction, but are delivered with the batch (the store counts them).
            ops = [op for op in work if op.kind != "checkpoint"]
            checkpoint = len(ops) < len(work)
            try:
                if work:
                    if ops:
                        with self._w_turn(conn):
                            self.txns.execute(conn, ops)
                    if checkpoint:
                        self._w_checkpoint(conn)
            finally:
                if work:
                    self._w_deliver(work)
            if closer is not None:
                return closer

    @contextlib.contextmanager
    def _w_turn(self, conn: sqlite3.Connection) -> Iterator[None]:
        """The thread's use of the connection: exclusive; waits for a busy database, checkpoints."""
        with self.conn_lock:
            if not self.inline:
                yield
                return
            self._w_settle(conn, waiting=True)
            try:
                yield
            finally:
                self._w_settle(conn, waiting=False)

    def _w_settle(self, conn: sqlite3.Connection, *, waiting: bool) -> None:
        """``waiting``: the thread's own turn (busy timeout, automatic checkpoints); else neither."""
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000) if waiting else 0:d}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES if waiting else 0:d}")

    def _w_checkpoint(self, conn: sqlite3.Connection) -> None:
        """Copy the WAL into the database file (PASSIVE: no waiting), mostly without :attr:`conn_lock`.

        The copy and its fsyncs take ~10 ms for the WAL of 1,000 inline commits; made on the
        shared connection, every send made meanwhile waited for it (an ack every 1,000 sends took
        10-16 ms instead of 0.25). WAL mode lets one connection checkpoint while another commits,
        so the bulk is copied on the thread's second connection while inline commits go on. What
        they added meanwhile is then copied in a turn of the thread's own (with the room counters),
        a few pages: a WAL copied to its end is started again from its beginning by the next
        write, while one that never is grows until the automatic checkpoint of a thread's turn.
        """
        try:
            self._w_checkpointer().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:  # the turn below then copies it all, under the lock, as it can
            logger.exception("history checkpoint on the second connection failed")
        with self._w_turn(conn):
            self.txns.save_counters(conn)
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error:
                logger.exception("history checkpoint failed")
                return
        self.checkpoints += 1

    def _w_checkpointer(self) -> sqlite3.Connection:
        """The second connection, opened on first use (only inline commits ask for checkpoints)."""
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
            self._checkpointer.execute(f"PRAGMA synchronous = {self.synchronous}")  # the fsyncs a checkpoint makes
        return self._checkpointer


def _check_readable(conn: sqlite3.Connection, path: str) -> None:
    """A read-only reader needs the current schema: it cannot migrate (or create) the file."""
    version = user_version(conn)
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"{path}: database schema version {version} is newer than this signald supports ({SCHEMA_VERSION})"
        )
    if version == 0:
        raise SchemaError(f"{path} is not a signald history database (it has no schema)")
    if version < SCHEMA_VERSION:
        raise SchemaError(
            f"{path}: database schema version {version} is older than this signald's ({SCHEMA_VERSION});"
            " start the daemon on it once to upgrade it"
        )
