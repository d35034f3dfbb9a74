"""A node's resync after a Redis outage is done again when it must be (docs/cluster.md, "Redis
restarts or is unreachable"): two in-process nodes on one Redis of the test's own and one
PostgreSQL database.

- Redis restarts twice in quick succession: node A's resync after the first restart is still
  loading the others' records (held there by the test: a slow Redis) when Redis restarts again,
  empty, losing the records A had just written back. A's pub/sub reconnect (and heartbeat) ask for
  a resync while the first one runs: it runs once more when the first ends.
- A's resync fails on the broker while its pub/sub stays up (loading the others' records times out):
  nothing else asks again, so it tries again itself.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import make_config
from redis_fixture import RedisServer, free_port, redis_binary

from signald.client.raw import SignaldClient, connect
from signald.server import RunningServer, serve_signald

pytestmark = pytest.mark.timeout(60)

Event = tuple[str, dict[str, Any]]


async def node(nursery: trio.Nursery, where: Path, index: int, history_url: str, broker_url: str) -> RunningServer:
    config = make_config(where / f"node{index}", history={"url": history_url},
                         cluster={"broker_url": broker_url, "node_id": f"node-{index}", "node_ttl_s": 2.0})
    running: RunningServer = await nursery.start(lambda task_status: serve_signald(config, task_status=task_status))
    return running


@contextlib.asynccontextmanager
async def own_redis_and_two_nodes(nursery: trio.Nursery, tmp_path: Path, postgres_url: str,
                                  ) -> AsyncIterator[tuple[RedisServer, RunningServer, RunningServer]]:
    """A Redis of the test's own (the test restarts it), and nodes A and B on it; Redis stopped after."""
    redis = RedisServer(redis_binary(), tmp_path, free_port())
    redis.start()
    try:
        a = await node(nursery, tmp_path, 0, postgres_url, redis.url(0))
        b = await node(nursery, tmp_path, 1, postgres_url, redis.url(0))
        yield redis, a, b
    finally:
        redis.stop()


async def seen_until(client: SignaldClient, seen: list[Event], done: Callable[[list[Event]], bool]) -> None:
    """Read ``client``'s events into ``seen`` until ``done(seen)``."""
    while not done(seen):
        event = await client.next_event()
        seen.append((event["type"], event["data"]))


def users_in(server: RunningServer, room: str) -> set[str | None]:
    """Who is in ``room`` as ``server``'s node knows it."""
    rooms = server.hub.rooms
    return {rooms.user_of(conn) for conn in rooms.conns_in(room)}


async def until(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110 - the nodes' state, nothing to wait on
        await trio.sleep(0.02)


async def test_a_second_restart_during_the_resync_of_the_first_is_repaired_too(
    nursery: trio.Nursery, tmp_path: Path, postgres_url: str
) -> None:
    """carl (node A, room "quiet") is taken offline on node B by B's resync after the second
    restart (A's records are gone with it); A's first resync, held until then, ends; its second
    announces carl again, so bob (node B) sees him rejoin and a join on B lists him. ann (node A,
    "lobby") is closed with 1012 for bob's message sent during the second outage and resumes it
    exactly. Before, A dropped the resync asked for while its first one ran: carl stayed offline on B."""
    async with own_redis_and_two_nodes(nursery, tmp_path, postgres_url) as (redis, a, b):
        replica_a: Any = a.hub.replica
        held, release = trio.Event(), trio.Event()
        load = replica_a.nodes.load

        async def slow_load(kicked: frozenset[tuple[str, str]] = frozenset()) -> None:
            if armed and not held.is_set():  # the first resync's load waits for the test
                held.set()
                await release.wait()
            await load(kicked)

        armed = False
        replica_a.nodes.load = slow_load
        async with contextlib.AsyncExitStack() as stack:
            ann = await stack.enter_async_context(connect(a.url, user="ann"))
            carl = await stack.enter_async_context(connect(a.url, user="carl"))
            bob = await stack.enter_async_context(connect(b.url, user="bob"))
            dave = await stack.enter_async_context(connect(a.url, user="dave"))
            for client, room in ((ann, "lobby"), (bob, "lobby"), (bob, "quiet"), (carl, "quiet"), (dave, "quiet")):
                await client.request("room.join", {"room": room})
            seen: list[Event] = []
            with trio.fail_after(15):
                await seen_until(bob, seen, lambda s: ("member.joined", {"room": "quiet", "user_id": "dave"}) in s)
                before = await bob.request("chat.send", {"scope": "lobby", "body": "before"})
                assert (await ann.next_event("chat.message"))["data"]["id"] == before["id"]

                armed = True
                redis.stop()
                await until(lambda: all(n.hub.replica.problem() is not None for n in (a, b)))
                redis.start()  # empty: A's first resync writes its records back, then waits in its load
                await held.wait()
                everyone = {"bob", "carl", "dave"}  # on B once its resync is done and A's announcement heard
                await until(lambda: not b.hub.replica.resync._running and users_in(b, "quiet") == everyone)

                connects, stopped = replica_a.subscriber.connects, time.time()
                redis.stop()  # again, empty once more: what A's first resync wrote is gone
                await until(lambda: all(n.hub.replica.problem() is not None for n in (a, b)))
                await dave.ws.aclose()  # dave leaves while nothing can say so
                lost = await bob.request("chat.send", {"scope": "lobby", "body": "lost"})
                redis.start()
                # A's pub/sub is back and its heartbeat found it out of ``nodes`` (both asked for a
                # resync while the first one runs); B's resync took A's devices offline (no records)
                await until(lambda: replica_a.subscriber.connects > connects)
                await until(lambda: (replica_a.nodes._beaten or 0) > stopped)
                await until(lambda: users_in(b, "quiet") == {"bob"})
                await bob.request_raw("presence.ping")  # what B told bob before is read with it
                del seen[:]
                bob.pending_events()
                release.set()

                await ann.closed.wait()  # the first resync: "lobby" is behind by bob's lost message
                rejoined = ("member.joined", {"room": "quiet", "user_id": "carl"})
                await seen_until(bob, seen, lambda s: rejoined in s)  # the second one: carl announced again
            assert ann.ws.closed is not None and ann.ws.closed.code == 1012
            assert ("member.joined", {"room": "quiet", "user_id": "dave"}) not in seen
            live = [e["data"]["id"] for e in ann.pending_events() if e["type"] == "chat.message"]
            async with connect(a.url, user="ann") as again:
                ack = await again.request("room.join", {"room": "lobby", "since_rev": before["rev"]})
            assert sorted(live + [m["id"] for m in ack["changes"]]) == [lost["id"]]  # once
            async with connect(b.url, user="erin") as erin:
                ack = await erin.request("room.join", {"room": "quiet"})
            assert [m["user_id"] for m in ack["members"]] == ["bob", "carl", "erin"]
            assert not bob.closed.is_set() and not carl.closed.is_set()


async def test_a_resync_that_failed_while_the_pubsub_stayed_up_is_tried_again(
    nursery: trio.Nursery, tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """bob (node B) leaves while Redis is down; Redis comes back empty, so node A learns he left
    only by loading the others' records, which fails (a timeout) in every resync asked for by A's
    pub/sub reconnect and heartbeat. A tries again, and ann (node A) sees bob leave. Before, A
    gave up after the failure: ann kept seeing bob in the room."""
    caplog.set_level(logging.INFO, logger="signald.cluster")
    async with own_redis_and_two_nodes(nursery, tmp_path, postgres_url) as (redis, a, b):
        replica_a: Any = a.hub.replica
        load, failed, failing = replica_a.nodes.load, list[float](), False

        async def timing_out(kicked: frozenset[tuple[str, str]] = frozenset()) -> None:
            if failing:
                failed.append(trio.current_time())
                raise TimeoutError("Redis did not answer in time")
            await load(kicked)

        replica_a.nodes.load = timing_out
        async with contextlib.AsyncExitStack() as stack:
            ann = await stack.enter_async_context(connect(a.url, user="ann"))
            bob = await stack.enter_async_context(connect(b.url, user="bob"))
            for client in (ann, bob):
                await client.request("room.join", {"room": "lobby"})
            seen: list[Event] = []
            with trio.fail_after(20):
                await seen_until(ann, seen, lambda s: ("member.joined", {"room": "lobby", "user_id": "bob"}) in s)
                failing = True
                connects, stopped = replica_a.subscriber.connects, time.time()
                redis.stop()
                await until(lambda: all(n.hub.replica.problem() is not None for n in (a, b)))
                await bob.ws.aclose()  # bob leaves while nothing can say so
                await until(lambda: "bob" not in users_in(b, "lobby"))
                redis.start()  # empty: no record says bob was ever there
                # both requests for a resync made (A's pub/sub is back, its heartbeat found it out of
                # ``nodes``), and a load failed after that: from now on only A itself tries again
                await until(lambda: replica_a.subscriber.connects > connects)
                await until(lambda: (replica_a.nodes._beaten or 0) > stopped)
                tried = len(failed)
                await until(lambda: len(failed) > tried)
                failing = False
                await seen_until(ann, seen, lambda s: ("member.left", {"room": "lobby", "user_id": "bob"}) in s)
            assert users_in(a, "lobby") == {"ann"}
            assert not ann.closed.is_set()
    lines = [r.getMessage() for r in caplog.records if r.name == "signald.cluster"]
    assert [line for line in lines if line.startswith("cluster: the resync after the broker outage failed")], lines
