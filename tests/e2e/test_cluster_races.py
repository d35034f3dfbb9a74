"""Requests on two nodes at the same moment that one node would have taken one after the other:
every node must end with the same room membership (tests/over_nodes.py: over 1 node and 3)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import make_config, start_server
from over_nodes import Nodes, settle, url_of

from signald.client.raw import connect
from signald.errors import SignalError
from signald.server import RunningServer

pytestmark = pytest.mark.usefixtures("nodes")


def hubs(server: Any) -> list[Any]:
    return [node.hub for node in server.nodes] if isinstance(server, Nodes) else [server.hub]


def views(server: Any, user: str, room: str) -> list[list[str]]:
    """Which devices of ``user`` each node holds in ``room``."""
    return [sorted(hub.rooms.devices_of(user, room)) for hub in hubs(server)]


async def test_a_kick_racing_a_join_of_another_device_of_the_user_ends_the_same_on_every_node(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The moderator's node kicks alice while her second device joins on a third node: whether that
    device is in the room or not afterwards, every node (and the device itself) says the same."""
    server: RunningServer = await start_server(nursery, make_config(tmp_path, auth={"mods": ["mod1"]}))
    async with connect(server.url, user="mod1") as mod, connect(server.url, user="alice") as a1, \
            connect(server.url, user="alice") as a2:
        await mod.request("room.join", {"room": "lobby"})
        for step in range(20):
            await a1.request("room.join", {"room": "lobby"})
            await settle()
            async with trio.open_nursery() as racing:
                racing.start_soon(a2.request, "room.join", {"room": "lobby"})
                await trio.sleep(step * 0.0003)  # the kick a little later each time: some land mid-join
                racing.start_soon(mod.request, "room.kick", {"room": "lobby", "user_id": "alice"})
            await settle()
            seen = views(server, "alice", "lobby")
            assert all(view == seen[0] for view in seen), seen
            rooms = (await a2.request("session.info"))["rooms"]
            assert (a2.session_id in seen[0]) == (rooms == ["lobby"]), (seen, rooms)
            for device in (a1, a2):
                with contextlib.suppress(SignalError):  # out already
                    await device.request("room.leave", {"room": "lobby"})
            await settle()


async def test_two_devices_choosing_a_status_at_once_on_two_nodes_end_with_one_status_everywhere(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Last writer wins across devices: when the two writes cross between nodes, every node must
    still pick the same last one."""
    server: RunningServer = await start_server(nursery, make_config(tmp_path))
    async with connect(server.url, user="bob") as bob, connect(server.url, user="alice") as a1, \
            connect(server.url, user="alice") as a2:
        for client in (bob, a1, a2):
            await client.request("room.join", {"room": "lobby"})
        for step in range(20):
            first, second = ("away", "busy") if step % 2 else ("busy", "away")
            async with trio.open_nursery() as racing:
                racing.start_soon(a1.request, "presence.set", {"status": first})
                await trio.sleep(step * 0.0002)
                racing.start_soon(a2.request, "presence.set", {"status": second})
            await settle()
            chosen = [hub.presence.chosen_status("alice") for hub in hubs(server)]
            assert len(set(chosen)) == 1, (step, chosen)
            await a1.request("presence.set", {"status": "online"})
            await settle()


async def test_two_devices_of_a_user_joining_and_leaving_at_once_on_two_nodes_are_one_member(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """First device in and last device out across nodes: however the two devices' joins and leaves
    cross, the others hear one ``member.joined`` and one ``member.left`` per round."""
    server: RunningServer = await start_server(nursery, make_config(tmp_path))
    async with connect(server.url, user="alice") as alice, connect(server.url, user="bob") as b1, \
            connect(server.url, user="bob") as b2:
        await alice.request("room.join", {"room": "lobby"})
        rounds = 10
        for step in range(rounds):
            for kind in ("room.join", "room.leave"):
                async with trio.open_nursery() as racing:
                    racing.start_soon(b1.request, kind, {"room": "lobby"})
                    await trio.sleep(step * 0.0002)
                    racing.start_soon(b2.request, kind, {"room": "lobby"})
                await settle()
                assert len({tuple(view) for view in views(server, "bob", "lobby")}) == 1
        await settle()
        await alice.request("presence.ping")
        seen = [event["type"] for event in alice.pending_events() if event["type"].startswith("member.")]
        assert seen == ["member.joined", "member.left"] * rounds, seen


async def test_a_node_that_takes_a_dead_nodes_devices_offline_forgets_their_users_status_stamps(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The stamps a node keeps (signald.cluster.stamps) are for users with a device somewhere: a
    user whose last device was on a node that died is forgotten too, as one who disconnected is
    (else every such user stays in every survivor's table for good)."""
    server: Any = await start_server(nursery, make_config(tmp_path))
    if not isinstance(server, Nodes):
        pytest.skip("status stamps are a cluster's")
    async with connect(url_of(server, 1), user="alice") as alice:
        await alice.request("presence.set", {"status": "away"})
        await settle()
        survivor = server.nodes[0].hub.replica
        assert survivor.stamps.later("alice", 1.0, "node-9") is False  # alice's stamp is held
        survivor.nodes.forget("node-1")  # what a survivor does when node-1 stops beating
        assert not server.nodes[0].hub.presence.devices_of("alice")
        assert survivor.stamps.later("alice", 1.0, "node-9")  # forgotten: starts afresh
