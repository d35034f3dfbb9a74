"""What a node tells the other nodes: the shared state changes (ops) and the :class:`Replica` seam.

With several nodes (``cluster.broker_url``) every node keeps the whole cluster's membership and
presence in its own sans-IO registries: its own connections, and the other nodes' connections as
*remote* devices it never writes to. A change made on one node is applied there at once and
shared as an :data:`Op`; every other node applies the same op to its registries and delivers the
events it causes to its own connections only. So each event is computed and encoded once per
node, reaches each connection once, and the rules of ``signald.state`` (first device in, last
device out, presence peers, typing) hold across nodes without a second implementation of them.

Events that are not state changes (chat changes the store committed, ``room.signal``, ``app.*``)
travel as encoded frames on a room's or a user's channel (:meth:`Replica.room_event`,
:meth:`Replica.user_event`). One node alone has no replica: ``Hub.replica`` is ``None`` and no
path below is taken.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import msgspec

from signald.delivery.frames import Frame
from signald.protocol import CallType, JsonObject, Status

__all__ = ["Activity", "CallAnswered", "CallEnded", "CallIced", "CallOffered", "Connect", "Disconnect", "Join",
           "Kick", "Leave", "Op", "Replica", "Revoke", "SetStatus", "Typing"]


class Connect(msgspec.Struct, tag="connect", array_like=True, frozen=True):
    conn: str
    user: str


class Disconnect(msgspec.Struct, tag="disconnect", array_like=True, frozen=True):
    conn: str


class Join(msgspec.Struct, tag="join", array_like=True, frozen=True):
    conn: str
    user: str
    room: str


class Leave(msgspec.Struct, tag="leave", array_like=True, frozen=True):
    conn: str
    room: str


class Kick(msgspec.Struct, tag="kick", array_like=True, frozen=True):
    room: str
    user: str
    by: str
    reason: str | None


class SetStatus(msgspec.Struct, tag="status", array_like=True, frozen=True):
    conn: str
    user: str
    status: Status


class Typing(msgspec.Struct, tag="typing", array_like=True, frozen=True):
    conn: str
    user: str
    room: str
    typing: bool


class Activity(msgspec.Struct, tag="activity", array_like=True, frozen=True):
    """The user was active on the sending node (shared at most every few seconds: auto-away)."""

    user: str


class Revoke(msgspec.Struct, tag="revoke", array_like=True, frozen=True):
    user: str
    reason: str


class CallOffered(msgspec.Struct, tag="call.offer", array_like=True, frozen=True):
    """An offer this node accepted: every node rings its own devices of the callee."""

    caller: str
    caller_device: str
    callee: str
    callee_devices: list[str]
    call_type: CallType
    sdp: JsonObject
    call_id: str  # as the origin resolved it (the client's, or a fresh one)


class CallAnswered(msgspec.Struct, tag="call.answer", array_like=True, frozen=True):
    user: str
    device: str
    peer: str
    sdp: JsonObject
    call_id: str


class CallIced(msgspec.Struct, tag="call.ice", array_like=True, frozen=True):
    user: str
    device: str
    peer: str
    candidate: JsonObject
    call_id: str


class CallEnded(msgspec.Struct, tag="call.end", array_like=True, frozen=True):
    user: str
    device: str
    peer: str
    reason: str | None
    call_id: str


Op = (Connect | Disconnect | Join | Leave | Kick | SetStatus | Typing | Activity | Revoke
      | CallOffered | CallAnswered | CallIced | CallEnded)


class Replica(abc.ABC):
    """This node's link to the others (see the module docstring); every method runs on the Trio thread."""

    node_id: str
    url: str  # the broker's (may hold a password: log it redacted)

    @abc.abstractmethod
    def running(self) -> AbstractAsyncContextManager[Any]:
        """Join the cluster, run the link while the daemon serves, leave on the way out."""

    @abc.abstractmethod
    def share(self, op: Op) -> None:
        """Tell the other nodes of a change this node has just applied (never blocks; in order)."""

    @abc.abstractmethod
    def activity(self, user: str) -> None:
        """An inbound message from a device of ``user`` on this node (shared now and then: auto-away)."""

    @abc.abstractmethod
    def room_event(self, room: str, frame: Frame, exclude: str | None) -> None:
        """Deliver ``frame`` to the other nodes' connections in ``room`` but ``exclude``."""

    @abc.abstractmethod
    def history_event(self, room: str, frame: Frame, exclude: str | None) -> None:
        """A change the store committed on this node: to the other nodes, and to this node's
        connections (``HistoryService.deliver_now``) in the room's ``rev`` order across nodes."""

    @abc.abstractmethod
    def user_event(self, user: str, frame: Frame) -> None:
        """Deliver ``frame`` to the other nodes' devices of ``user``."""

    @abc.abstractmethod
    def after_sent(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once everything shared so far was handed to the broker (or failed to be)."""

    @abc.abstractmethod
    async def enter_room(self, room: str) -> None:
        """Before a connection of this node joins ``room``: hear the room's events from now on."""

    @abc.abstractmethod
    async def read_at(self, room: str, rev: int) -> None:
        """A join of this node read ``room``'s history at ``rev`` (where the room's order starts here);
        returns once this node delivered the room's changes up to ``rev`` (the join still captures)."""

    @abc.abstractmethod
    def problem(self) -> str | None:
        """Why the broker cannot be used now (for ``/readyz``), or None."""
