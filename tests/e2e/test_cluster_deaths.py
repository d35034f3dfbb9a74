"""A node that dies or stops while its users are in the middle of something: the others see
what one node shows when those users disconnect. Real daemons on a private Redis and PostgreSQL
(docs/cluster.md, "When something fails")."""

from __future__ import annotations

import signal
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
from test_cluster import Event, nodes, of, wait_for
from test_cluster_timers import quiet_for

from signald.client.raw import SignaldClient, connect

pytestmark = pytest.mark.timeout(90)

SDP = {"type": "offer", "sdp": "v=0"}
TTL = 1.0


async def devices_seen(observer: SignaldClient, user: str, count: int) -> None:
    """Wait until ``observer``'s node lists ``count`` devices of ``user`` in lobby."""
    with trio.fail_after(5):
        while True:
            members = (await observer.request("room.join", {"room": "lobby"}))["members"]
            if [len(m["devices"]) for m in members if m["user_id"] == user] == [count]:
                return
            await trio.sleep(0.02)


async def test_a_callers_node_killed_mid_call_leaves_the_callee_free_for_the_next_call(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    async with nodes(tmp_path, redis_url, postgres_url, 3, ttl=TTL) as started, AsyncExitStack() as stack:
        (_, url0), (doomed, url1), (_, url2) = started
        bob = await stack.enter_async_context(connect(url0, user="bob"))
        carol = await stack.enter_async_context(connect(url2, user="carol"))
        carol_seen: list[Event] = []
        async with connect(url1, user="alice") as alice:
            for client in (alice, bob, carol):
                await client.request("room.join", {"room": "lobby"})
            call_id = (await alice.request("call.offer", {"target_id": "bob", "call_type": "audio", "sdp": SDP}))[
                "call_id"]
            await wait_for(bob, [], lambda s: bool(of("call.offer", s)))
            await bob.request("call.answer", {"target_id": "alice", "sdp": SDP, "call_id": call_id})
            await wait_for(carol, carol_seen, lambda s: ("presence.update", {"user_id": "bob", "status": "busy"}) in s)
            doomed.send_signal(signal.SIGKILL)
            await doomed.wait()
        seen = await wait_for(bob, [], lambda s: bool(of("call.end", s)), within=TTL * 6)
        assert of("call.end", seen) == [{"from_user": "alice", "call_id": call_id, "reason": "disconnected"}]
        await wait_for(carol, carol_seen, lambda s: ("presence.update", {"user_id": "bob", "status": "online"}) in s)
        await carol.request("call.offer", {"target_id": "bob", "call_type": "audio", "sdp": SDP})
        await wait_for(bob, [], lambda s: bool(of("call.offer", s)))  # rung, not refused busy
        assert not of("call.end", await quiet_for(carol, 0.3))


async def test_a_node_killed_with_the_rooms_other_user_leaves_the_room_waiting_and_nobody_typing(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    async with nodes(tmp_path, redis_url, postgres_url, 2, ttl=TTL) as started, AsyncExitStack() as stack:
        (_, url0), (doomed, url1) = started
        alice = await stack.enter_async_context(connect(url0, user="alice"))
        await alice.request("room.join", {"room": "lobby"})
        async with connect(url1, user="bob") as bob:
            await bob.request("room.join", {"room": "lobby"})
            await bob.request("chat.typing", {"scope": "lobby", "typing": True})
            await wait_for(alice, [], lambda s: bool(of("chat.typing.user", s)))
            doomed.send_signal(signal.SIGKILL)
            await doomed.wait()
        seen = await wait_for(alice, [], lambda s: bool(of("room.waiting", s)), within=TTL * 6)
        seen += await quiet_for(alice, 0.3)
        assert seen == [
            ("chat.typing.user", {"scope": "lobby", "user_id": "bob", "typing": False}),
            ("device.offline", {"device_id": bob.session_id, "user_id": "bob"}),
            ("presence.update", {"user_id": "bob", "status": "offline"}),
            ("member.left", {"room": "lobby", "user_id": "bob"}),
            ("room.waiting", {"room": "lobby"}),
        ], seen


async def test_a_node_stopped_cleanly_takes_its_devices_offline_at_once_and_only_those(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    """SIGTERM, with a TTL far away: bob (only there) leaves, carol (also on node 2) only loses a device."""
    async with nodes(tmp_path, redis_url, postgres_url, 3, ttl=30.0) as started, AsyncExitStack() as stack:
        (_, url0), (stopping, url1), (_, url2) = started
        alice = await stack.enter_async_context(connect(url0, user="alice"))
        clients = [await stack.enter_async_context(connect(url, user=user))
                   for url, user in ((url1, "bob"), (url1, "carol"), (url2, "carol"))]
        for client in (alice, *clients):
            await client.request("room.join", {"room": "lobby"})
        await devices_seen(alice, "carol", 2)
        await alice.request("presence.ping")
        alice.pending_events()
        stopping.send_signal(signal.SIGTERM)
        offline = [("device.offline", {"device_id": clients[0].session_id, "user_id": "bob"}),
                   ("presence.update", {"user_id": "bob", "status": "offline"}),
                   ("member.left", {"room": "lobby", "user_id": "bob"}),
                   ("device.offline", {"device_id": clients[1].session_id, "user_id": "carol"})]
        seen = await wait_for(alice, [], lambda s: all(event in s for event in offline), within=5.0)
        seen += await quiet_for(alice, 0.3)
        assert sorted(seen, key=str) == sorted(offline, key=str), seen
        members = (await alice.request("room.join", {"room": "lobby"}))["members"]
        assert [(m["user_id"], len(m["devices"])) for m in members] == [("alice", 1), ("carol", 1)]


async def test_a_user_who_moved_to_another_node_before_the_old_one_died_stays_in_the_room(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    """bob's client reconnected to node 2 while node 1 still held his old connection; node 1
    dies: only that device goes offline, bob stays in the room and online."""
    async with nodes(tmp_path, redis_url, postgres_url, 3, ttl=TTL) as started, AsyncExitStack() as stack:
        (_, url0), (doomed, url1), (_, url2) = started
        alice = await stack.enter_async_context(connect(url0, user="alice"))
        await alice.request("room.join", {"room": "lobby"})
        moved = await stack.enter_async_context(connect(url2, user="bob"))
        async with connect(url1, user="bob") as old:
            await old.request("room.join", {"room": "lobby"})
            await moved.request("room.join", {"room": "lobby"})
            await devices_seen(alice, "bob", 2)
            alice.pending_events()
            doomed.send_signal(signal.SIGKILL)
            await doomed.wait()
        seen = await wait_for(alice, [], lambda s: bool(of("device.offline", s)), within=TTL * 6)
        seen += await quiet_for(alice, 0.5)
        assert seen == [("device.offline", {"device_id": old.session_id, "user_id": "bob"})], seen
        members = (await alice.request("room.join", {"room": "lobby"}))["members"]
        assert [(m["user_id"], m["status"], m["devices"]) for m in members] == [
            ("alice", "online", [alice.session_id]), ("bob", "online", [moved.session_id])]


async def test_the_nodes_that_die_are_noticed_within_the_ttl_of_their_last_heartbeat(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    """The contract: a dead node's users go offline for the others "within cluster.node_ttl_s". A
    node's last heartbeat is at most when it died, so the others must notice by that beat plus the
    TTL, not at their own next heartbeat after it (up to a third of the TTL later). Two nodes are
    killed at once: their heartbeats are out of step with the observer's (and with each other's)."""
    import time

    import coredis

    from signald.cluster.wire import Names

    ttl = 4.5
    async with nodes(tmp_path, redis_url, postgres_url, 3, ttl=ttl) as started, AsyncExitStack() as stack:
        (_, url0), (doomed1, url1), (doomed2, url2) = started
        redis: coredis.Redis[bytes] = coredis.Redis.from_url(redis_url)
        await stack.enter_async_context(redis)
        alice = await stack.enter_async_context(connect(url0, user="alice"))
        await alice.request("room.join", {"room": "lobby"})
        async with connect(url1, user="bob") as bob, connect(url2, user="carol") as carol:
            for client in (bob, carol):
                await client.request("room.join", {"room": "lobby"})
            await wait_for(alice, [], lambda s: len(of("member.joined", s)) == 2)
            for doomed in (doomed1, doomed2):
                doomed.send_signal(signal.SIGKILL)
                await doomed.wait()
        names = Names(redis_url)
        last_beat = {user: await redis.zscore(names.nodes, node) for user, node in (("bob", "node-1"),
                                                                                   ("carol", "node-2"))}
        late = {}
        with trio.fail_after(ttl * 3):
            while len(late) < 2:
                event = await alice.next_event()
                if event["type"] == "member.left":
                    user = event["data"]["user_id"]
                    late[user] = time.time() - (last_beat[user] or 0) - ttl
        assert all(seconds < 0.25 for seconds in late.values()), late  # after the TTL, at once


async def test_a_dead_nodes_users_leave_no_status_behind_in_redis(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    """A user's chosen status is kept in Redis while the user has a device (docs/cluster.md): when
    the node of bob's last device dies, the survivor that cleans up its records takes bob's status
    out too; carol, still connected on the survivor, keeps hers. Else every user whose last device
    was on a node that died leaves a field in ``status`` for good."""
    import coredis

    from signald.cluster.wire import Names

    names = Names(redis_url)
    async with nodes(tmp_path, redis_url, postgres_url, 2, ttl=TTL) as started, AsyncExitStack() as stack:
        (_, url0), (doomed, url1) = started
        redis: coredis.Redis[bytes] = coredis.Redis.from_url(redis_url)
        await stack.enter_async_context(redis)
        carol = await stack.enter_async_context(connect(url0, user="carol"))
        await carol.request("room.join", {"room": "lobby"})
        await carol.request("presence.set", {"status": "busy"})
        async with connect(url1, user="bob") as bob:
            await bob.request("room.join", {"room": "lobby"})
            await bob.request("presence.set", {"status": "away"})
            await wait_for(carol, [], lambda s: ("presence.update", {"user_id": "bob", "status": "away"}) in s)
            assert set(await redis.hkeys(names.status)) == {b"bob", b"carol"}
            doomed.send_signal(signal.SIGKILL)
            await doomed.wait()
        await wait_for(carol, [], lambda s: bool(of("member.left", s)), within=TTL * 6)
        with trio.fail_after(TTL * 6):  # the survivor's clean-up ends with node-1 out of the set
            while await redis.zscore(names.nodes, "node-1") is not None:  # noqa: ASYNC110 - polls Redis
                await trio.sleep(0.05)
        assert set(await redis.hkeys(names.status)) == {b"carol"}
