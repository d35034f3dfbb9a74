"""The coredis client of ``cluster.broker_url`` (forms in :mod:`signald.state.brokerurl`).

One Redis: ``coredis.Redis.from_url``. Redis Sentinel: a ``coredis.Sentinel`` over the listed
sentinels and its client for the service's primary, whose connection pool asks the sentinels
where the primary is each time it opens a connection (and drops its connections when the answer
changes). The writer's and the pub/sub's own connections (:meth:`Broker.open_link`) ask them the
same way each time they open. After a failover every new connection goes to the promoted replica;
one that reaches a demoted primary is refused (``ROLE`` is checked), and the pub/sub retries that
like a lost connection. What the replica does then is its usual recovery after a broker outage
(:meth:`signald.cluster.redis_replica.RedisReplica._resync`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Final

import coredis
from coredis.connection import TCPLocation
from coredis.exceptions import PrimaryNotFoundError, RedisError

from signald.cluster.resp import Link, LinkError, endpoint_of, open_link
from signald.state.brokerurl import CLUSTER_REFUSAL, BrokerURL, parse_broker_url

__all__ = ["Broker", "UnsupportedBroker"]

SENTINEL_TIMEOUT_S: Final = 2.0  # one sentinel that does not answer: ask the next


class UnsupportedBroker(Exception):
    """The URL reaches a Redis signald cannot use (a cluster node)."""


async def _cluster_enabled(client: coredis.Redis[bytes]) -> bool:
    """Whether ``client`` talks to a Redis Cluster node, where signald's keys and PUBLISH order
    would not hold (``MOVED`` replies for most keys); a server that does not answer is left to the
    start's own check (``PING`` with a deadline)."""
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
        if self.url.kind == "sentinel":
            sentinel_kwargs: dict[str, Any] = {"connect_timeout": SENTINEL_TIMEOUT_S,
                                               "stream_timeout": SENTINEL_TIMEOUT_S}
            if self.url.sentinel_password is not None:
                sentinel_kwargs["password"] = self.url.sentinel_password
            self._sentinel = coredis.Sentinel(
                [TCPLocation(host, port) for host, port in self.url.sentinels],
                sentinel_kwargs=sentinel_kwargs, decode_responses=False,
                db=self.url.db, username=self.url.username, password=self.url.password)
            self.client: coredis.Redis[bytes] = self._sentinel.primary_for(self.url.service)
        else:
            self.client = coredis.Redis.from_url(self.url.url, decode_responses=False)

    async def open_link(self) -> Link:
        """A connection of signald's own (:mod:`signald.cluster.resp`) to the same Redis: the
        writer's and the pub/sub's. Under Sentinel it goes to the primary the sentinels name now,
        and one that is not a primary (yet) is refused, as coredis's pool refuses it."""
        if self._sentinel is None:
            return await open_link(self._endpoint)
        try:
            host, port = await self.primary()
        except RedisError as exc:  # none answered, none knows a primary, or one refused us (NOAUTH...)
            raise LinkError(str(exc) or type(exc).__name__) from exc
        return await open_link(self._endpoint._replace(host=host, port=port), primary=True)

    @asynccontextmanager
    async def connected(self) -> AsyncIterator[coredis.Redis[bytes]]:
        """The sentinels' clients (if any), then the data client; closed in reverse order."""
        async with AsyncExitStack() as stack:
            if self._sentinel is not None:
                await stack.enter_async_context(self._sentinel)
                try:  # a start without a primary says why at once (not "no answer within 5 s")
                    await self.primary()
                except PrimaryNotFoundError:
                    await stack.aclose()  # first: raised inside, coredis's task groups would wrap it
                    raise
            client = await stack.enter_async_context(self.client)
            if await _cluster_enabled(client):
                await stack.aclose()
                raise UnsupportedBroker(f"this Redis runs in cluster mode (cluster_enabled:1): {CLUSTER_REFUSAL}")
            yield client

    async def primary(self) -> tuple[str, int]:
        """Where the sentinels say the primary is; :class:`PrimaryNotFoundError` saying which
        service and how many sentinels were asked if none knows."""
        assert self._sentinel is not None
        try:
            return await self._sentinel.discover_primary(self.url.service)
        except PrimaryNotFoundError:
            raise PrimaryNotFoundError(f"none of the {len(self.url.sentinels)} sentinel(s) answered with a primary "
                                       f"for {self.url.service!r}") from None
