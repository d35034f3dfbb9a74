"""``room.join`` against what happens while its history read is under way.

The read is made slow (or failing) through a seam: the hub's :class:`HistoryService` reads
through its public ``store`` attribute, which these tests wrap so that ``rejoin`` waits at a gate
before reading and another after it. Meanwhile another client sends messages, so each test knows
exactly which messages were committed before the read and which after it:

* committed before the read: in the joiner's ack (``missed``, ``changes``), never also live;
* committed after the read: live, never lost;
* the others hear of the join only once the read succeeded; a failed read leaves no trace.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import clients, events_of, make_config, start_server
from trio_websocket import ConnectionClosed

from signald.client import SignaldClient
from signald.history.store import HistoryStore, Rejoin, StorageError
from signald.server import RunningServer


class GatedStore:
    """The real store, except that ``rejoin`` waits at a gate before its read and at one after."""

    def __init__(self, store: HistoryStore) -> None:
        self.real = store
        self.waiting = trio.Event()  # rejoin was called and waits for ``read``
        self.read = trio.Event()
        self.was_read = trio.Event()  # the read is done; rejoin waits for ``answer``
        self.answer = trio.Event()
        self.failure: Exception | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def rejoin(self, **kwargs: Any) -> Rejoin:
        self.waiting.set()
        await self.read.wait()
        if self.failure is not None:
            raise self.failure
        result = await self.real.rejoin(**kwargs)
        self.was_read.set()
        await self.answer.wait()
        return result


@pytest.fixture
async def srv(nursery: trio.Nursery, tmp_path: Path) -> RunningServer:
    return await start_server(nursery, make_config(tmp_path, server={"heartbeat_s": 3600.0}))


def gate(server: RunningServer) -> GatedStore:
    history = server.hub.history
    assert history is not None
    gated = GatedStore(history.store)
    history.store = gated  # type: ignore[assignment]
    return gated


def ungate(server: RunningServer, gated: GatedStore) -> None:
    history = server.hub.history
    assert history is not None
    history.store = gated.real


async def send(c: SignaldClient, body: str) -> dict[str, Any]:
    with trio.fail_after(5):
        message: dict[str, Any] = await c.request("chat.send", {"scope": "lobby", "body": body})
    return message


async def join_in_background(nursery: trio.Nursery, c: SignaldClient, **data: Any) -> dict[str, Any]:
    """Start ``c``'s ``room.join``; the returned dict gets ``reply`` once it is answered."""
    done: dict[str, Any] = {}

    async def run() -> None:
        done["reply"] = await c.request_raw("room.join", {"room": "lobby", **data})

    nursery.start_soon(run)
    return done


def kinds(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [kind for kind, _ in events]


async def test_a_message_committed_before_the_read_is_in_the_ack_only_and_one_after_it_is_live_only(
    srv: RunningServer,
) -> None:
    async with clients(srv, "bob", "alice") as (bob, alice), trio.open_nursery() as nursery:
        await bob.request("room.join", {"room": "lobby"})
        m1 = await send(bob, "m1")
        await events_of(bob)
        gated = gate(srv)
        joining = await join_in_background(nursery, alice, since=m1["seq"])
        await gated.waiting.wait()
        m2 = await send(bob, "m2")  # committed before the read: the ack reports it
        gated.read.set()
        await gated.was_read.wait()
        m3 = await send(bob, "m3")  # committed after the read: it must arrive live
        assert await events_of(bob) == [], "nobody hears of a join before its read is done"
        gated.answer.set()
        with trio.fail_after(5):
            while "reply" not in joining:
                await trio.testing.wait_all_tasks_blocked()
        ack = joining["reply"]["data"]["data"]
        assert [m["id"] for m in ack["missed"]] == [m2["id"]]
        live = [data["id"] for kind, data in await events_of(alice) if kind == "chat.message"]
        assert live == [m3["id"]]
        assert kinds(await events_of(bob)) == ["member.joined", "room.active"]


async def test_with_since_rev_each_change_is_in_the_ack_or_live_never_both_and_never_stale(
    srv: RunningServer,
) -> None:
    async with clients(srv, "bob", "alice") as (bob, alice), trio.open_nursery() as nursery:
        await bob.request("room.join", {"room": "lobby"})
        old = await send(bob, "old")  # rev 1: alice had it
        gated = gate(srv)
        joining = await join_in_background(nursery, alice, since_rev=old["rev"])
        await gated.waiting.wait()
        edited = await bob.request("chat.edit", {"message_id": old["id"], "new_body": "edited"})  # rev 2
        reaction = {"message_id": old["id"], "reaction": "+1", "action": "add", "scope": "lobby"}
        await bob.request("chat.reaction", reaction)  # rev 3: before the read, in the ack
        gated.read.set()
        await gated.was_read.wait()
        await bob.request("chat.reaction", {**reaction, "action": "remove"})  # rev 4: after, live
        await bob.request("chat.delete", {"message_id": old["id"], "mode": "hard"})  # rev 5: after, live
        gated.answer.set()
        with trio.fail_after(5):
            while "reply" not in joining:
                await trio.testing.wait_all_tasks_blocked()
        ack = joining["reply"]["data"]["data"]
        assert ack["rev"] == 3 and ack["changes_truncated"] is False
        assert ack["changes"] == [{**edited, "rev": 3, "reactions": {"+1": ["bob"]}}]  # folded, once
        live = [(kind, data["rev"]) for kind, data in await events_of(alice) if kind.startswith("chat.")]
        assert live == [("chat.reaction.update", 4), ("chat.deleted", 5)]


async def test_a_joiner_without_since_gets_live_what_is_committed_after_its_read(srv: RunningServer) -> None:
    # The ack's rev is the room's revision at the read: the joiner's state (unread, a later
    # chat.history) includes m1 already, so only m2, above that revision, comes live.
    async with clients(srv, "bob", "alice") as (bob, alice), trio.open_nursery() as nursery:
        await bob.request("room.join", {"room": "lobby"})
        gated = gate(srv)
        joining = await join_in_background(nursery, alice)
        await gated.waiting.wait()
        m1 = await send(bob, "before the read")
        gated.read.set()
        await gated.was_read.wait()
        m2 = await send(bob, "after the read")
        gated.answer.set()
        with trio.fail_after(5):
            while "reply" not in joining:
                await trio.testing.wait_all_tasks_blocked()
        ack = joining["reply"]["data"]["data"]
        assert "missed" not in ack and "changes" not in ack and ack["unread"] == 1
        assert ack["rev"] == m1["rev"] < m2["rev"]
        live = [data["id"] for kind, data in await events_of(alice) if kind == "chat.message"]
        assert live == [m2["id"]]


async def test_a_failed_read_shows_nothing_to_the_others_and_joins_nothing(srv: RunningServer) -> None:
    async with clients(srv, "carol", "alice") as (carol, alice):
        await carol.request("room.join", {"room": "lobby"})
        await events_of(carol)
        gated = gate(srv)
        gated.failure = StorageError("the disk went away")
        gated.read.set()
        with trio.fail_after(5):
            reply = await alice.request_raw("room.join", {"room": "lobby", "since": 0}, op_id="j")
        assert reply["type"] == "error" and reply["data"]["code"] == "INTERNAL"
        assert await events_of(carol) == []
        assert await events_of(alice) == []
        assert (await alice.request("session.info"))["rooms"] == []
        assert srv.hub.rooms.users_in("lobby") == {"carol"}
        ungate(srv, gated)
        ack = await alice.request("room.join", {"room": "lobby"})
        assert ack["active"] is True
        assert kinds(await events_of(carol)) == ["member.joined", "room.active"]


async def test_a_session_closed_during_its_read_never_becomes_a_member(srv: RunningServer) -> None:
    async with clients(srv, "bob", "alice") as (bob, alice), trio.open_nursery() as nursery:
        await bob.request("room.join", {"room": "lobby"})
        await events_of(bob)
        gated = gate(srv)

        async def alice_joins() -> None:
            with pytest.raises(ConnectionClosed):
                await alice.request_raw("room.join", {"room": "lobby"})

        nursery.start_soon(alice_joins)
        await gated.waiting.wait()
        assert srv.hub.revoke_user("alice", "account closed") == 1  # the server closes her session
        with trio.fail_after(5):
            while srv.hub.connection_count("alice"):
                await trio.testing.wait_all_tasks_blocked()
        gated.read.set()
        gated.answer.set()
        await trio.testing.wait_all_tasks_blocked()
        assert srv.hub.rooms.users_in("lobby") == {"bob"}
        assert kinds(await events_of(bob)) == []
        await send(bob, "still fine")
