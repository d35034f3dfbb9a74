"""Redis closes every connection of a node (as when it restarts): the pub/sub notices at once, the
writer's idle connection does not. The node's first write after that must go over a new connection
(docs/cluster.md, "Redis restarts or is unreachable"). An in-process node on a Redis of its own.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import trio.testing
from conftest import make_config
from redis_fixture import RedisServer, free_port, redis_binary

from signald.client.raw import connect
from signald.server import RunningServer, serve_signald

pytestmark = pytest.mark.timeout(60)


async def test_the_first_write_after_redis_closed_the_nodes_connections_is_not_lost(
    nursery: trio.Nursery, tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """ann's status change, the node's first write after Redis closed its connections, while its
    pub/sub waits to reconnect. It went over the writer's old connection and was lost ("1 broker
    writes lost: Redis closed the connection"); after a real restart, where that first write is
    usually the heartbeat's, the node then dropped the pub/sub it had just opened again, and missed
    what was published while it reconnected once more: its rooms' clients were closed with 1012
    again, or got those changes only by a fill from the store."""
    caplog.set_level(logging.INFO, logger="signald.cluster")
    redis = RedisServer(redis_binary(), tmp_path, free_port())  # its own: every connection to it is the node's
    redis.start()
    try:
        config = make_config(tmp_path / "node", history={"url": postgres_url},
                             cluster={"broker_url": redis.url(0), "node_id": "node-0", "node_ttl_s": 3.0})
        node: RunningServer = await nursery.start(lambda task_status: serve_signald(config, task_status=task_status))
        replica = node.hub.replica
        assert replica is not None
        async with connect(node.url, user="ann") as ann:
            await ann.request("room.join", {"room": "lobby"})
            with trio.fail_after(10):
                for kind in ("pubsub", "normal"):  # as a restart does (Redis keeps its data here)
                    assert redis.command("CLIENT", "KILL", "TYPE", kind).startswith(b":")
                await trio.testing.wait_all_tasks_blocked()  # the pub/sub noticed: it waits to reconnect
                assert replica.problem() is not None
                caplog.clear()

                await ann.request("presence.set", {"status": "away"})
                sent = trio.Event()
                replica.after_sent(sent.set)
                await sent.wait()
                lost = [r.getMessage() for r in caplog.records if "broker writes lost" in r.getMessage()]
                assert not lost
                while replica.problem() is not None:  # noqa: ASYNC110 - the node's state, nothing to wait on
                    await trio.sleep(0.02)
    finally:
        redis.stop()
