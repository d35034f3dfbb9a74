"""Apply another node's state change (an :data:`~signald.app.replica.Op`) to this node's hub.

The same sans-IO operation the origin ran runs here on this node's copy of the cluster's
membership and presence; the events it returns go through ``Hub.publish``, whose broker only
knows this node's connections, so each node tells exactly its own connections. A change this
node's copy cannot take (a join of a connection it believes belongs to another user, a leave of
a room it does not know the connection is in) is skipped: the ops are idempotent where they can
be, and the snapshot a node loads at start may already hold what an op in flight says.
"""

from __future__ import annotations

import sys

import trio

from signald.app.facade import kick_from_room
from signald.app.hub import Hub
from signald.app.replica import (
    Activity,
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

__all__ = ["apply_op"]


def apply_op(hub: Hub, op: Op) -> None:
    """Run ``op`` (made on another node) here; events reach this node's connections only."""
    now = trio.current_time()
    presence, rooms = hub.presence, hub.rooms
    if isinstance(op, Connect):
        if op.conn not in presence.devices_of(op.user):  # announced again after a broker outage: known
            hub.publish(presence.connect(op.conn, op.user, now))
            hub.poke_timers()
    elif isinstance(op, Disconnect):
        hub.publish(presence.disconnect(op.conn, now, hub.wall_clock()))
        hub.publish(rooms.disconnect(op.conn))
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
        hub.publish(presence.activity(op.user, now, hub.wall_clock()))
    elif isinstance(op, Revoke):
        hub.revoke_user(op.user, op.reason)
