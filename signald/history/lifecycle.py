"""Opening and closing a store whose writes run on a writer thread: what both stores share.

The states are new -> open -> closing -> closed (read and changed on the Trio thread only). A
store subclasses :class:`ThreadedStore`, sets ``_writer`` and ``_close_timeout_s`` and calls
:meth:`ThreadedStore._init_lifecycle`; its own start and stop go in the hooks.

Resource handling: :meth:`~ThreadedStore.open` starts the writer thread and waits (shielded) for
it to open the database; if that fails the thread is joined before the error is raised.
:meth:`~ThreadedStore.aclose` queues a close request behind everything already queued, waits for
the thread at most ``_close_timeout_s`` (shielded: an acked message is never abandoned by a
cancelled caller), then runs the store's own clean-up. A second ``aclose`` waits for the first.
"""

from __future__ import annotations

import logging
from typing import Any, Self

import trio

from signald.history.thread import WriterThread
from signald.history.work import Op, StorageError

__all__ = ["ThreadedStore"]

logger = logging.getLogger("signald.history")


class ThreadedStore:
    """The open/close state machine of a store with a :class:`WriterThread`."""

    _writer: WriterThread
    _close_timeout_s: float
    _state: str
    _closed: trio.Event

    def _init_lifecycle(self) -> None:
        self._state = "new"  # new -> open -> closing -> closed (Trio thread only)
        self._closed = trio.Event()

    # Hooks: what a store adds to the shared steps.
    def _starting(self, opener: Op[None]) -> None:
        """Start the writer thread (it completes ``opener`` once the database is open)."""
        self._writer.start(opener)

    def _open_error(self, error: BaseException) -> BaseException:
        """The error :meth:`open` raises when the database could not be opened."""
        return error

    def _stopping(self) -> None:
        """Called once the store stops taking work (before the close request, or after a failed open)."""

    def _put_closer(self, closer: Op[None]) -> None:
        self._writer.put(closer)

    def _stopped(self) -> None:
        """Called once the writer thread has stopped (or was abandoned): release what is left."""

    async def open(self) -> None:
        """Start the writer thread, open the database and run pending migrations."""
        if self._state != "new":
            raise RuntimeError(f"{type(self).__name__}.open() on a store that is {self._state}")
        opener: Op[None] = Op("open")
        self._state = "open"
        self._starting(opener)
        with trio.CancelScope(shield=True):  # bounded by the store's connect or busy timeout, plus migrations
            await opener.done.wait()
        if opener.error is not None:
            self._stopping()
            self._state = "closed"
            self._closed.set()
            await self._writer.join(self._close_timeout_s)
            raise self._open_error(opener.error)

    async def aclose(self) -> None:
        """Finish and commit everything queued, close the database and stop the thread."""
        if self._state in ("new", "closed"):
            self._state = "closed"
            return
        if self._state == "closing":
            await self._closed.wait()
            return
        self._state = "closing"
        self._stopping()
        closer: Op[None] = Op("close")
        try:
            self._put_closer(closer)
        except StorageError:  # pragma: no cover - the thread is already gone
            pass
        else:
            with trio.move_on_after(self._close_timeout_s, shield=True) as scope:
                await closer.done.wait()
                await self._writer.join(self._close_timeout_s)
            if scope.cancelled_caught:
                logger.error("history writer did not stop within %.1f s; abandoning it", self._close_timeout_s)
        self._stopped()
        self._state = "closed"
        self._closed.set()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()
