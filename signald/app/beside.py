"""An embedder's handler that runs beside its connection's reader, and the frames read behind it.

Every other request is carried out inline by the connection's reader: built-in handlers return
quickly (a send is acked later, from the store's commit). An embedder's ``app.*`` handler may
await anything (a web service, a database), and while the reader awaits it, it reads nothing: the
client's pong, its ping and its close frame wait unread, and the heartbeat, seeing no bytes, gives
up on a healthy connection (``1001 heartbeat timeout`` after ``heartbeat_s`` + ``heartbeat_timeout_s``,
the reply lost with it). So such a handler runs in a task of its own, and the reader goes on
reading: what it reads meanwhile waits in :class:`Beside`'s backlog, in order, and the task carries
it out once the handler has replied. Frames are still carried out one after the other, in the
order sent, and replies leave in that order, exactly as if the reader had waited.

Resource handling: the backlog holds at most :data:`BACKLOG_FRAMES` frames and
:data:`BACKLOG_BYTES` bytes; when it is full the reader waits for the task (TCP then holds the
client back, as when a reader is slow). The task ends with its connection (:meth:`Beside.cancel`).

Each frame's flood check is made when it is read, not when it is carried out, so frames that
arrived at a steady pace are not refused for being carried out together; a flood's close (1008)
takes its turn among them too, after the replies of the frames read before it.
"""

from __future__ import annotations

from collections import deque
from typing import Final

import trio

from signald.state.ratelimit import Verdict

BACKLOG_FRAMES: Final = 32  # frames read while an embedder's handler runs, before the reader waits
BACKLOG_BYTES: Final = 256 * 1024  # ... and their bytes (one larger frame is still held alone)


class Beside:
    """One connection's embedder handler in progress, and the frames read behind it."""

    __slots__ = ("_bytes", "backlog", "done", "scope")

    def __init__(self) -> None:
        self.backlog: deque[tuple[str | bytes, Verdict]] = deque()  # (frame, its flood verdict when read)
        self._bytes = 0
        self.done = trio.Event()  # set once the handler and every frame behind it are carried out
        self.scope = trio.CancelScope()

    def hold(self, message: str | bytes, verdict: Verdict) -> bool:
        """Keep ``message`` for later; False when the backlog is full (the reader must wait)."""
        size = len(message)
        if self.backlog and (len(self.backlog) >= BACKLOG_FRAMES or self._bytes + size > BACKLOG_BYTES):
            return False
        self.backlog.append((message, verdict))
        self._bytes += size
        return True

    def next(self) -> tuple[str | bytes, Verdict] | None:
        """The oldest frame held, or None when all are carried out."""
        if not self.backlog:
            return None
        message, verdict = self.backlog.popleft()
        self._bytes -= len(message)
        return message, verdict

    def cancel(self) -> None:
        """The connection is over: stop the handler and drop what waits behind it."""
        self.backlog.clear()
        self._bytes = 0
        self.scope.cancel()
