"""Our transport layer end to end: fan-out frames and control frames share one clean byte stream."""

from __future__ import annotations

from pathlib import Path

import trio
from conftest import make_config, start_server

from signald.client.raw import connect


async def test_fan_out_frames_interleave_cleanly_with_pings(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await start_server(nursery, make_config(tmp_path, limits={"rate_per_s": 10_000, "rate_burst": 10_000}))
    async with connect(server.url, user="alice") as alice, connect(server.url, user="bob") as bob:
        await alice.request("room.join", {"room": "lobby"})
        await bob.request("room.join", {"room": "lobby"})
        async with trio.open_nursery() as nursery:
            async def ping_a_lot() -> None:
                for _ in range(50):
                    await bob.ws.ping()
            nursery.start_soon(ping_a_lot)
            for n in range(200):
                await alice.send({"type": "room.signal", "data": {"room": "lobby", "kind": f"k{n}", "payload": n}})
        await alice.request("presence.ping")
        with trio.fail_after(5):
            seen = [(await bob.next_event("room.signal"))["data"]["payload"] for _ in range(200)]
        assert seen == list(range(200))
