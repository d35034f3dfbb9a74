"""The end-to-end suites over "1 node" and "3 nodes" (docs/cluster.md).

A module opts in with ``pytestmark = pytest.mark.usefixtures("nodes")``: each of its tests then
runs twice. With ``1-node`` nothing changes. With ``3-nodes``, :func:`conftest.start_server`
starts three in-process nodes (``serve_signald``, port 0) on the test's own Redis database and
one PostgreSQL database (shared by the session's tests, emptied before each) and returns them as one
:class:`Nodes`, which the test uses as it used its one server: every read of ``url`` names the
next node in turn, so ``connect(server.url, user=...)`` and ``clients(server, "a", "a", "b")``
spread the connections over the nodes, and the same user's second device lands on another node
than its first. The embedding API (``publish_to_room``, ``kick``...) is node 0's.

Events that cross nodes arrive a little later than the reply to the request that caused them.
Helpers that assert what did or did not arrive call :func:`settle` first: it returns once every
node has heard everything every node had sent to Redis, so a ping after it is answered after
every event the test's earlier requests caused, as on one node.

A few representative tests, marked ``@pytest.mark.on_redis_cluster``, run a third time:
``3-nodes-redis-cluster``, the three nodes on the session's private Redis Cluster
(tests/redis_cluster.py, emptied before each) instead of one Redis.

A test that also runs over SQLite and PostgreSQL keeps one "3 nodes" variant (several nodes always
share PostgreSQL). A test on a mock clock runs on one node only (the clock would jump while the nodes wait on
Redis). A test that inspects one process (its hub, its store, its clock) or a behaviour documented to
differ across nodes is marked ``@pytest.mark.one_node("why")`` and runs on one node only.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
import trio

from signald.config import Config
from signald.server import RunningServer

CLUSTER = "cluster"  # the "nodes" parameter of the variant on a Redis Cluster (three nodes)
IDS: dict[int | str, str] = {1: "1-node", 3: "3-nodes", CLUSTER: "3-nodes-redis-cluster"}
MOCK_CLOCKS = {"frozen_clock", "autojump_clock", "mock_clock"}


@attrs.define
class Setting:
    """What the running test asked for: how many nodes, and where they meet."""

    count: int = 1
    redis_url: str = ""
    postgres_url: str = ""
    started: list[Nodes] = attrs.Factory(list)
    # empties the test's Redis database and PostgreSQL again (for a test that runs several
    # examples, hypothesis): what the fresh ``tmp_path`` of each example is on one node
    fresh: Callable[[], None] = lambda: None


current = Setting()


class Nodes:
    """Several running nodes that a test uses as its one server (see the module docstring)."""

    def __init__(self, nodes: list[RunningServer]) -> None:
        self.nodes = nodes
        self._turn = itertools.count()

    @property
    def url(self) -> str:
        """The next node's URL: each connection goes to another node, in turn."""
        return self.nodes[next(self._turn) % len(self.nodes)].url

    def __getattr__(self, name: str) -> Any:
        return getattr(self.nodes[0], name)


def url_of(server: Any, node: int) -> str:
    """The URL of node ``node`` of ``server`` over several nodes (modulo their number); on one node
    its only URL. For a test that must place two connections on one node, or on two."""
    if isinstance(server, Nodes):
        return server.nodes[node % len(server.nodes)].url
    url: str = server.url
    return url


def node_config(config: Config, index: int) -> Config:
    """``config`` as node ``index`` of the test's cluster: the shared Redis and PostgreSQL."""
    history_url = config.history.url if (config.history.url or "").startswith("postgresql") \
        else current.postgres_url
    cluster = attrs.evolve(config.cluster, broker_url=current.redis_url, node_id=f"node-{index}")
    return attrs.evolve(config, history=attrs.evolve(config.history, url=history_url), cluster=cluster)


async def unlisted_once_stopped(nodes: Nodes) -> None:
    """Take ``nodes`` out of :data:`current` (where :func:`settle` finds them) once their nursery
    stops them (a test that restarts its server)."""
    try:
        await trio.sleep_forever()
    finally:
        current.started.remove(nodes)


async def settle() -> None:
    """Return once every node has heard whatever any node had sent to Redis when this was called.

    Each node's writes go out in order through one queue and each node reads one pub/sub
    connection in order, so: first every node's queue is flushed up to now (``after_sent``), then
    every node publishes an echo of its own and waits to hear it back; what anyone published
    before that echo has been heard (and applied, and queued to its connections) by then.
    """
    from signald.cluster.wire import STATE_ENCODER, Echo, StateEnvelope

    replicas = [node.hub.replica for nodes in current.started for node in nodes.nodes]
    if not replicas:
        return

    async def flushed(replica: Any) -> None:
        sent = trio.Event()
        replica.after_sent(sent.set)
        await sent.wait()

    async def heard_back(replica: Any) -> None:
        before = replica.echoes_heard
        echo = STATE_ENCODER.encode(StateEnvelope(replica.node_id, Echo()))
        replica.writer.put([("publish", replica.names.state, echo)])
        while replica.echoes_heard == before:  # noqa: ASYNC110 - the reader task counts it, no event to wait on
            await trio.sleep(0.001)

    with trio.fail_after(10):  # a node whose broker link broke: say so rather than hang
        for step in (flushed, heard_back):
            async with trio.open_nursery() as nursery:
                for replica in replicas:
                    nursery.start_soon(step, replica)


class SharedDatabase:
    """One PostgreSQL database for every "3 nodes" test, emptied before each (tests run one at a
    time): emptying takes milliseconds where ``CREATE DATABASE`` and the nodes' schema set-up
    take a few hundred. A connection of its own each time: other tests restart the server.

    ``DELETE`` and a restart of the schema's sequences leave what ``TRUNCATE ... RESTART
    IDENTITY`` leaves (empty tables, identities from 1) in 3 ms instead of 65 (new files for
    every table and index), before each of ~200 tests and each example of their hypothesis tests."""

    def __init__(self, url: str) -> None:
        self.url = url

    def emptied(self) -> str:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            tables = [row[0] for row in conn.execute(  # signald's, but for the schema's version
                "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables"
                " WHERE schemaname = 'signald' AND tablename <> 'schema_version'")]
            sequences = [row[0] for row in conn.execute(
                "SELECT format('%I.%I', schemaname, sequencename) FROM pg_sequences WHERE schemaname = 'signald'")]
            with conn.transaction():  # none before the first nodes created the schema
                for table in tables:
                    conn.execute(f"DELETE FROM {table}")  # type: ignore[arg-type]
                for sequence in sequences:
                    conn.execute(f"ALTER SEQUENCE {sequence} RESTART")  # type: ignore[arg-type]
        return self.url


def on_sqlite_over_nodes(item: pytest.Item) -> bool:
    """A "3 nodes" variant of a test that also runs over both stores: several nodes always share
    PostgreSQL, so its "sqlite" variant would run the "postgres" one again."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    return bool(params.get("nodes", 1) != 1 and "sqlite" in params.values())


def off_redis_cluster(item: pytest.Item) -> bool:
    """A ``3-nodes-redis-cluster`` variant of a test not marked ``on_redis_cluster``."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    return params.get("nodes") == CLUSTER and item.get_closest_marker("on_redis_cluster") is None


@pytest.fixture(scope="session")
def nodes_database(postgres_server: Any) -> SharedDatabase:
    from postgres import create_database

    return SharedDatabase(create_database(postgres_server))


@pytest.fixture(params=list(IDS), ids=IDS.get)
def nodes(request: pytest.FixtureRequest) -> Iterator[int]:
    """How many nodes the test's servers run as (see the module docstring)."""
    count: int = 3 if request.param == CLUSTER else request.param
    marker = request.node.get_closest_marker("one_node")
    if count > 1 and marker is not None:
        pytest.skip(f"one node only: {marker.args[0]}")
    if count > 1 and MOCK_CLOCKS & set(request.fixturenames):
        pytest.skip("one node only: a mock clock jumps while the nodes wait on Redis, firing their broker timeouts")
    try:
        if request.param == CLUSTER:
            cluster, database = request.getfixturevalue("redis_cluster"), request.getfixturevalue("nodes_database")
            cluster.flush()
            current.redis_url, current.postgres_url = cluster.url(), database.emptied()

            def emptied_cluster() -> None:
                cluster.flush()
                database.emptied()
            current.fresh = emptied_cluster
        elif count > 1:
            redis_url, database = request.getfixturevalue("redis_url"), request.getfixturevalue("nodes_database")
            redis_server = request.getfixturevalue("redis_server")
            current.redis_url, current.postgres_url = redis_url, database.emptied()

            def emptied() -> None:
                redis_server.flush(int(redis_url.rsplit("/", 1)[1]))
                database.emptied()
            current.fresh = emptied
        current.count = count  # last: a set-up that failed leaves the next tests on one node
        yield count
    finally:
        current.count, current.redis_url, current.postgres_url = 1, "", ""
        current.started.clear()
        current.fresh = lambda: None
