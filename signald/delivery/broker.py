"""Where handlers publish events: the :class:`Broker` interface and the in-process broker.

Handlers never talk to outboxes directly: they publish through a :class:`Broker`.
:class:`LocalBroker` delivers to the connections of this process; a multi-node backend
implements the same three methods.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable

from signald.delivery.frames import Frame
from signald.delivery.outbox import Outbox


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
    def outbox(self, session_id: str) -> Outbox | None:
        """The outbox of a connection of this node (None if gone or elsewhere)."""

    @abc.abstractmethod
    def deliver(self, session_ids: Iterable[str], frame: Frame) -> int:
        """Hand ``frame`` to every listed connection; returns how many queued it."""


class LocalBroker(Broker):
    """The in-memory broker: every connection lives in this process."""

    def __init__(self) -> None:
        self._outboxes: dict[str, Outbox] = {}

    def attach(self, session_id: str, outbox: Outbox) -> None:
        self._outboxes[session_id] = outbox

    def detach(self, session_id: str) -> None:
        self._outboxes.pop(session_id, None)

    def outbox(self, session_id: str) -> Outbox | None:
        return self._outboxes.get(session_id)

    def deliver(self, session_ids: Iterable[str], frame: Frame) -> int:
        outboxes = self._outboxes
        queued = 0
        for session_id in session_ids:
            outbox = outboxes.get(session_id)
            if outbox is not None and outbox.push(frame):
                queued += 1
        return queued
