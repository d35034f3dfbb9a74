"""A node that cannot fill a room's gap from the store never delivers past it (docs/cluster.md,
"per-room order"): two in-process nodes on one Redis and one PostgreSQL database, node A reaching
PostgreSQL through :class:`~test_cluster_resync_retry.CuttableLink`. While A's store is cut, a change
is committed and never published (this test process commits it, as a node dying between its commit
and its publish would), and a later change is published: A cannot fill the gap. Its client in the
room must not get the later change live (its resume point would pass the missing one); it is closed
with 1012 and, once the store is back, resumes with ``since_rev`` to exactly the store's history.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import pytest
import trio
from test_cluster_resync_retry import cuttable, node
from trio_websocket import ConnectionClosed

from signald.client.raw import SignaldClient, connect
from signald.errors import SignalError
from signald.history.factory import make_store

pytestmark = pytest.mark.timeout(60)


async def live_until(client: SignaldClient, done: str) -> list[dict[str, Any]]:
    """The ``chat.message`` events ``client`` gets until the one with id ``done``, or its close."""
    live: list[dict[str, Any]] = []
    while not any(m["id"] == done for m in live):
        try:
            event = await client.next_event()
        except ConnectionClosed:
            break
        if event["type"] == "chat.message":
            live.append(event["data"])
    return live


async def test_a_gap_a_node_cannot_fill_closes_its_client_which_resumes_exactly_once_the_store_is_back(
    nursery: trio.Nursery, tmp_path: Path, redis_url: str, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, A delivered the later change once the store failed to say what came before it: ann's
    resume point passed the missing change, and her resume never brought it."""
    caplog.set_level(logging.WARNING, logger="signald.cluster")
    async with cuttable(postgres_url) as (a_history, link), contextlib.AsyncExitStack() as stack:
        a = await node(nursery, tmp_path, 0, a_history, redis_url)
        b = await node(nursery, tmp_path, 1, postgres_url, redis_url)
        ann = await stack.enter_async_context(connect(a.url, user="ann"))
        carol = await stack.enter_async_context(connect(a.url, user="carol"))  # on A, in another room
        bob = await stack.enter_async_context(connect(b.url, user="bob"))
        for client in (ann, bob):
            await client.request("room.join", {"room": "lobby"})
        await carol.request("room.join", {"room": "side"})
        with trio.fail_after(30):
            before = await bob.request("chat.send", {"scope": "lobby", "body": "before"})
            assert (await ann.next_event("chat.message"))["data"]["id"] == before["id"]

            link.cut()  # A cannot read the store from now on; B can
            async with make_store(postgres_url) as store:  # a node commits, then dies before it publishes
                lost, _ = await store.send(room="lobby", user_id="dave", body="committed, never published")
            after = await bob.request("chat.send", {"scope": "lobby", "body": "after"})
            assert after["rev"] == lost.rev + 1 == before["rev"] + 2

            live = await live_until(ann, after["id"])  # A holds "after" 0.5 s, then finds the store cut
            applied = max([before["rev"], *(m["rev"] for m in live)])  # ann's resume point
            assert (await bob.next_event("chat.message"))["data"]["id"] == lost.id  # B filled it: unaffected

            async with connect(a.url, user="ann") as again:  # ann's client reconnects: the store is still cut
                with pytest.raises(SignalError) as refused:
                    await again.request("room.join", {"room": "lobby", "since_rev": applied})
            assert refused.value.code == "INTERNAL"

            link.mend()
            async with connect(a.url, user="ann") as again:
                ack = await again.request("room.join", {"room": "lobby", "since_rev": applied})
                later = await bob.request("chat.send", {"scope": "lobby", "body": "later"})  # A's room goes on
                assert (await again.next_event("chat.message"))["data"]["id"] == later["id"]
            resumed = [m["id"] for m in ack["changes"]]
            async with make_store(postgres_url) as store:
                stored = (await store.changes(room="lobby", after_rev=0, limit=100)).changes
            # ann's client ends with each change of the store up to "after" once: 0 missed, 0 twice
            assert [before["id"]] + [m["id"] for m in live] + resumed == [m.id for m in stored if m.rev <= after["rev"]]
        assert live == [] and ann.ws.closed is not None and ann.ws.closed.code == 1012
        assert "room events were missed" in (ann.ws.closed.reason or "")
        assert not carol.closed.is_set() and not bob.closed.is_set()
    lines = [r.getMessage() for r in caplog.records if r.name == "signald.cluster"]
    assert [line for line in lines if "nothing after it delivered, 1 connections closed to resume" in line], lines
