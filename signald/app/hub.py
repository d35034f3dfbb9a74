"""The state one daemon shares between its connections, and the context handlers get.

The hub composes what the connections share: the session table, the broker, the sans-IO room
registry, presence and calls, and (while :meth:`Hub.running`) the history service, timers, token
expiries and metrics. It imports nothing above the app layer. Events go out through
:meth:`Hub.send_to`, which encodes each event once whatever the number of recipients; replies
through :meth:`Hub.reply`, in request order. Handlers see it through
:class:`signald.app.context.Context`, embedders through :class:`signald.app.facade.Signald`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import trio

from signald.app.audit import audit, log_closed, log_opened
from signald.app.calls import CallLog
from signald.app.expiry import Expiries
from signald.app.history import HistoryService
from signald.app.members import MemberLists
from signald.app.metrics import Gauges, Metrics
from signald.app.replica import Connect, Disconnect, Op, Replica, Revoke
from signald.app.session import CLOSE_SESSION_EXPIRED, CLOSE_SESSION_REVOKED, Session
from signald.app.timers import Timers
from signald.auth import Authenticator, NoneAuthenticator
from signald.config import Config
from signald.delivery.broker import Broker, LocalBroker
from signald.delivery.cork import BatchCork, Cork
from signald.delivery.feeds import RoomFeeds
from signald.delivery.frames import Frame
from signald.errors import StartupError
from signald.history.factory import make_store, opened_store
from signald.logfmt import log_event
from signald.protocol import (
    Error,
    ExpiredData,
    Member,
    Outbound,
    RevokedData,
    SessionExpiredEvent,
    SessionRevokedEvent,
    encode_app_event,
)
from signald.state.calls import CallOutcome, CallRegistry
from signald.state.heartbeat import Heartbeats, Monitored
from signald.state.presence import PresenceTracker
from signald.state.ratelimit import UserRateLimiter
from signald.state.rooms import RoomRegistry
from signald.state.send import Send
from signald.timefmt import iso_utc
from signald.transport.parking import Parking

log = logging.getLogger("signald.hub")


@attrs.define
class Counters:
    messages_in: int = 0
    messages_out: int = 0


class Hub:
    """Shared daemon state; every method runs in the Trio thread and never blocks."""

    def __init__(
        self,
        config: Config,
        *,
        broker: Broker | None = None,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self.broker = broker or LocalBroker()
        # The other nodes (signald.app.replica), set before running() when cluster.broker_url is.
        self.replica: Replica | None = None
        self.parking = Parking()  # where idle connections wait for bytes (see signald.transport.parking)
        self.cork = Cork()  # see signald.delivery.cork.Cork; sessions' outboxes and the history store share it
        self.batch_cork = BatchCork(self.cork)  # publish() holds it: a storm of joins, one write per member per pass
        self.feeds = RoomFeeds(self.broker, self.cork)  # a busy room's member events, in batches
        self.wall_clock: Callable[[], float] = wall_clock or time.time
        self.sessions: dict[str, Session] = {}
        self.sessions_by_user: dict[str, dict[str, Session]] = {}
        self.handshaking: dict[str, int] = {}  # per user: accepted handshakes not yet connected
        self.draining = False  # shutting down soon: /readyz answers 503 (Signald.drain)
        # Set by the server once it shuts down, before its connections are cancelled: they close
        # with 1001, and departures are no longer announced (see disconnect).
        self.shutting_down = False
        self.counters = Counters()
        self.started_at = 0.0
        self.history: HistoryService | None = None
        self.authenticator: Authenticator = NoneAuthenticator()
        self.rooms = RoomRegistry()
        self.presence = PresenceTracker(
            self.rooms.peers_of_user, self.rooms.conns_in, away_after_s=config.presence.away_after_s
        )
        self.member_lists = MemberLists(self.rooms, self.presence)
        self.calls = CallRegistry(allow_concurrent_calls=config.calls.allow_concurrent_calls)
        self.metrics = Metrics()
        self.metrics_port: int | None = None
        self.call_log: CallLog | None = None
        self.heartbeats = Heartbeats(config.server.heartbeat_s, config.server.heartbeat_timeout_s)
        # The frame budget all connections of a user share (reconnecting refills nothing).
        self.user_rates = UserRateLimiter(*config.limits.user_rate())
        self.expiries = Expiries(self.wall_clock, self.expire_session)  # see watch(): connect and auth.refresh
        # The embedding program's on_connect/on_disconnect hooks (signald.app.facade wraps them).
        self.connect_hooks: list[Callable[[Session], None]] = []
        self.disconnect_hooks: list[Callable[[Session], None]] = []
        self.timers = Timers(self.presence, self.calls, self.heartbeats, apply_calls=self.apply_call_outcome,
                             publish=self.publish, away_after_s=config.presence.away_after_s)

    # ------------------------------------------------------------------ lifecycle

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Hub]:
        """Open what the hub needs (history store, timers) and close it on the way out."""
        history = self.config.history
        store = make_store(
            self.config.history_url(), synchronous=history.synchronous, inline=history.inline_commits,
            retention_max_age_s=history.retention_max_age_s, retention_max_count=history.retention_max_count,
            clock=self.wall_clock, completion_scope=self.cork,
        )
        self.started_at = trio.current_time()
        server = self.config.server
        where = f"server.db {server.db}" if history.url is None else "history.url"
        async with opened_store(store, where, own_message=not self.config.history_url().startswith("sqlite")):
            self.history = HistoryService(
                store, self.presence, self.rooms, self.send_to, page_max=self.config.limits.history_page_max,
                skip_guests=self.config.auth.mode == "none", request_timeout_s=history.request_timeout_s,
                forward=self.replica.history_event if self.replica is not None else None,
            )
            try:
                if server.metrics_port is not None:  # only once the store opened: a failed open leaks no thread
                    try:
                        self.metrics_port = self.metrics.serve(server.metrics_port, server.host, self.gauges)
                    except OSError as exc:
                        raise StartupError(f"server.metrics_port {server.host}:{server.metrics_port}: "
                                           f"{exc.strerror or exc}") from None
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.timers.run)
                    nursery.start_soon(self.timers.run_heartbeats)
                    nursery.start_soon(self.expiries.run)
                    nursery.start_soon(self.parking.run)
                    nursery.start_soon(self.batch_cork.run)
                    nursery.start_soon(self.feeds.run)
                    nursery.start_soon(self.history.run)
                    if self.config.calls.call_log:
                        self.call_log = CallLog(self.rooms, store, self.history.announce)
                        nursery.start_soon(self.call_log.run)
                    try:
                        yield self
                    finally:
                        nursery.cancel_scope.cancel()
            finally:
                self.metrics.close()
                await self.history.flush_last_seen_at_close()

    def gauges(self) -> Gauges:
        """The metrics' gauges now; the metrics ask for them on the Trio thread at each scrape."""
        return Gauges(
            connections=len(self.sessions), users=len(self.sessions_by_user), rooms=self.rooms.room_count,
            active_calls=len(self.calls), history_db_bytes=self.history.store.db_bytes() if self.history else 0,
        )

    def connect(self, session: Session) -> None:
        """A handshake succeeded: the session starts receiving events.

        Once the session is asked to close (slow consumer, expiry, revocation...) it leaves the
        hub right away, before its socket is torn down, so its rooms are not kept waiting.
        """
        session.on_close = self._closing  # given the session: no closure of it, no reference cycle
        log_opened(session)
        self.add_session(session)
        now = trio.current_time()
        self.publish(self.presence.connect(session.session_id, session.user_id, now))
        self.share(Connect(session.session_id, session.user_id))
        self.timers.activity(now)  # the one deadline a connect can bring forward: its user's automatic away
        for hook in self.connect_hooks:
            hook(session)

    def _closing(self, session: Session) -> None:
        """``session`` was asked to close (on the Trio thread): count it; it leaves the hub soon, not in its close."""
        self.metrics.closes.labels(str(session.close_code)).inc()
        trio.lowlevel.current_trio_token().run_sync_soon(self.disconnect, session)

    def disconnect(self, session: Session) -> None:
        """The connection ended: the session leaves every room, with the usual events (unless it left already)."""
        self.disconnect_all((session,))

    def disconnect_all(self, sessions: Iterable[Session]) -> None:
        """Connections that ended leave, audit lines written together (a stopping server's, in one pass)."""
        leaving = [session for session in sessions if not session.detached]  # the others left already
        if not leaving:
            return
        now, wall = trio.current_time(), self.wall_clock()
        for session in leaving:
            self._leave(session, now, wall)
        log_closed(leaving, wall)
        for session in leaving:
            for hook in self.disconnect_hooks:
                hook(session)

    def _leave(self, session: Session, now: float, wall: float) -> None:
        session.detached = True
        if session.outbox.coalesced:
            self.metrics.coalesced.inc(session.outbox.coalesced)
        conn = session.session_id
        if self.calls.holds(conn):  # most connections never were in a call: nothing to end, no timer to poke
            self.apply_call_outcome(self.calls.device_gone(conn, now))
        if log.isEnabledFor(logging.DEBUG):  # as room.leave logs it, one line per room
            for room in sorted(self.rooms.rooms_of(conn)):
                log_event(log, logging.DEBUG, "room left", room=room, user=session.user_id, session=conn,
                          why="disconnected")
        if self.shutting_down:  # every peer is being closed too: nobody to tell (N² frames), nothing made for them
            self.rooms.disconnect(conn, announce=False)
            self.presence.disconnect(conn, now, wall, announce=False)  # still records last seen
        else:
            gone = self.presence.disconnect(conn, now, wall)
            left = self.rooms.disconnect(conn)
            self.publish([*gone, *left])  # in this order, as they were made
        self.share(Disconnect(conn))  # the other nodes tell their own clients
        self.remove_session(session)

    def on_activity(self, session: Session) -> None:
        """An inbound message arrived from ``session`` (feeds automatic away and last seen)."""
        now = trio.current_time()
        sends = self.presence.activity(session.user_id, now, self.wall_clock())
        if sends:
            self.publish(sends)
        if self.replica is not None:
            self.replica.activity(session.user_id)
        self.timers.activity(now)

    # ------------------------------------------------------------------ timers (signald.app.timers)

    def poke_timers(self) -> None:
        """A deadline may have moved earlier: wake the timer task if it would now sleep too long."""
        self.timers.poke()

    def watch(self, conn: Monitored) -> None:
        """Keep a connection alive with heartbeats (see :mod:`signald.state.heartbeat`)."""
        self.heartbeats.add(conn, trio.current_time())

    def apply_call_outcome(self, outcome: CallOutcome, after_reply: list[Send] | None = None) -> None:
        """Deliver a call transition's events (after the ack when ``after_reply`` is given), update presence."""
        sends = list(outcome.sends)
        for user in sorted(outcome.busy_changed):
            sends.extend(self.presence.set_in_call(user, self.calls.is_busy(user)))
        if after_reply is not None:
            after_reply.extend(sends)
        else:
            self.publish(sends)
        if outcome.log and self.call_log is not None:
            self.call_log.record(outcome.log)
        self.poke_timers()

    def active_calls(self) -> int:
        return len(self.calls)

    # ------------------------------------------------------------------ rooms

    def member_list(self, room: str) -> list[Member]:
        """The ``members`` of a ``room.join`` ack: one entry per user, with status and devices."""
        return self.member_lists.of(room)

    def expire_session(self, session: Session) -> None:
        """The session's token expired: ``session.expired`` then close 4001."""
        expired_at = iso_utc(session.expires_at)
        session.send(Frame(SessionExpiredEvent(data=ExpiredData(expired_at=expired_at))))
        session.close(CLOSE_SESSION_EXPIRED, "session expired")

    # ------------------------------------------------------------------ sessions

    def add_session(self, session: Session) -> None:
        self.sessions[session.session_id] = session
        self.sessions_by_user.setdefault(session.user_id, {})[session.session_id] = session
        self.broker.attach(session.session_id, session.outbox)

    def remove_session(self, session: Session) -> None:
        self.broker.detach(session.session_id)
        self.sessions.pop(session.session_id, None)
        devices = self.sessions_by_user.get(session.user_id)
        if devices is not None:
            devices.pop(session.session_id, None)
            if not devices:
                del self.sessions_by_user[session.user_id]

    def devices_of(self, user_id: str) -> list[str]:
        """Session ids of the user's connected devices, oldest first (with several nodes: this node's
        first, then the others' in id order)."""
        local = list(self.sessions_by_user.get(user_id, ()))
        if self.replica is not None:
            local += sorted(self.presence.devices_of(user_id).difference(local))
        return local

    def connection_count(self, user_id: str) -> int:
        """The user's connections: on every node when there are several (presence knows them all)."""
        if self.replica is not None:
            return len(self.presence.devices_of(user_id))
        return len(self.sessions_by_user.get(user_id, ()))

    def share(self, op: Op) -> None:
        """Tell the other nodes of a state change this node just applied (nothing with one node)."""
        if self.replica is not None:
            self.replica.share(op)

    # ------------------------------------------------------------------ delivery

    def send_to(self, session_ids: Iterable[str], event: Outbound | Frame) -> int:
        """Encode ``event`` once and queue it for every listed session."""
        frame = event if isinstance(event, Frame) else Frame(event)
        return self._count(frame, self.broker.deliver(session_ids, frame))

    def _count(self, frame: Frame, queued: int) -> int:
        self.counters.messages_out += queued
        if queued:
            self.metrics.messages_out_by[frame.kind].inc(queued)
        return queued

    def send_to_room(self, room: str, event: Outbound | Frame, exclude: str | None = None) -> int:
        """Encode ``event`` once and queue it for every connection in ``room`` but ``exclude``, on every node.

        Returns how many connections of this node got it (the others count their own).
        """
        frame = event if isinstance(event, Frame) else Frame(event)
        conns = self.rooms.conns_in(room)
        queued = self.send_to(conns - {exclude} if exclude is not None else conns, frame)
        if self.replica is not None:
            self.replica.room_event(room, frame, exclude)
        return queued

    async def published(self, within: float = float("inf")) -> None:
        """With several nodes: wait (``within`` s at most) until what this node announced so far is on
        its way to the others (so a change is acked only once a node's death cannot lose its event)."""
        if self.replica is not None:
            sent = trio.Event()
            self.replica.after_sent(sent.set)
            with trio.move_on_after(within):
                await sent.wait()

    def publish(self, sends: Iterable[Send]) -> None:
        """Deliver the events a state module returned, in order.

        Direct writes wait for the end of the scheduler pass (:class:`BatchCork`): the joins,
        leaves and presence changes of one pass reach each connection in one write.
        """
        if sends:
            self.batch_cork.hold()
        for send in sends:
            if send.room is None:
                self.send_to(send.conns, send.event)
            else:  # everyone in the room: through its feed (signald.delivery.feeds)
                frame = Frame(send.event)
                self._count(frame, self.feeds.publish(send.room, send.conns, frame))

    def reply(self, session: Session, message: Outbound) -> None:
        """Queue a reply (ack, error, pong) for the requesting session, in request order."""
        if session.replies.waiting is None:
            self.reply_now(session, message)
        else:
            session.replies.in_turn(partial(self.reply_now, session, message))

    def reply_now(self, session: Session, message: Outbound) -> None:
        """Queue a reply whose turn it is (see :class:`signald.state.replies.ReplyOrder`)."""
        frame = Frame(message)
        if session.send(frame):
            self.counters.messages_out += 1
            self.metrics.messages_out_by[frame.kind].inc()
            if isinstance(message, Error):
                self.metrics.errors_by[message.data.code].inc()

    # ------------------------------------------------------------------ embedding API

    def publish_to_user(self, user_id: str, event_type: str, data: Any) -> int:
        """Send an ``app.*`` event to every connected device of ``user_id``; returns how many got it."""
        frame = Frame(encode_app_event(event_type, data))
        if self.replica is not None:
            self.replica.user_event(user_id, frame)
        return self.send_to(self.devices_of(user_id), frame)

    def publish_to_room(self, room: str, event_type: str, data: Any) -> int:
        """Send an ``app.*`` event to every connection in ``room``; returns how many got it."""
        return self.send_to_room(room, Frame(encode_app_event(event_type, data)))

    def revoke_user(self, user_id: str, reason: str) -> int:
        """End every session of ``user_id``: ``session.revoked`` then close 4003."""
        sessions = list(self.sessions_by_user.get(user_id, {}).values())
        frame = Frame(SessionRevokedEvent(data=RevokedData(reason=reason)))  # encoded once for all devices
        for session in sessions:
            session.send(frame)
            session.close(CLOSE_SESSION_REVOKED, "session revoked")
        log_event(audit, logging.INFO, "sessions revoked", user=user_id, reason=reason, sessions=len(sessions))
        self.share(Revoke(user_id, reason))
        return len(sessions)
