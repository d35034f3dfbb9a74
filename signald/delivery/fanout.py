"""Encode once, deliver to many: outbound frames, per-connection outboxes and the broker.

A :class:`Frame` wraps one outbound message and encodes it at most once per wire format (JSON
text or MessagePack binary), however many connections receive it. Every connection owns an
:class:`Outbox`, a bounded queue of frames drained by that connection's writer task.
:meth:`Outbox.push` never blocks and never awaits: when the queue is full the connection is
closed with 1013 (the slow-consumer policy lives here and nowhere else), so one slow reader never
stalls a room.

While a :class:`Cork` is held (the history store holds the hub's around each committed batch),
outboxes collect frames instead of writing them, then write each connection's share at once.

Handlers never talk to outboxes directly: they publish through a :class:`Broker`.
:class:`LocalBroker` delivers to the connections of this process; a multi-node backend
implements the same three methods.
"""

from __future__ import annotations

import abc
import struct
from collections.abc import Callable, Iterable
from typing import Any, Final

import trio

from signald.protocol import (
    ChatTypingUserEvent,
    Outbound,
    PresenceUpdateEvent,
    RoomSignalEvent,
    json_encoder,
    msgpack_encoder,
)

CLOSE_SLOW_CONSUMER: Final = 1013


def coalesce_key(message: Outbound | dict[str, Any]) -> tuple[str, ...] | None:
    """Events of which a slow reader only needs the latest: same key, newer one supersedes.

    ``presence.update`` per user, ``chat.typing.user`` per (room, user), ``room.signal`` per
    (room, user, kind). Chat, call, membership, ack and error frames are never superseded.
    """
    if isinstance(message, PresenceUpdateEvent):
        return ("presence", message.data.user_id)
    if isinstance(message, ChatTypingUserEvent):
        return ("typing", message.data.scope, message.data.user_id)
    if isinstance(message, RoomSignalEvent):
        return ("signal", message.data.room, message.data.user_id, message.data.kind)
    return None


OPCODE_TEXT: Final = 0x1
OPCODE_BINARY: Final = 0x2


def websocket_frame(payload: bytes, opcode: int) -> bytes:
    """One complete, unmasked (server-to-client) WebSocket frame carrying ``payload`` (RFC 6455 5.2)."""
    size = len(payload)
    first = 0x80 | opcode  # FIN + opcode; no extensions are negotiated, so RSV bits stay 0
    if size < 126:
        header = bytes((first, size))
    elif size < 1 << 16:
        header = struct.pack("!BBH", first, 126, size)
    else:
        header = struct.pack("!BBQ", first, 127, size)
    return header + payload


def websocket_payload(frame: bytes) -> bytes:
    """The payload of a frame built by :func:`websocket_frame` (for tests and tools)."""
    size = frame[1] & 0x7F
    offset = 2 + {126: 2, 127: 8}.get(size, 0)
    return frame[offset:]


class Frame:
    """One outbound message, encoded lazily and at most once per format.

    ``text``/``binary`` are the JSON / MessagePack payloads; ``wire_text``/``wire_binary`` the
    complete WebSocket frames around them. Server frames are unmasked, so the same frame bytes
    serve every recipient: fan-out costs one encode per event and one buffer append per recipient.
    """

    __slots__ = ("_binary", "_text", "_wire_binary", "_wire_text", "key", "message")

    def __init__(self, message: Outbound | dict[str, Any]) -> None:
        self.message = message
        self.key = coalesce_key(message)
        self._text: str | None = None
        self._binary: bytes | None = None
        self._wire_text: bytes | None = None
        self._wire_binary: bytes | None = None

    @property
    def wire_text(self) -> bytes:
        """The complete text frame (JSON)."""
        if self._wire_text is None:
            self._wire_text = websocket_frame(json_encoder.encode(self.message), OPCODE_TEXT)
        return self._wire_text

    @property
    def wire_binary(self) -> bytes:
        """The complete binary frame (MessagePack)."""
        if self._wire_binary is None:
            self._wire_binary = websocket_frame(self.binary, OPCODE_BINARY)
        return self._wire_binary

    @property
    def kind(self) -> str:
        """The frame's ``type``."""
        message = self.message
        if isinstance(message, dict):
            return str(message.get("type"))
        return str(message.__struct_config__.tag)

    @property
    def text(self) -> str:
        """The JSON text frame payload."""
        if self._text is None:
            self._text = json_encoder.encode(self.message).decode()
        return self._text

    @property
    def binary(self) -> bytes:
        """The MessagePack binary frame payload."""
        if self._binary is None:
            self._binary = msgpack_encoder.encode(self.message)
        return self._binary


class _Slot:
    """A queued frame that a newer one with the same key may supersede (payload set to None)."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload: bytes | None = payload


DirectWrite = Callable[[bytes], int]


CORK_FLUSH: Final = 64  # frames one connection collects under a cork before they are written anyway


class Cork:
    """Holds direct writes back while a batch of events is delivered, then writes each connection's
    share at once: ``with cork: ...``.

    A committed batch of chat messages delivers several frames to every member of a room; under a
    cork each member gets them in one ``write`` instead of one per frame. Nothing waits longer than
    the ``with`` block (or :data:`CORK_FLUSH` frames). Corks nest; the outermost one writes.
    """

    __slots__ = ("depth", "held")

    def __init__(self) -> None:
        self.depth = 0
        self.held: list[Outbox] = []

    def __enter__(self) -> Cork:
        self.depth += 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.depth -= 1
        if self.depth == 0 and self.held:
            held, self.held = self.held, []
            for outbox in held:
                outbox.uncork()


class Outbox:
    """The bounded send queue of one connection, with type-aware backpressure.

    At most ``limit`` frames wait; the writer task takes them in order with :meth:`get_batch`.
    When nothing is queued and the writer is idle, :meth:`push` first tries ``direct_write`` (a
    non-blocking socket write): a frame that fits in the socket buffer is sent at once, without a
    task switch; only what did not fit is queued, ahead of everything else.

    Once more than ``high_water`` (3/4 of ``limit``) wait, an ephemeral frame supersedes the queued
    one with the same :func:`coalesce_key` (only the latest presence/typing per user and signal
    per kind is kept, in the position of the newest); everything else is never dropped.

    Under its ``cork`` (see :class:`Cork`) frames are queued without waking the writer, and
    :meth:`uncork` writes them with one direct write (or hands them to the writer).

    Error handling: a push onto a queue still full after that calls ``on_overflow`` once (the
    connection then closes with 1013) and drops the frame; pushes after :meth:`close` are ignored.
    A partly written frame is never dropped, so the byte stream stays well-formed.
    """

    __slots__ = (
        "_corked",
        "_frames",
        "_keyed",
        "_live",
        "_partial",
        "_waiter",
        "binary",
        "closed",
        "coalesced",
        "cork",
        "direct_write",
        "high_water",
        "limit",
        "on_overflow",
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
        self.coalesced = 0
        self._live = 0
        self._partial: bytes | None = None  # the unsent tail of a frame written in part
        self._frames: list[bytes | _Slot] = []
        self._keyed: dict[tuple[str, ...], _Slot] = {}
        self._waiter: trio.lowlevel.Task | None = None  # the writer task, parked in get_batch

    def __len__(self) -> int:
        return self._live

    @property
    def mid_frame(self) -> bool:
        """Part of a frame is on the wire and the rest is not: a close frame now would be garbage."""
        return self.writing or self._partial is not None

    def _write_if_idle(self, data: bytes) -> bool:
        """Write ``data`` straight into the socket if nothing is queued or being written.

        True if that took care of it (all written, or the unsent tail kept to go out first);
        False if it must be queued.
        """
        write = self.direct_write
        if write is None or self.writing or self._frames or self._partial is not None:
            return False
        written = write(data)
        if written == len(data):
            return True
        if written:
            self._partial = data[written:]
            self._wake()
            return True
        return False

    def push(self, frame: Frame) -> bool:
        """Queue ``frame`` for this connection; False if it was not queued."""
        if self.closed:
            return False
        key = frame.key
        if key is not None and self._live >= self.high_water:
            superseded = self._keyed.get(key)
            if superseded is not None and superseded.payload is not None:
                superseded.payload = None
                self._live -= 1
                self.coalesced += 1
                if len(self._frames) > 2 * self.limit:
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
            self._frames.append(payload)
        else:
            slot = _Slot(payload)
            self._keyed[key] = slot
            self._frames.append(slot)
        self._live += 1
        if not corked:
            self._wake()
        elif self._live >= CORK_FLUSH:
            self.uncork()  # a long batch: this share goes now (still listed: the rest goes at the end)
        elif not self._corked:
            self._corked = True
            cork.held.append(self)  # type: ignore[union-attr]  # corked implies a cork
        return True

    def uncork(self) -> None:
        """Write what the cork held back: one direct write if the socket is idle, else the writer's."""
        self._corked = False
        if not self._frames:
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
        self._frames.append(data)
        self._wake()

    def _compact(self) -> None:
        self._frames = [f for f in self._frames if not isinstance(f, _Slot) or f.payload is not None]

    async def get_batch(self) -> list[bytes]:
        """Wait until bytes are queued, then take all of them (complete WebSocket frames) in order.

        Returns an empty list once the outbox is closed and drained: the writer then stops.
        """
        while not self._frames and self._partial is None:
            if self.closed:
                return []
            await self._park()
        if self._partial is None:
            return self._take()
        partial, self._partial = self._partial, None
        return [partial, *self._take()]

    def _take(self) -> list[bytes]:
        """Everything queued, in order (coalesced slots left out); the queue is empty after."""
        batch = [item if isinstance(item, bytes) else item.payload for item in self._frames]
        self._frames.clear()
        self._keyed.clear()
        self._live = 0
        return [b for b in batch if b is not None]

    def _wake(self) -> None:
        task = self._waiter
        if task is not None:
            self._waiter = None
            trio.lowlevel.reschedule(task)

    async def _park(self) -> None:
        """Sleep until :meth:`_wake` (one waiter only: the writer; lighter than a ``trio.Event``)."""
        self._waiter = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self._waiter = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def close(self, *, drop: bool) -> None:
        """Accept no more frames; ``drop`` discards those still queued, else they are flushed."""
        self.closed = True
        if drop:
            self._frames.clear()
            self._keyed.clear()
            self._live = 0
        self._wake()


class Broker(abc.ABC):
    """Where handlers publish events; resolves recipients to connection outboxes.

    Connection ids are the session ids handed out in ``welcome``. An implementation must deliver
    each frame to each recipient's outbox in the order ``deliver`` was called.
    """

    @abc.abstractmethod
    def attach(self, session_id: str, outbox: Outbox) -> None:
        """Start delivering to a connection of this node."""

    @abc.abstractmethod
    def detach(self, session_id: str) -> None:
        """Stop delivering to a connection (it closed)."""

    @abc.abstractmethod
    def deliver(self, session_ids: Iterable[str], frame: Frame) -> int:
        """Hand ``frame`` to every listed connection; returns how many queued it."""


class LocalBroker(Broker):
    """The in-memory broker: every connection lives in this process."""

    def __init__(self) -> None:
        self._outboxes: dict[str, Outbox] = {}
        self.delivered = 0

    def attach(self, session_id: str, outbox: Outbox) -> None:
        self._outboxes[session_id] = outbox

    def detach(self, session_id: str) -> None:
        self._outboxes.pop(session_id, None)

    def deliver(self, session_ids: Iterable[str], frame: Frame) -> int:
        outboxes = self._outboxes
        queued = 0
        for session_id in session_ids:
            outbox = outboxes.get(session_id)
            if outbox is not None and outbox.push(frame):
                queued += 1
        self.delivered += queued
        return queued
