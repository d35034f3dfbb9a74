"""What the client core hands out and keeps per request: events, calls, subscriptions, constants.

Pure data, shared by the core and both adapters.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from signald.client.errors import EventsOverflow
from signald.client.view import Msg
from signald.errors import ERROR_CODES, SignalError

State = Literal["connecting", "open", "reconnecting", "closed"]

REPLY_TYPES: Final = frozenset({"ack", "error", "presence.pong"})
# Safe to send again after a dropped connection: chat.send is idempotent by its client_msg_id, the
# rest by the protocol (reads, joins, receipts and reactions that are already in place change nothing).
RESEND: Final = frozenset({"chat.send", "chat.history", "chat.changes", "session.info", "presence.ping",
                           "system.stats", "room.join", "chat.read", "chat.reaction", "presence.set"})
USER_EVENTS: Final = frozenset({"presence.update", "device.online", "device.offline"})
PING_GRACE_S: Final = 5.0
STATE_EVENT: Final = "client.state"


@dataclass(frozen=True)
class Event:
    """One server event (or ``client.state``); ``replayed``: recovered from ``changes`` after a reconnect."""

    type: str
    data: Msg
    replayed: bool = False

    @property
    def room(self) -> str | None:
        name = self.data.get("room", self.data.get("scope"))
        return None if name is None else str(name)


@dataclass(eq=False)
class Call:
    """One request: the program's (``internal`` None) or the core's own (rejoin, paging)."""

    op_id: str
    type: str
    data: Msg | None
    deadline: float
    internal: Callable[[str, Msg], None] | None = None
    waiter: Any = None  # the adapter's wake-up object (an event); the core only hands it back
    sent: bool = False
    done: bool = False
    result: Any = None
    error: BaseException | None = None

    def frame(self) -> Msg:
        message: Msg = {"type": self.type, "id": self.op_id}
        if self.data is not None:
            message["data"] = self.data
        return message


@dataclass(eq=False)
class Subscription:
    """The buffer of one ``events()`` iterator: ``types`` (empty: all), at most ``limit`` unread."""

    types: frozenset[str]
    limit: int
    buffer: deque[Event] = field(default_factory=deque)
    finished: bool = False
    error: BaseException | None = None  # raised once the buffer is read (None: end quietly)
    waiter: Any = None

    def offer(self, event: Event) -> bool:
        """Buffer ``event`` if this iterator wants it; True: its waiter has something new to see.

        A full buffer ends the iterator with :class:`EventsOverflow` instead.
        """
        if self.finished or (self.types and event.type not in self.types):
            return False
        if len(self.buffer) >= self.limit:
            self.finished, self.error = True, EventsOverflow(self.limit)
        else:
            self.buffer.append(event)
        return True


def server_error(data: Msg) -> SignalError:
    code, message = str(data.get("code")), str(data.get("message", ""))
    if code not in ERROR_CODES:  # a newer server's code: keep it readable rather than fail here
        return SignalError("INTERNAL", f"{code}: {message}")
    return SignalError(code, message)  # type: ignore[arg-type]
