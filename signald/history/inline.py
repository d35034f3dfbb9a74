"""Inline commits: ``chat.send`` on an idle store is committed in the Trio thread, not the writer's.

Handing a message to the writer thread and back costs two context switches, a queue, a wake-up
of the event loop and, with both threads on one core, contention for the GIL: more than the
~30-60 us the transaction itself takes. So sends made with ``HistoryStore.send_nowait`` while the
store is idle (nothing queued, running or waiting for its callbacks) are stored and committed here,
on the writer's connection, under its lock, in one of two ways:

- a lone send, with no other Trio task waiting to run, is committed right away (at most one per
  turn of the Trio loop, :class:`NewTurn`): the ack of a client sending one message at a time
  leaves in the same turn;
- otherwise (other tasks runnable, e.g. readers with frames of their own) it is *deferred*: the
  sends of one scheduler pass are collected and committed together, in one transaction, by the
  store's committer task, which runs in the next pass (a system task rescheduled by the first
  deferred send; no thread, no syscall). Their callbacks run in commit order under the
  completion scope, as a writer thread's batch would.

Any other operation put on the writer's queue first moves the deferred sends there (ahead of it),
so operations still apply in the order the calls were made; if the connection is in use by the
writer thread (a checkpoint, retention) or another connection holds the write lock, the batch is
queued for the writer thread instead.

Inline commits never wait and never copy the WAL on the event loop: between the thread's
transactions the connection has ``busy_timeout = 0`` (if another connection holds the write lock
the messages are queued instead) and ``wal_autocheckpoint = 0``; the writer thread checkpoints
after :data:`CHECKPOINT_INLINE` inline commits. With ``synchronous`` ``FULL`` or ``EXTRA`` (an
fsync per commit), or inline commits turned off (a disk that can stall writes would stall the
event loop), nothing is inline.

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
MAX_WAIT_PASSES: Final = 2
"""Scheduler passes deferred sends wait for more sends while other tasks are runnable."""
MAX_DEFERRED: Final = 64
"""Deferred sends that are committed at once, without waiting for more."""
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
    """Whether the next send may commit inline, the deferred sends of this pass, and the commits
    themselves (Trio thread only)."""

    def __init__(
        self,
        writer: Writer,
        txns: Transactions,
        *,
        enabled: bool,
        checkpoints: bool,
        complete: Callable[[list[Op[Any]]], None],
        request_checkpoint: Callable[[], None],
        queue: Callable[[list[Op[Any]]], None],
    ) -> None:
        self._writer = writer
        self._txns = txns
        self.enabled = enabled
        self._checkpoints = checkpoints  # a file, not ":memory:"
        self._complete = complete
        self._request_checkpoint = request_checkpoint
        self._queue = queue  # hands operations that cannot commit inline to the writer thread
        self.spent = True
        """No immediate inline commit now: one ran in this turn of the Trio loop, or they are off."""
        self.running = False
        """Between :meth:`start` and :meth:`stop`: sends may be committed (or deferred) inline."""
        self.count = 0
        """Inline commits made (transactions in which a write committed)."""
        self.pending: list[Op[Any]] = []
        """Sends deferred to the end of this scheduler pass, in call order."""
        self._since_checkpoint = 0
        self._new_turn = NewTurn(self)
        self._committer: trio.lowlevel.Task | None = None
        self._parked = False

    def start(self) -> None:
        """Allow inline commits from the next turn of the Trio loop on (if they are enabled)."""
        if self.enabled:
            trio.lowlevel.add_instrument(self._new_turn)
            self.spent = False
            self.running = True
            trio.lowlevel.spawn_system_task(self._commit_deferred, name="signald-history-inline")

    def stop(self) -> None:
        """No more inline commits; deferred sends go to the writer thread."""
        with contextlib.suppress(KeyError):  # not added (inline commits off) or already removed
            trio.lowlevel.remove_instrument(self._new_turn)
        self.spent = True
        self.running = False
        self.flush()
        self._wake()  # the committer sees ``running`` is off and returns

    def defer(self, op: Op[Any]) -> None:
        """Commit ``op`` with the other sends of this scheduler pass, in the next pass."""
        self.pending.append(op)
        if len(self.pending) == 1:
            self._wake()

    def flush(self) -> None:
        """Hand the deferred sends to the writer thread (before an operation queued after them)."""
        if self.pending:
            ops, self.pending = self.pending, []
            self._queue(ops)

    def _wake(self) -> None:
        if self._parked and self._committer is not None:
            self._parked = False
            trio.lowlevel.reschedule(self._committer)

    async def _commit_deferred(self) -> None:
        self._committer = trio.lowlevel.current_task()
        waited = 0
        try:
            while self.running:
                if not self.pending:
                    self._parked = True
                    await trio.lowlevel.wait_task_rescheduled(_abort)
                    continue
                if waited < MAX_WAIT_PASSES and len(self.pending) < MAX_DEFERRED and tasks_runnable():
                    waited += 1  # other tasks are about to run: their sends can share this commit
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    continue
                waited = 0
                ops, self.pending = self.pending, []
                if not self.commit(ops):
                    self._queue(ops)
                del ops  # not kept while parked (nor the sessions their callbacks name)
        finally:
            self._parked = False
            self._committer = None

    def commit(self, ops: list[Op[Any]]) -> bool:
        """Run ``ops`` in one transaction and complete them; False if they have to be queued."""
        writer = self._writer
        conn = writer.conn
        if conn is None or not writer.conn_lock.acquire(blocking=False):
            return False
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")  # busy_timeout 0: another connection's lock -> queue
            except sqlite3.Error:  # (any other failure too: the writer thread reports it per operation)
                return False
            if len(ops) == 1:  # a write alone in its transaction needs no savepoint anyway
                committed = self._txns.execute(conn, ops, begun=True, write_counters=False)
            else:
                unguarded = self._txns.execute_unguarded(conn, ops)
                if unguarded is None:  # one of them failed: all rolled back, the thread runs them
                    return False  # again, each in a savepoint (the failure is that one's alone)
                committed = unguarded
        finally:
            writer.conn_lock.release()
        self.spent = True  # the next immediate inline commit waits for the loop's next turn
        if committed:
            self.count += 1
            self._since_checkpoint += 1
            if self._since_checkpoint >= CHECKPOINT_INLINE and self._checkpoints:
                self._since_checkpoint = 0
                self._request_checkpoint()
        self._complete(ops)
        return True


def _abort(_: Any) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.SUCCEEDED


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
