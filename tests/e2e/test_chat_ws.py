"""Chat over real WebSockets: what connected clients see of ``chat.*`` and of rejoining.

Each test runs an in-process daemon with a real SQLite file in ``tmp_path`` (those on the ``srv``
fixture also on a PostgreSQL database of the session's server) and several clients;
alice often has two devices (``a1``, ``a2``). To assert that an event did *not* arrive, a client
pings the server: the pong is queued after every event already queued for it, and the events a
request causes for others are queued before its reply, so the events before the pong are all
there are (:func:`events_of`).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import over_nodes
import pytest
import trio
from conftest import Event, clients, events_of, make_config, start_server

from signald.client.raw import SignaldClient, connect
from signald.server import RunningServer

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
MESSAGE_KEYS = {
    "id", "room", "seq", "rev", "user_id", "body", "attachments", "parent_id", "created_at", "edited_at",
    "deleted_at", "redacted", "reactions",
}
UNKNOWN_ID = "f" * 24
pytestmark = pytest.mark.usefixtures("nodes")  # every test over 1 node and over 3 nodes
FAST = {"rate_per_s": 10_000.0, "rate_burst": 10_000}  # pipelining tests send faster than a person

Msg = dict[str, Any]


async def serve(nursery: trio.Nursery, tmp_path: Path, **sections: dict[str, Any]) -> RunningServer:
    """Start a daemon with some config keys changed (heartbeats far away, roles for the matrix)."""
    sections.setdefault("server", {}).setdefault("heartbeat_s", 3600.0)
    sections.setdefault("auth", {"mods": ["mod"], "admins": ["root"]})
    return await start_server(nursery, make_config(tmp_path, **sections))


@pytest.fixture(params=["sqlite", "postgres"])
async def srv(request: pytest.FixtureRequest, nursery: trio.Nursery, tmp_path: Path) -> RunningServer:
    """A daemon on SQLite, and one on PostgreSQL: the same chat over both stores (several nodes
    always run on the session's shared PostgreSQL database: no database of its own)."""
    if request.param == "postgres" and over_nodes.current.count == 1:
        return await serve(nursery, tmp_path, history={"url": request.getfixturevalue("postgres_url")})
    return await serve(nursery, tmp_path)


async def chat_events(c: SignaldClient) -> list[Event]:
    return [e for e in await events_of(c) if e[0].startswith("chat.")]


async def settle(*cs: SignaldClient) -> None:
    """Drop the events (joins, presence) that reached these clients so far."""
    for c in cs:
        await events_of(c)


async def join(c: SignaldClient, room: str = "lobby", **extra: Any) -> dict[str, Any]:
    with trio.fail_after(5):
        result: dict[str, Any] = await c.request("room.join", {"room": room, **extra})
    return result


async def send(c: SignaldClient, body: str, room: str = "lobby", **extra: Any) -> Msg:
    with trio.fail_after(5):
        message: Msg = await c.request("chat.send", {"scope": room, "body": body, **extra})
    return message


async def fail(c: SignaldClient, kind: str, data: Any, op_id: str = "op-1") -> str:
    """Send a request expected to fail; returns the error code (and checks the op_id came back)."""
    with trio.fail_after(5):
        reply = await c.request_raw(kind, data, op_id=op_id)
    assert reply["type"] == "error", reply
    assert reply["data"]["op_id"] == op_id
    code: str = reply["data"]["code"]
    return code


async def history(c: SignaldClient, room: str = "lobby", **bounds: int) -> dict[str, Any]:
    with trio.fail_after(5):
        page: dict[str, Any] = await c.request("chat.history", {"room": room, **bounds})
    return page


async def all_history(c: SignaldClient, room: str = "lobby", after: int = 0, limit: int = 5) -> list[Msg]:
    """Every stored message of ``room`` with ``seq > after``, paged forward with ``chat.history {after}``."""
    messages: list[Msg] = []
    while True:
        page = await history(c, room, after=after, limit=limit)
        messages += page["messages"]
        if not page["has_more"]:
            return messages
        after = page["messages"][-1]["seq"]


def seqs(messages: list[Msg]) -> list[int]:
    return [m["seq"] for m in messages]


Frames = list[tuple[str, str, dict[str, Any]]]


async def pipeline(
    c: SignaldClient, frames: Frames, halfway: trio.Event | None = None
) -> tuple[dict[str, Any], list[Event]]:
    """Send every ``(op_id, type, data)`` frame without waiting, then collect the replies as they come.

    Returns the replies by op_id and, in arrival order, the events that arrived meanwhile.
    ``halfway`` is set once half the frames are sent.
    """
    for i, (op_id, kind, data) in enumerate(frames):
        if halfway is not None and i == len(frames) // 2:
            halfway.set()
        await c.send({"type": kind, "id": op_id, "data": data})
    replies: dict[str, Any] = {}
    events: list[Event] = []
    with trio.fail_after(10):
        while len(replies) < len(frames):
            event = await c.next_event()
            if event["type"] in ("ack", "error"):
                assert event["type"] == "ack", event
                replies[event["data"]["op_id"]] = event["data"]["data"]
            else:
                events.append((event["type"], event["data"]))
    return replies, events


# --------------------------------------------------------------------------- chat.send


async def test_text_with_nul_is_refused_alike_on_every_store(srv: RunningServer) -> None:
    # PostgreSQL cannot store U+0000; SQLite could, but both stores answer the same
    async with clients(srv, "alice") as (a1,):
        await join(a1)
        assert await fail(a1, "chat.send", {"scope": "lobby", "body": "a\u0000b"}) == "INVALID_PAYLOAD"
        message = await send(a1, "fine")
        assert await fail(a1, "chat.edit", {"message_id": message["id"], "new_body": "\u0000"}) == "INVALID_PAYLOAD"
        assert (await history(a1))["messages"] == [message]  # nothing of either was stored


async def test_send_ack_is_the_stored_message_with_all_thirteen_fields(srv: RunningServer) -> None:
    async with clients(srv, "alice") as (a1,):
        await join(a1)
        message = await send(a1, "hello")
        assert set(message) == MESSAGE_KEYS
        assert re.fullmatch(r"[0-9a-f]{24}", message["id"])
        assert ISO_UTC.match(message["created_at"])
        assert message == {
            "id": message["id"], "room": "lobby", "seq": 1, "rev": 1, "user_id": "alice", "body": "hello",
            "attachments": [], "parent_id": None, "created_at": message["created_at"], "edited_at": None,
            "deleted_at": None, "redacted": False, "reactions": {},
        }
        assert (await history(a1))["messages"] == [message]


@pytest.mark.on_redis_cluster
async def test_send_reaches_every_other_connection_including_senders_other_device_but_not_the_sender(
    srv: RunningServer,
) -> None:
    async with clients(srv, "alice", "alice", "bob", "carol") as (a1, a2, bob, carol):
        for c in (a1, a2, bob):
            await join(c)
        await settle(a1, a2, bob, carol)
        message = await send(a1, "hi all")
        assert await events_of(bob) == [("chat.message", message)]
        assert await events_of(a2) == [("chat.message", message)]
        assert await events_of(a1) == []
        assert await events_of(carol) == []  # not in the room


async def test_seq_increases_by_one_per_message_in_each_room_independently(srv: RunningServer) -> None:
    async with clients(srv, "alice", "bob") as (a1, bob):
        for room in ("lobby", "other"):
            await join(a1, room)
            await join(bob, room)
        got = []
        for i in range(3):
            got.append((await send(a1, f"l{i}", "lobby"))["seq"])
            got.append((await send(bob, f"o{i}", "other"))["seq"])
            got.append((await send(bob, f"l{i}b", "lobby"))["seq"])
        assert got == [1, 1, 2, 3, 2, 4, 5, 3, 6]
        assert seqs((await history(a1, "lobby"))["messages"]) == [1, 2, 3, 4, 5, 6]
        assert seqs((await history(a1, "other"))["messages"]) == [1, 2, 3]


@pytest.mark.one_node("reads the SQLite store's own setting; several nodes run on PostgreSQL")
@pytest.mark.parametrize("inline", [True, False])
async def test_history_inline_commits_setting_reaches_the_store(
    nursery: trio.Nursery, tmp_path: Path, inline: bool
) -> None:
    srv = await start_server(nursery, make_config(tmp_path, history={"inline_commits": inline}))
    assert srv.hub.history is not None
    store = srv.hub.history.store
    async with clients(srv, "alice") as (a1,):
        await join(a1)
        seqs = [(await send(a1, f"m{i}"))["seq"] for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert (store.inline_commits > 0) is inline  # one sequential client on an idle daemon


async def test_pipelined_sends_replies_keep_request_order(nursery: trio.Nursery, tmp_path: Path) -> None:
    """The reader does not wait for each commit, yet replies leave in the order requests came."""
    srv = await serve(nursery, tmp_path, limits=FAST)
    async with clients(srv, "alice", "bob") as (a1, bob):
        await join(a1)
        await join(bob)
        await settle(a1, bob)
        frames: Frames = []
        for i in range(60):
            frames.append((f"s-{i}", "chat.send", {"scope": "lobby", "body": f"m{i}"}))
            if i % 10 == 9:  # answered at once by the server, but only after the sends before them
                frames.append((f"p-{i}", "presence.ping", {}))
                frames.append((f"x-{i}", "chat.send", {"scope": "nowhere", "body": "refused"}))
        for op_id, kind, data in frames:
            await a1.send({"type": kind, "id": op_id, "data": data})
        order: list[str] = []
        with trio.fail_after(10):
            while len(order) < len(frames):
                event = await a1.next_event()
                if event["type"] in ("ack", "error", "presence.pong"):
                    order.append(event["data"]["op_id"])
                    if event["type"] == "error":
                        assert event["data"]["code"] == "NOT_IN_ROOM"
        assert order == [op_id for op_id, _, _ in frames]
        got = [data["body"] for kind, data in await events_of(bob) if kind == "chat.message"]
        assert got == [f"m{i}" for i in range(60)]


@pytest.mark.on_redis_cluster
async def test_pipelined_sends_get_seqs_in_send_order_and_members_see_them_in_seq_order(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    srv = await serve(nursery, tmp_path, limits=FAST)
    n = 50
    async with clients(srv, "alice", "alice", "bob", "carol") as (a1, a2, bob, carol):
        for c in (a1, a2, bob, carol):
            await join(c)
        await settle(a1, a2, bob, carol)
        results: dict[str, tuple[dict[str, Any], list[Event]]] = {}

        async def burst(c: SignaldClient, tag: str) -> None:
            frames = [(f"{tag}-{i}", "chat.send", {"scope": "lobby", "body": f"{tag} {i}"}) for i in range(n)]
            results[tag] = await pipeline(c, frames)

        async with trio.open_nursery() as both:  # two connections pipeline at once
            both.start_soon(burst, a1, "a")
            both.start_soon(burst, bob, "b")

        for tag, user in (("a", "alice"), ("b", "bob")):
            acks = results[tag][0]
            in_send_order = [acks[f"{tag}-{i}"] for i in range(n)]
            assert [m["body"] for m in in_send_order] == [f"{tag} {i}" for i in range(n)]
            assert {m["user_id"] for m in in_send_order} == {user}
            assert seqs(in_send_order) == sorted(seqs(in_send_order))  # send order == seq order
        all_seqs = sorted(seqs(list(results["a"][0].values()) + list(results["b"][0].values())))
        assert all_seqs == list(range(1, 2 * n + 1))

        by_seq = {m["seq"]: m for tag in "ab" for m in results[tag][0].values()}
        everything = [("chat.message", by_seq[s]) for s in range(1, 2 * n + 1)]
        for watcher in (a2, carol):  # not sending: they get all 100, in seq order
            assert await chat_events(watcher) == everything
        # senders get the other's messages in seq order and none of their own
        a1_events = results["a"][1] + await events_of(a1)
        bob_events = results["b"][1] + await events_of(bob)
        assert a1_events == [e for e in everything if e[1]["user_id"] == "bob"]
        assert bob_events == [e for e in everything if e[1]["user_id"] == "alice"]


async def test_attachments_round_trip_through_ack_event_and_history(srv: RunningServer) -> None:
    attachments = [
        {"url": "https://files.example/a.png", "name": "a.png", "mime": "image/png", "size": 1234,
         "width": 640, "height": 480},
        {"url": "https://files.example/b.pdf"},
    ]
    async with clients(srv, "alice", "bob") as (a1, bob):
        await join(a1)
        await join(bob)
        await settle(bob)
        message = await send(a1, "see attached", attachments=attachments)
        assert message["attachments"] == attachments
        assert await events_of(bob) == [("chat.message", message)]
        only_file = await send(a1, "", attachments=attachments[1:])  # an attachment makes an empty body fine
        assert only_file["body"] == ""
        assert (await history(bob))["messages"] == [message, only_file]


async def test_reply_to_a_parent_in_the_same_room(srv: RunningServer) -> None:
    async with clients(srv, "alice", "bob") as (a1, bob):
        await join(a1)
        await join(bob)
        await settle(a1)
        parent = await send(a1, "question")
        reply = await send(bob, "answer", parent_id=parent["id"])
        assert reply["parent_id"] == parent["id"]
        assert await events_of(a1) == [("chat.message", reply)]
        assert (await history(a1))["messages"][-1]["parent_id"] == parent["id"]


async def test_unknown_parent_or_parent_from_another_room_is_not_found_and_nothing_is_stored(
    srv: RunningServer,
) -> None:
    async with clients(srv, "alice", "bob") as (a1, bob):
        await join(a1, "lobby")
        await join(a1, "other")
        await join(bob)
        await settle(bob)
        elsewhere = await send(a1, "in other", "other")
        assert await fail(a1, "chat.send", {"scope": "lobby", "body": "x", "parent_id": UNKNOWN_ID}) == "NOT_FOUND"
        assert await fail(a1, "chat.send", {"scope": "lobby", "body": "x", "parent_id": elsewhere["id"]}) == "NOT_FOUND"
        assert await events_of(bob) == []
        assert (await history(a1))["messages"] == []


@pytest.mark.parametrize("body", ["", "   \n\t"])
async def test_blank_body_without_attachments_is_invalid_payload(srv: RunningServer, body: str) -> None:
    async with clients(srv, "alice") as (a1,):
        await join(a1)
        assert await fail(a1, "chat.send", {"scope": "lobby", "body": body}) == "INVALID_PAYLOAD"
        assert (await history(a1))["messages"] == []


async def test_body_over_max_body_chars_is_too_large_with_the_op_id(nursery: trio.Nursery, tmp_path: Path) -> None:
    srv = await serve(nursery, tmp_path, limits={"max_body_chars": 10})
    async with clients(srv, "alice", "bob") as (a1, bob):
        await join(a1)
        await join(bob)
        await settle(bob)
        ok = await send(a1, "é" * 10)  # counted in characters, not bytes
        assert await fail(a1, "chat.send", {"scope": "lobby", "body": "x" * 11}, op_id="big-1") == "TOO_LARGE"
        assert await fail(a1, "chat.edit", {"message_id": ok["id"], "new_body": "y" * 11}, op_id="big-2") == "TOO_LARGE"
        assert await events_of(bob) == [("chat.message", ok)]
        assert (await history(a1))["messages"] == [ok]


async def test_send_to_a_room_not_joined_is_not_in_room(srv: RunningServer) -> None:
    async with clients(srv, "alice", "bob") as (a1, bob):
        await join(bob)
        await settle(bob)
        assert await fail(a1, "chat.send", {"scope": "lobby", "body": "sneaky"}) == "NOT_IN_ROOM"
        await join(a1)
        await a1.request("room.leave", {"room": "lobby"})
        assert await fail(a1, "chat.send", {"scope": "lobby", "body": "after leaving"}) == "NOT_IN_ROOM"
        assert await chat_events(bob) == []
        assert (await history(bob))["messages"] == []


async def test_retry_with_same_client_msg_id_returns_the_same_message_and_broadcasts_nothing(
    srv: RunningServer,
) -> None:
    async with clients(srv, "alice", "alice", "bob") as (a1, a2, bob):
        for c in (a1, a2, bob):
            await join(c)
        await settle(a1, a2, bob)
        first = await send(a1, "once", client_msg_id="k-1")
        assert await events_of(bob) == [("chat.message", first)]
        assert await events_of(a2) == [("chat.message", first)]
        again = await send(a1, "once", client_msg_id="k-1")
        from_other_device = await send(a2, "once", client_msg_id="k-1")  # the key is per user, not per device
        assert again == first
        assert from_other_device == first
        assert await events_of(bob) == []
        assert await events_of(a2) == []
        assert (await history(bob))["messages"] == [first]
        other_user = await send(bob, "once", client_msg_id="k-1")  # another user's key is their own
        assert other_user["seq"] == 2


async def test_concurrent_retries_from_two_devices_store_one_message(nursery: trio.Nursery, tmp_path: Path) -> None:
    srv = await serve(nursery, tmp_path, limits=FAST)
    async with clients(srv, "alice", "alice", "bob") as (a1, a2, bob):
        for c in (a1, a2, bob):
            await join(c)
        await settle(a1, a2, bob)
        frames: Frames = [(f"r-{i}", "chat.send", {"scope": "lobby", "body": "dup", "client_msg_id": "k-9"})
                          for i in range(5)]
        results: list[dict[str, Any]] = []

        async def retry(c: SignaldClient) -> None:
            results.append((await pipeline(c, frames))[0])

        async with trio.open_nursery() as both:
            both.start_soon(retry, a1)
            both.start_soon(retry, a2)
        messages = [m for acks in results for m in acks.values()]
        assert len(messages) == 10
        assert all(m == messages[0] for m in messages)
        assert await chat_events(bob) == [("chat.message", messages[0])]
        assert (await history(bob))["messages"] == [messages[0]]


async def test_client_msg_id_is_scoped_to_the_room(srv: RunningServer) -> None:
    async with clients(srv, "alice") as (a1,):
        await join(a1, "lobby")
        await join(a1, "other")
        here = await send(a1, "same key", "lobby", client_msg_id="k-3")
        there = await send(a1, "same key", "other", client_msg_id="k-3")
        assert (here["room"], there["room"]) == ("lobby", "other")
        assert here["id"] != there["id"]


async def test_msgpack_client_gets_the_same_message_as_a_json_client(srv: RunningServer) -> None:
    async with connect(srv.url, user="alice") as a1, connect(srv.url, user="bob", msgpack=True) as bob:
        await join(a1)
        await join(bob)
        await settle(bob)
        message = await send(a1, "héllo", attachments=[{"url": "https://f.example/1", "size": 3}])
        assert await events_of(bob) == [("chat.message", message)]
        assert (await history(bob))["messages"] == [message]


async def test_retry_returns_the_current_state_and_conflict_after_a_hard_delete(srv: RunningServer) -> None:
    async with clients(srv, "alice") as (a1,):
        await join(a1)
        first = await send(a1, "draft", client_msg_id="k-2")
        edited = await a1.request("chat.edit", {"message_id": first["id"], "new_body": "final"})
        assert await send(a1, "draft", client_msg_id="k-2") == edited
        await a1.request("chat.delete", {"message_id": first["id"], "mode": "hard"})
        assert await fail(a1, "chat.send", {"scope": "lobby", "body": "draft", "client_msg_id": "k-2"}) == "CONFLICT"
        assert (await history(a1))["messages"] == []


# --------------------------------------------------------------------------- permission matrix

USERS = {"author": "alice", "other": "bob", "mod": "mod", "admin": "root"}
OPS: dict[str, tuple[str, Callable[[str], dict[str, Any]]]] = {
    "edit": ("chat.edit", lambda mid: {"message_id": mid, "new_body": "edited body"}),
    "delete_soft": ("chat.delete", lambda mid: {"message_id": mid, "mode": "soft"}),
    "delete_hard": ("chat.delete", lambda mid: {"message_id": mid, "mode": "hard"}),
    "redact": ("chat.redact", lambda mid: {"message_id": mid, "mask": "[removed by mod]"}),
}
ALLOWED = {
    "edit": {"author"},
    "delete_soft": {"author", "mod", "admin"},
    "delete_hard": {"author", "mod", "admin"},
    "redact": {"mod", "admin"},
}
MATRIX = [(op, actor, actor in ALLOWED[op]) for op in OPS for actor in USERS]


def expected_outcome(op: str, original: Msg, ack: dict[str, Any]) -> tuple[Event, Msg | None]:
    """The event the room gets and the message history then shows (None: gone) after ``op`` succeeded."""
    mid, room = original["id"], original["room"]
    if op == "edit":
        assert ISO_UTC.match(ack["edited_at"])
        # the change takes the room's next revision: after the message, its neighbour and a reaction
        rev = original["rev"] + 1
        changed = {**original, "body": "edited body", "edited_at": ack["edited_at"], "rev": rev}
        assert ack == changed
        return ("chat.edited", changed), changed
    rev = original["rev"] + 1
    if op == "redact":
        assert ack == {"message_id": mid, "new_body": "[removed by mod]", "rev": rev}
        changed = {**original, "body": "[removed by mod]", "attachments": [], "redacted": True, "rev": rev}
        return ("chat.redacted", {"message_id": mid, "room": room, "new_body": "[removed by mod]", "rev": rev}), changed
    mode = op.removeprefix("delete_")
    assert set(ack) == {"message_id", "deleted_at", "rev"}
    assert (ack["message_id"], ack["rev"]) == (mid, rev)
    assert ISO_UTC.match(ack["deleted_at"])
    event = ("chat.deleted", {"message_id": mid, "room": room, "deleted_at": ack["deleted_at"], "mode": mode,
                              "rev": rev})
    if mode == "hard":
        return event, None
    tombstone = {**original, "body": "", "attachments": [], "reactions": {}, "deleted_at": ack["deleted_at"],
                 "rev": rev}
    return event, tombstone


@pytest.mark.parametrize(("op", "actor", "allowed"), MATRIX, ids=[f"{o}-by-{a}" for o, a, _ in MATRIX])
async def test_permission_matrix(srv: RunningServer, op: str, actor: str, allowed: bool) -> None:
    async with clients(srv, "alice", "bob", "mod", "root", "carol") as everyone:
        by_user = dict(zip(["alice", "bob", "mod", "root", "carol"], everyone, strict=True))
        for c in everyone:
            await join(c)
        author, watcher, doer = by_user["alice"], by_user["carol"], by_user[USERS[actor]]
        before = await send(author, "original", attachments=[{"url": "https://files.example/x"}])
        neighbour = await send(watcher, "unrelated")
        reacted = await by_user["bob"].request("chat.reaction", {
            "message_id": before["id"], "reaction": "+1", "action": "add", "scope": "lobby"})
        original = {**before, "reactions": {"+1": ["bob"]}, "rev": reacted["rev"]}
        assert reacted["rev"] == neighbour["rev"] + 1 == before["rev"] + 2
        await settle(*everyone)

        kind, make = OPS[op]
        reply = await doer.request_raw(kind, make(before["id"]), op_id="m-1")
        if not allowed:
            assert (reply["type"], reply["data"]["op_id"], reply["data"]["code"]) == ("error", "m-1", "FORBIDDEN")
            assert await chat_events(watcher) == []
            assert (await history(watcher))["messages"] == [original, neighbour]
            return

        assert reply["type"] == "ack", reply
        event, after = expected_outcome(op, original, reply["data"]["data"])
        for c in everyone:
            assert await chat_events(c) == ([] if c is doer else [event])
        page = (await history(watcher))["messages"]
        assert page == ([neighbour] if after is None else [after, neighbour])


@pytest.mark.parametrize("op", [*OPS, "reaction", "read"])
@pytest.mark.parametrize("which", ["unknown", "hard_deleted"])
async def test_unknown_or_hard_deleted_message_is_not_found(srv: RunningServer, op: str, which: str) -> None:
    async with clients(srv, "alice", "mod") as (a1, mod):
        await join(a1)
        await join(mod)
        mid = UNKNOWN_ID
        if which == "hard_deleted":
            mid = (await send(a1, "short-lived"))["id"]
            await a1.request("chat.delete", {"message_id": mid, "mode": "hard"})
        await settle(a1, mod)
        if op == "reaction":
            data = {"message_id": mid, "reaction": "+1", "action": "add", "scope": "lobby"}
            kind, doer = "chat.reaction", a1
        elif op == "read":
            kind, data, doer = "chat.read", {"message_id": mid, "room": "lobby"}, a1
        else:
            kind, data = OPS[op][0], OPS[op][1](mid)
            doer = a1 if op == "edit" else mod
        assert await fail(doer, kind, data) == "NOT_FOUND"
        assert await chat_events(a1 if doer is mod else mod) == []


async def test_author_may_edit_and_delete_after_leaving_and_the_room_is_told(srv: RunningServer) -> None:
    async with clients(srv, "alice", "bob") as (a1, bob):
        await join(a1)
        await join(bob)
        message = await send(a1, "typo")
        await a1.request("room.leave", {"room": "lobby"})
        await settle(bob)
        edited = await a1.request("chat.edit", {"message_id": message["id"], "new_body": "fixed"})
        assert await events_of(bob) == [("chat.edited", edited)]
        deleted = await a1.request("chat.delete", {"message_id": message["id"]})  # mode defaults to soft
        assert await events_of(bob) == [("chat.deleted", {**deleted, "room": "lobby", "mode": "soft"})]


async def test_repeated_soft_delete_keeps_the_first_deleted_at_and_is_silent(srv: RunningServer) -> None:
    async with clients(srv, "alice", "bob") as (a1, bob):
        await join(a1)
        await join(bob)
        message = await send(a1, "oops")
        first = await a1.request("chat.delete", {"message_id": message["id"], "mode": "soft"})
        await settle(bob)
        again = await a1.request("chat.delete", {"message_id": message["id"], "mode": "soft"})
        assert again == first
        assert await events_of(bob) == []


async def test_deleted_or_redacted_messages_cannot_be_edited(srv: RunningServer) -> None:
    async with clients(srv, "alice", "mod") as (a1, mod):
        await join(a1)
        await join(mod)
        gone = await send(a1, "deleted soon")
        redacted = await send(a1, "rude")
        await a1.request("chat.delete", {"message_id": gone["id"]})
        await mod.request("chat.redact", {"message_id": redacted["id"]})
        assert await fail(a1, "chat.edit", {"message_id": gone["id"], "new_body": "back"}) == "CONFLICT"
        assert await fail(a1, "chat.edit", {"message_id": redacted["id"], "new_body": "nice"}) == "CONFLICT"
        assert await fail(mod, "chat.redact", {"message_id": gone["id"]}) == "CONFLICT"
        page = (await history(a1))["messages"]
        assert [(m["body"], m["redacted"]) for m in page] == [("", False), ("[redacted]", True)]


# --------------------------------------------------------------------------- reactions and reads


async def test_reactions_are_idempotent_announced_when_changed_and_folded_in_history(srv: RunningServer) -> None:
    async with clients(srv, "alice", "alice", "bob") as (a1, a2, bob):
        for c in (a1, a2, bob):
            await join(c)
        message = await send(a1, "vote")  # rev 1
        await settle(a1, a2, bob)

        async def react(c: SignaldClient, reaction: str, action: str, rev: int | None) -> None:
            """React; ``rev``: the revision the change takes, None when it changes nothing (ack null)."""
            data = {"message_id": message["id"], "reaction": reaction, "action": action, "scope": "lobby"}
            assert await c.request("chat.reaction", data) == (None if rev is None else {"rev": rev})

        def update(user: str, reaction: str, action: str, rev: int) -> Event:
            return ("chat.reaction.update", {"message_id": message["id"], "user_id": user, "reaction": reaction,
                                             "action": action, "room": "lobby", "rev": rev})

        await react(bob, "+1", "add", 2)
        await react(bob, "+1", "add", None)  # nothing changes: no second event
        await react(a1, "+1", "add", 3)
        await react(a1, "heart", "add", 4)
        assert await events_of(bob) == [update("alice", "+1", "add", 3), update("alice", "heart", "add", 4)]
        assert await events_of(a2) == [
            update("bob", "+1", "add", 2), update("alice", "+1", "add", 3), update("alice", "heart", "add", 4)]
        assert await events_of(a1) == [update("bob", "+1", "add", 2)]
        folded = (await history(a2))["messages"][0]
        assert (folded["reactions"], folded["rev"]) == ({"+1": ["bob", "alice"], "heart": ["alice"]}, 4)

        await react(bob, "+1", "remove", 5)
        await react(bob, "+1", "remove", None)
        await react(bob, "never-added", "remove", None)
        assert await events_of(a1) == [update("bob", "+1", "remove", 5)]
        await react(a1, "+1", "remove", 6)
        assert (await history(bob))["messages"][0]["reactions"] == {"heart": ["alice"]}
        await react(a1, "heart", "remove", 7)
        assert (await history(bob))["messages"][0]["reactions"] == {}


async def test_reactions_on_a_soft_deleted_message_can_be_removed_but_not_added(srv: RunningServer) -> None:
    async with clients(srv, "alice", "bob") as (a1, bob):
        await join(a1)
        await join(bob)
        message = await send(a1, "soon gone")
        data = {"message_id": message["id"], "reaction": "+1", "action": "add", "scope": "lobby"}
        await bob.request("chat.reaction", data)
        await a1.request("chat.delete", {"message_id": message["id"]})
        await settle(a1)
        assert await fail(bob, "chat.reaction", data) == "CONFLICT"
        assert await bob.request("chat.reaction", {**data, "action": "remove"}) is None
        assert await chat_events(a1) == []  # the soft delete already cleared it: nothing changed
        assert (await history(a1))["messages"][0]["reactions"] == {}


async def test_reaction_needs_membership_and_a_message_of_that_room(srv: RunningServer) -> None:
    async with clients(srv, "alice", "bob") as (a1, bob):
        await join(a1, "lobby")
        await join(a1, "other")
        message = await send(a1, "hi")
        data = {"message_id": message["id"], "reaction": "+1", "action": "add", "scope": "lobby"}
        assert await fail(bob, "chat.reaction", data) == "NOT_IN_ROOM"
        assert await fail(a1, "chat.reaction", {**data, "scope": "other"}) == "NOT_FOUND"
        assert (await history(a1))["messages"][0]["reactions"] == {}


async def test_read_receipt_is_announced_to_others_when_it_moves_forward(srv: RunningServer) -> None:
    async with clients(srv, "alice", "alice", "bob") as (a1, a2, bob):
        for c in (a1, a2, bob):
            await join(c)
        m1 = await send(bob, "one")
        m2 = await send(bob, "two")
        await settle(a1, a2, bob)
        assert await a1.request("chat.read", {"message_id": m2["id"], "room": "lobby"}) is None
        update = ("chat.read.update", {"message_id": m2["id"], "user_id": "alice", "room": "lobby"})
        assert await events_of(bob) == [update]
        assert await events_of(a2) == [update]
        assert await events_of(a1) == []
        await a1.request("chat.read", {"message_id": m2["id"], "room": "lobby"})
        await a2.request("chat.read", {"message_id": m1["id"], "room": "lobby"})  # never moves backwards
        assert await events_of(bob) == []
        assert await events_of(a1) == []
        assert await fail(bob, "chat.read", {"message_id": m1["id"], "room": "other"}) == "NOT_IN_ROOM"


async def test_unread_in_join_ack_counts_not_deleted_messages_above_the_read_receipt(srv: RunningServer) -> None:
    async with clients(srv, "alice", "bob") as (a1, bob):
        await join(a1)
        await join(bob)
        sent = [await send(bob, f"m{i}") for i in range(1, 6)]
        await send(a1, "mine")  # own messages count: seq 6
        await bob.request("chat.delete", {"message_id": sent[4]["id"], "mode": "soft"})
        await bob.request("chat.delete", {"message_id": sent[3]["id"], "mode": "hard"})

        async with connect(srv.url, user="alice") as a2:  # never read: everything not deleted
            assert (await join(a2))["unread"] == 4
        await a1.request("chat.read", {"message_id": sent[1]["id"], "room": "lobby"})  # read up to seq 2
        async with connect(srv.url, user="alice") as a2:
            assert (await join(a2))["unread"] == 2  # seq 3 and 6
        await a1.request("chat.read", {"message_id": sent[0]["id"], "room": "lobby"})
        await a1.request("room.leave", {"room": "lobby"})
        assert (await join(a1))["unread"] == 2
        async with connect(srv.url, user="bob") as b2:  # receipts are per user
            assert (await join(b2))["unread"] == 4


# --------------------------------------------------------------------------- chat.history


@pytest.fixture
async def filled(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[tuple[SignaldClient, list[Msg]]]:
    """A daemon with ``history_page_max = 12`` and alice in lobby with 12 messages (seq 1-12)."""
    srv = await serve(nursery, tmp_path, limits={"history_page_max": 12})
    async with connect(srv.url, user="alice") as a1:
        await join(a1)
        sent = [await send(a1, f"m{i}") for i in range(1, 13)]
        yield a1, sent


@pytest.mark.parametrize(
    ("bounds", "expected", "has_more"),
    [
        ({"limit": 4}, [9, 10, 11, 12], True),
        ({"limit": 12}, list(range(1, 13)), False),
        ({"before": 5, "limit": 2}, [3, 4], True),
        ({"before": 3, "limit": 2}, [1, 2], False),
        ({"before": 3, "limit": 5}, [1, 2], False),
        ({"after": 8, "limit": 2}, [9, 10], True),
        ({"after": 10, "limit": 2}, [11, 12], False),
        ({"after": 12, "limit": 2}, [], False),
        ({"after": 2, "before": 7, "limit": 2}, [3, 4], True),
        ({"after": 2, "before": 7, "limit": 4}, [3, 4, 5, 6], False),
        ({"after": 4, "before": 5, "limit": 4}, [], False),
        ({"after": 0, "before": 100, "limit": 12}, list(range(1, 13)), False),
    ],
    ids=["newest", "newest-all", "before-more", "before-oldest", "before-short", "after-more", "after-newest",
         "after-end", "between-more", "between-all", "between-empty", "between-wide"],
)
async def test_history_pages_are_ascending_with_has_more_in_the_paging_direction(
    filled: tuple[SignaldClient, list[Msg]], bounds: dict[str, int], expected: list[int], has_more: bool
) -> None:
    a1, sent = filled
    page = await history(a1, "lobby", **bounds)
    assert page == {"messages": [sent[s - 1] for s in expected], "has_more": has_more}


async def test_paging_backwards_with_before_visits_every_message_once(filled: tuple[SignaldClient, list[Msg]]) -> None:
    a1, sent = filled
    seen: list[Msg] = []
    page = await history(a1, limit=5)
    while True:
        seen = page["messages"] + seen
        if not page["has_more"]:
            break
        page = await history(a1, before=page["messages"][0]["seq"], limit=5)
    assert seen == sent


async def test_history_limit_above_page_max_is_invalid_payload(filled: tuple[SignaldClient, list[Msg]]) -> None:
    a1, _ = filled
    assert await fail(a1, "chat.history", {"room": "lobby", "limit": 13}) == "INVALID_PAYLOAD"
    assert await fail(a1, "chat.history", {"room": "lobby", "limit": 0}) == "INVALID_PAYLOAD"


async def test_history_without_limit_gives_the_newest_fifty(srv: RunningServer) -> None:
    async with clients(srv, "alice") as (a1,):
        await join(a1)
        frames = [(f"s-{i}", "chat.send", {"scope": "lobby", "body": f"m{i}"}) for i in range(55)]
        await pipeline(a1, frames)  # 56 frames with the join: within the default burst of 60
        page = await history(a1)
        assert seqs(page["messages"]) == list(range(6, 56))
        assert page["has_more"] is True


async def test_history_of_a_room_not_joined_is_not_in_room(srv: RunningServer) -> None:
    async with clients(srv, "alice", "bob") as (a1, bob):
        await join(a1)
        await send(a1, "private")
        assert await fail(bob, "chat.history", {"room": "lobby"}) == "NOT_IN_ROOM"


# --------------------------------------------------------------------------- rejoin


@pytest.mark.parametrize("away", ["leave", "disconnect"])
async def test_rejoin_with_since_recovers_every_missed_message_folded(
    nursery: trio.Nursery, tmp_path: Path, away: str
) -> None:
    srv = await serve(nursery, tmp_path, limits={"history_page_max": 5})
    async with clients(srv, "bob") as (bob,), AsyncExitStack() as stack:
        await join(bob)
        a1 = await stack.enter_async_context(connect(srv.url, user="alice"))
        await join(a1)
        await send(bob, "m1")
        with trio.fail_after(5):
            last_seen = (await a1.next_event("chat.message"))["data"]["seq"]
        assert last_seen == 1
        if away == "leave":
            await a1.request("room.leave", {"room": "lobby"})
        else:
            await stack.aclose()
        await send(bob, "m2")
        await send_and_change(bob)
        if away == "leave":
            assert await chat_events(a1) == []  # connected, but not in the room: nothing live
        else:
            a1 = await stack.enter_async_context(connect(srv.url, user="alice"))
        result = await join(a1, since=last_seen)
        missed = result["missed"]
        rest = await all_history(a1, after=missed[-1]["seq"])

        truth = await all_history(bob, after=last_seen)
    assert seqs(truth) == [2, 3, 4, 5, 7, 8, 9, 10, 11, 12]  # 6 was hard-deleted
    assert seqs(missed) == [2, 3, 4, 5, 7]
    assert result["missed_truncated"] is True
    assert missed == truth[:5]
    assert missed[1]["body"] == "m3 edited"
    assert ISO_UTC.match(missed[1]["edited_at"])
    assert missed[2]["reactions"] == {"+1": ["bob"]}
    assert (missed[3]["body"], missed[3]["attachments"]) == ("", [])
    assert ISO_UTC.match(missed[3]["deleted_at"])
    assert missed + rest == truth


async def send_and_change(bob: SignaldClient) -> None:
    """bob sends seq 3-12, edits 3, reacts to 4, soft-deletes 5 and hard-deletes 6."""
    sent = [await send(bob, f"m{i}", attachments=[{"url": f"https://f.example/{i}"}]) for i in range(3, 13)]
    await bob.request("chat.edit", {"message_id": sent[0]["id"], "new_body": "m3 edited"})
    await bob.request("chat.reaction", {"message_id": sent[1]["id"], "reaction": "+1", "action": "add",
                                        "scope": "lobby"})
    await bob.request("chat.delete", {"message_id": sent[2]["id"], "mode": "soft"})
    await bob.request("chat.delete", {"message_id": sent[3]["id"], "mode": "hard"})


async def test_rejoin_up_to_date_or_without_since(nursery: trio.Nursery, tmp_path: Path) -> None:
    srv = await serve(nursery, tmp_path, limits={"history_page_max": 5})
    async with clients(srv, "bob", "alice") as (bob, a1):
        await join(bob)
        for i in range(3):
            await send(bob, f"m{i}")
        current = await join(a1, since=3)
        assert (current["missed"], current["missed_truncated"]) == ([], False)
        ahead = await join(a1, "other", since=99)
        assert (ahead["missed"], ahead["missed_truncated"]) == ([], False)
        async with connect(srv.url, user="carol") as carol:
            plain = await join(carol)
            assert "missed" not in plain
            assert "missed_truncated" not in plain
            full = await join(carol, "elsewhere", since=0)
            assert full["missed"] == []
        async with connect(srv.url, user="carol") as carol:
            whole = await join(carol, since=0)
            assert seqs(whole["missed"]) == [1, 2, 3]
            assert whole["missed_truncated"] is False


async def test_rejoin_while_messages_keep_arriving_misses_nothing(nursery: trio.Nursery, tmp_path: Path) -> None:
    srv = await serve(nursery, tmp_path, limits={**FAST, "history_page_max": 5})
    n = 60
    async with clients(srv, "bob", "alice") as (bob, a1):
        await join(bob)
        for i in range(5):
            await send(bob, f"before {i}")
        await settle(a1)
        acks: dict[str, Any] = {}
        halfway = trio.Event()

        async def keep_sending() -> None:
            frames = [(f"s-{i}", "chat.send", {"scope": "lobby", "body": f"during {i}"}) for i in range(n)]
            acks.update((await pipeline(bob, frames, halfway))[0])

        async with trio.open_nursery() as both:
            both.start_soon(keep_sending)
            await halfway.wait()  # join while bob's frames are on their way
            result = await join(a1, since=2)
        got = {m["seq"] for m in result["missed"]}
        assert seqs(result["missed"]) == sorted(got)
        got |= {m["seq"] for m in await all_history(a1, after=result["missed"][-1]["seq"])}
        got |= {data["seq"] for kind, data in await events_of(a1) if kind == "chat.message"}
        assert got == set(range(3, n + 6))
        assert len(acks) == n
