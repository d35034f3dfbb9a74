"""The coredis client of ``cluster.broker_url`` (forms in :mod:`signald.state.brokerurl`).

One Redis: ``coredis.Redis.from_url``. Redis Sentinel: a ``coredis.Sentinel`` over the listed
sentinels and its client for the service's primary, whose connection pool asks the sentinels
where the primary is each time it opens a connection (and drops its connections when the answer
changes). The writer's and the pub/sub's own connections (:meth:`Broker.open_link`) ask them the
same way each time they open. After a failover every new connection goes to the promoted replica;
one that reaches a demoted primary is refused (``ROLE`` is checked), and the pub/sub retries that
like a lost connection. What the replica does then is its usual recovery after a broker outage
(:meth:`signald.cluster.recovery.Resync.run`).

Redis Cluster: every key and channel of signald carries one hash tag (:class:`~signald.cluster.wire.Names`),
so one shard holds them all. The coredis client is a ``coredis.RedisCluster`` over the seed nodes
(its commands all go to that shard; it follows a failover by itself). The writer's and the
pub/sub's own connections go to the primary that owns the slot: each time one opens, the seeds
(then the nodes they named before) are asked, one after the other, for the slot (``CLUSTER
KEYSLOT``) and its owner (``CLUSTER SLOTS``), as Sentinel's are asked for the primary. Pub/sub is
sharded there (``SSUBSCRIBE``/``SPUBLISH``): what one node publishes stays on the shard, in order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Final

import coredis
import trio
from coredis.connection import TCPLocation
from coredis.exceptions import PrimaryNotFoundError, RedisError

from signald.cluster.resp import Link, LinkError, endpoint_of, open_link, pack
from signald.cluster.wire import Names
from signald.state.brokerurl import CLUSTER_FORM, BrokerURL, parse_broker_url

__all__ = ["Broker", "UnsupportedBroker"]

SENTINEL_TIMEOUT_S: Final = 2.0  # one sentinel that does not answer: ask the next
SEED_TIMEOUT_S: Final = 2.0  # one seed node that does not answer: ask the next


class UnsupportedBroker(Exception):
    """The URL reaches a Redis signald cannot use (a cluster node)."""


async def _cluster_enabled(client: coredis.Redis[bytes] | coredis.RedisCluster[bytes]) -> bool:
    """Whether ``client`` (one Redis or Sentinel's primary) talks to a Redis Cluster node, which
    needs ``redis+cluster://`` (``MOVED`` replies otherwise, and no failover); a server that does
    not answer is left to the start's own check (``PING`` with a deadline)."""
    try:
        info = await client.info("cluster")
    except Exception:
        return False
    return str(info.get("cluster_enabled", 0)) == "1"


class Broker:
    """The client for one ``broker_url``: :attr:`client` (coredis) for commands, :meth:`open_link`
    for the writer's and the pub/sub's own connections, and :meth:`connected` to enter (and, at the
    end, close) what the client holds."""

    def __init__(self, url: str) -> None:
        self.url: BrokerURL = parse_broker_url(url)
        self.shown = self.url.shown
        self._sentinel: coredis.Sentinel[bytes] | None = None
        self._endpoint = endpoint_of(self.url)
        self.sharded = self.url.kind == "cluster"
        """Sharded pub/sub (``SSUBSCRIBE``/``SPUBLISH``): on a Redis Cluster."""
        self._seeds = list(self.url.hosts)  # cluster: the seed nodes, then the nodes they named
        self._tagged = Names(url).state  # cluster: a key in signald's slot
        self.client: coredis.Redis[bytes] | coredis.RedisCluster[bytes]
        if self.url.kind == "cluster":
            self.client = coredis.RedisCluster(
                startup_nodes=[TCPLocation(host, port) for host, port in self.url.hosts], decode_responses=False,
                username=self.url.username, password=self.url.password,
                connect_timeout=SEED_TIMEOUT_S, stream_timeout=SEED_TIMEOUT_S * 5)
        elif self.url.kind == "sentinel":
            sentinel_kwargs: dict[str, Any] = {"connect_timeout": SENTINEL_TIMEOUT_S,
                                               "stream_timeout": SENTINEL_TIMEOUT_S}
            if self.url.sentinel_password is not None:
                sentinel_kwargs["password"] = self.url.sentinel_password
            self._sentinel = coredis.Sentinel(
                [TCPLocation(host, port) for host, port in self.url.hosts],
                sentinel_kwargs=sentinel_kwargs, decode_responses=False,
                db=self.url.db, username=self.url.username, password=self.url.password)
            self.client = self._sentinel.primary_for(self.url.service)
        else:
            self.client = coredis.Redis.from_url(self.url.url, decode_responses=False)

    async def open_link(self) -> Link:
        """A connection of signald's own (:mod:`signald.cluster.resp`) to the same Redis: the
        writer's and the pub/sub's. Under Sentinel it goes to the primary the sentinels name now,
        and one that is not a primary (yet) is refused, as coredis's pool refuses it. On a Redis
        Cluster it goes to the primary that owns signald's slot now."""
        if self.sharded:
            host, port = await self.owner()
            return await open_link(self._endpoint._replace(host=host, port=port), primary=True)
        if self._sentinel is None:
            return await open_link(self._endpoint)
        try:
            host, port = await self.primary()
        except RedisError as exc:  # none answered, none knows a primary, or one refused us (NOAUTH...)
            raise LinkError(str(exc) or type(exc).__name__) from exc
        return await open_link(self._endpoint._replace(host=host, port=port), primary=True)

    async def open_link_at(self, host: str, port: int) -> Link:
        """A connection of signald's own to one node of the Redis Cluster (where an ``ASK`` sends a
        write while signald's slot moves there), with the URL's login."""
        return await open_link(self._endpoint._replace(host=host, port=port))

    @asynccontextmanager
    async def connected(self) -> AsyncIterator[coredis.Redis[bytes] | coredis.RedisCluster[bytes]]:
        """The sentinels' clients (if any), then the data client; closed in reverse order."""
        async with AsyncExitStack() as stack:
            if self._sentinel is not None:
                await stack.enter_async_context(self._sentinel)
                try:  # a start without a primary says why at once (not "no answer within 5 s")
                    await self.primary()
                except PrimaryNotFoundError:
                    await stack.aclose()  # first: raised inside, coredis's task groups would wrap it
                    raise
            if self.sharded:  # which shard, or why not, said at once (coredis's start says less)
                try:
                    await self.owner()
                except LinkError as exc:
                    raise UnsupportedBroker(str(exc)) from None
            await stack.enter_async_context(self.client)
            if not self.sharded and await _cluster_enabled(self.client):
                await stack.aclose()
                raise UnsupportedBroker("this Redis runs in cluster mode (cluster_enabled:1): give its nodes as "
                                        f"{CLUSTER_FORM} (docs/cluster.md, Redis Cluster)")
            yield self.client

    async def owner(self) -> tuple[str, int]:
        """Where the primary that owns signald's hash slot is, as the first seed that answers says
        (it moves to the front); :class:`LinkError` saying why if none does."""
        problems = []
        for seed in list(self._seeds):
            try:
                with trio.fail_after(SEED_TIMEOUT_S):
                    owner, nodes = await self._ask(seed)
            except (LinkError, trio.TooSlowError) as exc:
                problems.append(f"{seed[0]}:{seed[1]}: {exc or 'no answer'}")
                continue
            self._seeds.remove(seed)
            self._seeds.insert(0, seed)
            self._seeds.extend(node for node in nodes if node not in self._seeds)
            return owner
        raise LinkError(f"none of the {len(problems)} Redis Cluster node(s) named the owner of signald's slot: "
                        + "; ".join(problems))

    async def _ask(self, seed: tuple[str, int]) -> tuple[tuple[str, int], list[tuple[str, int]]]:
        """The owner of signald's slot as ``seed`` knows it, and every node ``seed`` names."""
        link = await open_link(self._endpoint._replace(host=seed[0], port=seed[1]))
        try:
            slot, shards = await link.call(pack("CLUSTER", "KEYSLOT", self._tagged) + pack("CLUSTER", "SLOTS"), 2)
        finally:
            await link.aclose()
        for reply in (slot, shards):
            if isinstance(reply, Exception):  # "ERR This instance has cluster support disabled"...
                raise LinkError(f"not a Redis Cluster node: {reply}")
        owner, nodes = None, []
        for first, last, *servers in shards:
            here = [(_text(server[0]) or seed[0], int(server[1])) for server in servers]
            nodes.extend(here)
            if first <= slot <= last and here:
                owner = here[0]
        if owner is None:
            raise LinkError(f"no shard serves slot {slot} (the cluster is down or resharding)")
        return owner, nodes

    async def primary(self) -> tuple[str, int]:
        """Where the sentinels say the primary is; :class:`PrimaryNotFoundError` saying which
        service and how many sentinels were asked if none knows."""
        assert self._sentinel is not None
        try:
            return await self._sentinel.discover_primary(self.url.service)
        except PrimaryNotFoundError:
            raise PrimaryNotFoundError(f"none of the {len(self.url.hosts)} sentinel(s) answered with a primary "
                                       f"for {self.url.service!r}") from None


def _text(value: bytes | str) -> str:
    """A host as ``CLUSTER SLOTS`` names it (empty, or ``?``, when the node does not know its own)."""
    text = value.decode() if isinstance(value, bytes) else value
    return "" if text == "?" else text
