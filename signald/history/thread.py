"""The writer thread both history stores run: its queue, its start and stop, the hand-back of batches.

A store's writer subclasses :class:`WriterThread` and implements ``_w_main(opener)`` (open the
database, complete ``opener``, then take batches from :attr:`WriterThread.queue` until closed);
everything between the Trio thread and that loop is here, once.

Resource handling: the thread is a daemon; :meth:`WriterThread.join` waits for it in a worker
thread, at most ``limit_s``. Once it stops taking work (:meth:`WriterThread._w_stop`), :meth:`put`
raises and whatever was still queued fails with "history store is closed".
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, ClassVar, Final

import trio

from signald.history.work import Op, StorageError

__all__ = ["MAX_BATCH", "WriterThread"]

MAX_BATCH: Final = 1024  # operations in one transaction at most (group commit)


class WriterThread:
    """A queue of :class:`Op` and the thread that takes it; ``deliver`` gets each finished batch
    in the Trio thread, in the order the batches finished."""

    thread_name: ClassVar[str] = "signald-history"

    def __init__(self, deliver: Callable[[list[Op[Any]]], None]) -> None:
        self._deliver = deliver  # runs in the Trio thread with each batch, in commit order
        self.queue: queue.SimpleQueue[Op[Any]] = queue.SimpleQueue()
        self._stopped = False  # set by the thread when it stops taking work; guarded by _lock
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    def start(self, opener: Op[None]) -> None:
        """Start the thread; ``opener`` completes once the database is open (or failed to)."""
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._w_main, args=(opener,), name=self.thread_name, daemon=True)
        self._thread.start()

    def put(self, op: Op[Any]) -> None:
        """Queue ``op`` for the thread; :class:`StorageError` if it no longer takes work."""
        with self._lock:
            if self._stopped:
                raise StorageError("history store is closed")
            self.queue.put(op)

    async def join(self, limit_s: float) -> None:
        """Wait (in a worker thread) for the thread to exit, at most ``limit_s`` seconds."""
        assert self._thread is not None
        await trio.to_thread.run_sync(self._thread.join, limit_s, abandon_on_cancel=True)

    def _w_main(self, opener: Op[None]) -> None:  # pragma: no cover - every store's writer has its own
        raise NotImplementedError

    def _w_take(self, timeout: float | None) -> tuple[list[Op[Any]], Op[Any] | None] | None:
        """The next batch: what is queued (waiting ``timeout`` for the first, at most
        :data:`MAX_BATCH`), as ``(work, closer)`` — the work before a close request, and that
        request; None if nothing came within ``timeout``."""
        try:
            first = self.queue.get(timeout=timeout)
        except queue.Empty:
            return None
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
        return (batch if closer is None else batch[:-1]), closer

    def _w_stop(self, closer: Op[Any] | None, extra: list[Op[Any]]) -> None:
        """Stop taking work: fail what is still queued (but ``closer``) and hand it all back."""
        with self._lock:
            self._stopped = True
        leftovers = list(extra)
        while True:
            try:
                op = self.queue.get_nowait()
            except queue.Empty:
                break
            if op is not closer:
                op.error = StorageError("history store is closed")
            leftovers.append(op)
        if closer is not None:
            leftovers.append(closer)
        self._w_deliver(leftovers)

    def _w_deliver(self, batch: list[Op[Any]]) -> None:
        assert self._token is not None
        with contextlib.suppress(trio.RunFinishedError):  # the Trio run ended without closing us
            self._token.run_sync_soon(self._deliver, batch)
