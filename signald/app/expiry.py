"""Session expiry: a connection whose token expires is closed (4001) unless ``auth.refresh`` moves it.

One task per daemon (:meth:`Expiries.run`) watches every session that has an expiry, whether the
handshake gave it one or a later ``auth.refresh`` did: a session costs nothing here until it has
an expiry, and then one heap entry rather than a task of its own.

:meth:`Expiries.watch` is called when a session connects and whenever ``auth.refresh`` sets, moves
or removes its expiry. Entries are never searched for: one whose session has gone (it is held
weakly), been closed, or now expires at another time is dropped when it comes up, and the heap is
rebuilt without such entries whenever it has doubled since its last rebuild.

Expiries are wall-clock times (``wall_clock``, ``time.time`` by default) while Trio sleeps on its
own clock: the task never sleeps more than ``MAX_SLEEP_S`` at once, so a wall clock that jumps is
noticed within that bound.
"""

from __future__ import annotations

import heapq
import itertools
import math
import weakref
from collections.abc import Callable
from typing import Final

import trio

from signald.app.session import Session

MAX_SLEEP_S: Final = 3600.0
_Entry = tuple[float, int, "weakref.ref[Session]"]


class Expiries:
    """Closes each watched session when its ``expires_at`` passes, with ``expire(session)``."""

    def __init__(self, wall_clock: Callable[[], float], expire: Callable[[Session], None]) -> None:
        self._wall_clock = wall_clock
        self._expire = expire
        self._heap: list[_Entry] = []
        self._order = itertools.count()  # ties never compare the weak references
        self._rebuilt_at = 0
        self._changed = trio.Event()
        self._wakes_at = math.inf  # the wall-clock time the task will look again

    def watch(self, session: Session) -> None:
        """``session.expires_at`` is new (set, moved or removed): expire the session at that time."""
        expires_at = session.expires_at
        if expires_at is None:
            return  # an entry for an older expiry, if any, is dropped when it comes up
        heapq.heappush(self._heap, (expires_at, next(self._order), weakref.ref(session)))
        if len(self._heap) > 2 * self._rebuilt_at + 64:
            self._heap = [entry for entry in self._heap if _live(entry)]
            heapq.heapify(self._heap)
            self._rebuilt_at = len(self._heap)
        if expires_at < self._wakes_at:
            self._changed.set()

    def __len__(self) -> int:
        """Heap entries, stale ones included (for tests of the bookkeeping)."""
        return len(self._heap)

    def expire_due(self, now: float) -> None:
        """Expire every watched session whose expiry is at or before ``now``."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            session = entry[2]()
            if session is not None and _live(entry):
                self._expire(session)

    def _next(self) -> float:
        heap = self._heap
        while heap and not _live(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else math.inf

    async def run(self) -> None:
        """Watch until cancelled (the hub runs it for the daemon's lifetime)."""
        while True:
            self.expire_due(self._wall_clock())
            self._wakes_at = self._next()
            delay = self._wakes_at - self._wall_clock()
            with trio.move_on_after(min(max(delay, 0.0), MAX_SLEEP_S)):
                await self._changed.wait()
            self._changed = trio.Event()


def _live(entry: _Entry) -> bool:
    """Whether the entry still stands for its session's current expiry."""
    session = entry[2]()
    return (session is not None and session.close_code is None and not session.detached
            and session.expires_at == entry[0])
