"""Nodes that die and come back, and users caught between two nodes: real daemons on a private
Redis and PostgreSQL (docs/cluster.md, "When something fails")."""

from __future__ import annotations

import secrets
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import daemon
from redis_fixture import RedisServer
from test_cluster import Event, alice_and_bob_in_lobby, nodes, of, wait_for

from signald.client.raw import SignaldClient, connect
from signald.cluster.wire import Names

pytestmark = pytest.mark.timeout(90)


@asynccontextmanager
async def node_1_again(tmp_path: Path, redis_url: str, postgres_url: str, ttl: float) -> AsyncIterator[None]:
    """node 1 of :func:`test_cluster.nodes` started again under its ``node_id`` (as ``serve
    --workers`` does for a dead worker), in a directory of its own."""
    again = tmp_path / "again"
    again.mkdir()
    config = f'\n[cluster]\nnode_id = "node-1"\nnode_ttl_s = {ttl}\n'
    async with daemon(again, "node", "--broker-url", redis_url, "--history-url", postgres_url, config_text=config):
        yield


async def test_a_node_restarted_at_once_under_its_node_id_takes_its_old_devices_offline(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    """A supervisor (systemd, ``serve --workers``) starts a killed node again within ``node_ttl_s``
    under the same ``node_id``: its heartbeat never stops, so the others must learn from the new
    incarnation that the old one's devices are gone."""
    ttl = 5.0  # the restart comes well within it
    async with nodes(tmp_path, redis_url, postgres_url, 2, ttl=ttl) as started, AsyncExitStack() as stack:
        (_, url0), (doomed, _url1) = started
        alice = await stack.enter_async_context(connect(url0, user="alice"))
        await alice.request("room.join", {"room": "lobby"})
        async with connect(_url1, user="bob") as bob:
            await bob.request("room.join", {"room": "lobby"})
            await wait_for(alice, [], lambda s: bool(of("member.joined", s)))
            doomed.send_signal(signal.SIGKILL)
            await doomed.wait()
        async with node_1_again(tmp_path, redis_url, postgres_url, ttl):
            left = ("member.left", {"room": "lobby", "user_id": "bob"})
            offline = ("presence.update", {"user_id": "bob", "status": "offline"})
            # not after the TTL: the node under that id never stopped beating
            await wait_for(alice, [], lambda s: left in s and offline in s, within=ttl)
            members = (await alice.request("room.join", {"room": "lobby"}))["members"]
            assert [m["user_id"] for m in members] == ["alice"]


def kill_command_connections(redis: RedisServer, pid: int) -> None:
    """Close the connections to ``redis`` of process ``pid`` that are not its pub/sub."""
    import psutil

    mine = {f"{c.laddr.ip}:{c.laddr.port}" for c in psutil.Process(pid).net_connections("tcp")
            if c.raddr and c.raddr.port == redis.port}
    listed = redis.command("CLIENT", "LIST").decode().splitlines()
    fields = [dict(item.split("=", 1) for item in line.split() if "=" in item) for line in listed]
    killed = [f["addr"] for f in fields if f.get("addr") in mine and "P" not in f.get("flags", "")]
    assert killed
    for addr in killed:
        redis.command("CLIENT", "KILL", "ADDR", addr)


async def test_a_leave_and_a_close_whose_writes_were_lost_reach_the_others_after_the_repair(
    tmp_path: Path, redis_url: str, redis_server: RedisServer, postgres_url: str
) -> None:
    """Only node 1's command connections break (its pub/sub stays; node 0 loses nothing, so it
    reloads nothing): the batch that carried carol's leave is lost with node 1's writer connection.
    The resync that follows must tell the others what changed meanwhile, not only what is."""
    async with nodes(tmp_path, redis_url, postgres_url, 2) as started, AsyncExitStack() as stack:
        (_, url0), (_, url1) = started
        alice = await stack.enter_async_context(connect(url0, user="alice"))
        await alice.request("room.join", {"room": "lobby"})
        carol = await stack.enter_async_context(connect(url1, user="carol"))
        seen: list[Event] = []
        async with connect(url1, user="dave") as dave:
            for client in (carol, dave):
                await client.request("room.join", {"room": "lobby"})
            await wait_for(alice, seen, lambda s: len(of("member.joined", s)) == 2)
            kill_command_connections(redis_server, started[1][0].pid)
            await carol.request("room.leave", {"room": "lobby"})
        gone = [("member.left", {"room": "lobby", "user_id": "carol"}),
                ("member.left", {"room": "lobby", "user_id": "dave"}),
                ("presence.update", {"user_id": "dave", "status": "offline"})]
        await wait_for(alice, seen, lambda s: all(event in s for event in gone))
        members = (await alice.request("room.join", {"room": "lobby"}))["members"]
        assert [m["user_id"] for m in members] == ["alice"]


async def test_a_status_chosen_on_a_node_that_died_does_not_come_back_with_the_user(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    """bob chose ``away`` on node 1, which dies; back on node 0 he is ``online`` (a user whose every
    device went away starts afresh, as on one node), and a node that starts later must say so too:
    it loads the statuses from Redis."""
    ttl = 1.0
    async with nodes(tmp_path, redis_url, postgres_url, 2, ttl=ttl) as started, AsyncExitStack() as stack:
        (_, url0), (doomed, url1) = started
        alice = await stack.enter_async_context(connect(url0, user="alice"))
        await alice.request("room.join", {"room": "lobby"})
        seen: list[Event] = []
        async with connect(url1, user="bob") as bob:
            await bob.request("room.join", {"room": "lobby"})
            await bob.request("presence.set", {"status": "away"})
            await wait_for(alice, seen, lambda s: ("presence.update", {"user_id": "bob", "status": "away"}) in s)
            doomed.send_signal(signal.SIGKILL)
            await doomed.wait()
        await wait_for(alice, seen, lambda s: ("presence.update", {"user_id": "bob", "status": "offline"}) in s,
                       within=ttl * 6)
        bob = await stack.enter_async_context(connect(url0, user="bob"))
        await bob.request("room.join", {"room": "lobby"})
        later = tmp_path / "later"
        later.mkdir()
        config = f'\n[cluster]\nnode_id = "node-2"\nnode_ttl_s = {ttl}\n'
        async with daemon(later, "node", "--broker-url", redis_url, "--history-url", postgres_url,
                          config_text=config) as (_, url2), connect(url2, user="carol") as carol:
            members = (await carol.request("room.join", {"room": "lobby"}))["members"]
            assert [(m["user_id"], m["status"]) for m in members] == [
                ("alice", "online"), ("bob", "online"), ("carol", "online")]


async def rung(alice: SignaldClient, bob: SignaldClient, sdp: dict[str, Any]) -> str:
    """alice calls bob; returns the call's id once bob's device rings."""
    call_id: str = (await alice.request("call.offer", {"target_id": "bob", "call_type": "audio",
                                                        "sdp": sdp}))["call_id"]
    await wait_for(bob, [], lambda s: bool(of("call.offer", s)))
    return call_id


async def test_a_hangup_whose_write_was_lost_still_ends_the_call_on_the_other_node(
    tmp_path: Path, redis_url: str, redis_server: RedisServer, postgres_url: str
) -> None:
    """alice (node 1) hangs up just as node 1's writer connection breaks: bob (node 0) must still
    get ``call.end`` and be free again, for carol too, once node 1 is back on the broker."""
    sdp = {"type": "offer", "sdp": "v=0"}
    async with nodes(tmp_path, redis_url, postgres_url, 2) as started, AsyncExitStack() as stack:
        (_, url0), (_, url1) = started
        bob = await stack.enter_async_context(connect(url0, user="bob"))
        carol = await stack.enter_async_context(connect(url0, user="carol"))
        alice = await stack.enter_async_context(connect(url1, user="alice"))
        for client in (alice, bob, carol):
            await client.request("room.join", {"room": "lobby"})
        call_id = await rung(alice, bob, sdp)
        await bob.request("call.answer", {"target_id": "alice", "sdp": sdp, "call_id": call_id})
        carol_seen: list[Event] = []
        await wait_for(carol, carol_seen, lambda s: ("presence.update", {"user_id": "bob", "status": "busy"}) in s)
        kill_command_connections(redis_server, started[1][0].pid)
        await alice.request("call.end", {"target_id": "bob", "call_id": call_id})
        bob_seen = await wait_for(bob, [], lambda s: bool(of("call.end", s)), within=5.0)
        # told again as it was: alice's own reason (none given: ``hangup``), not a guess
        assert of("call.end", bob_seen) == [{"from_user": "alice", "call_id": call_id, "reason": "hangup"}]
        await wait_for(carol, carol_seen, lambda s: ("presence.update", {"user_id": "bob", "status": "online"}) in s)
        again = await carol.request("call.offer", {"target_id": "bob", "call_type": "audio", "sdp": sdp})
        await wait_for(bob, [], lambda s: ("call.offer", {"from_user": "carol", "call_id": again["call_id"],
                                                         "call_type": "audio", "sdp": sdp}) in s)


async def test_an_answer_whose_write_was_lost_still_reaches_the_caller_on_the_other_node(
    tmp_path: Path, redis_url: str, redis_server: RedisServer, postgres_url: str
) -> None:
    """bob (node 1) answers just as node 1's command connections break: alice (node 0) must still
    get ``call.answer`` (with bob's sdp) once node 1 is back, not a ``timeout`` after the ring time."""
    sdp, answer_sdp = {"type": "offer", "sdp": "v=0"}, {"type": "answer", "sdp": "v=0 bob"}
    async with nodes(tmp_path, redis_url, postgres_url, 2) as started, AsyncExitStack() as stack:
        (_, url0), (_, url1) = started
        alice, bob = await alice_and_bob_in_lobby(stack, url0, url1)
        call_id = await rung(alice, bob, sdp)
        kill_command_connections(redis_server, started[1][0].pid)
        await bob.request("call.answer", {"target_id": "alice", "sdp": answer_sdp, "call_id": call_id})
        seen = await wait_for(alice, [], lambda s: bool(of("call.answer", s) or of("call.end", s)), within=8.0)
        assert of("call.answer", seen) == [{"from_user": "bob", "call_id": call_id, "sdp": answer_sdp}]
        await bob.request("call.end", {"target_id": "alice", "call_id": call_id})
        seen = await wait_for(alice, [], lambda s: bool(of("call.end", s)))
        assert of("call.end", seen) == [{"from_user": "bob", "call_id": call_id, "reason": "hangup"}]


async def members_on(url: str, room: str, user: str, expected: list[str]) -> None:
    """Wait (10 s at most) until a new device of ``user`` joining ``room`` at ``url`` is told ``expected``."""
    async with connect(url, user=user) as client:
        with trio.fail_after(10):
            while [m["user_id"] for m in (await client.request("room.join", {"room": room}))["members"]] != expected:
                await client.request("room.leave", {"room": room})
                await trio.sleep(0.05)


async def test_a_kick_whose_write_was_lost_still_takes_the_user_out_on_every_node(
    tmp_path: Path, redis_url: str, redis_server: RedisServer, postgres_url: str
) -> None:
    """mod1 (node 1) kicks dave (node 0) just as node 1's command connections break: dave must still
    be kicked once node 1 is back, and node 1 must not take him back in when it reloads the records."""
    mods = '\n[auth]\nmods = ["mod1"]\n'
    async with nodes(tmp_path, redis_url, postgres_url, 2, limits=mods) as started, AsyncExitStack() as stack:
        (_, url0), (_, url1) = started
        alice = await stack.enter_async_context(connect(url0, user="alice"))
        dave = await stack.enter_async_context(connect(url0, user="dave"))
        mod = await stack.enter_async_context(connect(url1, user="mod1"))
        for client in (alice, dave, mod):
            await client.request("room.join", {"room": "lobby"})
        seen: list[Event] = []
        await wait_for(alice, seen, lambda s: len(of("member.joined", s)) == 2)
        kill_command_connections(redis_server, started[1][0].pid)
        await mod.request("room.kick", {"room": "lobby", "user_id": "dave", "reason": "spam"})
        kicked = await wait_for(dave, [], lambda s: bool(of("room.kicked", s)), within=8.0)
        assert of("room.kicked", kicked) == [{"room": "lobby", "by": "mod1", "reason": "spam"}]
        await wait_for(alice, seen, lambda s: ("member.left", {"room": "lobby", "user_id": "dave"}) in s)
        await members_on(url1, "lobby", "erin", ["alice", "erin", "mod1"])
        await members_on(url0, "lobby", "erin", ["alice", "erin", "mod1"])

        def erin_came_and_went(s: list[Event]) -> bool:
            erin = {"room": "lobby", "user_id": "erin"}
            came, went = (s.count((kind, erin)) for kind in ("member.joined", "member.left"))
            return came == went >= 2

        # node 1 did not take dave back in, not even for a moment, when it reloaded the records
        mod_seen = await wait_for(mod, [], erin_came_and_went)
        assert [d["user_id"] for d in of("member.joined", mod_seen)] == ["erin"] * len(of("member.joined", mod_seen))


class CutOff:
    """Two nodes; node 1 reaches Redis as a user of its own, so that :meth:`cut` can keep it off the
    broker (the user switched off, every connection of it closed: it cannot reconnect) until
    :meth:`let_back`. Unlike closing its connections, nothing it would hear meanwhile reaches it."""

    def __init__(self, redis_server: RedisServer, redis_url: str) -> None:
        self.redis, self.user = redis_server, f"n1-{secrets.token_hex(4)}"
        self.urls = [redis_url, redis_url.replace("redis://", f"redis://{self.user}:pw@")]

    def cut(self) -> None:
        self.redis.command("ACL", "SETUSER", self.user, "off")
        self.redis.command("CLIENT", "KILL", "USER", self.user)

    def let_back(self) -> None:
        self.redis.command("ACL", "SETUSER", self.user, "on")

    @asynccontextmanager
    async def nodes(self, tmp_path: Path, postgres_url: str) -> AsyncIterator[tuple[str, str]]:
        self.redis.command("ACL", "SETUSER", self.user, "on", ">pw", "~*", "&*", "+@all")
        try:
            async with AsyncExitStack() as stack:
                urls = []
                for i, broker in enumerate(self.urls):
                    (tmp_path / f"node{i}").mkdir()
                    urls.append((await stack.enter_async_context(daemon(
                        tmp_path / f"node{i}", "node", "--broker-url", broker, "--history-url", postgres_url,
                        config_text=f'\n[cluster]\nnode_id = "node-{i}"\nnode_ttl_s = 10\n')))[1])
                yield urls[0], urls[1]
        finally:
            self.redis.command("ACL", "DELUSER", self.user)


async def test_a_status_announced_again_after_an_outage_does_not_undo_one_chosen_meanwhile_elsewhere(
    tmp_path: Path, redis_url: str, redis_server: RedisServer, postgres_url: str
) -> None:
    """Node 1 is cut off the broker while bob, on node 0, chooses ``away``; when node 1 is let back,
    it announces bob's status as it knew it (``online``): that older one must not undo ``away`` on
    node 0, and node 1 must learn it."""
    off = CutOff(redis_server, redis_url)
    away = ("presence.update", {"user_id": "bob", "status": "away"})
    async with off.nodes(tmp_path, postgres_url) as (url0, url1), AsyncExitStack() as stack:
        places = [("alice", url0), ("bob", url0), ("bob", url1), ("carol", url1)]
        alice, bob0, bob1, carol = [await stack.enter_async_context(connect(url, user=name)) for name, url in places]
        for client in (alice, bob0, bob1, carol):
            await client.request("room.join", {"room": "lobby"})
        seen: list[Event] = []
        await wait_for(alice, seen, lambda s: len(of("member.joined", s)) == 2)  # bob, carol
        off.cut()
        await bob0.request("presence.set", {"status": "away"})
        await wait_for(alice, seen, lambda s: away in s)
        off.let_back()
        await wait_for(carol, [], lambda s: away in s, within=15.0)
        async with connect(url0, user="erin") as erin:
            members = (await erin.request("room.join", {"room": "lobby"}))["members"]
            assert {m["user_id"]: m["status"] for m in members}["bob"] == "away"
            await wait_for(alice, seen, lambda s: ("member.joined", {"room": "lobby", "user_id": "erin"}) in s)
        assert [d["status"] for d in of("presence.update", seen) if d["user_id"] == "bob"] == ["away"]


async def test_a_hangup_a_node_did_not_hear_while_cut_off_reaches_its_party_once_it_is_back(
    tmp_path: Path, redis_url: str, redis_server: RedisServer, postgres_url: str
) -> None:
    """alice (node 0) hangs up while node 1, where bob is, is cut off the broker: node 0's write
    went through, but node 1 never heard it. Back on the broker, node 1 asks the others to tell
    their calls again, and bob gets ``call.end`` as alice sent it."""
    off, sdp = CutOff(redis_server, redis_url), {"type": "offer", "sdp": "v=0"}
    async with off.nodes(tmp_path, postgres_url) as (url0, url1), AsyncExitStack() as stack:
        alice, bob = await alice_and_bob_in_lobby(stack, url0, url1)
        call_id = await rung(alice, bob, sdp)
        await bob.request("call.answer", {"target_id": "alice", "sdp": sdp, "call_id": call_id})
        await wait_for(alice, [], lambda s: bool(of("call.answer", s)))
        off.cut()
        await alice.request("call.end", {"target_id": "bob", "call_id": call_id, "reason": "bye"})
        off.let_back()
        seen = await wait_for(bob, [], lambda s: bool(of("call.end", s)), within=15.0)
        assert of("call.end", seen) == [{"from_user": "alice", "call_id": call_id, "reason": "bye"}]


async def test_a_node_restarted_under_its_node_id_takes_its_old_users_chosen_statuses_out_of_redis(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    """bob chose ``away`` on node 1, which is killed and started again at once under its node id:
    with his devices, his chosen status must go from Redis (carol's stays: she is still on node 0),
    or a node that loads the statuses later holds a status nobody connected chose."""
    import coredis

    ttl, names = 5.0, Names(redis_url)
    async with nodes(tmp_path, redis_url, postgres_url, 2, ttl=ttl) as started, AsyncExitStack() as stack:
        (_, url0), (doomed, url1) = started
        alice = await stack.enter_async_context(connect(url0, user="alice"))
        carol = await stack.enter_async_context(connect(url0, user="carol"))
        for client in (alice, carol):
            await client.request("room.join", {"room": "lobby"})
        await carol.request("presence.set", {"status": "busy"})
        seen: list[Event] = []
        async with connect(url1, user="bob") as bob, connect(url1, user="carol") as carol1:
            for client in (bob, carol1):
                await client.request("room.join", {"room": "lobby"})
            await bob.request("presence.set", {"status": "away"})
            await wait_for(alice, seen, lambda s: ("presence.update", {"user_id": "bob", "status": "away"}) in s)
            doomed.send_signal(signal.SIGKILL)
            await doomed.wait()
        async with node_1_again(tmp_path, redis_url, postgres_url, ttl):
            await wait_for(alice, seen, lambda s: ("presence.update", {"user_id": "bob", "status": "offline"}) in s,
                           within=ttl)
            redis: coredis.Redis[bytes] = coredis.Redis.from_url(redis_url)
            async with redis:  # written in the batch before the publish that took bob offline
                assert not await redis.hexists(names.status, "bob")
                assert await redis.hget(names.status, "carol") == b"busy"
