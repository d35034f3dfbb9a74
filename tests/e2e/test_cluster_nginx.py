"""docs/deploy.md's "Several nodes", as written: three daemons behind nginx's ``least_conn``
upstream (no sticky sessions), one private Redis and one PostgreSQL. A node is killed with -9
while a client sends; the clients that were on it reconnect through nginx to the others and end
with exactly the room's history, like everyone else.

The nginx configuration is taken from the documentation's own blocks (the upstream of "Several
nodes", the ``location /`` of "Behind nginx"), with the addresses replaced by the test's ports,
so the example the documentation shows is the one that is run.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
import trio
from conftest import daemon
from nginx_fixture import NGINX, nginx
from redis_fixture import free_port

from signald.client import connect
from signald.client.schedule import Backoff

pytestmark = [pytest.mark.timeout(90),
              pytest.mark.skipif(NGINX is None, reason="nginx is not installed (./dev test installs it)")]

DEPLOY = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"
FAST = Backoff(initial_s=0.1, max_s=0.5)


def documented_http_block(ports: list[int]) -> str:
    """The documentation's upstream and location, on the test's ports, inside a plain server."""
    blocks = re.findall(r"```nginx\n(.*?)```", DEPLOY.read_text(), re.S)
    single = next(b for b in blocks if "location / {" in b)
    several = next(b for b in blocks if "least_conn" in b)
    upgrade_map = re.search(r"^map \$http_upgrade .*$", single, re.M)
    location = re.search(r"^    location / \{\n.*?^    \}", single, re.M | re.S)
    upstream = re.search(r"^upstream signald \{\n.*?^\}", several, re.M | re.S)
    assert upgrade_map and location and upstream, "docs/deploy.md no longer has the blocks this test runs"
    addresses = iter(ports)
    upstream_text = re.sub(r"10\.0\.0\.\d+:8765", lambda _: f"127.0.0.1:{next(addresses)}", upstream.group(0))
    assert next(addresses, None) is None, "the documented upstream should list three nodes"
    return (f"{upgrade_map.group(0)}\n{upstream_text}\n"
            f"server {{\n    listen 127.0.0.1:{{port}};\n{location.group(0)}\n}}\n")


@asynccontextmanager
async def three_nodes(tmp_path: Path, redis_url: str, history_url: str,
                      ports: list[int]) -> AsyncIterator[list[trio.Process]]:
    config = '[server]\ntrusted_proxies = ["127.0.0.1"]\n[cluster]\nnode_ttl_s = 2.0\nnode_id = "chat-{i}"\n'
    async with AsyncExitStack() as stack:
        processes = []
        for i, port in enumerate(ports):
            where = tmp_path / f"node{i}"
            where.mkdir()
            process, _ = await stack.enter_async_context(daemon(
                where, "node", "--broker-url", redis_url, "--history-url", history_url, port=port,
                config_text=config.format(i=i)))
            processes.append(process)
        yield processes


async def test_three_documented_nodes_behind_nginx_survive_a_kill_9_exactly(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    import coredis

    from signald.cluster.wire import RECORD_DECODER, Names

    ports = [free_port() for _ in range(3)]
    http = documented_http_block(ports)
    async with three_nodes(tmp_path, redis_url, postgres_url, ports) as processes, AsyncExitStack() as stack:
        port = stack.enter_context(nginx(tmp_path, lambda p: http.replace("{port}", str(p))))
        url = f"ws://127.0.0.1:{port}/"
        users = [f"u{i}" for i in range(6)]
        clients = {user: await stack.enter_async_context(connect(url, user=user, backoff=FAST)) for user in users}
        rooms = {user: await client.join("lobby") for user, client in clients.items()}

        redis: coredis.Redis[bytes] = coredis.Redis.from_url(redis_url)
        async with redis:
            records = [RECORD_DECODER.decode(raw) for raw in (await redis.hgetall(Names(redis_url).conns)).values()]
        node_of = {record.user: record.node for record in records}
        assert len(set(node_of.values())) == 3, node_of  # least_conn spread them: nothing sticks
        sender = clients["u0"]
        victim = next(node for node in sorted(set(node_of.values())) if node != node_of["u0"])
        moved = sorted(user for user, node in node_of.items() if node == victim)
        assert moved

        sent = []
        for i in range(30):
            if i == 10:
                processes[int(victim.rsplit("-", 1)[1])].kill()  # kill -9 mid-traffic
            sent.append((await sender.request("chat.send", {"scope": "lobby", "body": f"m{i}"}))["id"])

        def exact() -> bool:
            return all(room.synced and [m["id"] for m in room.messages] == sent for room in rooms.values())

        with trio.fail_after(20):
            while not exact():  # noqa: ASYNC110  # the views change as events arrive
                await trio.sleep(0.02)
        for user in moved:  # came back through nginx, on another node
            info = await clients[user].request("session.info", {})
            assert info["user_id"] == user
        async with redis:  # the survivors take the dead node's records away within its TTL
            with trio.fail_after(10):
                while victim in {record.node for record in records}:
                    await trio.sleep(0.1)
                    records = [RECORD_DECODER.decode(raw)
                               for raw in (await redis.hgetall(Names(redis_url).conns)).values()]
        assert sorted(record.user for record in records) == users  # each client once, on the survivors
