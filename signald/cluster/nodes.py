"""The other nodes as this node knows them: heartbeats, a node's death, the state snapshot.

Every node writes its wall-clock time into the ``nodes`` sorted set every ``node_ttl_s / 3``.
A node whose time is older than ``node_ttl_s`` is dead (looked at with each heartbeat, and in
between at the moment a node's last beat comes of age: :meth:`NodeTable.watch`): each survivor
takes its devices out of its own copy (``device.offline``, ``member.left``, ``presence.update`` to
its own connections), and the records it left in Redis are removed (by whichever survivor gets
there first; doing it twice is harmless). A node that starts, or that lost the broker for a
while, loads the live nodes' records (:meth:`NodeTable.load`) and applies the difference to its
copy as ops.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from signald.app.hub import Hub
from signald.app.replica import Connect, Disconnect, Join, Leave, Op, SetStatus
from signald.cluster.wire import COUNTERS_DECODER, RECORD_DECODER, STATE_ENCODER, Names

log = logging.getLogger("signald.cluster")

STATUSES = frozenset({"online", "away", "busy", "offline"})


class NodeTable:
    """Which node each remote device lives on, and which nodes are alive."""

    def __init__(self, hub: Hub, names: Names, node_id: str, ttl: float, apply: Callable[[str, Op], None]) -> None:
        self.hub, self.names, self.node_id, self.ttl = hub, names, node_id, ttl
        self._apply = apply  # apply another node's op here (the replica keeps ``remote`` up to date)
        self.remote: dict[str, str] = {}  # every other node's connected device -> its node
        self._alive: dict[str, float] = {}  # node -> when it was last known to beat (wall clock)
        self._beaten: float | None = None  # when this node last wrote its own heartbeat
        # the live other nodes' (messages_in, messages_out) as of their last heartbeat: system.stats
        self.counters: dict[str, tuple[int, int]] = {}
        self.client: Any = None  # the coredis client, once connected

    async def beat(self) -> bool:
        """Say this node lives; forget the nodes that stopped saying so (and clean up after them).

        True when this node had been taken out of the set (the others took it for dead while it
        stalled, or the broker restarted empty): it must announce its devices again.
        """
        now = time.time()
        client, names = self.client, self.names
        missed = self._beaten is not None and now - self._beaten > self.ttl / 2
        forgotten = self._beaten is not None and await client.zscore(names.nodes, self.node_id) is None
        await client.zadd(names.nodes, {self.node_id: now})
        counted = STATE_ENCODER.encode((self.hub.counters.messages_in, self.hub.counters.messages_out))
        await client.hset(names.stats, {self.node_id: counted})
        if missed:
            self.grace()  # this node could not beat either (stalled, or the broker was away): no verdicts yet
        self._beaten = now
        scores = await self._scores()
        live = {node for node, beat in scores.items() if beat >= now - self.ttl}
        known = self._judge(scores, now)
        for node in set(self._alive) - known - set(scores):
            del self._alive[node]
        others = {_text(node): raw for node, raw in (await client.hgetall(names.stats)).items()}
        self.counters = {node: COUNTERS_DECODER.decode(raw) for node, raw in others.items()
                         if node in live and node != self.node_id}
        dead = sorted(set(scores) - live - {self.node_id})
        if dead:
            records = {conn: RECORD_DECODER.decode(raw) for conn, raw in (await client.hgetall(names.conns)).items()}
            gone = [conn for conn, record in records.items() if record.node in dead]
            if gone:
                await client.hdel(names.conns, gone)
                # their users' statuses too, unless a device elsewhere keeps it (one that connects
                # meanwhile writes it again: a user's first device anywhere does)
                users = {records[conn].user for conn in gone} - {r.user for r in records.values() if r.node not in dead}
                if users:
                    await client.hdel(names.status, sorted(users))
            await client.zrem(names.nodes, dead)
            await client.hdel(names.stats, dead)
        return forgotten or missed

    def verdict_in(self) -> float | None:
        """Seconds until the first other node with devices here has not beaten for ``node_ttl_s``
        (when to look again: :meth:`watch`), or None (none, or this node is in no state to judge)."""
        now = time.time()
        if self._beaten is None or now - self._beaten > self.ttl / 2:  # stalled or off the broker: beat first
            return None
        beats = [self._alive[node] for node in set(self.remote.values()) - {self.node_id} if node in self._alive]
        return max(0.0, min(beats) + self.ttl - now) if beats else None

    async def watch(self) -> None:
        """Between two heartbeats, at a node's :meth:`verdict_in`: forget it unless it beat meanwhile.
        So a node that dies goes within ``node_ttl_s`` of its last beat, not up to a third later."""
        if self.verdict_in() is not None:
            self._judge(await self._scores(), time.time())

    def _judge(self, scores: dict[str, float], now: float) -> set[str]:
        """Take in the beats read; forget the nodes with devices here that stopped; returns those nodes."""
        for node, beat in scores.items():
            self._alive[node] = max(self._alive.get(node, beat), beat)
        known = set(self.remote.values()) - {self.node_id}
        for node in sorted(known):  # missing from the set (removed as dead) or beating too long ago
            if now - self._alive.setdefault(node, now) > self.ttl:
                self.forget(node)
        return known

    def counters_elsewhere(self) -> tuple[int, int]:
        """The live other nodes' ``(messages_in, messages_out)`` together, as of their last heartbeat."""
        counted = self.counters.values()
        return sum(c[0] for c in counted), sum(c[1] for c in counted)

    def grace(self) -> None:
        """Back on the broker after an outage: the other nodes get ``node_ttl_s`` to beat again
        (the broker may have restarted empty) before any of them counts as dead."""
        now = time.time()
        for node in set(self.remote.values()):
            self._alive[node] = now

    def forget(self, node: str) -> None:
        """``node`` stopped beating: its devices go offline here, with the usual events."""
        conns = sorted(conn for conn, owner in self.remote.items() if owner == node)
        log.warning("cluster: node %s stopped; %d of its devices go offline", node, len(conns))
        for conn in conns:
            self._apply(node, Disconnect(conn))

    async def load(self, kicked: frozenset[tuple[str, str]] = frozenset()) -> None:
        """Take in every live node's devices, rooms and chosen statuses; drop what is gone.
        ``kicked``: (room, user) of the kicks this node is about to tell again (after an outage
        that lost them): the user's node has not taken them out yet, so their records still say in."""
        now = time.time()
        client, names, hub = self.client, self.names, self.hub
        live = {node for node, beat in (await self._scores()).items() if beat >= now - self.ttl} - {self.node_id}
        records = {_text(conn): RECORD_DECODER.decode(raw) for conn, raw in (await client.hgetall(names.conns)).items()}
        statuses = {_text(user): _text(status) for user, status in (await client.hgetall(names.status)).items()}
        stale = [conn for conn, record in records.items() if record.node == self.node_id and conn not in hub.sessions]
        if stale:  # left by an earlier run with this node id
            await client.hdel(names.conns, stale)
        wanted = {conn: record for conn, record in records.items() if record.node in live}
        for conn in sorted(set(self.remote) - set(wanted)):
            self._apply(self.remote[conn], Disconnect(conn))
        for conn, record in sorted(wanted.items()):
            if conn not in self.remote:
                self._apply(record.node, Connect(conn, record.user))
            for room in sorted(hub.rooms.rooms_of(conn) - set(record.rooms)):
                self._apply(record.node, Leave(conn, room))
            for room in record.rooms:
                if (room, record.user) not in kicked:
                    self._apply(record.node, Join(conn, record.user, room))
        for user, status in sorted(statuses.items()):
            if status in STATUSES and user not in hub.sessions_by_user:
                self._apply("", SetStatus("", user, status))  # type: ignore[arg-type]

    async def leftovers(self) -> tuple[list[Op], list[str]]:
        """What this node's records in Redis still say that is no longer so, as the ops that tell
        the others: connections an earlier run under this node id had when it died (a node started
        again within ``node_ttl_s`` never stopped beating, so nobody took those devices offline),
        and connections closed or rooms left while the broker was away (their writes were lost);
        and the users of those connections whose chosen status goes from ``status`` with them (no
        other record, of any node, keeps them connected)."""
        hub, ops = self.hub, list[Op]()
        records = sorted((_text(conn), RECORD_DECODER.decode(raw))
                         for conn, raw in (await self.client.hgetall(self.names.conns)).items())
        gone: set[str] = set()
        for conn, record in records:
            if record.node != self.node_id:
                continue
            if conn not in hub.sessions:
                ops.append(Disconnect(conn, record.user))
                gone.add(conn)
            else:
                ops.extend(Leave(conn, room) for room in sorted(set(record.rooms) - hub.rooms.rooms_of(conn)))
        kept = {record.user for conn, record in records if conn not in gone} | set(hub.sessions_by_user)
        return ops, sorted({record.user for conn, record in records if conn in gone} - kept)

    async def _scores(self) -> dict[str, float]:
        found = await self.client.zrange(self.names.nodes, 0, -1, withscores=True)
        return {_text(member): float(score) for member, score in found}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
