"""Several nodes on Redis Sentinel (``redis+sentinel://``): real daemons, a private primary, replica
and sentinel (tests/redis_sentinel.py), a private PostgreSQL. The primary is killed with SIGKILL, or
switched over for maintenance; the sentinel promotes the replica and every node goes on with the new
primary."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio
from redis_fixture import free_port
from redis_sentinel import SERVICE, sentinel_set
from test_cluster import Event, alice_and_bob_in_lobby, nodes, of, until_ready, wait_for
from trio_websocket import ConnectionClosed

from signald.cli import main
from signald.client.raw import SignaldClient, connect

pytestmark = pytest.mark.timeout(90)


async def lobby_changes(client: SignaldClient) -> list[dict[str, Any]]:
    ack = await client.request("room.join", {"room": "lobby", "since_rev": 0})
    return list(ack["changes"])


async def after_the_failover(stack: AsyncExitStack, url0: str, url1: str, alice: SignaldClient, bob: SignaldClient,
                             before: dict[str, Any], during: dict[str, Any]) -> None:
    """Both nodes follow the new primary: alice (node 0) ends with every message once, whether she got
    ``during`` live (node 1 published it after the switch) or, her node having missed it, was closed
    with 1012 to resume; then chat between the nodes works both ways, and a join on node 1 sees the
    room's members on both nodes and every message."""
    seen: list[Event] = []
    try:
        await wait_for(alice, seen, lambda s: during["id"] in [m["id"] for m in of("chat.message", s)])
    except ConnectionClosed:
        assert alice.ws.closed is not None and alice.ws.closed.code == 1012
        alice = await stack.enter_async_context(connect(url0, user="alice"))
    assert [m["id"] for m in await lobby_changes(alice)] == [before["id"], during["id"]]

    after = await bob.request("chat.send", {"scope": "lobby", "body": "after the failover"})
    await wait_for(alice, [], lambda s: after["id"] in [m["id"] for m in of("chat.message", s)])
    back = await alice.request("chat.send", {"scope": "lobby", "body": "heard you"})
    await wait_for(bob, [], lambda s: back["id"] in [m["id"] for m in of("chat.message", s)])
    async with connect(url1, user="carol") as carol:
        ack = await carol.request("room.join", {"room": "lobby", "since": 0})
        assert [m["user_id"] for m in ack["members"]] == ["alice", "bob", "carol"]
        assert [m["id"] for m in ack["missed"]] == [before["id"], during["id"], after["id"], back["id"]]


async def test_after_a_failover_every_node_follows_the_new_primary(tmp_path: Path, postgres_url: str) -> None:
    """With passwords on the Redis servers and on the sentinel, both given in the URL."""
    with sentinel_set(tmp_path, password="hunter2", sentinel_password="swordfish") as redis:
        async with nodes(tmp_path, redis.url(3), postgres_url, 2, ttl=1.0) as started, AsyncExitStack() as stack:
            (_, url0), (_, url1) = started
            alice, bob = await alice_and_bob_in_lobby(stack, url0, url1)
            before = await bob.request("chat.send", {"scope": "lobby", "body": "before the failover"})
            await wait_for(alice, [], lambda s: before["id"] in [m["id"] for m in of("chat.message", s)])

            redis.kill_primary()
            line = await until_ready(url1, False)
            assert line.startswith("503") and "broker" in line, line
            during = await bob.request("chat.send", {"scope": "lobby", "body": "while the primary is gone"})

            await until_ready(url0, True, within=20)
            await until_ready(url1, True, within=20)
            assert redis.primary_port() == redis.replica  # the replica was promoted, and the nodes found it

            await after_the_failover(stack, url0, url1, alice, bob, before, during)
        logs = "".join(path.read_text(errors="replace") for path in sorted(tmp_path.glob("node*/*.log")))  # noqa: ASYNC240
        assert "broker (Redis)" in logs  # the outage was logged, without either password
        assert "hunter2" not in logs and "swordfish" not in logs


async def test_a_failover_for_maintenance_loses_no_acked_message(tmp_path: Path, postgres_url: str) -> None:
    """``SENTINEL FAILOVER`` while one node sends: every acked message reaches the other node's client
    once and in order, live or by its resume after a 1012."""
    with sentinel_set(tmp_path) as redis:
        async with nodes(tmp_path, redis.url(0), postgres_url, 2, ttl=1.0) as started, AsyncExitStack() as stack:
            (_, url0), (_, url1) = started
            alice, bob = await alice_and_bob_in_lobby(stack, url0, url1)
            redis.failover()
            acked = []
            with trio.fail_after(20):
                while redis.primary_port() != redis.replica or len(acked) < 5:  # and a few once it switched
                    ack = await bob.request("chat.send", {"scope": "lobby", "body": f"message {len(acked)}"})
                    acked.append(ack["id"])
                    await trio.sleep(0.05)
            await until_ready(url0, True, within=20)
            await until_ready(url1, True, within=20)
            seen: list[Event] = []
            try:
                await wait_for(alice, seen, lambda s: acked[-1] in [m["id"] for m in of("chat.message", s)])
                assert [m["id"] for m in of("chat.message", seen)] == acked
            except ConnectionClosed:
                assert alice.ws.closed is not None and alice.ws.closed.code == 1012
                alice = await stack.enter_async_context(connect(url0, user="alice"))
                assert [m["id"] for m in await lobby_changes(alice)] == acked
            back = await alice.request("chat.send", {"scope": "lobby", "body": "after the switch"})
            await wait_for(bob, [], lambda s: back["id"] in [m["id"] for m in of("chat.message", s)])


def test_sentinels_that_do_not_answer_are_one_line_without_the_password(
    tmp_path: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    closed = free_port()
    url = f"redis+sentinel://:hunter2@127.0.0.1:{closed}/{SERVICE}/0"
    status = main(["serve", "--port", "0", "--history-url", postgres_url, "--broker-url", url])
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith(f"signald: cannot start: cluster.broker_url redis+sentinel://:***@127.0.0.1:{closed}/"), err
    assert f"none of the 1 sentinel(s) answered with a primary for '{SERVICE}'" in err, err
    assert err.count("\n") == 1 and "hunter2" not in err, err
