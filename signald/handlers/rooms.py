"""Rooms and presence: ``room.join``, ``room.leave``, ``room.kick``, ``room.signal``,
``presence.set``, ``chat.typing``, ``session.info``, ``system.stats``."""

from __future__ import annotations

import logging
from typing import Final

import trio

from signald.app.context import Context
from signald.app.facade import kick_when_heard
from signald.app.replica import Join, Leave, SetStatus, Typing
from signald.errors import SignalError
from signald.logfmt import log_event
from signald.protocol import (
    ChatTyping,
    PresenceSet,
    RoomJoin,
    RoomJoinResult,
    RoomKick,
    RoomLeave,
    RoomSignal,
    RoomSignalEvent,
    RoomSignalEventData,
    SessionInfo,
    SessionInfoResult,
    StatsResult,
    SystemStats,
)
from signald.timefmt import iso_utc

log = logging.getLogger("signald.rooms")  # joins and leaves, at debug: one line each

JOIN_PUBLISHED_S: Final = 1.0  # several nodes: a join's ack waits this long at most for the broker


def require_member(ctx: Context, room: str) -> None:
    """Raise ``NOT_IN_ROOM`` unless the requesting connection joined ``room``."""
    if not ctx.hub.rooms.is_member(ctx.session.session_id, room):
        raise SignalError("NOT_IN_ROOM", f"join {room!r} first")


async def room_join(ctx: Context, msg: RoomJoin) -> RoomJoinResult:
    """Join a room; with history, read first and join after (see :mod:`signald.app.history`).

    A failed read leaves no trace: nobody was told of the join, which never happened. A join of
    a room the connection is already in changes no membership and is answered from the store
    like any other (events it already got live may be reported again: they carry the same ``rev``).
    """
    hub, session, data = ctx.hub, ctx.session, msg.data
    room = data.room
    if not session.may_join(room):
        raise SignalError("FORBIDDEN", f"your token does not allow joining {room!r}")
    conn, user, max_rooms = session.session_id, session.user_id, hub.config.limits.max_rooms
    history = hub.history
    if hub.replica is not None and not hub.rooms.is_member(conn, room):
        await hub.replica.enter_room(room)  # hear the room's events from the other nodes before reading
    if history is None or hub.rooms.is_member(conn, room):  # nothing to read, or nothing joins
        outcome = hub.rooms.join(conn, user, room, max_rooms=max_rooms)
        hub.publish(outcome.sends)
        if not outcome.already_member:
            hub.feeds.entered(room, conn)
            hub.share(Join(conn, user, room))
        ctx.after_reply.extend(outcome.after_ack)
        result = RoomJoinResult(room=room, members=hub.member_list(room), active=outcome.active, unread=0, rev=0)
        if history is not None:
            history.fill_join_result(result, await history.rejoin(user, room, data.since, data.since_rev, session))
        await hub.published(within=JOIN_PUBLISHED_S)
        return result
    hub.rooms.check_join(conn, user, room, max_rooms=max_rooms)
    with history.capturing(room, conn) as kept:
        rejoin = await history.rejoin(user, room, data.since, data.since_rev, session)
        if hub.replica is not None:  # the changes the read saw are delivered here first: kept, not live again
            await hub.replica.read_at(room, rejoin.rev)
    if session.detached:  # closed during the read: a gone connection must not become a member
        raise SignalError("INTERNAL", "the connection closed during the join")
    outcome = hub.rooms.join(conn, user, room, max_rooms=max_rooms)
    hub.publish(outcome.sends)
    hub.feeds.entered(room, conn)  # its member list has what the room's feed still holds
    hub.share(Join(conn, user, room))
    history.replay(conn, kept, rejoin)
    ctx.after_reply.extend(outcome.after_ack)
    result = RoomJoinResult(room=room, members=hub.member_list(room), active=outcome.active, unread=0, rev=0)
    history.fill_join_result(result, rejoin)
    log_event(log, logging.DEBUG, "room joined", room=room, user=user, session=conn)
    # several nodes: acked once the others can know (a call to this user right after), unless the
    # broker hangs (a join is this node's to make: it does not wait out a broker outage)
    await hub.published(within=JOIN_PUBLISHED_S)
    return result


async def room_leave(ctx: Context, msg: RoomLeave) -> None:
    hub, conn, room = ctx.hub, ctx.session.session_id, msg.data.room
    require_member(ctx, room)
    hub.publish(hub.presence.clear_typing(conn, room))
    hub.publish(hub.rooms.leave(conn, room))
    hub.share(Leave(conn, room))
    log_event(log, logging.DEBUG, "room left", room=room, user=ctx.session.user_id, session=conn)


async def room_kick(ctx: Context, msg: RoomKick) -> None:
    hub, session, data = ctx.hub, ctx.session, msg.data
    if not session.is_moderator:
        raise SignalError("FORBIDDEN", "room.kick needs the mod or admin role")
    require_member(ctx, data.room)
    # The embedding API's Signald.kick runs kick_from_room, which this wraps: one implementation.
    if not await kick_when_heard(hub, data.room, data.user_id, by=session.user_id, reason=data.reason,
                                 spare=session.session_id):
        raise SignalError("NOT_IN_ROOM", f"{data.user_id!r} is not in {data.room!r}")


async def room_signal(ctx: Context, msg: RoomSignal) -> None:
    hub, session, data = ctx.hub, ctx.session, msg.data
    require_member(ctx, data.room)
    event = RoomSignalEvent(data=RoomSignalEventData(
        room=data.room, user_id=session.user_id, kind=data.kind, payload=data.payload))
    hub.send_to_room(data.room, event, exclude=session.session_id)


async def presence_set(ctx: Context, msg: PresenceSet) -> None:
    hub, session = ctx.hub, ctx.session
    hub.publish(hub.presence.set_status(session.session_id, session.user_id, msg.data.status, trio.current_time()))
    hub.share(SetStatus(session.session_id, session.user_id, msg.data.status))


async def chat_typing(ctx: Context, msg: ChatTyping) -> None:
    hub, session, data = ctx.hub, ctx.session, msg.data
    require_member(ctx, data.scope)
    hub.publish(hub.presence.typing(
        session.session_id, session.user_id, data.scope, data.typing, trio.current_time(),
        hub.config.limits.typing_timeout_s,
    ))
    hub.share(Typing(session.session_id, session.user_id, data.scope, data.typing))
    hub.poke_timers()


async def session_info(ctx: Context, msg: SessionInfo) -> SessionInfoResult:
    hub, session = ctx.hub, ctx.session
    return SessionInfoResult(
        session_id=session.session_id,
        user_id=session.user_id,
        roles=sorted(session.roles),
        rooms=sorted(hub.rooms.rooms_of(session.session_id)),
        connected_at=session.connected_at,
        expires_at=iso_utc(session.expires_at) if session.expires_at is not None else None,
        devices=hub.devices_of(session.user_id),
    )


async def system_stats(ctx: Context, msg: SystemStats) -> StatsResult:
    if not ctx.session.is_admin:
        raise SignalError("FORBIDDEN", "system.stats needs the admin role")
    return ctx.server.stats()  # GET /api/v1/stats answers the same
