"""PostgreSQL going away and coming back under a running daemon (one node): what clients and an
operator see, and that nothing acked is lost (docs/configuration.md "On PostgreSQL", docs/deploy.md).

The session's private server (tests/postgres.py) is stopped, restarted, paused or has some of
signald's connections ended by ``pg_terminate_backend``; each test waits on conditions, not on time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

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
