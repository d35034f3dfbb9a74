"""Where idle plain-TCP connections wait for bytes: one epoll set for all of them.

An idle connection's reader would otherwise wait in Trio's ``wait_readable``, so every heartbeat
pong woke its task (and re-armed its registration) only to learn that the peer is alive. Here the
readers park instead, and one task, :meth:`Parking.run`, waits on a private epoll set holding every
parked socket (level-triggered, registered once per park). When a socket becomes readable, that
task reads it: a lone pong (:meth:`Parked.take_pong`) is taken care of on the spot and the reader
sleeps on; anything else is handed to the reader, which wakes with the bytes already read.

Linux only (``select.epoll``); elsewhere, and for TLS, readers keep waiting in Trio.

Resource handling: a parked reader that is cancelled (its connection ends) leaves the set in its
abort callback; a socket closed meanwhile has left the kernel's set already, and a leftover entry
is dropped when its fd is met again. Error handling: readiness with an error or hang-up wakes the
reader without reading, so the reader meets the end of the stream itself.
"""

from __future__ import annotations

import contextlib
import os
import select
from typing import Final, Protocol

import outcome
import trio

READ_BYTES: Final = 16384
MAX_EVENTS: Final = 1024
HAS_EPOLL: Final = hasattr(select, "epoll")


class Parked(Protocol):
    """What a parked reader offers (:class:`signald.transport.websocket.ServerWebSocket`)."""

    def take_pong(self, data: bytes) -> bool:
        """True if ``data`` was a lone pong, now taken care of (the reader need not wake)."""
        ...


class _Slot:
    __slots__ = ("conn", "data", "task")

    def __init__(self, conn: Parked, task: trio.lowlevel.Task) -> None:
        self.conn = conn
        self.task = task
        self.data: bytes | None = None  # read for the reader; None: it reads itself


class Parking:
    """The private epoll set and the parked readers, by file descriptor."""

    def __init__(self) -> None:
        self._epoll: select.epoll | None = None  # made by run()
        self._parked: dict[int, _Slot] = {}
        self._running = False

    def __len__(self) -> int:
        return len(self._parked)

    @property
    def available(self) -> bool:
        """Readers may park: epoll exists and :meth:`run` is serving them."""
        return self._running

    async def wait(self, conn: Parked, fd: int) -> bytes | None:
        """Sleep until ``fd`` has something for ``conn``: the bytes read for it, or None to read itself.

        A checkpoint (it always sleeps, and may be cancelled).
        """
        epoll = self._epoll
        assert epoll is not None, "check Parking.available first"
        stale = self._parked.pop(fd, None)
        if stale is not None:  # a socket closed under its parked reader, its number reused: end that reader
            trio.lowlevel.reschedule(stale.task, outcome.Error(trio.ClosedResourceError("socket closed")))
        try:
            epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)
        except FileExistsError:  # left over by a socket closed while parked: same number, new socket
            epoll.modify(fd, select.EPOLLIN | select.EPOLLRDHUP)
        slot = _Slot(conn, trio.lowlevel.current_task())
        self._parked[fd] = slot

        def abort(_: object) -> trio.lowlevel.Abort:
            if self._parked.get(fd) is slot:
                del self._parked[fd]
                self._forget(fd)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        return slot.data

    def _forget(self, fd: int) -> None:
        assert self._epoll is not None
        with contextlib.suppress(OSError):  # already closed: the kernel dropped it
            self._epoll.unregister(fd)

    async def run(self) -> None:
        """Serve the parked readers until cancelled (the hub runs it; nothing to do without epoll)."""
        if not HAS_EPOLL:
            await trio.sleep_forever()
            return
        epoll = self._epoll = select.epoll()
        parked = self._parked
        self._running = True
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, flags in epoll.poll(0, MAX_EVENTS):
                    slot = parked.get(fd)
                    if slot is None:
                        self._forget(fd)
                        continue
                    if flags == select.EPOLLIN:
                        try:
                            data = os.read(fd, READ_BYTES)
                        except (BlockingIOError, InterruptedError):
                            continue  # nothing after all; still parked
                        except OSError:
                            data = None  # the reader meets the error itself
                        if data and slot.conn.take_pong(data):
                            continue
                        slot.data = data
                    del parked[fd]
                    self._forget(fd)
                    trio.lowlevel.reschedule(slot.task)
                slot = None  # not kept (nor its connection, once ended) until the next wake-up
        finally:
            self._running = False
            for slot in parked.values():  # readers still parked read for themselves from now on
                trio.lowlevel.reschedule(slot.task)
            parked.clear()
            self._epoll = None
            epoll.close()


async def wait_readable(fd: int) -> None:
    """Wait in Trio until ``fd`` is readable (a reader that does not park); returns if it is closed
    meanwhile (the next read sees fd -1)."""
    with contextlib.suppress(trio.ClosedResourceError):
        await trio.lowlevel.wait_readable(fd)
