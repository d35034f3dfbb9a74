"""PostgreSQL going away and coming back under a running daemon (one node): what clients and an
operator see, and that nothing acked is lost (docs/configuration.md "On PostgreSQL", docs/deploy.md).

The session's private server (tests/postgres.py) is stopped, restarted, paused or has some of
signald's connections ended by ``pg_terminate_backend``; each test waits on conditions, not on time.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest
import trio
from conftest import make_config, start_server
from postgres import PostgresServer, create_database

from signald.client.raw import connect
from signald.errors import SignalError
from signald.server import RunningServer


@asynccontextmanager
async def stopped(postgres_server: PostgresServer, mode: str = "fast") -> AsyncIterator[None]:
    """The session's server stopped inside the block, started again on the way out."""
    await trio.to_thread.run_sync(postgres_server.stop, mode)
    try:
        yield
    finally:
        await trio.to_thread.run_sync(postgres_server.start)


async def on_postgres(nursery: trio.Nursery, tmp_path: Path, postgres_server: PostgresServer) -> RunningServer:
    return await start_server(nursery, make_config(tmp_path, history={"url": create_database(postgres_server)}))


async def test_a_last_seen_flush_while_postgres_is_down_neither_stops_the_daemon_nor_loses_the_time(
    nursery: trio.Nursery, tmp_path: Path, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub writes last-seen times every LAST_SEEN_FLUSH_S: one that fails (the store is gone)
    ended the hub's nursery, so the whole daemon, with a StorageError. Now it is logged, the times
    are written by a later flush once the store is back, and the daemon serves on."""
    monkeypatch.setattr("signald.app.history.LAST_SEEN_FLUSH_S", 0.05)
    server = await on_postgres(nursery, tmp_path, postgres_server)
    store = server.hub.history.store  # type: ignore[union-attr]
    outcomes: list[BaseException | None] = []
    changed = trio.Event()
    write = store.set_last_seen

    async def watched(entries: Any) -> None:
        try:
            await write(entries)
        except BaseException as exc:
            outcomes.append(exc)
            raise
        else:
            outcomes.append(None)
        finally:
            changed.set()

    monkeypatch.setattr(store, "set_last_seen", watched)

    async def until(done: Callable[[], bool]) -> None:
        nonlocal changed
        while not done():
            await changed.wait()
            changed = trio.Event()

    with trio.fail_after(15):
        async with stopped(postgres_server):
            async with connect(server.url, user="ann"):
                pass  # ann was seen, then left: a time to write
            await until(lambda: any(isinstance(o, SignalError) for o in outcomes))
        await until(lambda: outcomes[-1] is None)
        assert (await store.last_seen(["ann"])).keys() == {"ann"}
        async with connect(server.url, user="bob") as bob:
            assert (await bob.request_raw("presence.ping"))["type"] == "presence.pong"


def end_backends(postgres_server: PostgresServer, database: str, role: str) -> int:
    """``pg_terminate_backend`` on signald's connections of ``role`` to ``database``, and wait until
    their processes are gone (their sockets closed); how many."""
    with psycopg.connect(postgres_server.url(), autocommit=True) as conn:
        pids = [pid for pid, in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            (database, f"signald-{role}"))]
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).wait(timeout=10)
    return len(pids)


@pytest.mark.parametrize("fault", ["restart-fast", "restart-immediate", "sends", "writer", "reader"])
async def test_the_first_requests_after_an_idle_connection_was_lost_succeed(
    nursery: trio.Nursery, tmp_path: Path, postgres_server: PostgresServer, fault: str
) -> None:
    """PostgreSQL restarted while the daemon was idle, or one kind of signald's connections ended
    by ``pg_terminate_backend``: the server is back, so the next send (send path), edit (writer),
    history page and join (readers) and ``/readyz`` succeed at once. Each connection found dead
    was only noticed when used, so the first requests after the outage got ``INTERNAL``."""
    url = create_database(postgres_server)
    server = await start_server(nursery, make_config(tmp_path, history={"url": url}))
    async with connect(server.url, user="ann") as ann, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
        await ann.request("room.join", {"room": "lobby"})
        first = await ann.request("chat.send", {"scope": "lobby", "body": "before"})
        await ann.request("chat.edit", {"message_id": first["id"], "new_body": "edited before"})
        for _ in range(4):  # every reader connection in use once
            assert (await http.get("/readyz")).status_code == 200
        with trio.fail_after(15):
            if fault.startswith("restart"):
                async with stopped(postgres_server, fault.split("-")[1]):
                    pass
            else:
                assert await trio.to_thread.run_sync(end_backends, postgres_server, url.rsplit("/", 1)[1], fault)
            sent = await ann.request("chat.send", {"scope": "lobby", "body": "after"})
            assert (await ann.request("chat.edit", {"message_id": sent["id"], "new_body": "edited after"}))["rev"] == 4
            for _ in range(4):
                assert (await http.get("/readyz")).status_code == 200
            page = await ann.request("chat.history", {"room": "lobby"})
            assert [m["body"] for m in page["messages"]] == ["edited before", "edited after"]
            async with connect(server.url, user="bob") as bob:
                assert (await bob.request("room.join", {"room": "lobby"}))["rev"] == 4
