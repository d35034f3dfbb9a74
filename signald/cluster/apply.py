"""Apply another node's state change (an :data:`~signald.app.replica.Op`) to this node's hub.

The same sans-IO operation the origin ran runs here on this node's copy of the cluster's
membership and presence; the events it returns go through ``Hub.publish``, whose broker only
knows this node's connections, so each node tells exactly its own connections. A change this
node's copy cannot take (a join of a connection it believes belongs to another user, a leave of
a room it does not know the connection is in) is skipped: the ops are idempotent where they can
be, and the snapshot a node loads at start may already hold what an op in flight says.
"""

from __future__ import annotations

import math
import sys

import attrs
import trio

from signald.app.facade import kick_from_room
from signald.app.hub import Hub
from signald.app.replica import (
    Activity,
    Budget,
    CallAnswered,
    CallEnded,
    CallIced,
    CallOffered,
    CallTimedOut,
    Connect,
    Disconnect,
    Join,
    Kick,
    Leave,
    Op,
    Revoke,
    SetStatus,
    Typing,
)
from signald.errors import SignalError

__all__ = ["apply_op", "budget_share"]


def apply_op(hub: Hub, op: Op) -> None:
    """Run ``op`` (made on another node) here; events reach this node's connections only."""
    now = trio.current_time()
    presence, rooms = hub.presence, hub.rooms
    if isinstance(op, Connect):
        if op.conn not in presence.devices_of(op.user):  # announced again after a broker outage: known
            hub.publish(presence.connect(op.conn, op.user, now))
            hub.poke_timers()
    elif isinstance(op, Disconnect):
        hub.apply_call_outcome(hub.calls.device_gone(op.conn, now))
        hub.publish(presence.disconnect(op.conn, now, hub.wall_clock()))
        hub.publish(rooms.disconnect(op.conn))
        if op.level is not None:
            hub.user_rates.cap(op.user, op.level, now)
    elif isinstance(op, Budget):
        hub.user_rates.cap(op.user, op.level, now)
    elif isinstance(op, Join):
        if rooms.user_of(op.conn) in (None, op.user):
            if not presence.devices_of(op.user) & {op.conn}:  # joined before this node heard it connect
                hub.publish(presence.connect(op.conn, op.user, now))
            hub.publish(rooms.join(op.conn, op.user, op.room, max_rooms=sys.maxsize).sends)  # origin checked
    elif isinstance(op, Leave):
        if rooms.is_member(op.conn, op.room):
            hub.publish(presence.clear_typing(op.conn, op.room))
            hub.publish(rooms.leave(op.conn, op.room))
    elif isinstance(op, Kick):
        kick_from_room(hub, op.room, op.user, by=op.by, reason=op.reason)
    elif isinstance(op, SetStatus):
        hub.publish(presence.set_status(op.conn, op.user, op.status, now))
    elif isinstance(op, Typing):
        if rooms.is_member(op.conn, op.room):
            hub.publish(presence.typing(op.conn, op.user, op.room, op.typing, now, hub.config.limits.typing_timeout_s))
            hub.poke_timers()
    elif isinstance(op, Activity):
        hub.publish(presence.activity(op.user, now, hub.wall_clock(), ago=op.ago))
        hub.timers.activity(now - op.ago)  # a deadline that may come before the timer task wakes
    elif isinstance(op, Revoke):
        hub.revoke_user(op.user, op.reason)
    else:
        _apply_call(hub, op, now)


def budget_share(hub: Hub, user: str) -> float:
    """The fraction of ``user``'s frame budget this node holds: the fraction of the user's
    connections that are its own (signald.state.ratelimit). A node with none of them keeps the
    whole capacity for the level it remembers; it spends nothing until one connects here."""
    local = len(hub.sessions_by_user.get(user, ()))
    total = hub.presence.device_count(user)
    return local / total if 0 < local < total else 1.0


def _apply_call(hub: Hub, op: Op, now: float) -> None:
    """A call transition another node made: the same transition on this node's copy of the call.

    An offer is applied with its node's verdict (busy, glare lost, or rings) and no ring deadline
    here: the caller's node decides the timeout and shares it (:class:`CallTimedOut`); if that node
    dies, the caller's device goes with it and the call ends ``disconnected``. Its ``started``
    call-log entry is the origin's to write (the log follows only calls started on the node), so
    it is dropped here.
    """
    calls = hub.calls
    try:
        if isinstance(op, CallOffered):
            outcome = calls.offer(caller=op.caller, caller_device=op.caller_device, callee=op.callee,
                                  callee_devices=op.callee_devices, call_type=op.call_type, sdp=op.sdp,
                                  call_id=op.call_id, now=now, ring_timeout_s=math.inf, verdict=op.verdict)
        elif isinstance(op, CallAnswered):
            outcome = calls.answer(user=op.user, device=op.device, peer=op.peer, sdp=op.sdp, call_id=op.call_id,
                                   now=now)
        elif isinstance(op, CallIced):
            outcome = calls.ice(user=op.user, device=op.device, peer=op.peer, candidate=op.candidate,
                                call_id=op.call_id)
        elif isinstance(op, CallEnded):
            outcome = calls.end(user=op.user, device=op.device, peer=op.peer, reason=op.reason, call_id=op.call_id,
                                now=now)
        elif isinstance(op, CallTimedOut):
            outcome = calls.time_out(op.call_id, now)
        else:
            return
    except SignalError:  # this node's copy already moved on (a timeout, a disconnect): nothing to tell
        return
    hub.apply_call_outcome(attrs.evolve(outcome, log=[entry for entry in outcome.log if entry.kind != "started"]))
