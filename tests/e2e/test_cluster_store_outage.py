"""Three in-process nodes on one Redis and one PostgreSQL database: PostgreSQL restarted while Redis
stays up, and both restarted at once (docs/cluster.md, docs/deploy.md). Every node says 503 while
its store (or broker) is down and 200 after, sends fail with the documented error meanwhile and work
again on every node without a restart, and every acked message is stored once and reaches every
other member once (live, or by the exact resume a node's 1012 asks for)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import make_config
from postgres import PostgresServer, create_database
from redis_fixture import RedisServer, free_port, redis_binary
from test_durability import all_history

from signald.client.raw import SignaldClient, connect
from signald.errors import SignalError
from signald.server import RunningServer, serve_signald

pytestmark = pytest.mark.timeout(60)
USERS = ("ann", "bob", "cat")  # one on each node


@contextlib.asynccontextmanager
async def three_nodes(nursery: trio.Nursery, tmp_path: Path, history_url: str, broker_url: str
                      ) -> AsyncIterator[list[RunningServer]]:
    started = []
    for i in range(3):
        config = make_config(tmp_path / f"node{i}", history={"url": history_url},
                             cluster={"broker_url": broker_url, "node_id": f"node-{i}", "node_ttl_s": 2.0})
        started.append(await nursery.start(lambda task_status, c=config: serve_signald(c, task_status=task_status)))
    yield started


async def readyz(node: RunningServer) -> int:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.port}") as http:
        return (await http.get("/readyz")).status_code


async def on_every(nodes: list[RunningServer], wanted: int) -> None:
    """Wait until every node's ``/readyz`` answers ``wanted``."""
    for node in nodes:
        while await readyz(node) != wanted:  # noqa: ASYNC110 - /readyz is asked, nothing to wait on
            await trio.sleep(0.05)


async def round_of_sends(clients: list[SignaldClient], tag: str) -> list[dict[str, Any]]:
    """One send from each client, each acked at the first attempt."""
    return [await c.request("chat.send", {"scope": "lobby", "body": f"{tag} {c.user_id}"}) for c in clients]


async def outage(nodes: list[RunningServer], clients: list[SignaldClient], down: Callable[[], Any],
                 up: Callable[[], Awaitable[None]]) -> list[dict[str, Any]]:
    """Sends before, during (each refused with the documented error) and after ``down``/``up``; the acked."""
    acked = await round_of_sends(clients, "before")
    await down()
    try:
        await on_every(nodes, 503)
        for c in clients:
            with pytest.raises(SignalError) as info:
                await c.request("chat.send", {"scope": "lobby", "body": "into the void"})
            assert (info.value.code, info.value.message) == ("INTERNAL", "history store unavailable")
    finally:
        await up()
    await on_every(nodes, 200)  # ready again: the first send on each node is acked
    return acked + await round_of_sends(clients, "after")


async def everyone_saw(clients: list[SignaldClient], urls: list[str], acked: list[dict[str, Any]]) -> None:
    """Every acked message is stored once, and reached every other member once: live on a client
    still connected, or by an exact resume (``since_rev``) on a client its node closed with 1012."""
    async with connect(urls[0], user="eve") as eve:
        await eve.request("room.join", {"room": "lobby"})
        stored = await all_history(eve, "lobby")
    assert sorted(m["id"] for m in stored) == sorted(m["id"] for m in acked)
    assert [m["seq"] for m in stored] == list(range(1, len(stored) + 1))
    for c, url in zip(clients, urls, strict=True):
        others = sorted(m["id"] for m in acked if m["user_id"] != c.user_id)
        seen: list[str] = []
        if not c.closed.is_set():
            while len(seen) < len(others):
                event = await c.next_event()
                if event["type"] == "chat.message":
                    seen.append(event["data"]["id"])
                assert event["type"] != "error", event
            await c.request("presence.ping")
            seen += [e["data"]["id"] for e in c.pending_events() if e["type"] == "chat.message"]
        else:
            seen = [e["data"]["id"] for e in c.pending_events() if e["type"] == "chat.message"]
            async with connect(url, user=c.user_id) as again:
                rev = max([0, *(m["rev"] for m in acked if m["id"] in seen)])
                ack = await again.request("room.join", {"room": "lobby", "since_rev": rev})
                seen += [m["id"] for m in ack["changes"] if m["user_id"] != c.user_id and m["id"] not in seen]
        assert sorted(seen) == others, c.user_id


async def test_postgres_restarted_under_three_nodes_with_redis_up(
    nursery: trio.Nursery, tmp_path: Path, postgres_server: PostgresServer, redis_url: str
) -> None:
    async with three_nodes(nursery, tmp_path, create_database(postgres_server), redis_url) as nodes, \
            contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(connect(n.url, user=u)) for n, u in zip(nodes, USERS, strict=True)]
        for c in clients:
            await c.request("room.join", {"room": "lobby"})
        with trio.fail_after(15):
            acked = await outage(nodes, clients, lambda: trio.to_thread.run_sync(postgres_server.stop, "fast"),
                                 lambda: trio.to_thread.run_sync(postgres_server.start))
            await everyone_saw(clients, [n.url for n in nodes], acked)


@pytest.mark.parametrize("first", ["postgres", "redis"])
async def test_postgres_and_redis_restarted_together_under_three_nodes(
    nursery: trio.Nursery, tmp_path: Path, postgres_server: PostgresServer, first: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Both down at once, back in either order: with Redis back first, each node's resync after
    the broker outage reads the store that is still down, and must try again rather than settle.
    Its log line names the store: it said "the broker (Redis) failed: INTERNAL: ...", which sent
    an operator to a Redis that was fine."""
    caplog.set_level(logging.INFO, logger="signald.cluster")
    redis = RedisServer(redis_binary(), tmp_path, free_port())  # its own: the session's stays up
    redis.start()
    try:
        async with three_nodes(nursery, tmp_path, create_database(postgres_server), redis.url(0)) as nodes, \
                contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(connect(n.url, user=u))
                       for n, u in zip(nodes, USERS, strict=True)]
            for c in clients:
                await c.request("room.join", {"room": "lobby"})

            async def down() -> None:
                redis.stop()
                await trio.to_thread.run_sync(postgres_server.stop, "immediate")

            async def up() -> None:
                if first == "redis":
                    redis.start()
                    for node in nodes:  # every node hears itself through the broker again: its resync runs
                        while node.hub.replica.problem() is not None:  # type: ignore[union-attr]  # noqa: ASYNC110
                            await trio.sleep(0.05)
                    assert await readyz(nodes[0]) == 503  # the store is still down
                await trio.to_thread.run_sync(postgres_server.start)
                if first == "postgres":
                    redis.start()

            with trio.fail_after(15):
                acked = await outage(nodes, clients, down, up)
                await everyone_saw(clients, [n.url for n in nodes], acked)
    finally:
        redis.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "signald.cluster"]
    assert not [line for line in lines if "broker (Redis) failed" in line and "INTERNAL" in line], lines
    if first == "redis":  # each node's resync met the store still down
        assert [line for line in lines if "the history store failed" in line], lines
