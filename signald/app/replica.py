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
from typing import Any, Literal

import msgspec

from signald.delivery.frames import Frame
from signald.protocol import CallType, JsonObject, Status

__all__ = ["Activity", "Budget", "CallAnswered", "CallDecisions", "CallEnded", "CallIced", "CallOffered",
           "CallTimedOut", "Connect", "Disconnect", "Join", "Kick", "Leave", "Op", "Replica", "Resynced",
           "Revoke", "SetStatus", "Typing"]


class SharedOp(msgspec.Struct, array_like=True, frozen=True):
    """A state change as it travels between nodes: a compact array, tagged with the op's name."""


class Connect(SharedOp, tag="connect", frozen=True):
    """A connection of ``user`` was set up on the origin (its device goes online everywhere)."""

    conn: str
    user: str


class Disconnect(SharedOp, tag="disconnect", frozen=True):
    """A connection closed on the origin: its rooms are left, its device goes offline, its calls end.
    ``level``: the user's frame budget on the origin then (tokens over capacity; None: full), which
    the others take as an upper bound for theirs (reconnecting elsewhere refills nothing); the
    replica fills in ``user`` and ``level`` as it shares the op."""

    conn: str
    user: str = ""
    level: float | None = None


class Budget(SharedOp, tag="budget", frozen=True):
    """A node that holds ``user``'s budget below full heard of the user's connection elsewhere: its
    level, which the others take as an upper bound for theirs (see :class:`Disconnect`)."""

    user: str
    level: float


class Join(SharedOp, tag="join", frozen=True):
    """A connection joined ``room`` (the origin checked the limits and the token's rooms)."""

    conn: str
    user: str
    room: str


class Leave(SharedOp, tag="leave", frozen=True):
    """A connection left ``room``."""

    conn: str
    room: str


class Kick(SharedOp, tag="kick", frozen=True):
    """``by`` removed every connection of ``user`` from ``room`` (``room.kicked`` to them, wherever they are)."""

    room: str
    user: str
    by: str
    reason: str | None


class SetStatus(SharedOp, tag="status", frozen=True):
    """``presence.set`` on a device: the user's chosen status, for all of their devices. ``stamp``:
    when, by the origin's clock, so that every node keeps the same last one when two cross (0:
    applied as it comes); ``by``: the node that stamped it, when not the origin (a status announced
    again after an outage keeps the stamp it was applied with: signald.cluster.stamps)."""

    conn: str
    user: str
    status: Status
    stamp: float = 0.0
    by: str = ""


class Typing(SharedOp, tag="typing", frozen=True):
    """``chat.typing`` of a connection in ``room`` (its timeout runs on every node)."""

    conn: str
    user: str
    room: str
    typing: bool


class Activity(SharedOp, tag="activity", frozen=True):
    """The user was active on the sending node ``ago`` seconds before it shared this (at most one
    per user every ``away_after_s / 4``: signald.cluster.activity)."""

    user: str
    ago: float = 0.0


class Revoke(SharedOp, tag="revoke", frozen=True):
    """The user's sessions were revoked (``session.revoked`` with ``reason``, then closed, on every node)."""

    user: str
    reason: str


class CallOffered(SharedOp, tag="call.offer", frozen=True):
    """An offer this node accepted: every node rings its own devices of the callee."""

    caller: str
    caller_device: str
    callee: str
    callee_devices: list[str]
    call_type: CallType
    sdp: JsonObject
    call_id: str  # as the origin resolved it (the client's, or a fresh one)
    verdict: Literal["ring", "busy", "glare"] = "ring"  # what the origin decided: every node does the same


class CallAnswered(SharedOp, tag="call.answer", frozen=True):
    """A device of ``user`` answered ``peer``'s call on the origin."""

    user: str
    device: str
    peer: str
    sdp: JsonObject
    call_id: str


class CallIced(SharedOp, tag="call.ice", frozen=True):
    """An ICE candidate from a device of ``user`` for ``peer``'s side of the call."""

    user: str
    device: str
    peer: str
    candidate: JsonObject
    call_id: str


class CallEnded(SharedOp, tag="call.end", frozen=True):
    """A device of ``user`` ended (or declined) the call with ``peer``."""

    user: str
    device: str
    peer: str
    reason: str | None
    call_id: str


class CallTimedOut(SharedOp, tag="call.timeout", frozen=True):
    """The caller's node decided that a call still ringing timed out (:meth:`CallDecisions.ring_timeouts`)."""

    call_id: str


class Resynced(SharedOp, tag="resynced", frozen=True):
    """The origin is back on the broker after an outage: the others tell again the call transitions
    and kicks they shared lately (its pub/sub may have missed them: signald.cluster.kept)."""


Op = (Connect | Disconnect | Budget | Join | Leave | Kick | SetStatus | Typing | Activity | Revoke
      | CallOffered | CallAnswered | CallIced | CallEnded | CallTimedOut | Resynced)


class CallDecisions(abc.ABC):
    """The call transitions that two nodes could make at once, decided once for the cluster.

    Everything else about a call (offer, ICE, end) is one node's request, applied there and shared.
    With one node there is nothing to decide: the registry's own order is the truth.
    """

    @abc.abstractmethod
    async def answer(self, call_id: str, device: str) -> str | None:
        """Claim ``call_id``'s answer for ``device``: None if it won, else who had
        (another device, or ``"timeout"`` when the caller's node timed the call out first)."""

    @abc.abstractmethod
    async def offer(self, call_id: str | None, caller_device: str, callee: str) -> bool:
        """Before a new call: clear what was decided for an earlier call with this ``call_id`` from
        this device (an ended call's id may be used again), and say whether ``callee`` is in an
        answered call on any node (one answered just now included)."""

    @abc.abstractmethod
    def ring_timeouts(self, call_ids: list[str]) -> None:
        """This node's calls whose ring time ran out: time them out unless an answer won first."""


class Replica(abc.ABC):
    """This node's link to the others (see the module docstring); every method runs on the Trio thread."""

    node_id: str
    url: str  # the broker's (may hold a password: log it redacted)

    calls: CallDecisions

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
    async def caught_up(self) -> None:
        """Apply what the other nodes had handed to the broker before now: a change acked on another
        node (a join, a device) is known here when this returns. For a request refused on what this
        node knows (a call to a user not yet seen joining); gives up after a second when it cannot."""

    @abc.abstractmethod
    async def enter_room(self, room: str) -> None:
        """Before a connection of this node joins ``room``: hear the room's events from now on, and
        apply what the other nodes had handed to the broker before (a join acked on another node a
        moment ago is in this join's member list)."""

    @abc.abstractmethod
    async def read_at(self, room: str, rev: int) -> None:
        """A join of this node read ``room``'s history at ``rev`` (where the room's order starts here);
        called while the join still keeps what is delivered to the room (``HistoryService.capturing``),
        returns once this node delivered the room's changes up to ``rev``."""

    @abc.abstractmethod
    def counters_elsewhere(self) -> tuple[int, int]:
        """The other live nodes' ``(messages_in, messages_out)`` together, as of their last heartbeat."""

    @abc.abstractmethod
    def problem(self) -> str | None:
        """Why the broker cannot be used now (for ``/readyz``), or None."""
