"""The embedding API: what a program that embeds signald may do with the running daemon.

:class:`Signald` is the one public door. :func:`signald.server.serve_signald` reports a
:class:`~signald.server.RunningServer`, which is a ``Signald``; custom ``app.*`` handlers get one
as ``ctx.server``. Everything here runs on the Trio thread, never blocks, and is safe to call at
any time while the daemon runs.

- **Push**: :meth:`Signald.publish_to_room`, :meth:`Signald.publish_to_user` send ``app.*`` events;
  :meth:`Signald.publish_and_store` also keeps the event in the room's history.
- **Act**: :meth:`Signald.revoke_user` ends a user's sessions (4003); :meth:`Signald.kick` removes
  a user from a room exactly as a moderator's ``room.kick`` does (:func:`kick_from_room` is what
  both run); :meth:`Signald.drain` makes ``/readyz`` answer 503 before a shutdown.
- **Look**: :meth:`Signald.rooms`, :meth:`Signald.members`, :meth:`Signald.presence`,
  :meth:`Signald.sessions_of` return immutable snapshots (tuples of frozen attrs classes): a later
  change in the daemon never alters a view already taken, and a view cannot change the daemon.
- **Hooks**: :meth:`Signald.on_connect`, :meth:`Signald.on_disconnect` get a :class:`SessionView`
  for each session that connects (after its ``welcome``) or ends. A hook that raises is logged on
  ``signald.facade`` and otherwise ignored: it never breaks the connection or the other hooks.

``Signald.hub`` is the daemon's internal state: it may change between releases; use it only for
what this API does not offer (and tell us what that is).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs
import msgspec
import trio

from signald.app.history import MAY_BE_PUBLISHED
from signald.app.hub import Hub
from signald.app.replica import Kick, Leave
from signald.app.session import Session
from signald.errors import SignalError
from signald.logfmt import log_event
from signald.protocol import ChatMessage, ChatMessageEvent, KickedData, RoomKickedEvent, StatsResult, encode_app_event
from signald.state.send import Send

log = logging.getLogger("signald.facade")
audit = logging.getLogger("signald.audit")

SERVER_KICKER: Final = "$system"  # the ``by`` of a kick the embedding program made (``$`` ids are reserved)
APP_EVENT_AUTHOR: Final = "$app"  # the ``user_id`` of an app event kept in a room's history


@attrs.frozen
class SessionView:
    """One connected device as it was when the view was taken."""

    session_id: str  # also its device_id in device.* events and members[].devices
    user_id: str
    roles: frozenset[str]
    remote: str  # the peer address
    connected_at: str  # ISO 8601 UTC
    expires_at: float | None  # epoch seconds, or None if the token does not expire


@attrs.frozen
class MemberView:
    """One user in a room: their status and the devices they have in it."""

    user_id: str
    status: str
    devices: tuple[str, ...]


@attrs.frozen
class PresenceView:
    """A user's presence: ``status`` is ``offline`` when no device is connected."""

    user_id: str
    status: str
    online: bool
    devices: tuple[str, ...]  # connected devices (session ids), rooms or not
    last_seen: float | None  # epoch seconds of the last activity signald knows of, if any


def session_view(session: Session) -> SessionView:
    return SessionView(
        session_id=session.session_id, user_id=session.user_id, roles=session.roles, remote=session.remote,
        connected_at=session.connected_at, expires_at=session.expires_at,
    )


def kick_from_room(
    hub: Hub, room: str, user_id: str, *, by: str, reason: str | None, spare: str | None = None
) -> frozenset[str]:
    """Remove every device of ``user_id`` from ``room``; returns them (empty: not a member, nothing done).

    The room hears ``member.left`` (and ``room.waiting`` if one member remains), the kicked
    devices ``room.kicked {room, by, reason}``; their typing indicator there is cleared first.
    ``spare`` (the requesting moderator's connection) gets no room events: its ack says enough.
    """
    kicked = hub.rooms.devices_of(user_id, room)
    if not kicked:
        return kicked
    for conn in kicked:
        hub.publish(hub.presence.clear_typing(conn, room))
    for send in hub.rooms.kick(room, user_id):
        hub.send_to(send.conns - {spare} if spare is not None else send.conns, send.event)
    hub.send_to(kicked, RoomKickedEvent(data=KickedData(room=room, by=by, reason=reason)))
    hub.share(Kick(room, user_id, by, reason))  # each node tells its own devices and room-mates
    log_event(audit, logging.INFO, "kicked", room=room, user=user_id, by=by, reason=reason, sessions=len(kicked))
    return kicked


async def kick_when_heard(
    hub: Hub, room: str, user_id: str, *, by: str, reason: str | None, spare: str | None = None
) -> frozenset[str]:
    """:func:`kick_from_room`, for a request that waits for its answer (``room.kick``, the server
    API's ``kick``): with several nodes, a user not in the room as far as this node knows may have
    joined on another node a moment ago (acked there, still on its way): look again once this node
    has heard everything the broker sent it before (one round trip), then answer."""
    kicked = kick_from_room(hub, room, user_id, by=by, reason=reason, spare=spare)
    if not kicked and hub.replica is not None:
        await hub.replica.caught_up()
        kicked = kick_from_room(hub, room, user_id, by=by, reason=reason, spare=spare)
    return kicked


TOKEN_REASON: Final = "token"  # the ``reason`` of a ``room.kicked`` that a narrower token caused


def leave_rooms_the_token_forbids(hub: Hub, session: Session) -> list[Send]:
    """Take ``session`` out of every room its (new) token no longer allows; returns its ``room.kicked``.

    The room hears what a ``room.leave`` would make it hear (``member.left`` when this was the user's
    last device there); the session gets ``room.kicked {room, by: "$system", reason: "token"}`` per
    room, returned for the caller to send after its reply. Other sessions of the user keep their
    own tokens and rooms.
    """
    conn, kicked = session.session_id, []
    for room in sorted(hub.rooms.rooms_of(conn)):
        if session.may_join(room):
            continue
        hub.publish(hub.presence.clear_typing(conn, room))
        hub.publish(hub.rooms.leave(conn, room))
        hub.share(Leave(conn, room))
        kicked.append(Send(frozenset((conn,)), RoomKickedEvent(
            data=KickedData(room=room, by=SERVER_KICKER, reason=TOKEN_REASON))))
        log_event(audit, logging.INFO, "kicked", room=room, user=session.user_id, by=SERVER_KICKER,
                  reason=TOKEN_REASON, sessions=1)
    return kicked


@attrs.frozen
class Signald:
    """The running daemon, as an embedding program or a custom handler sees it.

    ``hub`` is internal and may change between releases: prefer the methods below.
    """

    hub: Hub = attrs.field(repr=False)

    # ------------------------------------------------------------------ push

    def _elsewhere(self, conns: Iterable[str]) -> int:
        """How many of ``conns`` are another node's (with several nodes): each node delivers to its
        own, and the counts this API returns are of every node's, as on one node."""
        return sum(1 for conn in conns if conn not in self.hub.sessions)

    def publish_to_room(self, room: str, event_type: str, data: Any) -> int:
        """Send an ``app.*`` event to every connection in ``room``; returns how many got it (every node's)."""
        elsewhere = self._elsewhere(self.hub.rooms.conns_in(room))
        return self.hub.publish_to_room(room, event_type, data) + elsewhere

    async def publish_and_store(self, room: str, event_type: str, data: Any) -> int:
        """:meth:`publish_to_room`, after keeping the event in ``room``'s history; returns how many got it.

        The event is stored as a chat message of ``"$app"`` whose ``body`` is the event as JSON text
        (``{"type": ..., "data": ...}``), with the room's next ``seq`` and ``rev``: clients that were
        away get it back from ``room.join {since, since_rev}`` and ``chat.history`` like any message.
        Once it is committed the room's connections get that ``chat.message`` (exact resume: its
        ``rev`` moves theirs on) and right after it the ``app.*`` event itself, as without storing.
        Returns after the commit: the event is durable then.

        Error handling: ``ValueError`` for a type that is not ``app.<name>``; ``TOO_LARGE`` when the
        JSON text is longer than ``limits.max_body_chars``; a store failure raises as the store's, and
        a store that does not answer within ``history.request_timeout_s`` ``INTERNAL`` (the event may
        still be stored and delivered then).
        """
        encode_app_event(event_type, data)  # the type check of publish_to_room, before anything is stored
        body = msgspec.json.encode({"type": event_type, "data": data}).decode()  # never a raw U+0000
        limit = self.hub.config.limits.max_body_chars
        if len(body) > limit:
            raise SignalError("TOO_LARGE", f"the stored event is {len(body)} characters of JSON, "
                                           f"over max_body_chars ({limit})")
        history = self.hub.history
        if history is None:  # pragma: no cover - a running server always has its store
            raise SignalError("INTERNAL", "no history store")
        delivered = 0

        def on_commit(message: ChatMessage) -> None:  # in commit order, on the Trio thread
            nonlocal delivered
            history.announce(room, ChatMessageEvent(data=message))
            delivered = self.publish_to_room(room, event_type, data)

        # a hung store: INTERNAL after history.request_timeout_s, as a client's chat.send gets
        await history.answered(history.store.send(room=room, user_id=APP_EVENT_AUTHOR, body=body,
                                                  on_commit=on_commit), then=MAY_BE_PUBLISHED)
        return delivered

    def publish_to_user(self, user_id: str, event_type: str, data: Any) -> int:
        """Send an ``app.*`` event to every connected device of ``user_id``; returns how many got it (every
        node's)."""
        elsewhere = self._elsewhere(self.hub.devices_of(user_id))
        return self.hub.publish_to_user(user_id, event_type, data) + elsewhere

    # ------------------------------------------------------------------ act

    def revoke_user(self, user_id: str, reason: str) -> int:
        """End every session of ``user_id``: ``session.revoked {reason}`` then close 4003; returns how many
        (every node's)."""
        elsewhere = self._elsewhere(self.hub.devices_of(user_id))
        return self.hub.revoke_user(user_id, reason) + elsewhere

    def kick(self, room: str, user_id: str, reason: str | None = None) -> int:
        """Remove ``user_id`` from ``room`` as ``room.kick`` does (``by`` is ``"$system"``); returns devices kicked."""
        return len(kick_from_room(self.hub, room, user_id, by=SERVER_KICKER, reason=reason))

    def drain(self) -> None:
        """Announce a shutdown: from now on ``GET /readyz`` answers 503 ``shutting down``.

        Everything else goes on as before (connections, new ones too, and the API) until the
        daemon is cancelled; ``signald serve`` calls this on SIGTERM, ``server.drain_s`` before.
        """
        self.hub.draining = True

    # ------------------------------------------------------------------ look

    def rooms(self) -> tuple[str, ...]:
        """Every room with at least one member, sorted."""
        return tuple(self.hub.rooms.room_names())

    def members(self, room: str) -> tuple[MemberView, ...]:
        """The users in ``room`` (sorted by user id), with their status and devices there."""
        status_of = self.hub.presence.status_of
        return tuple(MemberView(user, status_of(user), tuple(conns)) for user, conns in self.hub.rooms.members(room))

    def presence(self, user_id: str) -> PresenceView:
        """``user_id``'s presence now (``offline`` with no devices for an unknown user)."""
        hub = self.hub
        devices = tuple(hub.devices_of(user_id))
        return PresenceView(user_id=user_id, status=hub.presence.status_of(user_id),
                            online=bool(devices), devices=devices, last_seen=hub.presence.last_seen(user_id))

    async def last_seen(self, *user_ids: str) -> dict[str, float]:
        """When each of ``user_ids`` was last active (epoch seconds), for those signald knows of.

        Unlike :meth:`presence`, this reads the history store for users not in memory, so a user
        last seen before a restart is found too.
        """
        history = self.hub.history
        if history is None:  # pragma: no cover - a running server always has its store
            return {user: seen for user in user_ids if (seen := self.hub.presence.last_seen(user)) is not None}
        return await history.last_seen(user_ids)

    def stats(self) -> StatsResult:
        """The daemon's counters now: what ``system.stats`` and ``GET /api/v1/stats`` answer.

        With several nodes they are the cluster's: connections and users on every node (this node
        knows them all), and the message counters of the others as of their last heartbeat."""
        hub = self.hub
        connections, users, elsewhere = len(hub.sessions), len(hub.sessions_by_user), (0, 0)
        if hub.replica is not None:
            connections, users = hub.presence.device_total(), hub.presence.user_count
            elsewhere = hub.replica.counters_elsewhere()
        return StatsResult(
            connections=connections,
            users=users,
            rooms=hub.rooms.room_count,
            calls=hub.active_calls(),
            messages_in=hub.counters.messages_in + elsewhere[0],
            messages_out=hub.counters.messages_out + elsewhere[1],
            uptime_s=round(trio.current_time() - hub.started_at, 3),
            db_bytes=hub.history.store.db_bytes() if hub.history is not None else 0,
        )

    def sessions_of(self, user_id: str) -> tuple[SessionView, ...]:
        """The connected sessions of ``user_id``, oldest first."""
        return tuple(session_view(s) for s in self.hub.sessions_by_user.get(user_id, {}).values())

    # ------------------------------------------------------------------ hooks

    def on_connect(self, callback: Callable[[SessionView], object]) -> None:
        """Call ``callback(view)`` on the Trio thread for each session that connects from now on."""
        self.hub.connect_hooks.append(_guarded("on_connect", callback))

    def on_disconnect(self, callback: Callable[[SessionView], object]) -> None:
        """Call ``callback(view)`` on the Trio thread once for each session that ends from now on."""
        self.hub.disconnect_hooks.append(_guarded("on_disconnect", callback))


def _guarded(kind: str, callback: Callable[[SessionView], object]) -> Callable[[Session], None]:
    def hook(session: Session) -> None:
        try:
            callback(session_view(session))
        except Exception:
            log.exception("%s hook %r failed for session %s", kind, callback, session.session_id)
    return hook
