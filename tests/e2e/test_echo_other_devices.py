"""Echo: the requester gets the ack and not the event; its user's other devices get the event.

The contract: "the connection that sent a request gets its ack (carrying the result) and not the
event; every other connection concerned — the sender's other devices too — gets the event". Other
tests hold it for ``chat.send``; these hold it for every other request that causes an event in a
room (edit, delete, redact, reaction, read receipt, typing, signal, presence, kick), and for the
``device.online``/``device.offline`` a user's own devices get of each other. Over one node and over
three (a user's devices on different nodes).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import clients, events_of, make_config, start_server

from signald.client.raw import SignaldClient, connect
from signald.server import RunningServer

pytestmark = pytest.mark.usefixtures("nodes")  # every test over 1 node and over 3 nodes


@pytest.fixture
async def srv(nursery: trio.Nursery, tmp_path: Path) -> RunningServer:
    return await start_server(nursery, make_config(tmp_path, auth={"mods": ["mod"]},
                                                   server={"heartbeat_s": 3600.0}))


@asynccontextmanager
async def lobby(server: RunningServer, *users: str) -> AsyncIterator[list[SignaldClient]]:
    """One client per listed user (a repeated name is another device), all in ``lobby``, drained."""
    async with clients(server, *users) as cs:
        for c in cs:
            await c.request("room.join", {"room": "lobby"})
        for c in cs:
            await events_of(c)
        yield cs


async def echo(requester: SignaldClient, twin: SignaldClient, other: SignaldClient, kind: str,
               data: dict[str, Any]) -> tuple[Any, list[tuple[str, dict[str, Any]]]]:
    """Send ``kind`` from ``requester``; its result, after checking that ``twin`` (the requester's
    other device) and ``other`` (another user) got the same events and ``requester`` none."""
    result = await requester.request(kind, data)
    got = await events_of(twin)
    assert got, f"{kind}: the requester's other device got nothing"
    assert await events_of(other) == got
    assert await events_of(requester) == []
    return result, got


async def test_every_room_event_reaches_the_requesters_other_device_but_not_the_requester(
    srv: RunningServer,
) -> None:
    async with lobby(srv, "alice", "alice", "bob") as (a1, a2, bob):
        message = await a1.request("chat.send", {"scope": "lobby", "body": "hello"})
        await events_of(a2)
        await events_of(bob)
        mid = message["id"]
        edited, got = await echo(a1, a2, bob, "chat.edit", {"message_id": mid, "new_body": "hello!"})
        assert got == [("chat.edited", edited)]
        reacted, got = await echo(a1, a2, bob, "chat.reaction", {"message_id": mid, "reaction": "+1",
                                                                  "action": "add", "scope": "lobby"})
        assert got == [("chat.reaction.update", {"message_id": mid, "user_id": "alice", "reaction": "+1",
                                                 "action": "add", "room": "lobby", "rev": reacted["rev"]})]
        _, got = await echo(a1, a2, bob, "chat.read", {"message_id": mid, "room": "lobby"})
        assert got == [("chat.read.update", {"message_id": mid, "user_id": "alice", "room": "lobby"})]
        _, got = await echo(a1, a2, bob, "chat.typing", {"scope": "lobby", "typing": True})
        assert got == [("chat.typing.user", {"scope": "lobby", "user_id": "alice", "typing": True})]
        _, got = await echo(a1, a2, bob, "chat.typing", {"scope": "lobby", "typing": False})
        assert got == [("chat.typing.user", {"scope": "lobby", "user_id": "alice", "typing": False})]
        _, got = await echo(a1, a2, bob, "room.signal", {"room": "lobby", "kind": "hand", "payload": {"up": 1}})
        assert got == [("room.signal", {"room": "lobby", "user_id": "alice", "kind": "hand", "payload": {"up": 1}})]
        _, got = await echo(a1, a2, bob, "presence.set", {"status": "busy"})
        assert got == [("presence.update", {"user_id": "alice", "status": "busy"})]
        deleted, got = await echo(a1, a2, bob, "chat.delete", {"message_id": mid, "mode": "soft"})
        assert got == [("chat.deleted", {**deleted, "room": "lobby", "mode": "soft"})]
        other = await a1.request("chat.send", {"scope": "lobby", "body": "again"})
        await events_of(a2)
        await events_of(bob)
        deleted, got = await echo(a1, a2, bob, "chat.delete", {"message_id": other["id"], "mode": "hard"})
        assert got == [("chat.deleted", {**deleted, "room": "lobby", "mode": "hard"})]


async def test_a_moderators_redact_and_kick_reach_their_other_device_but_not_the_requester(
    srv: RunningServer,
) -> None:
    async with lobby(srv, "mod", "mod", "alice", "bob") as (m1, m2, alice, bob):
        message = await alice.request("chat.send", {"scope": "lobby", "body": "rude"})
        for c in (m1, m2, bob):
            await events_of(c)
        redacted, got = await echo(m1, m2, bob, "chat.redact", {"message_id": message["id"]})
        assert got == [("chat.redacted", {**redacted, "room": "lobby"})]
        assert await events_of(alice) == got  # the author is concerned too
        _, got = await echo(m1, m2, bob, "room.kick", {"room": "lobby", "user_id": "alice"})
        assert got == [("member.left", {"room": "lobby", "user_id": "alice"})]
        assert await events_of(alice) == [("room.kicked", {"room": "lobby", "by": "mod", "reason": None})]


async def test_a_users_devices_are_told_of_each_others_arrival_and_departure(srv: RunningServer) -> None:
    async with lobby(srv, "alice", "bob") as (a1, bob):
        async with connect(srv.url, user="alice") as a2:
            online = [("device.online", {"device_id": a2.session_id, "user_id": "alice"})]
            assert await events_of(a1) == online
            assert await events_of(bob) == online
            assert await events_of(a2) == []  # nothing about itself
        offline = [("device.offline", {"device_id": a2.session_id, "user_id": "alice"})]
        assert await events_of(a1) == offline
        assert await events_of(bob) == offline
