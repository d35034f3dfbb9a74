"""The embedding API (:class:`signald.app.facade.Signald`), seen from real clients of a real daemon.

``serve_signald`` reports a ``RunningServer``, which is a ``Signald``; custom handlers get one as
``ctx.server``. Each method is checked by what clients see; views must be snapshots; hooks fire
once per connect and disconnect, and one that raises is logged and harmless.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from conftest import Event, clients, events_of, make_config, start_server

from signald import CustomMessage, default_router
from signald.app.context import Context
from signald.app.facade import MemberView, SessionView
from signald.client.raw import SignaldClient, connect
from signald.server import RunningServer


async def join(*cs: SignaldClient, room: str = "lobby") -> None:
    for c in cs:
        await c.request("room.join", {"room": room})


async def closed_with(c: SignaldClient) -> int:
    with trio.fail_after(5):
        await c.closed.wait()
    assert c.ws.closed is not None
    return int(c.ws.closed.code)


def of_type(events: list[Event], *types: str) -> list[Event]:
    return [e for e in events if e[0] in types]


# --------------------------------------------------------------------------- push


async def test_publish_to_room_reaches_the_room_only(server: RunningServer) -> None:
    async with clients(server, "alice", "bob", "carol") as (alice, bob, carol):
        await join(alice, bob)
        assert server.publish_to_room("lobby", "app.news", {"text": "hi"}) == 2
        for c in (alice, bob):
            assert of_type(await events_of(c), "app.news") == [("app.news", {"text": "hi"})]
        assert of_type(await events_of(carol), "app.news") == []
        assert server.publish_to_room("nowhere", "app.news", {}) == 0


async def test_publish_to_user_reaches_every_device_of_the_user(server: RunningServer) -> None:
    async with clients(server, "alice", "alice", "bob") as (a1, a2, bob):
        assert server.publish_to_user("alice", "app.invoice", {"n": 7}) == 2
        for c in (a1, a2):
            assert of_type(await events_of(c), "app.invoice") == [("app.invoice", {"n": 7})]
        assert of_type(await events_of(bob), "app.invoice") == []


async def test_publish_refuses_a_type_outside_app(server: RunningServer) -> None:
    with pytest.raises(ValueError):
        server.publish_to_room("lobby", "chat.message", {})


# --------------------------------------------------------------------------- act


async def test_revoke_user_ends_their_sessions_with_4003(server: RunningServer) -> None:
    async with clients(server, "alice", "bob") as (alice, bob):
        assert server.revoke_user("alice", "banned") == 1
        assert (await alice.next_event("session.revoked"))["data"] == {"reason": "banned"}
        assert await closed_with(alice) == 4003
        assert of_type(await events_of(bob), "session.revoked") == []


async def kick_scene(server: RunningServer, kick: Any) -> tuple[list[Event], list[Event], list[str]]:
    """``victim`` (two devices) and ``witness`` in lobby, ``mod`` too; ``kick`` runs; what each saw."""
    async with clients(server, "mod", "victim", "victim", "witness") as (mod, v1, v2, witness):
        await join(mod, v1, v2, witness)
        await v1.request("chat.typing", {"scope": "lobby", "typing": True})
        for c in (mod, v1, v2, witness):
            await events_of(c)
        await kick(mod)
        kicked = of_type(await events_of(v1), "room.kicked")
        assert of_type(await events_of(v2), "room.kicked") == kicked
        seen = await events_of(witness)
        rooms = (await v1.request("session.info"))["rooms"]
    return kicked, seen, rooms


async def test_kick_does_what_room_kick_does(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await start_server(nursery, make_config(tmp_path, auth={"mods": ["mod"]}))

    async def by_request(mod: SignaldClient) -> None:
        await mod.request("room.kick", {"room": "lobby", "user_id": "victim", "reason": "spam"})

    async def by_facade(mod: SignaldClient) -> None:
        assert server.kick("lobby", "victim", "spam") == 2

    kicked_r, seen_r, rooms_r = await kick_scene(server, by_request)
    kicked_f, seen_f, rooms_f = await kick_scene(server, by_facade)
    assert kicked_r == [("room.kicked", {"room": "lobby", "by": "mod", "reason": "spam"})]
    assert kicked_f == [("room.kicked", {"room": "lobby", "by": "$system", "reason": "spam"})]
    assert seen_f == seen_r
    assert ("member.left", {"room": "lobby", "user_id": "victim"}) in seen_f
    assert rooms_f == rooms_r == []
    assert server.kick("lobby", "victim") == 0  # not a member (any more): nothing happens


# --------------------------------------------------------------------------- look


async def test_views_describe_rooms_members_presence_and_sessions(server: RunningServer) -> None:
    async with clients(server, "alice", "alice", "bob") as (a1, a2, bob):
        await join(a1, bob)
        await join(a2, room="attic")
        await bob.request("presence.set", {"status": "busy"})
        assert server.rooms() == ("attic", "lobby")
        assert server.members("lobby") == (
            MemberView("alice", "online", (a1.session_id,)), MemberView("bob", "busy", (bob.session_id,)))
        assert server.members("nowhere") == ()
        alice = server.presence("alice")
        assert (alice.status, alice.online, alice.devices) == ("online", True, (a1.session_id, a2.session_id))
        nobody = server.presence("nobody")
        assert (nobody.status, nobody.online, nobody.devices) == ("offline", False, ())
        sessions = server.sessions_of("alice")
        assert [s.session_id for s in sessions] == [a1.session_id, a2.session_id]
        assert all(s.user_id == "alice" and s.roles == frozenset() and s.expires_at is None for s in sessions)
        assert server.sessions_of("nobody") == ()


async def test_views_are_snapshots(server: RunningServer) -> None:
    async with clients(server, "alice", "bob") as (alice, bob):
        await join(alice)
        rooms, members, presence, sessions = (
            server.rooms(), server.members("lobby"), server.presence("bob"), server.sessions_of("alice"))
        await join(bob)
        await join(alice, room="attic")
        await bob.request("presence.set", {"status": "away"})
        assert rooms == ("lobby",)
        assert [m.user_id for m in members] == ["alice"]
        assert presence.status == "online"
        assert len(sessions) == 1
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            members[0].user_id = "mallory"  # type: ignore[misc]
        with pytest.raises(AttributeError):
            sessions.append(sessions[0])  # type: ignore[attr-defined]
        assert [m.user_id for m in server.members("lobby")] == ["alice", "bob"]  # the daemon is untouched


# --------------------------------------------------------------------------- hooks


async def test_hooks_fire_once_per_connect_and_disconnect(server: RunningServer) -> None:
    seen: list[tuple[str, SessionView]] = []
    gone = trio.Event()
    server.on_connect(lambda view: seen.append(("connect", view)))

    def on_disconnect(view: SessionView) -> None:
        seen.append(("disconnect", view))
        gone.set()

    server.on_disconnect(on_disconnect)
    async with connect(server.url, user="alice") as alice:
        await alice.request("session.info")
        session_id = alice.session_id
        assert [(kind, view.user_id, view.session_id) for kind, view in seen] == [("connect", "alice", session_id)]
    with trio.fail_after(5):
        await gone.wait()
    assert [kind for kind, _ in seen] == ["connect", "disconnect"]
    view = seen[1][1]
    assert (view.user_id, view.session_id, view.roles) == ("alice", session_id, frozenset())
    assert view.remote.startswith("127.0.0.1")


async def test_a_failing_hook_is_logged_and_harmless(server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    later: list[str] = []
    gone = trio.Event()

    def broken(view: SessionView) -> None:
        raise RuntimeError("embedder bug")

    server.on_connect(broken)
    server.on_disconnect(broken)
    server.on_connect(lambda view: later.append(view.user_id))
    server.on_disconnect(lambda view: gone.set())
    with caplog.at_level(logging.ERROR, logger="signald.facade"):
        async with clients(server, "alice", "bob") as (alice, bob):
            await join(alice, bob)
            assert (await alice.request("session.info"))["user_id"] == "alice"
        with trio.fail_after(5):
            await gone.wait()
    assert later == ["alice", "bob"]
    failures = [r for r in caplog.records if r.name == "signald.facade"]
    assert len(failures) >= 3  # both connects and at least the first disconnect
    assert all(r.exc_info and "embedder bug" in str(r.exc_info[1]) for r in failures)


# --------------------------------------------------------------------------- custom handlers


async def test_custom_handlers_reach_the_facade_from_the_context(nursery: trio.Nursery, tmp_path: Path) -> None:
    router = default_router()

    async def shout(ctx: Context, msg: CustomMessage) -> dict[str, Any]:
        room = msg.data["room"]
        if not ctx.is_member(room):
            return {"sent": 0}
        members = [m.user_id for m in ctx.server.members(room)]
        return {"sent": ctx.server.publish_to_room(room, "app.shout", {"by": ctx.session.user_id}), "members": members}

    router.add_custom("app.shout", dict, shout)
    server = await start_server(nursery, make_config(tmp_path), router=router)
    async with clients(server, "alice", "bob") as (alice, bob):
        assert await alice.request("app.shout", {"room": "lobby"}) == {"sent": 0}
        await join(alice, bob)
        assert await alice.request("app.shout", {"room": "lobby"}) == {"sent": 2, "members": ["alice", "bob"]}
        assert of_type(await events_of(bob), "app.shout") == [("app.shout", {"by": "alice"})]
