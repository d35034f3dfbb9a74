"""The :class:`~signald.app.replica.Replica` on Redis.

Tasks, all in :meth:`RedisReplica.running`:

- the **writer** (:mod:`signald.cluster.writer`) sends what :meth:`share`, :meth:`room_event` and
  :meth:`user_event` queued, in order, many at a time in one pipeline (records first, then the
  ``PUBLISH`` that announces them), and the **subscriber** (:mod:`signald.cluster.subscriber`)
  hands each pub/sub message to :meth:`RedisReplica._receive`, each over a connection of its own
  (:mod:`signald.cluster.resp`: coredis cost these hot paths several times the CPU);
- the **heartbeat** writes this node's time into ``nodes`` every ``node_ttl_s / 3`` and takes the
  nodes that stopped beating for ``node_ttl_s`` out of this node's copy (:mod:`signald.cluster.nodes`),
  looking again in between when a node's last beat comes of age before the next one;
- the **sweeper** stops hearing rooms and users this node no longer has a connection in.

Redis restarted or unreachable, or a failover (Sentinel, Redis Cluster): the subscriber reconnects
with backoff and subscribes again (also when a write failed: the records need repair), coredis
reconnects by itself, the writer opens a new connection for its next pipeline; meanwhile writes fail
(``/readyz`` says 503 with the reason), local delivery goes on, and what was published in between is
lost. Once the state channel is heard again, the node writes its records back, announces its devices
again and reloads everyone's (:mod:`signald.cluster.recovery`); no node is declared dead for the
outage itself (:meth:`NodeTable.grace`). Clients get the chat changes lost meanwhile by exact resume.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Final

import msgspec
import trio

from signald.app.hub import Hub
from signald.app.replica import Budget, Connect, Disconnect, Join, Kick, Leave, Op, Replica, Resynced, SetStatus
from signald.cluster.activity import ActivityShare
from signald.cluster.apply import apply_op, budget_share
from signald.cluster.calls import RedisCallDecisions
from signald.cluster.catchup import CatchUp
from signald.cluster.channels import Subscriptions
from signald.cluster.connect import Broker
from signald.cluster.gaps import fill_gap, fill_now
from signald.cluster.kept import KeptOps
from signald.cluster.nodes import NodeTable
from signald.cluster.order import RoomOrder
from signald.cluster.records import NodeRecords
from signald.cluster.recovery import Resync
from signald.cluster.resp import LinkError
from signald.cluster.stamps import StatusStamps
from signald.cluster.subscriber import Subscriber
from signald.cluster.wire import (
    ROOM_DECODER,
    STATE_DECODER,
    STATE_ENCODER,
    USER_DECODER,
    Echo,
    Names,
    RoomEnvelope,
    StateEnvelope,
    UserEnvelope,
    decode_event,
)
from signald.cluster.writer import Writer
from signald.config import ClusterConfig
from signald.delivery.frames import Frame
from signald.errors import StartupError

log = logging.getLogger("signald.cluster")

SWEEP_S: Final = 2.0
VERDICT_SLACK_S: Final = 0.01  # a node is dead once its last beat is older than node_ttl_s: look just after
CONNECT_S: Final = 5.0  # a broker that does not answer at start within this is a startup error


class RedisReplica(Replica):
    """This node's link to the others through one Redis (see the module docstring)."""

    calls: RedisCallDecisions

    def __init__(self, hub: Hub, config: ClusterConfig) -> None:
        assert config.broker_url
        # coredis says every reconnect attempt at info; signald says when the broker fails and recovers
        logging.getLogger("coredis").setLevel(max(logging.WARNING, logging.getLogger("coredis").level))
        self.hub = hub
        self.node_id = config.node_id or f"n-{secrets.token_hex(4)}"
        self.names = Names(config.broker_url)
        self.records = NodeRecords(hub, self.names, self.node_id)  # this node's records in Redis
        self.stamps = StatusStamps(self.node_id)  # the same last status on every node
        self.kept = KeptOps(hub)  # the call transitions and kicks told again after an outage
        self.url = config.broker_url
        self._ttl = config.node_ttl_s
        self._applying = False  # applying another node's op: nothing is shared back
        self.nodes = NodeTable(hub, self.names, self.node_id, config.node_ttl_s, self._apply)
        self.order, self.catch_up = RoomOrder(self._deliver_change), CatchUp()
        self.channels = Subscriptions(hub, self.names, dropped=self.order.forget)
        self._problem: str | None = None  # why the broker cannot be used now (/readyz)
        self._activity = ActivityShare(self.share, hub.config.presence.away_after_s)
        hub.user_rates.share_of = partial(budget_share, hub)  # the user's frame budget, split over nodes
        self.broker = Broker(self.url)  # one Redis or Sentinel's primary (signald.cluster.connect)
        self.nodes.client = self._client = self.broker.client
        publish = "SPUBLISH" if self.broker.sharded else "PUBLISH"  # a Redis Cluster: on one shard
        self.writer = Writer(self.broker.open_link, up=self._up, down=self._write_failed, publish=publish,
                             redirect=self.broker.open_link_at if self.broker.sharded else None)
        self.resync = Resync(  # after a broker outage (signald.cluster.recovery)
            hub, self.records, self.writer, self.nodes, self.channels, self.order, self.catch_up, beat=self._beat,
            down=self._down, spawn=self._spawn, moved_only=lambda: self.subscriber.moved_only(),
            fill=partial(fill_now, hub, self.order, gap_left=self._gap_left),
            again=lambda: self.kept.again(trio.current_time()), stamp=self.stamps.last)
        self.subscriber = self.channels.subscriber = Subscriber(
            self.broker.open_link, on_message=self._receive, on_subscribed=self.resync.subscribed, down=self._down,
            sharded=self.broker.sharded, lost=self.writer.renew)  # the writer's link likely went with it
        self.calls = RedisCallDecisions(hub, self.names, self._client, grace_s=2 * self._ttl, down=self._down)
        hub.timers.decide_ring_timeouts = self.calls.ring_timeouts  # the calls this node offered: decided here
        self._nursery: trio.Nursery | None = None
        self._stop = trio.Event()  # running() is done: the broker connections close
        self._connect_error = f"no answer within {CONNECT_S:g} s"
        self._heard = 0.0  # when this node last heard its own heartbeat (trio time)
        self.echoes_heard = 0  # its own echoes heard back: one that follows a write proves the write was heard

    # ------------------------------------------------------------------ the Replica seam

    def share(self, op: Op) -> None:
        if self._applying:
            return
        if isinstance(op, SetStatus):
            op = msgspec.structs.replace(op, stamp=self.stamps.stamp(op.user))
        commands = self.records.changed_by(op)  # written before the op is published
        self.kept.shared(op, trio.current_time())
        if isinstance(op, Join):
            self.kept.joined(op)
        elif isinstance(op, Connect):
            self._later(self.names.user(op.user))
        elif isinstance(op, Disconnect) and (session := self.hub.sessions.get(op.conn)) is not None:
            user, now = session.user_id, trio.current_time()
            # the others bound the user's frame budget by this node's (reconnecting refills nothing)
            op = Disconnect(op.conn, user, self.hub.user_rates.level(user, now))
            if len(self.hub.sessions_by_user.get(user, ())) <= 1:  # its last one here
                self._activity.forget(user, now)
            if not self.hub.presence.devices_of(user) - {op.conn}:
                self.stamps.forget(user)
            self._later(self.names.user(user))
        self.writer.put([*commands, self.records.published(op)])

    def activity(self, user: str) -> None:
        self._activity.activity(user, trio.current_time())

    def after_sent(self, callback: Callable[[], None]) -> None:
        self.writer.after_sent(callback)

    def room_event(self, room: str, frame: Frame, exclude: str | None) -> None:
        envelope = RoomEnvelope(self.node_id, exclude, False, frame.text.encode())
        self.writer.put([("publish", self.names.room(room), STATE_ENCODER.encode(envelope))])

    def history_event(self, room: str, frame: Frame, exclude: str | None) -> None:
        envelope = RoomEnvelope(self.node_id, exclude, True, frame.text.encode())
        self.writer.put([("publish", self.names.room(room), STATE_ENCODER.encode(envelope))])
        self._in_order(room, frame, exclude)

    def _in_order(self, room: str, frame: Frame, exclude: str | None) -> None:
        self._gap_left(room, self.order.offer(room, frame, exclude))

    def _gap_left(self, room: str, gap: int | None) -> None:
        if gap is not None and self._nursery is not None:  # filled from the store if it stays open
            self._nursery.start_soon(fill_gap, self.hub, self.order, room, gap)

    def _deliver_change(self, room: str, frame: Frame, exclude: str | None) -> None:
        if self.hub.history is not None:
            self.hub.history.deliver_now(room, frame, exclude)
        self.catch_up.delivered(room, frame)

    def user_event(self, user: str, frame: Frame) -> None:
        envelope = UserEnvelope(self.node_id, frame.text.encode())
        self.writer.put([("publish", self.names.user(user), STATE_ENCODER.encode(envelope))])

    async def caught_up(self) -> None:
        await self.subscriber.caught_up(1.0)  # a refusal or join waits at most this for the pub/sub

    async def enter_room(self, room: str) -> None:
        heard = self.names.room(room) in self.channels.heard
        try:
            await self.channels.enter_room(room)
        except Exception as exc:  # the broker is down: join anyway, the sweeper subscribes later
            self._down(exc)
            return
        if heard:  # a subscription confirmed now would have come after what was pushed before it
            await self.caught_up()

    async def read_at(self, room: str, rev: int) -> None:
        hub = self.hub
        alone = not any(conn in hub.sessions for conn in hub.rooms.conns_in(room))
        self._gap_left(room, self.order.start(room, rev, alone=alone))  # (changes dropped since a lost gap)
        await self.catch_up.until(room, rev, self.order.last(room))

    def counters_elsewhere(self) -> tuple[int, int]:
        return self.nodes.counters_elsewhere()

    def problem(self) -> str | None:
        if self._problem is not None:
            return self._problem
        deaf = trio.current_time() - self._heard
        if deaf > max(self._ttl, 1.0):
            return f"the broker (Redis) has not echoed this node's heartbeat for {deaf:.1f} s (pub/sub reconnecting)"
        return None

    # ------------------------------------------------------------------ lifecycle

    @asynccontextmanager
    async def running(self) -> AsyncIterator[RedisReplica]:
        """Connect, load the cluster's state, run the tasks; on the way out leave the cluster."""
        async with trio.open_nursery() as holder:
            try:
                await holder.start(self._hold_connections)
            except RuntimeError:  # it ended without connecting
                raise StartupError(f"cluster.broker_url {self.broker.shown}: {self._connect_error}") from None
            try:
                try:
                    with trio.fail_after(CONNECT_S):
                        await self._client.ping()
                except Exception as exc:
                    raise StartupError(f"cluster.broker_url {self.broker.shown}: {exc or type(exc).__name__}") from None
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    try:
                        with trio.fail_after(CONNECT_S):
                            await nursery.start(self.subscriber.run)
                            await self.subscriber.subscribe(self.names.state)
                    except (LinkError, trio.TooSlowError) as exc:
                        raise StartupError(f"cluster.broker_url {self.broker.shown}: {exc or 'no answer'}") from None
                    await self._beat()
                    gone, statuses = await self.nodes.leftovers()
                    if gone:  # an earlier run under this node id died
                        log.warning("cluster: an earlier run of node %s left %d devices; they go offline"
                                    " (two running nodes must never share a node_id)", self.node_id, len(gone))
                        self.writer.put(self.records.shared(gone, statuses))
                    await self.nodes.load()
                    self._problem = None
                    self._heard = trio.current_time()
                    self.subscriber.release()  # what was heard while the snapshot loaded, in order
                    for task in (self.writer.run, self._heartbeat, self._sweep, self.calls.run, self._activity.run):
                        nursery.start_soon(task)
                    try:
                        yield self
                    finally:
                        nursery.cancel_scope.cancel()  # the writer still sends the batch in flight
                        with trio.move_on_after(2) as scope:
                            scope.shield = True
                            await self._leave_cluster()  # after that batch: they share one link
                            await self.writer.close()
                        self.writer.abandon()  # a broker silent for 2 s: the others notice by the TTL
            finally:
                self._stop.set()

    async def _hold_connections(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Own coredis's connections (its pool runs tasks of its own) in a scope that a shutdown
        does not cancel: the node can still say goodbye before the pool closes."""
        try:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + CONNECT_S) as scope:
                async with self.broker.connected():
                    scope.deadline = math.inf
                    task_status.started()
                    await self._stop.wait()
                    scope.deadline = trio.current_time() + 3  # a broker that is down cannot hold us up
        except Exception as exc:  # closing connections to a broker that is gone: nothing left to do
            self._connect_error = str(exc) or type(exc).__name__
            log.debug("cluster: closing the broker connections: %r", exc)

    async def _leave_cluster(self) -> None:
        """A clean stop: flush what is queued, then take this node's records out at once."""
        try:
            await self.writer.execute(self.writer.drain() + self.records.removed())
        except Exception as exc:  # the others notice within node_ttl_s instead
            log.warning("cluster: could not leave the cluster cleanly: %s", exc or type(exc).__name__)

    def _receive(self, channel: str, data: bytes) -> None:
        kind, name = self.names.parse(channel)
        hub = self.hub
        if kind == "state":
            envelope = STATE_DECODER.decode(data)
            if isinstance(envelope.op, Echo):
                if envelope.origin == self.node_id:
                    self._heard, self.echoes_heard = trio.current_time(), self.echoes_heard + 1
            elif envelope.origin != self.node_id:
                self._apply(envelope.origin, envelope.op)
        elif kind == "room":
            room = ROOM_DECODER.decode(data)
            if room.origin == self.node_id:
                return
            frame = Frame.encoded(decode_event(room.text), room.text)
            if room.history:
                self._in_order(name, frame, room.exclude)
            else:
                conns = hub.rooms.conns_in(name)
                hub.send_to(conns - {room.exclude} if room.exclude is not None else conns, frame)
        elif kind == "user":
            user = USER_DECODER.decode(data)
            if user.origin != self.node_id:
                hub.send_to(hub.devices_of(name), Frame.encoded(decode_event(user.text), user.text))

    def _apply(self, origin: str, op: Op) -> None:
        if isinstance(op, Resynced):  # its pub/sub may have missed what this node shared: tell it again
            self.writer.put(self.records.shared(self.kept.again(trio.current_time())))
            return
        if isinstance(op, Join) and not self.hub.rooms.is_member(op.conn, op.room):
            self.kept.joined(op)
        if isinstance(op, Connect | Join):
            self.nodes.remote[op.conn] = origin
        elif isinstance(op, SetStatus) and not self.stamps.later(op.user, op.stamp, op.by or origin):
            if self.stamps.mine(op.user):  # the older one may have reached Redis after this node's, or
                chosen = self.hub.presence.chosen_status(op.user)  # be a stale one announced again
                self.writer.put(self.records.shared([SetStatus("", op.user, chosen, *self.stamps.last(op.user))]))
            return  # crossed a later one: every node keeps that
        # a kick takes out the devices of the user this node knows; its own it says it took out, for
        # the origin may not have heard yet that one of them joined (it would keep it in the room)
        kicked = self.hub.rooms.devices_of(op.user, op.room) & self.hub.sessions.keys() if isinstance(op, Kick) else ()
        # a dead node's devices go as Disconnect(conn), without their user: read it before it is gone
        gone = (op.user or self.hub.presence.user_of(op.conn)) if isinstance(op, Disconnect) else None
        self._applying = True
        try:
            apply_op(self.hub, op)
        finally:
            self._applying = False
        if isinstance(op, Connect):
            level = self.hub.user_rates.level(op.user, trio.current_time())
            if level is not None:  # the user spent here: the new connection's node must not start full
                self.share(Budget(op.user, level))
        elif isinstance(op, Disconnect):
            self.nodes.remote.pop(op.conn, None)
            if gone and not self.hub.presence.devices_of(gone):
                self.stamps.forget(gone)
        elif isinstance(op, Kick) and kicked:
            self.writer.put(self.records.shared([Leave(conn, op.room) for conn in sorted(kicked)]))

    async def _beat(self) -> None:
        if await self.nodes.beat() and self._nursery is not None:
            self.resync.taken_out()
        self._up()
        echo = STATE_ENCODER.encode(StateEnvelope(self.node_id, Echo()))
        self.writer.put([("publish", self.names.state, echo)])

    async def _heartbeat(self) -> None:
        """A beat every ``node_ttl_s / 3``, and in between a look at a node due for a verdict."""
        next_beat, failed = trio.current_time() + self._ttl / 3, False
        while True:
            due = None if failed else self.nodes.verdict_in()  # a look that failed: wait for the beat
            look = None if due is None else trio.current_time() + due + VERDICT_SLACK_S
            await trio.sleep_until(look if look is not None and look < next_beat else next_beat)
            try:
                if look is not None and look < next_beat:
                    await self.nodes.watch()
                else:
                    next_beat, failed = trio.current_time() + self._ttl / 3, False
                    await self._beat()
            except Exception as exc:
                failed = True
                self._down(exc)

    async def _sweep(self) -> None:
        while True:
            await trio.sleep(SWEEP_S)
            try:
                await self.channels.sweep()
            except Exception as exc:
                self._down(exc)

    # ------------------------------------------------------------------ helpers

    def _spawn(self, task: Callable[[], Awaitable[None]]) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(task)

    def _later(self, channel: str) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._sync_quietly, channel)

    async def _sync_quietly(self, channel: str) -> None:
        try:
            await self.channels.sync(channel)
        except Exception as exc:
            self._down(exc)

    def _down(self, exc: BaseException) -> None:
        if self._problem is None:
            log.warning("cluster: the broker (Redis) failed: %s", exc or type(exc).__name__)
        self._problem = f"the broker (Redis) is unreachable: {exc or type(exc).__name__}"

    def _write_failed(self, exc: BaseException) -> None:
        """Writes were lost (``READONLY``/``MOVED`` after a failover...): the pub/sub reconnects
        too, to the primary of the moment, and its re-subscription runs :meth:`Resync.run`."""
        self._down(exc)
        self.subscriber.drop(exc)

    def _up(self) -> None:
        if self._problem is not None:
            log.info("cluster: the broker (Redis) answers again")
        self._problem = None
