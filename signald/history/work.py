"""Work items of the history store and how they complete in the Trio thread.

An :class:`Op` is created in the Trio thread, run on the database connection (by the writer
thread, or inline by the Trio thread), and completed back in the Trio thread by :func:`complete`:
its ``on_commit`` callback, then either its ``then`` callback or the event its caller waits on.
Completion runs inside a ``run_sync_soon`` callback (or right in ``send_nowait``), so callbacks
must be quick and cannot await.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, Final, Generic, Literal, TypeVar

import trio

from signald.history.contract import StorageError, storage_error
from signald.history.writes import SKIP

__all__ = ["SKIP", "FailureLog", "Op", "OpKind", "StorageError", "complete", "op_failed", "storage_error"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

OpKind = Literal["read", "write", "counts", "open", "close", "checkpoint"]
"""``counts``: a read of the ``rooms`` table, brought up to date with the room counters first."""

_NO_WAITER: Final = trio.Event()  # the ``done`` of ops completed by a callback: nobody waits on it


class Op(Generic[T]):
    """One work item. ``fn`` runs on the connection and returns ``(value, on_commit argument)``."""

    __slots__ = ("done", "error", "event", "fn", "kind", "on_commit", "then", "value")

    def __init__(
        self,
        kind: OpKind,
        fn: Callable[[Any], tuple[T, Any]] | None = None,  # runs on the connection
        on_commit: Callable[[Any], None] | None = None,
        then: Callable[[T | None, BaseException | None], None] | None = None,
    ) -> None:
        self.kind = kind
        self.fn = fn
        self.on_commit = on_commit
        self.value: T | None = None
        self.event: Any = SKIP
        self.error: BaseException | None = None
        # Completion: either ``then(value, error)`` is called in the Trio thread, or ``done`` is set
        # for a task waiting on it.
        self.then = then
        self.done = trio.Event() if then is None else _NO_WAITER


#: How often a store that keeps failing logs a line about it (after the first failure's traceback).
FAILURE_LOG_INTERVAL_S: Final = 10.0


class FailureLog:
    """The log of one store's failures: the first with its traceback, then at most one line per
    :data:`FAILURE_LOG_INTERVAL_S` ("N more store failures like it"), where a full disk failed every
    transaction with a traceback (~1000 in 3 s). A failure after a quiet interval is a first again.
    The first success after failures that were only counted says so ("history store recovered after
    N failures (M not logged before)"), at most once an interval; otherwise the count would wait
    for a failure that may never come.

    Thread-safe (the writer thread and the Trio thread's inline commits both fail ops). Time is
    ``clock()`` (a test gives its own).
    """

    def __init__(self, log: logging.Logger = logger, clock: Callable[[], float] = time.monotonic,
                 interval_s: float | None = None) -> None:
        self._log = log
        self._clock = clock
        self._interval = FAILURE_LOG_INTERVAL_S if interval_s is None else interval_s
        self._lock = threading.Lock()
        self._quiet_from = -float("inf")  # when the current interval ends
        self._more = 0  # failures not logged in the current interval
        self._failed = 0  # failures since a success last found them all logged, or told of them
        self._recovery_told = False  # a recovery line was logged in the current interval

    def failed(self, exc: BaseException, message: str, *args: object) -> None:
        """Log failure ``exc`` (``message % args``), or count it for the next summary line."""
        with self._lock:
            self._failed += 1
            now = self._clock()
            if now < self._quiet_from:
                self._more += 1
                return
            more, self._more = self._more, 0
            self._quiet_from, self._recovery_told = now + self._interval, False
        if more:  # it kept failing: one line for the interval, this failure included
            self._log.error("%d more store failures like it in the last %g s; the last: %s: %s",
                         more + 1, self._interval, type(exc).__name__, exc)
            return
        self._log.error(message, *args, exc_info=exc)

    def succeeded(self) -> None:
        """A write committed: if failures before it were counted but not logged, say how many."""
        if not self._failed:  # the usual case, without the lock (a failure it misses is told later)
            return
        with self._lock:
            failed, more = self._failed, self._more
            self._failed = 0
            if not more:  # every failure was logged
                return
            now = self._clock()
            if self._recovery_told and now < self._quiet_from:
                self._failed = failed  # a store that flaps: told once an interval, the count goes on
                return
            self._more, self._recovery_told = 0, True
            if now >= self._quiet_from:  # this line counts the interval, as a summary line would
                self._quiet_from = now + self._interval
        self._log.warning("history store recovered after %d failure%s (%d not logged before)",
                          failed, "" if failed == 1 else "s", more)


def op_failed(op: Op[Any], exc: Exception, db_errors: type[Exception] | tuple[type[Exception], ...] = sqlite3.Error,
              failures: FailureLog | None = None) -> None:
    """Record why ``op`` failed: driver errors (``db_errors``) become a :class:`StorageError`, logged
    (through ``failures`` when given: the store's rate-limited log)."""
    if isinstance(exc, db_errors):
        if failures is None:
            logger.error("history operation failed", exc_info=exc)
        else:
            failures.failed(exc, "history operation failed")
        op.error = storage_error(exc)
    else:
        op.error = exc


def complete(batch: list[Op[Any]]) -> None:
    """In the Trio thread: in commit order, each op's on_commit callback, then its completion."""
    for op in batch:
        if op.error is None and op.on_commit is not None and op.event is not SKIP:
            try:
                op.on_commit(op.event)
            except Exception:
                logger.exception("history on_commit callback failed")
        then = op.then
        if then is None:
            op.done.set()
            continue
        try:
            then(op.value, op.error)
        except Exception:
            logger.exception("history completion callback failed")
