"""Many senders pipelining into one room while PostgreSQL is stopped (fast, immediate), paused, or
has one of signald's connections ended: every request gets exactly one reply (its ack or INTERNAL
"history store unavailable") in bounded time, sends work again without restarting signald, every
acked message is stored once, and a client that left when the outage began and resumes exactly
(``since_rev``, then ``chat.changes``) ends with what is stored, each message once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from conftest import make_config, start_server
from postgres import PostgresServer, create_database
from test_durability import all_history
from test_store_outages import end_backends, paused

from signald.client.raw import SignaldClient, connect

SENDERS = 6
WINDOW = 4  # requests in flight per sender
UNAVAILABLE = ("INTERNAL", "history store unavailable")


@attrs.define
class Traffic:
    """Senders pipelining ``chat.send`` until ``stopping``; each request's replies and delay."""

    stopping: trio.Event = attrs.Factory(trio.Event)
    replies: dict[str, list[dict[str, Any]]] = attrs.Factory(dict)
    delays: list[float] = attrs.Factory(list)
    acked: dict[str, dict[str, Any]] = attrs.Factory(dict)
    changed: trio.Event = attrs.Factory(trio.Event)

    async def sender(self, url: str, user: str) -> None:
        async with connect(url, user=user) as c:
            await c.request("room.join", {"room": "lobby"})
            slots = trio.Semaphore(WINDOW)
            async with trio.open_nursery() as nursery:
                for i in range(10**9):
                    await slots.acquire()
                    if self.stopping.is_set():
                        break
                    nursery.start_soon(self.one, c, f"{user}-{i}", slots)
            await c.request("presence.ping")  # a second reply to any of them would be here by now
            for extra in c.pending_events():
                if extra["type"] in ("ack", "error"):
                    self.replies[extra["data"]["op_id"]].append(extra)

    async def one(self, c: SignaldClient, op: str, slots: trio.Semaphore) -> None:
        began = trio.current_time()
        try:
            reply = await c.request_raw("chat.send", {"scope": "lobby", "body": op}, op_id=op)
        finally:
            slots.release()
        self.delays.append(trio.current_time() - began)
        self.replies[op] = [reply]
        if reply["type"] == "ack":
            self.acked[op] = reply["data"]["data"]
        else:
            assert (reply["data"]["code"], reply["data"]["message"]) == UNAVAILABLE, reply
        self.changed.set()
        self.changed = trio.Event()

    async def until(self, done: Any) -> None:
        while not done():
            await self.changed.wait()


async def watch(url: str, live: list[dict[str, Any]], leave: trio.Event,
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """A member (in the room before anyone sends) reading its live events until ``leave``."""
    async with connect(url, user="zed") as zed:
        await zed.request("room.join", {"room": "lobby"})
        task_status.started()
        async with trio.open_nursery() as nursery:
            async def read() -> None:
                while True:
                    event = await zed.next_event()
                    if event["type"] == "chat.message":
                        live.append(event["data"])

            nursery.start_soon(read)
            await leave.wait()
            nursery.cancel_scope.cancel()


async def resumed(url: str, live: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """zed back: ``room.join since_rev`` from the last live event, then ``chat.changes`` pages."""
    after = max((m["rev"] for m in live), default=0)
    async with connect(url, user="zed") as zed:
        ack = await zed.request("room.join", {"room": "lobby", "since_rev": after})
        view = list(ack["changes"])
        more = ack["changes_truncated"]
        while more:
            page = await zed.request("chat.changes", {"room": "lobby", "after_rev": view[-1]["rev"], "limit": 200})
            view += page["changes"]
            more = page["has_more"]
    return live + view


@pytest.mark.parametrize("fault", ["stop-fast", "stop-immediate", "pause", "end-sends", "end-writer"])
async def test_many_senders_through_a_postgres_outage_get_one_reply_each_and_lose_nothing_acked(
    nursery: trio.Nursery, tmp_path: Path, postgres_server: PostgresServer, fault: str
) -> None:
    url = create_database(postgres_server)
    server = await start_server(nursery, make_config(tmp_path, history={"url": url},
                                                     limits={"rate_per_s": 100000.0, "rate_burst": 100000}))
    traffic, live, leave = Traffic(), [], trio.Event()
    with trio.fail_after(15):
        async with trio.open_nursery() as clients, \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            await clients.start(watch, server.url, live, leave)
            for k in range(SENDERS):
                clients.start_soon(traffic.sender, server.url, f"u{k}")
            await traffic.until(lambda: len(traffic.acked) >= 200)
            leave.set()
            errors_before = len(traffic.replies) - len(traffic.acked)
            acked_before = len(traffic.acked)
            if fault.startswith("stop"):
                await trio.to_thread.run_sync(postgres_server.stop, fault.split("-")[1])
                try:
                    await traffic.until(lambda: len(traffic.replies) - len(traffic.acked) > errors_before + 20)
                    assert (await http.get("/readyz")).status_code == 503
                finally:
                    await trio.to_thread.run_sync(postgres_server.start)
            elif fault == "pause":
                with paused(postgres_server):
                    assert (await http.get("/readyz")).status_code == 503  # after 2 s of silence
            else:
                await trio.to_thread.run_sync(end_backends, postgres_server, url.rsplit("/", 1)[1],
                                              fault.split("-")[1])
            await traffic.until(lambda: len(traffic.acked) >= acked_before + 200)  # back by itself
            assert (await http.get("/readyz")).status_code == 200
            traffic.stopping.set()  # every request in flight still gets its reply
        async with connect(server.url, user="late") as late:
            await late.request("room.join", {"room": "lobby"})
            after = await late.request("chat.send", {"scope": "lobby", "body": "late"})
            stored = await all_history(late, "lobby")
        view = await resumed(server.url, live)
    assert all(len(replies) == 1 for replies in traffic.replies.values())
    bound = 2.0 + (2.5 if fault == "pause" else 0.0)  # a pause holds every send for its length
    assert max(traffic.delays) < bound, max(traffic.delays)
    by_body = {m["body"]: m for m in stored}
    assert len(by_body) == len(stored), "a message was stored twice"
    assert [m["seq"] for m in stored] == list(range(1, len(stored) + 1))
    for op, acked in traffic.acked.items():
        assert by_body[op] == acked, op  # stored as acked (an unacked send is stored once or not at all)
    assert sorted(m["id"] for m in view) == sorted(m["id"] for m in stored)  # each once, "late" included
    assert stored[-1] == after
