"""Rooms and presence over real WebSockets: what connected clients see.

Each test runs an in-process daemon and several clients; alice often has two devices (``a1``,
``a2``) and bob one. To assert that an event did *not* arrive, a client pings the server: the
pong is queued after every event already queued for it, so the events before the pong are all
there are (:func:`events_of`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio_websocket
from conftest import clients, make_config, start_server, time_flies
from over_nodes import settle
from trio.testing import MockClock

from signald.client.raw import Refused, SignaldClient, connect
from signald.server import RunningServer

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
MEMBER_KEYS = {"user_id", "status", "devices", "last_seen"}

pytestmark = pytest.mark.usefixtures("nodes")  # every test over 1 node and over 3 nodes

Event = tuple[str, dict[str, Any]]


async def serve(nursery: trio.Nursery, tmp_path: Path, **sections: dict[str, Any]) -> RunningServer:
    """Start a daemon with some config keys changed (heartbeats far away, so timed tests stay quiet)."""
    sections.setdefault("server", {}).setdefault("heartbeat_s", 3600.0)
    return await start_server(nursery, make_config(tmp_path, **sections))






async def events_of(c: SignaldClient) -> list[Event]:
    """Every event that reached ``c`` so far, as ``(type, data)``; waits for in-flight ones."""
    await settle()  # those from the other nodes too
    pong = await c.request_raw("presence.ping")
    assert pong["type"] == "presence.pong"
    return [(e["type"], e["data"]) for e in c.pending_events()]


async def take(c: SignaldClient, n: int) -> list[Event]:
    """The next ``n`` events of ``c`` (for events caused by something other than a request)."""
    with trio.fail_after(5):
        return [(e["type"], e["data"]) for e in [await c.next_event() for _ in range(n)]]


async def join(c: SignaldClient, room: str = "lobby") -> dict[str, Any]:
    result: dict[str, Any] = await c.request("room.join", {"room": room})
    return result


async def error_code(c: SignaldClient, kind: str, data: Any = None) -> str:
    reply = await c.request_raw(kind, data)
    assert reply["type"] == "error", reply
    code: str = reply["data"]["code"]
    return code


async def next_status(c: SignaldClient, user: str) -> str:
    """The status in the next ``presence.update`` about ``user`` that reaches ``c``."""
    while True:
        event = await c.next_event("presence.update")
        if event["data"]["user_id"] == user:
            status: str = event["data"]["status"]
            return status


async def wait_until_gone(server: RunningServer, user: str) -> None:
    with trio.fail_after(5):
        while server.hub.connection_count(user):  # noqa: ASYNC110 - server state, no event to wait on
            await trio.sleep(0.01)


@pytest.fixture
async def srv(nursery: trio.Nursery, tmp_path: Path) -> RunningServer:
    return await serve(nursery, tmp_path, auth={"mods": ["mod1"], "admins": ["root"]})


# --------------------------------------------------------------------------- join / leave


@pytest.mark.on_redis_cluster
async def test_join_ack_lists_one_member_entry_per_user_with_their_devices(srv: RunningServer) -> None:
    async with clients(srv, "alice", "alice", "bob") as (a1, a2, bob):
        await join(a1)
        await join(a2)
        ack = await join(bob)
        assert ack["room"] == "lobby"
        assert ack["active"] is True
        members = {m["user_id"]: m for m in ack["members"]}
        assert len(ack["members"]) == 2
        assert sorted(members["alice"]["devices"]) == sorted([a1.session_id, a2.session_id])
        assert members["bob"]["devices"] == [bob.session_id]
        for member in ack["members"]:
            assert set(member) == MEMBER_KEYS
            assert member["status"] == "online"
            assert ISO_UTC.match(member["last_seen"])


async def test_first_joiner_is_not_active_and_is_listed_alone(srv: RunningServer) -> None:
    async with clients(srv, "alice") as (a1,):
        ack = await join(a1)
        assert ack["active"] is False
        assert [(m["user_id"], m["devices"]) for m in ack["members"]] == [("alice", [a1.session_id])]


async def test_join_ack_always_carries_unread(srv: RunningServer) -> None:
    async with clients(srv, "alice") as (a1,):
        ack = await join(a1)
        assert ack["unread"] == 0


async def test_member_joined_and_room_active_when_a_second_user_joins(srv: RunningServer) -> None:
    async with clients(srv, "alice", "bob") as (a1, bob):
        await join(a1)
        assert await events_of(a1) == [("room.waiting", {"room": "lobby"})]
        await join(bob)
        assert await events_of(a1) == [
            ("member.joined", {"room": "lobby", "user_id": "bob"}),
            ("room.active", {"room": "lobby"}),
        ]
        assert await events_of(bob) == []


async def test_second_device_of_a_member_causes_no_member_joined(srv: RunningServer) -> None:
    async with clients(srv, "alice", "bob", "alice") as (a1, bob, a2):
        await join(a1)
        await join(bob)
        await events_of(a1)
        await join(a2)
        assert await events_of(bob) == []
        assert await events_of(a1) == []
        assert await events_of(a2) == []


async def test_third_user_joining_an_active_room_sends_member_joined_only(srv: RunningServer) -> None:
    async with clients(srv, "alice", "bob", "carol") as (a1, bob, carol):
        await join(a1)
        await join(bob)
        await events_of(a1)
        await join(carol)
        assert await events_of(a1) == [("member.joined", {"room": "lobby", "user_id": "carol"})]
        assert await events_of(bob) == [("member.joined", {"room": "lobby", "user_id": "carol"})]


async def test_room_waiting_arrives_right_after_the_join_ack(srv: RunningServer) -> None:
    async with trio_websocket.open_websocket_url(srv.url + "?user=alice") as ws:
        await ws.get_message()  # welcome
        await ws.send_message('{"type": "room.join", "id": "j1", "data": {"room": "lobby"}}')
        with trio.fail_after(5):
            first = msgspec.json.decode(await ws.get_message())
            second = msgspec.json.decode(await ws.get_message())
        assert (first["type"], first["data"]["op_id"]) == ("ack", "j1")
        assert second == {"type": "room.waiting", "data": {"room": "lobby"}}


async def test_second_device_of_a_lone_user_is_told_it_is_waiting(srv: RunningServer) -> None:
    async with clients(srv, "alice", "alice") as (a1, a2):
        await join(a1)
        await events_of(a1)
        await join(a2)
        assert await events_of(a2) == [("room.waiting", {"room": "lobby"})]
        assert await events_of(a1) == []


async def test_room_waiting_after_the_others_left(srv: RunningServer) -> None:
    async with clients(srv, "alice", "alice", "bob") as (a1, a2, bob):
        for c in (a1, a2, bob):
            await join(c)
        await events_of(a1)
        await events_of(a2)
        assert await bob.request("room.leave", {"room": "lobby"}) is None
        expected = [("member.left", {"room": "lobby", "user_id": "bob"}), ("room.waiting", {"room": "lobby"})]
        assert await events_of(a1) == expected
        assert await events_of(a2) == expected
        assert await events_of(bob) == []


async def test_member_left_only_when_the_last_device_leaves(srv: RunningServer) -> None:
    async with clients(srv, "alice", "alice", "bob") as (a1, a2, bob):
        for c in (a1, a2, bob):
            await join(c)
        await events_of(bob)
        await a1.request("room.leave", {"room": "lobby"})
        assert await events_of(bob) == []
        await a2.request("room.leave", {"room": "lobby"})
        assert await events_of(bob) == [
            ("member.left", {"room": "lobby", "user_id": "alice"}),
            ("room.waiting", {"room": "lobby"}),
        ]


@pytest.mark.on_redis_cluster
async def test_disconnect_counts_as_leave_and_goes_offline(srv: RunningServer) -> None:
    async with clients(srv, "alice") as (a1,):
        await join(a1)
        async with connect(srv.url, user="bob") as bob:
            await join(bob)
            bob_device = bob.session_id
            await events_of(a1)
        assert await take(a1, 4) == [
            ("device.offline", {"device_id": bob_device, "user_id": "bob"}),
            ("presence.update", {"user_id": "bob", "status": "offline"}),
            ("member.left", {"room": "lobby", "user_id": "bob"}),
            ("room.waiting", {"room": "lobby"}),
        ]
        assert await events_of(a1) == []


async def test_one_device_disconnecting_sends_only_device_offline(srv: RunningServer) -> None:
    async with clients(srv, "alice", "bob") as (a1, bob):
        await join(a1)
        await join(bob)
        async with connect(srv.url, user="alice") as a2:
            await join(a2)
            a2_device = a2.session_id
            await events_of(bob)
            await events_of(a1)
        assert await take(bob, 1) == [("device.offline", {"device_id": a2_device, "user_id": "alice"})]
        assert await events_of(bob) == []
        assert await take(a1, 1) == [("device.offline", {"device_id": a2_device, "user_id": "alice"})]


async def test_device_online_reaches_those_sharing_a_room(srv: RunningServer) -> None:
    async with clients(srv, "alice", "bob", "carol") as (a1, bob, carol):
        await join(a1)
        await join(bob)
        await events_of(a1)
        async with connect(srv.url, user="alice") as a2:
            online = ("device.online", {"device_id": a2.session_id, "user_id": "alice"})
            assert await events_of(bob) == [online]
            assert await events_of(a1) == [online]
            assert await events_of(carol) == []
            assert await events_of(a2) == []


async def test_joining_twice_is_idempotent(srv: RunningServer) -> None:
    async with clients(srv, "alice", "bob") as (a1, bob):
        first = await join(a1)
        await join(bob)
        await events_of(a1)
        second = await join(bob)
        assert second["room"] == "lobby" and second["active"] is True
        assert [m["user_id"] for m in second["members"]] == ["alice", "bob"]
        assert first["active"] is False
        assert await events_of(a1) == []
        assert await events_of(bob) == []
        info = await bob.request("session.info")
        assert info["rooms"] == ["lobby"]


async def test_joining_twice_alone_sends_no_second_room_waiting(srv: RunningServer) -> None:
    async with clients(srv, "alice") as (a1,):
        await join(a1)
        assert await events_of(a1) == [("room.waiting", {"room": "lobby"})]
        await join(a1)
        assert await events_of(a1) == []


async def test_leave_when_not_in_room_is_not_in_room(srv: RunningServer) -> None:
    async with clients(srv, "alice", "bob") as (a1, bob):
        await join(bob)
        assert await error_code(a1, "room.leave", {"room": "lobby"}) == "NOT_IN_ROOM"
        assert await error_code(a1, "room.leave", {"room": "nowhere"}) == "NOT_IN_ROOM"


async def test_max_rooms_per_connection(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await serve(nursery, tmp_path, limits={"max_rooms": 2})
    async with clients(server, "alice", "alice") as (a1, a2):
        assert a1.welcome["data"]["limits"]["max_rooms"] == 2
        await join(a1, "r1")
        await join(a1, "r2")
        assert await error_code(a1, "room.join", {"room": "r3"}) == "LIMIT_EXCEEDED"
        await join(a1, "r1")  # a room it is already in does not count
        await join(a2, "r3")  # the limit is per connection, not per user
        await a1.request("room.leave", {"room": "r1"})
        await join(a1, "r3")
        assert (await a1.request("session.info"))["rooms"] == ["r2", "r3"]


async def test_max_connections_per_user_refuses_the_handshake(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await serve(nursery, tmp_path, limits={"max_connections_per_user": 2})
    async with clients(server, "alice", "alice", "bob"):
        with pytest.raises(Refused) as refused:
            async with connect(server.url, user="alice"):
                pass  # pragma: no cover
        assert (refused.value.close_code, refused.value.code) == (4429, "RATE_LIMITED")
    await wait_until_gone(server, "alice")
    async with clients(server, "alice", "alice") as (a1, _):
        assert a1.user_id == "alice"


# --------------------------------------------------------------------------- presence


async def test_presence_set_reaches_each_peer_once_even_across_two_rooms(srv: RunningServer) -> None:
    async with clients(srv, "alice", "alice", "bob", "carol") as (a1, a2, bob, carol):
        for room in ("lobby", "lounge"):
            for c in (a1, a2, bob):
                await join(c, room)
        await join(carol, "elsewhere")
        for c in (a1, a2, bob, carol):
            await events_of(c)
        assert await a1.request("presence.set", {"status": "busy"}) is None
        update = ("presence.update", {"user_id": "alice", "status": "busy"})
        assert await events_of(bob) == [update]
        assert await events_of(a2) == [update]
        assert await events_of(a1) == []
        assert await events_of(carol) == []


async def test_presence_set_to_the_current_status_sends_nothing(srv: RunningServer) -> None:
    async with clients(srv, "alice", "bob") as (a1, bob):
        await join(a1)
        await join(bob)
        await events_of(bob)
        await a1.request("presence.set", {"status": "online"})
        assert await events_of(bob) == []


async def test_status_is_last_writer_wins_across_devices(srv: RunningServer) -> None:
    async with clients(srv, "alice", "alice", "bob") as (a1, a2, bob):
        for c in (a1, a2, bob):
            await join(c)
        await events_of(bob)
        await a1.request("presence.set", {"status": "busy"})
        await a2.request("presence.set", {"status": "away"})
        assert await events_of(bob) == [
            ("presence.update", {"user_id": "alice", "status": "busy"}),
            ("presence.update", {"user_id": "alice", "status": "away"}),
        ]
        async with connect(srv.url, user="carol") as carol:
            members = {m["user_id"]: m["status"] for m in (await join(carol))["members"]}
        assert members == {"alice": "away", "bob": "online", "carol": "online"}


async def test_invisible_user_shows_offline_while_connected(srv: RunningServer) -> None:
    async with clients(srv, "alice", "bob") as (a1, bob):
        await join(a1)
        await join(bob)
        await events_of(bob)
        await a1.request("presence.set", {"status": "offline"})
        assert await events_of(bob) == [("presence.update", {"user_id": "alice", "status": "offline"})]
        async with connect(srv.url, user="carol") as carol:
            members = {m["user_id"]: m["status"] for m in (await join(carol))["members"]}
        assert members["alice"] == "offline"


async def test_automatic_away_after_idle_and_back_online_on_next_message(
    frozen_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await serve(nursery, tmp_path, presence={"away_after_s": 60})
    async with clients(server, "alice", "bob") as (a1, bob):
        await join(a1)
        await join(bob)
        await events_of(a1)
        started = trio.current_time()
        with time_flies(frozen_clock):
            assert await next_status(bob, "alice") == "away"
        assert trio.current_time() - started >= 60
        await a1.request_raw("presence.ping")
        assert await next_status(bob, "alice") == "online"
        await a1.request_raw("presence.ping")  # activity that moves no deadline earlier
        back = trio.current_time()
        with time_flies(frozen_clock), trio.fail_after(600):  # the timer task was woken for it
            assert await next_status(bob, "alice") == "away"
        assert trio.current_time() - back >= 60


async def test_explicit_busy_is_not_turned_into_away(
    frozen_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await serve(nursery, tmp_path, presence={"away_after_s": 60})
    async with clients(server, "alice", "bob") as (a1, bob):
        await join(a1)
        await join(bob)
        await a1.request("presence.set", {"status": "busy"})
        with time_flies(frozen_clock):
            await trio.sleep(300)
        updates = [e[1] for e in await events_of(bob) if e[0] == "presence.update"]
        assert {"user_id": "bob", "status": "away"} in updates  # the idle rule did run
        assert [u["status"] for u in updates if u["user_id"] == "alice"] == ["busy"]


async def test_presence_ping_answers_pong_with_op_id_and_timestamp(srv: RunningServer) -> None:
    async with clients(srv, "alice") as (a1,):
        pong = await a1.request_raw("presence.ping", op_id="p-1")
        assert pong["type"] == "presence.pong"
        assert pong["data"]["op_id"] == "p-1"
        assert ISO_UTC.match(pong["data"]["timestamp"])
        pong = await a1.request_raw("presence.ping", op_id=7)
        assert pong["data"]["op_id"] == 7


# --------------------------------------------------------------------------- typing


async def test_typing_reaches_the_others_but_not_the_typist(srv: RunningServer) -> None:
    async with clients(srv, "alice", "alice", "bob") as (a1, a2, bob):
        for c in (a1, a2, bob):
            await join(c)
        for c in (a1, a2, bob):
            await events_of(c)
        assert await a1.request("chat.typing", {"scope": "lobby", "typing": True}) is None
        typing = ("chat.typing.user", {"scope": "lobby", "user_id": "alice", "typing": True})
        assert await events_of(bob) == [typing]
        assert await events_of(a2) == [typing]
        assert await events_of(a1) == []
        await a1.request("chat.typing", {"scope": "lobby", "typing": False})
        assert await events_of(bob) == [("chat.typing.user", {"scope": "lobby", "user_id": "alice", "typing": False})]


async def test_renewed_typing_sends_no_duplicate_start(srv: RunningServer) -> None:
    async with clients(srv, "alice", "bob") as (a1, bob):
        await join(a1)
        await join(bob)
        await events_of(bob)
        await a1.request("chat.typing", {"scope": "lobby", "typing": True})
        await a1.request("chat.typing", {"scope": "lobby", "typing": True})
        assert await events_of(bob) == [("chat.typing.user", {"scope": "lobby", "user_id": "alice", "typing": True})]


async def test_typing_expires_after_typing_timeout(
    frozen_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await serve(nursery, tmp_path, limits={"typing_timeout_s": 6})
    async with clients(server, "alice", "bob") as (a1, bob):
        await join(a1)
        await join(bob)
        await a1.request("chat.typing", {"scope": "lobby", "typing": True})
        started = trio.current_time()
        await bob.next_event("chat.typing.user")
        with time_flies(frozen_clock):
            stopped = await bob.next_event("chat.typing.user")
        assert stopped["data"] == {"scope": "lobby", "user_id": "alice", "typing": False}
        assert 6 <= trio.current_time() - started < 7


async def test_renewing_typing_postpones_expiry(
    frozen_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await serve(nursery, tmp_path, limits={"typing_timeout_s": 6})
    async with clients(server, "alice", "bob") as (a1, bob):
        await join(a1)
        await join(bob)
        await a1.request("chat.typing", {"scope": "lobby", "typing": True})
        await bob.next_event("chat.typing.user")
        with time_flies(frozen_clock):
            await trio.sleep(4)
        await a1.request("chat.typing", {"scope": "lobby", "typing": True})
        renewed = trio.current_time()
        with time_flies(frozen_clock):
            stopped = await bob.next_event("chat.typing.user")
        assert stopped["data"]["typing"] is False
        assert 6 <= trio.current_time() - renewed < 7


async def test_leaving_the_room_clears_typing(srv: RunningServer) -> None:
    async with clients(srv, "alice", "alice", "bob") as (a1, a2, bob):
        for c in (a1, a2, bob):
            await join(c)
        await a1.request("chat.typing", {"scope": "lobby", "typing": True})
        await events_of(bob)
        await a1.request("room.leave", {"room": "lobby"})
        assert await events_of(bob) == [("chat.typing.user", {"scope": "lobby", "user_id": "alice", "typing": False})]


async def test_disconnecting_clears_typing(srv: RunningServer) -> None:
    async with clients(srv, "bob") as (bob,):
        await join(bob)
        async with connect(srv.url, user="alice") as a1:
            await join(a1)
            await a1.request("chat.typing", {"scope": "lobby", "typing": True})
            await events_of(bob)
        first = await take(bob, 1)
        assert first == [("chat.typing.user", {"scope": "lobby", "user_id": "alice", "typing": False})]


async def test_typing_in_a_room_not_joined_is_not_in_room(srv: RunningServer) -> None:
    async with clients(srv, "alice", "bob") as (a1, bob):
        await join(bob)
        assert await error_code(a1, "chat.typing", {"scope": "lobby", "typing": True}) == "NOT_IN_ROOM"
        assert await events_of(bob) == [("room.waiting", {"room": "lobby"})]


# --------------------------------------------------------------------------- signals and kicks


async def test_room_signal_is_relayed_to_the_others_with_the_sender(srv: RunningServer) -> None:
    async with clients(srv, "alice", "alice", "bob", "carol") as (a1, a2, bob, carol):
        for c in (a1, a2, bob):
            await join(c)
        await join(carol, "elsewhere")
        for c in (a1, a2, bob, carol):
            await events_of(c)
        payload = {"x": 10, "y": [1, 2], "label": "hand"}
        assert await a1.request("room.signal", {"room": "lobby", "kind": "cursor", "payload": payload}) is None
        signal = ("room.signal", {"room": "lobby", "user_id": "alice", "kind": "cursor", "payload": payload})
        assert await events_of(bob) == [signal]
        assert await events_of(a2) == [signal]
        assert await events_of(a1) == []
        assert await events_of(carol) == []


async def test_room_signal_to_a_room_not_joined_is_not_in_room(srv: RunningServer) -> None:
    async with clients(srv, "alice") as (a1,):
        assert await error_code(a1, "room.signal", {"room": "lobby", "kind": "cursor"}) == "NOT_IN_ROOM"


async def test_room_kick_needs_the_mod_role(srv: RunningServer) -> None:
    async with clients(srv, "alice", "bob") as (a1, bob):
        await join(a1)
        await join(bob)
        assert await error_code(bob, "room.kick", {"room": "lobby", "user_id": "alice"}) == "FORBIDDEN"
        assert (await a1.request("session.info"))["rooms"] == ["lobby"]


async def test_room_kick_removes_every_device_of_the_user(srv: RunningServer) -> None:
    async with clients(srv, "mod1", "alice", "alice", "bob") as (mod, a1, a2, bob):
        for c in (mod, a1, a2, bob):
            await join(c)
        for c in (mod, a1, a2, bob):
            await events_of(c)
        assert await mod.request("room.kick", {"room": "lobby", "user_id": "alice", "reason": "spam"}) is None
        kicked = ("room.kicked", {"room": "lobby", "by": "mod1", "reason": "spam"})
        assert await events_of(a1) == [kicked]
        assert await events_of(a2) == [kicked]
        assert await events_of(bob) == [("member.left", {"room": "lobby", "user_id": "alice"})]
        assert (await a1.request("session.info"))["rooms"] == []
        assert await error_code(a2, "room.signal", {"room": "lobby", "kind": "cursor"}) == "NOT_IN_ROOM"
        ack = await join(bob)
        assert [m["user_id"] for m in ack["members"]] == ["bob", "mod1"]


async def test_room_kick_gives_the_moderator_only_the_ack(srv: RunningServer) -> None:
    async with clients(srv, "mod1", "alice", "bob") as (mod, a1, bob):
        for c in (mod, a1, bob):
            await join(c)
        await events_of(mod)
        await mod.request("room.kick", {"room": "lobby", "user_id": "alice"})
        assert await events_of(mod) == []


async def test_a_moderator_who_kicks_their_own_user_is_out_of_the_room_on_every_device(srv: RunningServer) -> None:
    async with clients(srv, "mod1", "mod1", "bob") as (m1, m2, bob):
        for c in (m1, m2, bob):
            await join(c)
        for c in (m1, m2, bob):
            await events_of(c)
        assert await m1.request("room.kick", {"room": "lobby", "user_id": "mod1", "reason": "me"}) is None
        kicked = ("room.kicked", {"room": "lobby", "by": "mod1", "reason": "me"})
        assert await events_of(m1) == [kicked]  # after its ack, as every device of the kicked user
        assert await events_of(m2) == [kicked]
        assert await events_of(bob) == [("member.left", {"room": "lobby", "user_id": "mod1"}),
                                        ("room.waiting", {"room": "lobby"})]
        assert (await m1.request("session.info"))["rooms"] == []


async def test_kicking_someone_not_in_the_room_is_not_in_room(srv: RunningServer) -> None:
    async with clients(srv, "mod1", "alice") as (mod, a1):
        await join(mod)
        await join(a1, "elsewhere")
        assert await error_code(mod, "room.kick", {"room": "lobby", "user_id": "alice"}) == "NOT_IN_ROOM"
        assert await error_code(mod, "room.kick", {"room": "elsewhere", "user_id": "alice"}) == "NOT_IN_ROOM"


async def test_kick_clears_the_kicked_users_typing(srv: RunningServer) -> None:
    async with clients(srv, "mod1", "alice", "bob") as (mod, a1, bob):
        for c in (mod, a1, bob):
            await join(c)
        await a1.request("chat.typing", {"scope": "lobby", "typing": True})
        await events_of(bob)
        await mod.request("room.kick", {"room": "lobby", "user_id": "alice"})
        assert await events_of(bob) == [
            ("chat.typing.user", {"scope": "lobby", "user_id": "alice", "typing": False}),
            ("member.left", {"room": "lobby", "user_id": "alice"}),
        ]


# --------------------------------------------------------------------------- session and stats


async def test_session_info_describes_the_connection(srv: RunningServer) -> None:
    async with clients(srv, "alice", "alice", "mod1") as (a1, a2, mod):
        await join(a1, "lounge")
        await join(a1, "lobby")
        info = await a1.request("session.info")
        assert set(info) == {"session_id", "user_id", "roles", "rooms", "connected_at", "expires_at", "devices"}
        assert info["session_id"] == a1.session_id
        assert info["user_id"] == "alice"
        assert info["roles"] == []
        assert info["rooms"] == ["lobby", "lounge"]
        assert ISO_UTC.match(info["connected_at"])
        assert info["expires_at"] is None
        assert sorted(info["devices"]) == sorted([a1.session_id, a2.session_id])
        assert (await mod.request("session.info"))["roles"] == ["mod"]


async def test_system_stats_is_for_admins_only(srv: RunningServer) -> None:
    async with clients(srv, "alice", "alice", "bob", "root") as (a1, _, bob, root):
        await join(a1)
        await join(bob, "lounge")
        assert await error_code(a1, "system.stats") == "FORBIDDEN"
        await settle()  # over several nodes: the node asked has heard of both joins
        stats = await root.request("system.stats")
        assert set(stats) == {"connections", "users", "rooms", "calls", "messages_in", "messages_out",
                              "uptime_s", "db_bytes"}
        assert (stats["connections"], stats["users"], stats["rooms"], stats["calls"]) == (4, 3, 2, 0)
        assert stats["messages_in"] >= 3 and stats["messages_out"] >= 3
        assert stats["uptime_s"] >= 0 and stats["db_bytes"] >= 0
        assert (await root.request("session.info"))["roles"] == ["admin"]
