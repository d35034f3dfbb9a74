"""``room.join`` reads under a reconnect storm: one read per room and revision range, a few at a time.

When a daemon restarts, its clients come back together and rejoin their rooms with
``since_rev``; the clients of one room mostly hold the same revision (the last one before the
restart), so they ask the store the very same question. Here a rejoin read that is still queued
(the writer thread has not taken it yet) takes in every later join of the same room with the same
``since``/``since_rev``/``limit``: the room's part (``rev``, ``missed``, ``changes``) is read once
for all of them, ``unread`` once per distinct read receipt (:func:`~signald.history.queries.rejoin_many`).

Why that keeps the join exact (see :mod:`signald.app.history`): a joiner starts keeping the room's
events before it asks; if it joins a read the thread has not run yet, that read runs after the
joiner started keeping, exactly as its own read would have. A read already taken by the thread is
never joined (a lock decides, between the Trio thread adding a user and the writer thread taking
the list).

Bounded: at most :data:`REJOIN_READS` distinct rejoin reads wait on the thread at once (joining one
is free), so a storm cannot put thousands of reads ahead of a live ``chat.send`` in the thread's
queue (a batch's transaction commits after all of its reads).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import trio

from signald.history import queries
from signald.history.queries import Rejoin
from signald.history.work import SKIP, Op, StorageError

__all__ = ["REJOIN_READS", "SharedRejoins"]

REJOIN_READS: Final = 16  # distinct rejoin reads queued at once
Key = tuple[str, int | None, int | None, int]  # room, since, since_rev, limit


class _Shared:
    """One queued read and the users whose joins it answers."""

    __slots__ = ("answers", "done", "error", "key", "lock", "taken", "users")

    def __init__(self, key: Key, user_id: str) -> None:
        self.key = key
        self.users = [user_id]
        self.taken = False  # the writer thread has the list: too late to join
        self.lock = threading.Lock()
        self.done = trio.Event()
        self.answers: dict[str, Rejoin] = {}
        self.error: BaseException | None = None

    def join(self, user_id: str) -> bool:
        """Add ``user_id`` unless the thread took the read already (Trio thread)."""
        with self.lock:
            if self.taken:
                return False
            self.users.append(user_id)
            return True

    def take(self) -> list[str]:
        """The users to answer; nobody joins after this (writer thread)."""
        with self.lock:
            self.taken = True
            return self.users


class SharedRejoins:
    """The store's rejoin reads, shared until the thread takes them (see the module docstring).

    Trio thread only. ``put`` queues an :class:`~signald.history.work.Op` for the store's thread
    (it raises :class:`~signald.history.work.StorageError` once the store is closed). A read
    waiting for its turn (more than ``reads`` queued) can be joined too; nobody awaits anything
    but the answer, so a cancelled join leaves the others' read alone.
    """

    def __init__(self, put: Callable[[Op[Any]], None], reads: int = REJOIN_READS) -> None:
        self._put = put
        self._pending: dict[Key, _Shared] = {}  # joinable: waiting for its turn, or queued
        self._turns: deque[_Shared] = deque()  # waiting for one of the ``reads`` places
        self._free = reads
        self.reads = 0  # reads queued so far (fewer than joins when they were shared)

    async def rejoin(self, user_id: str, room: str, since: int | None, since_rev: int | None,
                     limit: int) -> Rejoin:
        key: Key = (room, since, since_rev, limit)
        shared = self._pending.get(key)
        if shared is None or not shared.join(user_id):
            shared = self._pending[key] = _Shared(key, user_id)
            self._turns.append(shared)
            if self._free:
                self._free -= 1
                self._next()
        await shared.done.wait()
        if shared.error is not None:
            raise shared.error
        return shared.answers[user_id]

    def _next(self) -> None:
        """A place is free: hand the next waiting read to the thread (the place is freed again if
        nothing waits, or if the store is closed and every waiting read failed)."""
        while self._turns:
            shared = self._turns.popleft()
            room, since, since_rev, limit = shared.key

            def read(conn: Any, shared: _Shared = shared, room: str = room, since: int | None = since,
                     since_rev: int | None = since_rev, limit: int = limit) -> tuple[dict[str, Rejoin], Any]:
                return queries.rejoin_many(conn, shared.take(), room, since, since_rev, limit), SKIP

            def then(answers: dict[str, Rejoin] | None, error: BaseException | None,
                     shared: _Shared = shared) -> None:
                shared.answers, shared.error = answers or {}, error
                self._done(shared)
                self._next()  # the place passes on

            try:
                self._put(Op("read", read, then=then))
            except StorageError as exc:  # closed: this read fails, the place goes to the next one
                shared.error = exc
                self._done(shared)
                continue
            self.reads += 1
            return
        self._free += 1

    def _done(self, shared: _Shared) -> None:
        with shared.lock:
            shared.taken = True  # (already, unless it failed before the thread took it)
        if self._pending.get(shared.key) is shared:
            del self._pending[shared.key]
        shared.done.set()
