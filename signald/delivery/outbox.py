"""Per-connection outboxes: a bounded queue of outbound frames, direct writes, and corks.

Every connection owns an :class:`Outbox`, a bounded queue of frames drained by that connection's
writer task (started only once a frame has to wait). :meth:`Outbox.push` never blocks and never
awaits: when the queue is full the connection is closed with 1013 (the slow-consumer policy lives
here and nowhere else), so one slow reader never stalls a room. When the socket is idle, a push
writes straight into it (:func:`direct_writer`), without a task switch: this is the one delivery
module that touches file descriptors.

While a :class:`~signald.delivery.cork.Cork` is held (the history store holds the hub's around
each committed batch), outboxes collect frames instead of writing them, then write each
connection's share at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final, Protocol

import trio

from signald.delivery.cork import CORK_FLUSH, Cork

CLOSE_SLOW_CONSUMER: Final = 1013


class Pushed(Protocol):
    """What :meth:`Outbox.push` takes: a :class:`~signald.delivery.frames.Frame` or a ``_Batch``."""

    @property
    def key(self) -> tuple[str, ...] | None: ...
    @property
    def wire_text(self) -> bytes: ...
    @property
    def wire_binary(self) -> bytes: ...


class _Batch:
    """Frames already joined into one piece, pushed like one frame (never superseded)."""

    __slots__ = ("wire_binary", "wire_text")
    key = None

    def __init__(self, payload: bytes) -> None:
        self.wire_binary = self.wire_text = payload


class _Slot:
    """A queued frame that a newer one with the same key may supersede (payload set to None)."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload: bytes | None = payload


DirectWrite = Callable[[bytes], int]


class Feed(Protocol):
    """A room feed this outbox reads (:class:`signald.delivery.feeds.RoomFeed`)."""

    def give(self, outbox: Outbox) -> None:
        """Hand the outbox its waiting share now."""
        ...


def direct_writer(stream: trio.abc.Stream) -> DirectWrite | None:
    """A non-blocking ``send`` on the stream's socket, or None where bytes need a task (TLS)."""
    if not isinstance(stream, trio.SocketStream):
        return None
    fileno = stream.socket.fileno

    def write(data: bytes) -> int:
        fd = fileno()
        if fd < 0:
            return 0  # closed
        try:
            return os.write(fd, data)  # trio keeps its sockets non-blocking
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            return 0  # broken: the writer task meets the error and ends the connection

    return write


class Outbox:
    """The bounded send queue of one connection, with type-aware backpressure.

    At most ``limit`` frames wait; the writer task takes them in order with :meth:`get_batch`.
    When nothing is queued and the writer is idle, :meth:`push` first tries ``direct_write`` (a
    non-blocking socket write): a frame that fits in the socket buffer is sent at once, without a
    task switch; only what did not fit is queued, ahead of everything else.

    Once more than ``high_water`` (3/4 of ``limit``) wait, an ephemeral frame supersedes the queued
    one with the same :func:`signald.delivery.frames.coalesce_key` (only the latest presence/typing per user and signal
    per kind is kept, in the position of the newest); everything else is never dropped.

    Under its ``cork`` (see :class:`Cork`) frames are queued without waking the writer, and
    :meth:`uncork` writes them with one direct write (or hands them to the writer).

    Error handling: a push onto a queue still full after that calls ``on_overflow`` once (the
    connection then closes with 1013) and drops the frame; pushes after :meth:`close` are ignored.
    A partly written frame is never dropped, so the byte stream stays well-formed.
    """

    __slots__ = (
        "_corked",
        "_keyed",
        "_live",
        "_partial",
        "_pong",
        "_queued",
        "_waiter",
        "binary",
        "closed",
        "coalesced",
        "cork",
        "direct_write",
        "high_water",
        "limit",
        "on_overflow",
        "reading",
        "start_writer",
        "stopped",
        "writing",
    )

    def __init__(
        self, limit: int, *, binary: bool, on_overflow: Callable[[], None], cork: Cork | None = None
    ) -> None:
        self.limit = limit
        self.cork = cork
        self._corked = False  # listed in cork.held
        self.high_water = max(1, limit * 3 // 4)
        self.binary = binary
        self.on_overflow = on_overflow
        self.direct_write: DirectWrite | None = None
        self.closed = False
        self.writing = False
        self.stopped = False  # stop_idle_writer was called: get_batch returns [] from now on
        self.coalesced = 0
        self._live = 0
        self._partial: bytes | None = None  # the unsent tail of a frame written in part
        self._queued: list[bytes | _Slot] = []  # wire bytes: each Frame's ws_frame, or a control ws_frame
        self._keyed: dict[tuple[str, ...], _Slot] = {}
        self._pong: _Slot | None = None  # the pong still queued, if any: a newer one replaces it
        self.reading: list[Feed] | None = None  # room feeds holding frames for this connection (rarely any)
        self._waiter: trio.lowlevel.Task | None = None  # the writer task, parked in get_batch
        # Starts the writer task, the first time something must wait for it (then None): most
        # connections never need one, their frames all fit into the socket (see attach_writer).
        self.start_writer: Callable[[], None] | None = None

    def __len__(self) -> int:
        return self._live

    @property
    def mid_frame(self) -> bool:
        """Part of a frame is on the wire and the rest is not: a close frame now would be garbage."""
        return self.writing or self._partial is not None

    def keep_unsent(self, tail: bytes) -> None:
        """The writer stopped (cancelled) with ``tail`` of its batch not written: it goes out first.

        The batch was whole frames, so ``tail`` ends on a frame boundary; sent before anything
        else (the close frame included), it keeps the byte stream well-formed.
        """
        self._partial = tail

    def take_unsent(self) -> bytes:
        """The unsent tail of a frame written in part (``b""`` if none), for the close path once
        the writer is gone: it must precede the close frame."""
        tail, self._partial = self._partial, None
        return tail or b""

    def _write_if_idle(self, data: bytes) -> bool:
        """Write ``data`` straight into the socket if nothing is queued or being written.

        True if that took care of it (all written, or the unsent tail kept to go out first);
        False if it must be queued.
        """
        write = self.direct_write
        if write is None or self.writing or self._queued or self._partial is not None:
            return False
        written = write(data)
        if written == len(data):
            return True
        if written:
            self._partial = data[written:]
            self._wake()
            return True
        return False

    def push(self, frame: Pushed) -> bool:
        """Queue ``frame`` for this connection; False if it was not queued."""
        if self.closed:
            return False
        if self.reading:  # member events of a busy room wait for this connection: they go first
            self.catch_up()
            if self.closed:  # their share overflowed the queue
                return False
        key = frame.key
        if key is not None and self._live >= self.high_water:
            superseded = self._keyed.get(key)
            if superseded is not None and superseded.payload is not None:
                superseded.payload = None
                self._live -= 1
                self.coalesced += 1
                if len(self._queued) > 2 * self.limit:
                    self._compact()
        if self._live >= self.limit:
            self.close(drop=True)
            self.on_overflow()
            return False
        payload = frame.wire_binary if self.binary else frame.wire_text
        cork = self.cork
        corked = cork is not None and cork.depth > 0
        if not corked and self._write_if_idle(payload):
            return True
        if key is None:
            self._queued.append(payload)
        else:
            slot = _Slot(payload)
            self._keyed[key] = slot
            self._queued.append(slot)
        self._live += 1
        if not corked:
            self._wake()
        elif self._live >= CORK_FLUSH:
            self.uncork()  # a long batch: this share goes now (still listed: the rest goes at the end)
        elif not self._corked:
            self._corked = True
            cork.held.append(self)  # type: ignore[union-attr]  # corked implies a cork
        return True

    def push_batch(self, payload: bytes) -> bool:
        """Queue whole frames joined into one piece (a room feed's share); counts as one frame.

        Error handling: as :meth:`push`. The caller has taken this connection off its feeds'
        waiting list first (no catching up from here).
        """
        return self.push(_Batch(payload))

    def start_reading(self, feed: Feed) -> None:
        """``feed`` holds frames for this connection: :meth:`push` lets them out first."""
        if self.reading is None:
            self.reading = [feed]
        elif feed not in self.reading:  # a connection that left and joined again is listed once
            self.reading.append(feed)

    def stop_reading(self, feed: Feed) -> None:
        """``feed`` holds nothing more for this connection."""
        reading = self.reading
        if reading is not None and feed in reading:
            reading.remove(feed)

    def catch_up(self) -> None:
        """Take every waiting room-feed share now (before a frame that must come after them)."""
        if self.reading:
            self.reading[0].give(self)  # hands over every feed's share, in publication order

    def uncork(self) -> None:
        """Write what the cork held back: one direct write if the socket is idle, else the writer's."""
        self._corked = False
        if not self._queued:
            return
        write = self.direct_write
        if write is None or self.writing or self._partial is not None:
            self._wake()
            return
        data = b"".join(self._take())
        written = write(data)
        if written < len(data):
            self._partial = data[written:]  # the writer sends the rest first
            self._wake()

    def push_control(self, data: bytes) -> None:
        """Send a control frame (pong, heartbeat ping) in order with the rest.

        Control frames do not count against ``limit`` and are never coalesced; after
        :meth:`close` they are not sent (the close frame is the last thing the peer gets).
        """
        if self.closed or self._write_if_idle(data):
            return
        self._queued.append(data)
        self._wake()

    def push_pong(self, data: bytes) -> None:
        """Answer a ping: like :meth:`push_control`, but at most one pong ever waits.

        A pong still queued (its peer is not reading) is replaced by the newer one, in its place,
        as RFC 6455 5.5.3 allows: pings a peer never reads cost no memory here.
        """
        pong = self._pong
        if pong is not None and pong.payload is not None:
            pong.payload = data
            return
        if self.closed or self._write_if_idle(data):
            return
        self._pong = pong = _Slot(data)
        self._queued.append(pong)
        self._wake()

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting to be written (queued frames, control frames, an unsent tail): for tests and probes."""
        queued = sum(len(f) if isinstance(f, bytes) else len(f.payload or b"") for f in self._queued)
        return queued + len(self._partial or b"")

    def _compact(self) -> None:
        self._queued = [f for f in self._queued if not isinstance(f, _Slot) or f.payload is not None]

    def attach_writer(self, write: DirectWrite | None, start_writer: Callable[[], None]) -> None:
        """The connection is up: write directly with ``write`` when idle, and call ``start_writer``
        (once) when a frame has to wait; at once if some already do."""
        self.direct_write = write
        self.start_writer = start_writer
        if self._queued or self._partial is not None or self.closed:
            self._wake()

    def stop_writer(self) -> bool:
        """The connection's reader is done: no more direct writes, and the writer stops if it is idle
        or never started (True), else the caller cancels it (False)."""
        if self.start_writer is not None:  # never needed
            self.start_writer = self.direct_write = None
            self.stopped = True
            return True
        return self.stop_idle_writer()

    def stop_idle_writer(self) -> bool:
        """If the writer is waiting in :meth:`get_batch` (nothing half written), make it return ``[]``
        now, leaving what is queued unsent, as cancelling it would; True if it was. Cheaper than a
        cancellation (no ``Cancelled`` raised through the connection's nursery)."""
        task = self._waiter
        if task is None:
            return False
        self.stopped = True
        self._wake()
        return True

    async def get_batch(self) -> list[bytes]:
        """Wait until bytes are queued, then take all of them (complete WebSocket frames) in order.

        Returns an empty list once the outbox is closed and drained, or :meth:`stop_idle_writer`
        was called: the writer then stops.
        """
        while not self._queued and self._partial is None:
            if self.closed:
                return []
            await self._park()
            if self.stopped:
                return []
        if self._partial is None:
            return self._take()
        partial, self._partial = self._partial, None
        return [partial, *self._take()]

    def _take(self) -> list[bytes]:
        """Everything queued, in order (coalesced slots left out); the queue is empty after."""
        batch = [item if isinstance(item, bytes) else item.payload for item in self._queued]
        self._queued.clear()
        self._keyed.clear()
        self._pong = None
        self._live = 0
        return [b for b in batch if b is not None]

    def _wake(self) -> None:
        task = self._waiter
        if task is not None:
            self._waiter = None
            trio.lowlevel.reschedule(task)
        elif self.start_writer is not None:
            start, self.start_writer = self.start_writer, None
            start()

    async def _park(self) -> None:
        """Sleep until :meth:`_wake` (one waiter only: the writer; lighter than a ``trio.Event``)."""
        self._waiter = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self._waiter = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def close(self, *, drop: bool) -> None:
        """Accept no more frames; ``drop`` discards those still queued, else they are flushed."""
        if self.reading and not drop and not self.closed:
            self.catch_up()
        self.closed = True
        if drop:
            self._queued.clear()
            self._keyed.clear()
            self._pong = None
            self._live = 0
        self._wake()
