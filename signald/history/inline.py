"""Inline commits: a lone ``chat.send`` on an idle store is committed right in the Trio thread.

Handing a message to the writer thread and back costs two context switches, more than the
~30-60 us the transaction itself takes, and that is the whole ack latency of a client sending one
message at a time. So a message sent with ``HistoryStore.send_nowait`` while the store is idle
(nothing queued, running or waiting for its callbacks) and no other Trio task is waiting to run
is stored and committed here, on the writer's connection, under its lock. Under load (other tasks
runnable, e.g. readers with frames of their own) messages queue, so they still share transactions;
at most one message per turn of the Trio loop goes inline (:class:`NewTurn`).

Inline commits never wait and never copy the WAL on the event loop: between the thread's
transactions the connection has ``busy_timeout = 0`` (if another connection holds the write lock
the message is queued instead) and ``wal_autocheckpoint = 0``; the writer thread checkpoints after
:data:`CHECKPOINT_INLINE` inline commits. With ``synchronous`` ``FULL`` or ``EXTRA`` (an fsync per
commit), or inline commits turned off (a disk that can stall writes would stall the event loop),
nothing is inline.

This is the only module that reads Trio internals: :func:`tasks_runnable` reads the run queue's
length, because the public statistics also count every registered fd (O(fds) per idle send). If a
Trio release moves it, the public statistics are used instead (a test says so).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from typing import Any, Final

import trio

from signald.history.transactions import Transactions
from signald.history.work import Op
from signald.history.writer import Writer

try:  # the run queue's length, read directly: the public statistics also count every fd (O(fds))
    from trio._core import _run as _trio_run

    _RUN_CONTEXT: Any = _trio_run.GLOBAL_RUN_CONTEXT
except (ImportError, AttributeError):  # pragma: no cover - a trio release moved it (a test says so)
    _RUN_CONTEXT = None

__all__ = ["CHECKPOINT_INLINE", "INLINE_SYNC_MODES", "InlineCommits", "NewTurn", "reads_run_queue", "tasks_runnable"]

CHECKPOINT_INLINE: Final = 1_000
"""Inline commits after which the writer thread checkpoints (they never do: it would block Trio)."""
INLINE_SYNC_MODES: Final = frozenset({"OFF", "NORMAL"})
"""``synchronous`` modes whose commit does not fsync, so that a lone ``send`` may commit inline."""


def _run_queue() -> Any:
    return getattr(getattr(_RUN_CONTEXT, "runner", None), "runq", None)


def tasks_runnable() -> int:
    """How many tasks of the current Trio run are waiting for their turn (not counting the caller)."""
    runq = _run_queue()
    if runq is None:  # pragma: no cover - see the import
        return trio.lowlevel.current_statistics().tasks_runnable
    return len(runq)


def reads_run_queue() -> bool:
    """Whether :func:`tasks_runnable` reads Trio's run queue (inside a run) rather than the fallback."""
    return _run_queue() is not None


class InlineCommits:
    """Whether the next lone send may commit inline, and the commit itself (Trio thread only)."""

    def __init__(
        self,
        writer: Writer,
        txns: Transactions,
        *,
        enabled: bool,
        checkpoints: bool,
        complete: Callable[[list[Op[Any]]], None],
        request_checkpoint: Callable[[], None],
    ) -> None:
        self._writer = writer
        self._txns = txns
        self._enabled = enabled
        self._checkpoints = checkpoints  # a file, not ":memory:"
        self._complete = complete
        self._request_checkpoint = request_checkpoint
        self.spent = True
        """No inline commit now: one ran in this turn of the Trio loop, or they are off."""
        self.count = 0
        """Inline commits made (operations that committed)."""
        self._since_checkpoint = 0
        self._new_turn = NewTurn(self)

    def start(self) -> None:
        """Allow inline commits from the next turn of the Trio loop on (if they are enabled)."""
        if self._enabled:
            trio.lowlevel.add_instrument(self._new_turn)
            self.spent = False

    def stop(self) -> None:
        """No more inline commits."""
        with contextlib.suppress(KeyError):  # not added (inline commits off) or already removed
            trio.lowlevel.remove_instrument(self._new_turn)
        self.spent = True

    def commit(self, op: Op[Any]) -> bool:
        """Run ``op`` in its own transaction and complete it; False if it has to be queued."""
        writer = self._writer
        conn = writer.conn
        if conn is None or not writer.conn_lock.acquire(blocking=False):
            return False
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")  # busy_timeout 0: another connection's lock -> queue
            except sqlite3.OperationalError:
                return False
            committed = self._txns.execute(conn, [op], begun=True, write_counters=False)
        finally:
            writer.conn_lock.release()
        self.spent = True  # the next inline commit waits for the loop's next turn
        if committed:
            self.count += 1
            self._since_checkpoint += 1
            if self._since_checkpoint >= CHECKPOINT_INLINE and self._checkpoints:
                self._since_checkpoint = 0
                self._request_checkpoint()
        self._complete([op])
        return True


class NewTurn(trio.abc.Instrument):
    """Allows the next inline commit once per turn of the Trio loop.

    Each turn polls for I/O before it runs the tasks that became runnable; a task woken by I/O
    therefore never shares a turn with the inline commit that came before it, whatever order the
    tasks of a turn run in. Trio calls only the hooks an instrument defines: this costs one call
    per turn.
    """

    def __init__(self, inline: InlineCommits) -> None:
        self.inline = inline

    def after_io_wait(self, timeout: float) -> None:
        self.inline.spent = False
