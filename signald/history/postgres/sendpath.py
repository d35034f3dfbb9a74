"""Sends committed from the Trio thread: a second connection driven without blocking.

On the writer thread a batch of sends costs two thread hops (the queue's wake-up, the hand-back),
and the thread's Python work contends with the Trio thread for the GIL: under 50 senders the
daemon spent about as much CPU around the writer thread as SQLite spends storing. Here the batch
statement (:data:`~signald.history.postgres.batch.STORE_PREPARED`, prepared once per connection)
is sent with libpq's asynchronous calls (``psycopg.pq``, psycopg's public libpq wrapper) on a
connection of its own, and the Trio thread waits for its socket like for any other: no thread, no
GIL hand-off. It is group commit: the sends made while a statement is in flight (and those made
in the same scheduler pass as the first) go together in the next one.

Order. All writes of the store still apply, and are announced, in the order they were made: the
store hands every operation to :meth:`SendPath.take` first. A send is taken (queued here) only
while nothing handed to the writer thread is unfinished; any other operation made while sends are
queued or in flight waits here, behind them, and goes to the writer thread once they are done —
and so does every operation made after it, sends included, until that queue is empty. So at any
moment at most one of the two connections writes, as with one writer.

Durability is the writer's: the statement runs in autocommit, ``synchronous_commit`` as the
server has it (on by default), and an op completes (its ack leaves) only after the statement's
result, i.e. after the commit, came back.

Error handling: what the statement leaves out (a retried ``client_msg_id``, a key twice, a bad
parent), and the whole batch when it fails for one send's sake (a constraint or data error, in the
statement or at its commit) or a deadlock, goes to the writer thread, which stores those sends
one savepoint each with the rules' exact answers. A lost connection fails the batch in flight
with ``INTERNAL`` "history store unavailable" (none of it is acked; the statement may or may not
have committed, exactly as on the writer thread) and sends go to the writer thread, which
reconnects on its own, until this path connects again (at most once per :data:`RECONNECT_S`).
A connection found dead before a statement is sent (lost while idle:
:func:`~signald.history.postgres.sql.alive`) fails nothing: that batch goes to the writer thread
and the path connects again at the next send.

Resource handling: the connection is opened (in a worker thread) by :meth:`SendPath.start`, which
also starts one system task; :meth:`SendPath.close` cancels that task and closes the connection.
The store calls it once everything queued here has been done (its close request waits behind).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import psycopg
import trio
from psycopg import pq

from signald.history.postgres.batch import STORE_PREPARED, Encoded
from signald.history.postgres.sql import RETRYABLE, alive
from signald.history.thread import MAX_BATCH
from signald.history.work import SKIP, Op, StorageError
from signald.history.writes import SendOp

__all__ = ["RECONNECT_S", "SendPath"]

logger = logging.getLogger(__name__)

RECONNECT_S: Final = 2.0
"""Least time between two attempts to connect this path again after it lost its connection."""

_NAME: Final = b"signald_store_sends"
_OK: Final = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)


class SendPath:
    """The Trio-side send path of a :class:`~signald.history.postgres.store.PostgresStore`.

    ``connect`` opens a connection (blocking: run in a worker thread); ``to_writer`` queues an op
    for the writer thread (counted by the store as unfinished until it comes back);
    ``writer_idle`` waits until nothing handed to the writer is unfinished; ``complete`` runs a
    finished batch's callbacks; ``scrub`` removes the password from a driver message;
    ``committed`` is told of each statement that committed (the store's failure log).
    """

    def __init__(
        self, connect: Callable[[], psycopg.Connection[Any]], *, to_writer: Callable[[Op[Any]], None],
        writer_busy: Callable[[], bool], writer_idle: Callable[[], Any], complete: Callable[[list[Op[Any]]], None],
        scrub: Callable[[str], str], committed: Callable[[], None],
    ) -> None:
        self._connect = connect
        self._to_writer = to_writer
        self._writer_busy = writer_busy
        self._writer_idle = writer_idle
        self._complete = complete
        self._scrub = scrub
        self._committed = committed
        self._conn: psycopg.Connection[Any] | None = None
        self._pending: list[Op[Any]] = []  # sends taken, not yet in a statement
        self._behind: list[Op[Any]] = []  # operations for the writer thread, after the sends
        self._in_flight = False
        self._wake = trio.Event()
        self._scope: trio.CancelScope | None = None
        self._retry_at = 0.0
        self._connecting = False
        self.commits = 0
        self.down = False
        """Whether this path lost its connection and has not connected again."""

    @property
    def busy(self) -> bool:
        """Whether sends are queued or in flight here (an operation for the writer must wait)."""
        return bool(self._pending or self._behind or self._in_flight)

    async def start(self) -> None:
        """Connect and prepare the statement (failing quietly: sends then use the writer thread),
        and start the task that runs the batches."""
        await self._reconnect()
        self._scope = trio.CancelScope()
        trio.lowlevel.spawn_system_task(self._run, name="signald-history-pg-sends")

    def close(self) -> None:
        """Stop the task and close the connection. Nothing is queued here any more, unless the
        store gave up waiting for a statement that never came back (a hung server): its wait on the
        socket ends too, its sends fail, and the task can stop."""
        if self._scope is not None:
            self._scope.cancel()
        conn, self._conn = self._conn, None
        if conn is not None:
            if self._in_flight:
                with contextlib.suppress(psycopg.Error):  # no socket left to wait on: nothing to wake
                    trio.lowlevel.notify_closing(conn.pgconn.socket)
            conn.close()

    def take(self, op: Op[Any]) -> bool:
        """Queue ``op`` here if it must run after what is queued here, or is a send this path
        stores now; False: hand it to the writer thread yourself."""
        if self._behind or ((self._pending or self._in_flight) and not isinstance(op.fn, SendOp)):
            self._behind.append(op)
        elif isinstance(op.fn, SendOp) and self._conn is not None and not self._writer_busy():
            self._pending.append(op)
        else:
            if isinstance(op.fn, SendOp) and self._conn is None:
                self._maybe_reconnect()
            return False
        self._wake.set()
        return True

    # ------------------------------------------------------------------ the task

    async def _run(self) -> None:
        assert self._scope is not None
        with self._scope:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                await trio.lowlevel.cancel_shielded_checkpoint()  # the rest of this pass adds its sends
                while self._pending:
                    await self._writer_idle()  # left-out sends of the last batch first
                    batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                    self._in_flight = True
                    try:
                        await self._store(batch)
                    finally:
                        self._in_flight = False
                behind, self._behind = self._behind, []
                for op in behind:
                    self._to_writer(op)

    async def _store(self, batch: list[Op[Any]]) -> None:
        """One statement over ``batch``; what it stored completes here, the rest goes to the writer."""
        conn = self._conn
        if conn is not None and not alive(conn.pgconn):  # lost while idle: nothing was sent
            self._lost(psycopg.OperationalError("the connection was lost while idle"), retry_s=0.0)
            conn = None
        if conn is None:  # lost since these were taken: the writer stores them
            for op in batch:
                self._to_writer(op)
            return
        encoded = Encoded([op.fn for op in batch if isinstance(op.fn, SendOp)])
        try:
            result = await _execute(conn.pgconn, [encoded.payload, encoded.created_at.encode(),
                                                   repr(encoded.now).encode()])
        except (psycopg.OperationalError, trio.ClosedResourceError) as exc:  # closed: by close()
            self._lost(exc)
            for op in batch:
                op.value, op.error, op.event = None, StorageError("history store unavailable"), SKIP
            self._complete(batch)
            return
        if result.status not in _OK:
            error = psycopg.errors.error_from_result(result, encoding="utf-8")
            if isinstance(error, psycopg.OperationalError) or conn.pgconn.status != pq.ConnStatus.OK:
                self._lost(error)  # e.g. the server shutting down: nothing was stored
            elif not isinstance(error, RETRYABLE):
                logger.warning("history batch of %d sends is stored one by one: %s", len(batch),
                               self._scrub(f"{type(error).__name__}: {error}"))
            for op in batch:  # nothing was stored: the writer decides, send by send
                self._to_writer(op)
            return
        self.commits += 1
        self._committed()
        left = []
        for op, stored in zip(batch, encoded.results(result.get_value(0, 0)), strict=True):
            if stored is None:
                left.append(op)
            else:
                op.value, op.event = stored
        if left:  # the writer stores them; the whole batch completes after, in the order made
            for op in left:
                self._to_writer(_stand_in(op))
            await self._writer_idle()
        self._complete(batch)

    # ------------------------------------------------------------------ the connection

    def _lost(self, exc: BaseException, retry_s: float = RECONNECT_S) -> None:
        logger.error("history store lost (send path): %s", self._scrub(str(exc)))
        conn, self._conn = self._conn, None
        self.down = True
        self._retry_at = time.monotonic() + retry_s
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def retry_now(self) -> None:
        """Another connection reached the server: connect again at the next send."""
        self._retry_at = 0.0

    def _maybe_reconnect(self) -> None:
        if not self._connecting and time.monotonic() >= self._retry_at:
            self._connecting = True
            trio.lowlevel.spawn_system_task(self._reconnect, name="signald-history-pg-sends-connect")

    async def _reconnect(self) -> None:
        self._connecting = True
        try:
            conn = await trio.to_thread.run_sync(self._open, abandon_on_cancel=True)
        except psycopg.Error as exc:
            logger.warning("history send path not connected (sends use the writer thread): %s",
                           self._scrub(str(exc)))
            self._retry_at = time.monotonic() + RECONNECT_S
        else:
            if self._scope is not None and self._scope.cancel_called:
                conn.close()
            else:
                self._conn, self.down = conn, False
        finally:
            self._connecting = False

    def _open(self) -> psycopg.Connection[Any]:
        conn = self._connect()
        try:
            prepared = conn.pgconn.prepare(_NAME, STORE_PREPARED.encode())
            if prepared.status not in _OK:
                raise psycopg.errors.error_from_result(prepared, encoding="utf-8")
            conn.pgconn.nonblocking = 1
        except BaseException:
            conn.close()
            raise
        return conn


def _stand_in(op: Op[Any]) -> Op[Any]:
    """An op for the writer thread that runs ``op``'s work and gives ``op`` its outcome, for
    ``op``'s batch to complete (callbacks and wake-ups) in order once all of it is done."""
    def took_event(event: Any) -> None:
        op.event = event

    def took(value: Any, error: BaseException | None) -> None:
        op.value, op.error = value, error
        if error is not None:
            op.event = SKIP

    return Op(op.kind, op.fn, on_commit=took_event, then=took)


async def _execute(pg: pq.abc.PGconn, params: list[bytes | None]) -> pq.abc.PGresult:
    """Run the prepared statement on ``pg`` (non-blocking), waiting on its socket; its result.

    Errors of the connection raise :class:`psycopg.OperationalError`; the statement's own errors
    are in the result, and so are its commit's (then the error is the result, not the rows that
    came before it). Shielded: once sent, the statement's outcome is always read (a cancelled
    caller would leave the connection in the middle of a reply).
    """
    with trio.CancelScope(shield=True):
        pg.send_query_prepared(_NAME, params)
        while pg.flush():
            await trio.lowlevel.wait_writable(pg.socket)
        result: pq.abc.PGresult | None = None
        while True:
            pg.consume_input()
            while not pg.is_busy():
                got = pg.get_result()
                if got is None:
                    if result is None:
                        raise psycopg.OperationalError("history store: no result")
                    return result
                # The first result is the statement's, unless an error follows: its COMMIT (at the
                # Sync, after the rows came back) failed, a deferred constraint say: nothing stored.
                if result is None or got.status == pq.ExecStatus.FATAL_ERROR:
                    result = got
            await trio.lowlevel.wait_readable(pg.socket)
    raise AssertionError("unreachable: the shielded scope is never cancelled")  # pragma: no cover
