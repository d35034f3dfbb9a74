"""A room's order across nodes when a committed change is never published (docs/cluster.md).

The node that "dies between commit and publish" is this test process: it commits a message into
the shared PostgreSQL store and publishes nothing, exactly what a node killed at that moment
leaves behind. The next change published into the room leaves a gap every node must fill from
the store after the hold time, and the lost change's publish turning up late must not deliver it
twice.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import coredis
import pytest
import trio
from test_cluster import Event, nodes, of, wait_for

from signald.client.raw import SignaldClient, connect
from signald.cluster.wire import STATE_ENCODER, Names, RoomEnvelope
from signald.delivery.frames import Frame
from signald.history.factory import make_store
from signald.protocol import ChatMessageEvent

pytestmark = pytest.mark.timeout(60)


async def test_a_change_committed_but_never_published_is_filled_from_the_store_in_order_on_every_node(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    async with nodes(tmp_path, redis_url, postgres_url, 2) as started, AsyncExitStack() as stack:
        (_, url0), (_, url1) = started
        alice = await stack.enter_async_context(connect(url0, user="alice"))
        bob = await stack.enter_async_context(connect(url1, user="bob"))
        carol = await stack.enter_async_context(connect(url1, user="carol"))
        for client in (alice, bob, carol):
            await client.request("room.join", {"room": "lobby"})
        first = await alice.request("chat.send", {"scope": "lobby", "body": "first"})
        seen: dict[SignaldClient, list[Event]] = {bob: [], carol: [], alice: []}
        for client in (bob, carol):
            await wait_for(client, seen[client], lambda s: bool(of("chat.message", s)))

        async with make_store(postgres_url) as store:  # a node commits, then dies before it publishes
            lost, _ = await store.send(room="lobby", user_id="dave", body="committed, never published")
        assert lost.rev == first["rev"] + 1
        after = await alice.request("chat.send", {"scope": "lobby", "body": "after"})
        assert after["rev"] == lost.rev + 1

        bodies = ["first", "committed, never published", "after"]
        for client in (bob, carol):  # on the other node: held 0.5 s, then the store fills the gap
            await wait_for(client, seen[client], lambda s: len(of("chat.message", s)) == 3)
            assert [m["body"] for m in of("chat.message", seen[client])] == bodies
            assert [m["rev"] for m in of("chat.message", seen[client])] == [first["rev"], lost.rev, after["rev"]]
        # on the sender's node too (its own change waited for the one before it; the sender has its ack)
        await wait_for(alice, seen[alice], lambda s: bool(of("chat.message", s)))
        assert [m["body"] for m in of("chat.message", seen[alice])] == ["committed, never published"]

        # the lost publish turns up after all: every node drops it (what it said was delivered)
        names = Names(redis_url)
        text = Frame(ChatMessageEvent(data=lost)).text.encode()
        client = coredis.Redis.from_url(redis_url, decode_responses=False)
        async with client:
            await client.publish(names.room("lobby"), STATE_ENCODER.encode(RoomEnvelope("ghost", None, True, text)))
        final = await alice.request("chat.send", {"scope": "lobby", "body": "final"})  # on the room's channel after it
        last = await bob.request("chat.send", {"scope": "lobby", "body": "last"})  # node 0 hears it after the ghost
        for client in (carol, alice):
            await wait_for(client, seen[client], lambda s: any(m["body"] == "last" for m in of("chat.message", s)))
        assert [m["rev"] for m in of("chat.message", seen[carol])] == [
            first["rev"], lost.rev, after["rev"], final["rev"], last["rev"]]
        assert [m["rev"] for m in of("chat.message", seen[alice])] == [lost.rev, last["rev"]]
        await wait_for(bob, seen[bob], lambda s: any(m["body"] == "final" for m in of("chat.message", s)))
        assert [m["rev"] for m in of("chat.message", seen[bob])] == [first["rev"], lost.rev, after["rev"], final["rev"]]


async def test_a_join_that_brings_a_room_to_its_node_mid_burst_gets_every_change_once_in_order(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    """Two nodes commit into a room while a join on a third node, which had nobody in it, reads it:
    the ack's changes and the live events add up to every change, once, live ones in ``rev`` order."""
    per_sender, rooms = 20, 4
    async with nodes(tmp_path, redis_url, postgres_url, 3) as started, AsyncExitStack() as stack:
        alice = await stack.enter_async_context(connect(started[0][1], user="alice"))
        carol = await stack.enter_async_context(connect(started[2][1], user="carol"))
        for attempt in range(rooms):
            room = f"burst-{attempt}"
            for sender in (alice, carol):
                await sender.request("room.join", {"room": room})
            bob = await stack.enter_async_context(connect(started[1][1], user=f"bob{attempt}"))

            async def burst(sender: SignaldClient, name: str, room: str = room) -> None:
                for i in range(per_sender):  # pipelined: no ack awaited
                    await sender.send({"type": "chat.send", "id": i, "data": {"scope": room, "body": f"{name} {i}"}})

            ack: dict[str, Any] = {}

            async def join(room: str = room, bob: SignaldClient = bob, ack: dict[str, Any] = ack) -> None:
                await wait_for(alice, [], lambda s: bool(of("ack", s)))  # the burst has begun
                ack.update(await bob.request("room.join", {"room": room, "since_rev": 0}))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(burst, alice, "alice")
                nursery.start_soon(burst, carol, "carol")
                nursery.start_soon(join)
            total, at = 2 * per_sender, ack["rev"]
            assert [change["rev"] for change in ack["changes"]] == list(range(1, at + 1))
            live: list[Event] = []
            await wait_for(bob, live, lambda s, at=at, total=total: at + len(of("chat.message", s)) >= total)
            assert [m["rev"] for m in of("chat.message", live)] == list(range(at + 1, total + 1)), (attempt, at)
