"""Exact resume over real WebSockets: ``room.join {since_rev}``, ``chat.changes`` and ``changes_reset``.

The property test has several users send, edit, delete (soft and hard), redact and react at
random while one client drops its connection and comes back with ``since_rev`` at random points,
and the daemon itself restarts at random points (on the same database). In the end the client
that came and went, applying ``changes`` and then live events, holds exactly the room a client that
never left holds, and exactly what ``chat.history`` shows. The same property runs against a real
``signald serve`` process killed with ``kill -9`` at the restarts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import over_nodes
import pytest
import trio
from conftest import clients, daemon, events_of, make_config, start_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from roomview import RoomView

from signald.client.raw import SignaldClient, connect

FAST = {"rate_per_s": 10_000.0, "rate_burst": 10_000}
Msg = dict[str, Any]

pytestmark = pytest.mark.usefixtures("nodes")  # every test over 1 node and over 3 nodes


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> dict[str, str]:
    """The ``[history]`` keys of a daemon on SQLite (none: ``server.db``) or on PostgreSQL (several
    nodes: none either, they run on the session's shared PostgreSQL database)."""
    if request.param == "postgres" and over_nodes.current.count == 1:
        return {"url": request.getfixturevalue("postgres_url")}
    return {}


async def full_history(c: SignaldClient, room: str = "lobby") -> list[Msg]:
    messages: list[Msg] = []
    while True:
        page = await c.request("chat.history", {"room": room, "after": messages[-1]["seq"] if messages else 0})
        messages += page["messages"]
        if not page["has_more"]:
            return messages


async def test_changes_page_on_with_chat_changes_in_rev_order(
    nursery: trio.Nursery, tmp_path: Path, store_url: dict[str, str]
) -> None:
    srv = await start_server(nursery, make_config(tmp_path, history=store_url, limits={"history_page_max": 3, **FAST}))
    async with clients(srv, "alice", "bob") as (alice, bob):
        await alice.request("room.join", {"room": "lobby"})
        sent = [await alice.request("chat.send", {"scope": "lobby", "body": f"m{i}"}) for i in range(5)]  # revs 1-5
        edited = await alice.request("chat.edit", {"message_id": sent[0]["id"], "new_body": "m0!"})  # rev 6
        gone = await alice.request("chat.delete", {"message_id": sent[2]["id"], "mode": "hard"})  # rev 7
        ack = await bob.request("room.join", {"room": "lobby", "since_rev": 1})
        assert ack["rev"] == 7 and ack["changes_truncated"] is True
        assert ack["changes"] == sent[1:2] + sent[3:5]  # revs 2, 4, 5 (seq 3 was hard-deleted at rev 7)
        page = await bob.request("chat.changes", {"room": "lobby", "after_rev": 5})
        tombstone = {"id": sent[2]["id"], "room": "lobby", "seq": 3, "rev": gone["rev"], "removed": True}
        assert page == {"changes": [edited, tombstone], "rev": 7, "has_more": False}
        assert await bob.request("chat.changes", {"room": "lobby", "after_rev": 7}) == {
            "changes": [], "rev": 7, "has_more": False}
        limited = await bob.request("chat.changes", {"room": "lobby", "after_rev": 0, "limit": 1})
        assert (limited["changes"], limited["has_more"]) == (sent[1:2], True)
        refused = await bob.request_raw("chat.changes", {"room": "lobby", "after_rev": 0, "limit": 4}, op_id="x")
        assert refused["data"]["code"] == "INVALID_PAYLOAD" and refused["data"]["op_id"] == "x"
        async with connect(srv.url, user="carol") as carol:
            outsider = await carol.request_raw("chat.changes", {"room": "lobby", "after_rev": 0}, op_id="y")
            assert outsider["data"]["code"] == "NOT_IN_ROOM"


async def test_changes_reset_once_retention_removed_part_of_what_was_asked(
    nursery: trio.Nursery, tmp_path: Path, store_url: dict[str, str]
) -> None:
    config = make_config(tmp_path, history={"retention_max_count": 2, **store_url}, limits=FAST)
    srv = await start_server(nursery, config)
    async with clients(srv, "alice", "bob") as (alice, bob):
        await alice.request("room.join", {"room": "lobby"})
        sent = [await alice.request("chat.send", {"scope": "lobby", "body": f"m{i}"}) for i in range(4)]
        assert srv.hub.history is not None
        await srv.hub.history.store.run_retention()  # (the writer thread may have done it already)
        ack = await bob.request("room.join", {"room": "lobby", "since_rev": 1})
        assert ack["changes_reset"] is True and "changes" not in ack and ack["rev"] == 4
        assert await full_history(bob) == sent[2:]  # what the client reloads instead
        page = await bob.request("chat.changes", {"room": "lobby", "after_rev": 0})
        assert page == {"changes": [], "rev": 4, "has_more": False, "changes_reset": True}
        ahead = await bob.request("chat.changes", {"room": "lobby", "after_rev": 99})  # another database's rev
        assert ahead["changes_reset"] is True
        fine = await bob.request("chat.changes", {"room": "lobby", "after_rev": 2})
        assert fine == {"changes": sent[2:], "rev": 4, "has_more": False}


async def burst_with_a_join(nursery: trio.Nursery, sender: SignaldClient, burst: int, view: RoomView,
                            joiner: SignaldClient) -> int:
    """``burst`` sends to ``lobby`` from ``sender``, pipelined; ``joiner`` joins into ``view`` in
    the middle of their commits. How many were acked by the time the last one went out."""
    acked = 0
    for i in range(burst):
        await sender.send({"type": "chat.send", "id": f"s{i}", "data": {"scope": "lobby", "body": f"{i}"}})
        if i == 20:
            # once one is committed, so that the join cannot read before them all (a store on
            # another server, PostgreSQL, may not have committed any by now)
            while not acked:
                acked += (await sender.next_event())["type"] == "ack"
            nursery.start_soon(view.join, joiner)
    return acked


async def test_a_join_racing_with_a_burst_of_sends_gets_each_message_exactly_once(
    nursery: trio.Nursery, tmp_path: Path, store_url: dict[str, str]
) -> None:
    srv = await start_server(nursery, make_config(tmp_path, history=store_url, limits={"history_page_max": 50, **FAST}))
    burst = 300
    view = RoomView("lobby")
    async with clients(srv, "alice", "bob") as (alice, bob):
        await alice.request("room.join", {"room": "lobby"})
        acked = await burst_with_a_join(nursery, alice, burst, view, bob)
        with trio.fail_after(10):
            while acked < burst:
                acked += (await alice.next_event())["type"] == "ack"
            for event in await events_of(bob):
                view.apply_event(*event)
        assert [m["body"] for m in view.as_history()] == [str(i) for i in range(burst)]
        assert 0 < view.joined_at < burst  # it did race: part in the ack and its pages, part live


@pytest.mark.on_redis_cluster
async def test_a_join_racing_with_sends_from_another_node_where_the_room_has_a_member_gets_each_once(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Over 3 nodes: alice sends on node 0, carol is already in the room on node 1, bob joins on node 1
    mid-burst. Node 1's room order may be behind bob's read of the store (it is still delivering to
    carol what node 0 committed a moment ago): bob gets those in his ack and must not get them live too."""
    srv = await start_server(nursery, make_config(tmp_path, limits={"history_page_max": 50, **FAST}))
    burst, view, watched = 300, RoomView("lobby"), RoomView("lobby")
    async with AsyncExitStack() as stack:
        alice, carol, bob = [await stack.enter_async_context(connect(over_nodes.url_of(srv, node), user=user))
                             for user, node in (("alice", 0), ("carol", 1), ("bob", 1))]
        await alice.request("room.join", {"room": "lobby"})
        await watched.join(carol)
        acked = await burst_with_a_join(nursery, alice, burst, view, bob)
        with trio.fail_after(10):
            while acked < burst:
                acked += (await alice.next_event())["type"] == "ack"
            for client, room_view in ((bob, view), (carol, watched)):
                for event in await events_of(client):
                    room_view.apply_event(*event)  # asserts: nothing twice, nothing at or below the ack
        expected = [str(i) for i in range(burst)]
        assert [m["body"] for m in view.as_history()] == expected == [m["body"] for m in watched.as_history()]
        assert 0 < view.joined_at < burst


# --------------------------------------------------------------------------- the property


ACTORS = ("alice", "bob", "mod")
_ix = st.integers(0, 30)
STEPS = st.one_of(
    st.tuples(st.just("send"), st.sampled_from(ACTORS)),
    st.tuples(st.just("edit"), st.sampled_from(ACTORS), _ix),
    st.tuples(st.just("delete"), st.sampled_from(ACTORS), _ix, st.sampled_from(["soft", "hard"])),
    st.tuples(st.just("redact"), _ix),
    st.tuples(st.just("react"), st.sampled_from(ACTORS), _ix, st.sampled_from(["+1", "ok"]),
              st.sampled_from(["add", "remove"])),
    st.tuples(st.just("leave")),  # the resuming client drops its connection (in-flight events are lost)
    st.tuples(st.just("back")),  # ... and comes back with since_rev
    st.tuples(st.just("restart")),  # the daemon restarts on the same database: everyone comes back
)


async def act(actors: dict[str, SignaldClient], ids: list[str], step: tuple[Any, ...], n: int) -> None:
    """Carry out one user action; refusals (not the author, already deleted...) are part of the game."""
    def pick(ix: int) -> str:
        return ids[ix % len(ids)] if ids else "f" * 24

    kind = step[0]
    if kind == "send":
        reply = await actors[step[1]].request_raw("chat.send", {"scope": "lobby", "body": f"m{n}"})
        ids.append(reply["data"]["data"]["id"])
    elif kind == "edit":
        await actors[step[1]].request_raw("chat.edit", {"message_id": pick(step[2]), "new_body": f"e{n}"})
    elif kind == "delete":
        await actors[step[1]].request_raw("chat.delete", {"message_id": pick(step[2]), "mode": step[3]})
    elif kind == "redact":
        await actors["mod"].request_raw("chat.redact", {"message_id": pick(step[1]), "mask": f"[r{n}]"})
    else:
        data = {"message_id": pick(step[2]), "reaction": step[3], "action": step[4], "scope": "lobby"}
        await actors[step[1]].request_raw("chat.reaction", data)


Where = Callable[[], str]  # the URL of the node the next connection goes to


@asynccontextmanager
async def in_process(tmp_path: Path, run: int) -> AsyncIterator[tuple[Where, Callable[[], None]]]:
    """A daemon in this process (over "3 nodes", three: each connection goes to the next one, so
    the resuming client comes back through another node); stopping it cancels it (a clean shutdown)."""
    if run == 1:
        over_nodes.current.fresh()  # a new example: an empty store, as its fresh tmp_path is on one node
    config = make_config(tmp_path, auth={"mods": ["mod"]}, limits={"history_page_max": 3, **FAST},
                         server={"heartbeat_s": 3600.0})
    async with trio.open_nursery() as nursery:
        srv = await start_server(nursery, config)
        yield lambda: srv.url, nursery.cancel_scope.cancel


@asynccontextmanager
async def killed_process(tmp_path: Path, run: int) -> AsyncIterator[tuple[Where, Callable[[], None]]]:
    """A ``signald serve`` process on the same database each run; stopping it is ``kill -9``."""
    text = 'history_page_max = 3\n[auth]\nmods = ["mod"]\n[server]\nheartbeat_s = 3600.0\n'  # after [limits]
    async with daemon(tmp_path, f"run{run}", "--db", str(tmp_path / "d.db"), config_text=text) as (process, url):
        yield lambda: url, process.kill


Daemon = Callable[[Path, int], AbstractAsyncContextManager[tuple[Where, Callable[[], None]]]]


async def resume_scenario(tmp_path: Path, steps: list[tuple[Any, ...]], daemon: Daemon = in_process) -> None:
    resumer, watcher = RoomView("lobby"), RoomView("lobby")
    ids: list[str] = []
    restarted, stored, run = False, None, 0
    while stored is None:  # one daemon run per iteration; a "restart" step ends it
        run += 1
        async with daemon(tmp_path, run) as (where, stop), AsyncExitStack() as stack:
            actors = {u: await stack.enter_async_context(connect(where(), user=u)) for u in ACTORS}
            for c in actors.values():
                await c.request("room.join", {"room": "lobby"})
            watching = await stack.enter_async_context(connect(where(), user="watcher"))
            await watcher.join(watching)
            away = AsyncExitStack()  # rita's connection, closed before the others whatever happens
            try:
                rita: SignaldClient | None = await away.enter_async_context(connect(where(), user="rita"))
                assert rita is not None
                await resumer.join(rita)
                while steps and steps[0][0] != "restart":
                    step = steps.pop(0)
                    if step[0] == "leave" and rita is not None:
                        resumer.apply_pending(rita)  # what arrived before the connection dropped
                        await away.aclose()
                        rita = None
                    elif step[0] == "back" and rita is None:
                        away = AsyncExitStack()
                        rita = await away.enter_async_context(connect(where(), user="rita"))
                        await resumer.join(rita)
                    elif step[0] not in ("leave", "back"):
                        await act(actors, ids, step, len(ids))
                if steps:  # a restart: clients keep what reached them, the daemon goes away
                    steps.pop(0)
                    restarted = True
                    if rita is not None:
                        resumer.apply_pending(rita)
                    watcher.apply_pending(watching)
                else:
                    if rita is None:  # the end: come back a last time
                        rita = await away.enter_async_context(connect(where(), user="rita"))
                        await resumer.join(rita)
                    for event in await events_of(rita):
                        resumer.apply_event(*event)
                    for event in await events_of(watching):
                        watcher.apply_event(*event)
                    stored = await full_history(watching)
            finally:
                await away.aclose()
            stop()
    assert resumer.as_history() == stored
    if not restarted:  # the watcher never left: the room it saw live is the stored one
        assert watcher.as_history() == stored


def test_a_client_that_resumes_with_since_rev_ends_in_the_state_of_one_that_never_left(
    tmp_path_factory: Any, nodes: int
) -> None:
    """40 examples on one node; 8 over three nodes (each start costs three), where the client
    comes back through another node than the one it left."""
    @settings(max_examples=40 if nodes == 1 else 8, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(STEPS, min_size=1, max_size=24))
    def resumes(steps: list[tuple[Any, ...]]) -> None:
        trio.run(resume_scenario, tmp_path_factory.mktemp("resume"), list(steps))

    resumes()


@pytest.mark.one_node("a real daemon process on its own SQLite file; killing a node: tests/e2e/test_cluster.py")
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(STEPS, max_size=10), st.lists(STEPS, min_size=1, max_size=10))
def test_the_same_across_kill_9_of_a_real_daemon(
    tmp_path_factory: Any, before: list[tuple[Any, ...]], after: list[tuple[Any, ...]]
) -> None:
    """The property with a ``signald serve`` process that every "restart" step kills with SIGKILL
    (at least one: between ``before`` and ``after``)."""
    steps = [*before, ("restart",), *after]
    trio.run(resume_scenario, tmp_path_factory.mktemp("resume"), steps, killed_process)
