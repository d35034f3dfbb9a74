"""Last seen across restarts, and bounded for the guests of auth mode ``none``.

The daemon keeps last-seen times in memory and writes the changed ones to the history store
every 30 s and on shutdown. After a restart on the same database they are read back on demand
(:meth:`signald.app.history.HistoryService.last_seen`, which embedders reach as
``await server.last_seen(...)``), not loaded whole. Anonymous connections in auth mode ``none`` each get a new
guest id: their last seen is never written, so the table does not grow with them.
"""

from __future__ import annotations

from pathlib import Path

import trio
from conftest import make_config, start_server

from signald.app.history import HistoryService
from signald.client.raw import connect
from signald.config import Config
from signald.server import RunningServer

WALL = 1_800_000_000.25  # an exact multiple of a millisecond: survives the ISO 8601 round trip


def history_of(server: RunningServer) -> HistoryService:
    history = server.hub.history
    assert history is not None
    return history


async def run_once(config: Config, wall: float, users: list[str | None]) -> list[str]:
    """Start a daemon, connect and disconnect ``users`` (None: anonymous), stop it; the user ids."""
    seen: list[str] = []
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, config, wall_clock=lambda: wall)
        for user in users:
            async with connect(server.url, user=user) as c:
                await c.request("room.join", {"room": "lobby"})
                seen.append(c.user_id)
        nursery.cancel_scope.cancel()  # shutting down flushes last seen
    return seen


async def test_last_seen_written_before_a_restart_is_read_back_after_it(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = make_config(tmp_path, server={"heartbeat_s": 3600.0})
    await run_once(config, WALL, ["alice"])
    server = await start_server(nursery, config, wall_clock=lambda: WALL + 500.0)
    presence = server.hub.presence
    assert presence.last_seen("alice") is None  # nothing is loaded at start
    assert server.presence("alice").last_seen is None  # the in-memory view does not know yet
    assert await server.last_seen("alice", "nobody") == {"alice": WALL}  # the facade reads it back
    assert server.presence("alice").last_seen == WALL  # and now memory has it
    assert await history_of(server).last_seen(["alice", "nobody"]) == {"alice": WALL}
    assert presence.last_seen("alice") == WALL  # kept (capped) for the next asker
    # a value the daemon has seen since the restart wins over the stored one
    async with connect(server.url, user="alice") as alice:
        await alice.request("presence.ping")
        assert await history_of(server).last_seen(["alice"]) == {"alice": WALL + 500.0}


async def test_anonymous_guests_leave_no_last_seen_rows(nursery: trio.Nursery, tmp_path: Path) -> None:
    config = make_config(tmp_path, server={"heartbeat_s": 3600.0})
    assert config.auth.mode == "none"
    ids = await run_once(config, WALL, [None] * 30 + ["bob"])
    guests, bob = ids[:-1], ids[-1]
    assert len(set(guests)) == 30 and all(g.startswith("guest-") for g in guests)
    server = await start_server(nursery, config)
    store = history_of(server).store
    assert await store.last_seen([*guests, bob]) == {bob: "2027-01-15T08:00:00.250Z"}
