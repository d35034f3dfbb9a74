"""What one node acked, the next request on another node sees (docs/cluster.md): a call to a user
(or a kick of them) right after their join was acked on another node reaches them, and a join
right after it lists them, whichever side's link to Redis is slow. Real daemons on one Redis and
one PostgreSQL; one node reaches Redis through :func:`slow_link`, a proxy that holds what passes
one way for :data:`HELD_S`, so the window that a loaded machine opens now and then is open every
time.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path

import attrs
import pytest
import trio
from conftest import daemon
from test_cluster import of, wait_for

from signald.client.raw import connect

pytestmark = pytest.mark.timeout(120)

HELD_S = 0.25
API_KEY = "test-key-0123456789"
SDP = {"type": "offer", "sdp": "v=0"}


@attrs.define
class SlowLink:
    """A local proxy to Redis: what Redis sends (replies, pushes) is held ``replies_s``, what is
    sent to it ``requests_s``, each in order; both can change while it runs (new bytes only)."""

    url: str = ""
    replies_s: float = 0.0
    requests_s: float = 0.0


async def _pump(source: trio.SocketStream, sink: trio.SocketStream, held_s: Callable[[], float]) -> None:
    """Copy ``source`` to ``sink`` in order, each chunk ``held_s()`` after it was read."""
    put, queue = trio.open_memory_channel[tuple[float, bytes]](math.inf)

    async def forward() -> None:
        async for due, data in queue:
            await trio.sleep_until(due)
            await sink.send_all(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(forward)
        while data := await source.receive_some(65536):
            put.send_nowait((trio.current_time() + held_s(), data))
        put.close()


@asynccontextmanager
async def slow_link(redis_url: str, *, replies_s: float = 0.0, requests_s: float = 0.0) -> AsyncIterator[SlowLink]:
    """``redis_url`` through a :class:`SlowLink`; its ``url`` is the one to give a node."""
    host_port, _, db = redis_url.removeprefix("redis://").partition("/")
    host, _, port = host_port.rpartition(":")
    link = SlowLink(replies_s=replies_s, requests_s=requests_s)

    async def relay(client: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            redis = await trio.open_tcp_stream(host, int(port))
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_pump, client, redis, lambda: link.requests_s)
                    nursery.start_soon(_pump, redis, client, lambda: link.replies_s)
            except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                scope.cancel()  # either side closed: so does the other
            finally:
                await redis.aclose()
                await client.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, relay, 0, host="127.0.0.1"))
        link.url = f"redis://127.0.0.1:{listeners[0].socket.getsockname()[1]}/{db}"
        yield link
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def two_nodes(tmp_path: Path, urls: list[str], postgres_url: str) -> AsyncIterator[list[str]]:
    """Node ``i`` on broker URL ``urls[i]`` (one Redis), all on one store; yields their URLs."""
    async with AsyncExitStack() as stack:
        served = []
        for i, broker_url in enumerate(urls):
            where = tmp_path / f"node{i}"
            where.mkdir()
            config = (f'\n[auth]\nmods = ["mod1"]\n[api]\nkeys = ["{API_KEY}"]\n'
                      f'[cluster]\nnode_id = "node-{i}"\nnode_ttl_s = 10\n')
            _, url = await stack.enter_async_context(daemon(
                where, "node", "--broker-url", broker_url, "--history-url", postgres_url, config_text=config))
            served.append(url)
        yield served


async def call_right_after_the_join(url0: str, url1: str) -> None:
    """alice (node 0) calls bob as soon as his join on node 1 is acked: bob's device rings. Looking
    again changes no verdict: dave, in no room with alice, is still refused (and does not ring)."""
    async with connect(url0, user="alice") as alice, connect(url1, user="bob") as bob, \
            connect(url1, user="dave") as dave:
        await alice.request("room.join", {"room": "lobby"})
        await bob.request("room.join", {"room": "lobby"})
        offered = await alice.request("call.offer", {"target_id": "bob", "call_type": "audio", "sdp": SDP})
        seen = await wait_for(bob, [], lambda s: bool(of("call.offer", s)))
        assert of("call.offer", seen) == [
            {"from_user": "alice", "call_id": offered["call_id"], "call_type": "audio", "sdp": SDP}]
        await dave.request("room.join", {"room": "elsewhere"})
        reply = await alice.request_raw("call.offer", {"target_id": "dave", "call_type": "audio", "sdp": SDP})
        assert (reply["type"], reply["data"]["code"]) == ("error", "FORBIDDEN")
        assert (await dave.request_raw("presence.ping"))["type"] == "presence.pong"
        assert not [e for e in dave.pending_events() if e["type"].startswith("call.")]


async def api_kick_right_after_the_join(url0: str, url1: str) -> None:
    """``POST /api/v1/kick`` on node 0 as soon as gus's join on node 1 is acked: he is kicked."""
    import httpx

    async with connect(url1, user="gus") as gus, httpx.AsyncClient(
            base_url=url0.replace("ws://", "http://").rstrip("/"),
            headers={"authorization": f"Bearer {API_KEY}"}) as http:
        await gus.request("room.join", {"room": "yard"})
        answer = await http.post("/api/v1/kick", json={"room": "yard", "user_id": "gus", "reason": "spam"})
        assert answer.status_code == 200, answer.text
        seen = await wait_for(gus, [], lambda s: bool(of("room.kicked", s)))
        assert of("room.kicked", seen) == [{"room": "yard", "by": "$system", "reason": "spam"}]


async def members_right_after_the_join(url0: str, url1: str) -> None:
    """carol joins on node 0 (which already hears the room) as soon as frank's join on node 1 is
    acked: her member list has frank."""
    async with connect(url0, user="alice") as alice, connect(url0, user="carol") as carol, \
            connect(url1, user="frank") as frank:
        await alice.request("room.join", {"room": "hall"})
        await frank.request("room.join", {"room": "hall"})
        members = (await carol.request("room.join", {"room": "hall"}))["members"]
        assert [m["user_id"] for m in members] == ["alice", "carol", "frank"]


async def kick_right_after_the_join(url0: str, url1: str) -> None:
    """mod1 (node 0) kicks erin as soon as her join on node 1 is acked: she is kicked."""
    async with connect(url0, user="mod1") as mod, connect(url1, user="erin") as erin:
        await mod.request("room.join", {"room": "lobby"})
        await erin.request("room.join", {"room": "lobby"})
        await mod.request("room.kick", {"room": "lobby", "user_id": "erin", "reason": "spam"})
        seen = await wait_for(erin, [], lambda s: bool(of("room.kicked", s)))
        assert of("room.kicked", seen) == [{"room": "lobby", "by": "mod1", "reason": "spam"}]


@pytest.mark.parametrize("slow", ["callers-node-hears-late", "callees-node-tells-late"])
async def test_a_call_or_a_kick_right_after_the_users_join_on_another_node_reaches_them(
    tmp_path: Path, redis_url: str, postgres_url: str, slow: str
) -> None:
    """The caller's node hears bob's join late (its pub/sub held), or bob's node sends it late (its
    writes held): either way bob's join was acked, so alice's call must not be refused FORBIDDEN
    (nor a moderator's kick of a user who just joined NOT_IN_ROOM)."""
    async with slow_link(redis_url) as link:
        urls = [link.url, redis_url] if slow == "callers-node-hears-late" else [redis_url, link.url]
        async with two_nodes(tmp_path, urls, postgres_url) as (url0, url1):
            if slow == "callers-node-hears-late":  # (held once the nodes are up: their start is not the test)
                link.replies_s = HELD_S
            else:
                link.requests_s = HELD_S
            await call_right_after_the_join(url0, url1)
            await kick_right_after_the_join(url0, url1)
            await members_right_after_the_join(url0, url1)
            await api_kick_right_after_the_join(url0, url1)



async def test_a_join_does_not_wait_out_a_broker_that_hangs(tmp_path: Path, redis_url: str, postgres_url: str) -> None:
    """What a node sends to Redis stops reaching it for 3 s: a join in a room the node already
    hears (no subscription to wait for) is acked after at most about 1 s (JOIN_PUBLISHED_S), not
    when the broker answers again."""
    async with slow_link(redis_url) as slow, two_nodes(tmp_path, [slow.url], postgres_url) as (url0,), \
            connect(url0, user="alice") as alice, connect(url0, user="bob") as bob:
        await alice.request("room.join", {"room": "lobby"})
        slow.requests_s = 3.0
        started = trio.current_time()
        await bob.request("room.join", {"room": "lobby"})
        assert trio.current_time() - started < 2.5
