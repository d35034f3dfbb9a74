"""Timers across nodes, on the real clock (the suites over 3 nodes run their mock-clock tests on one
node only): typing expires once for everyone, and automatic away counts a user's activity on any
node. Real daemons on a private Redis and PostgreSQL (docs/cluster.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from test_cluster import Event, nodes, of, wait_for

from signald.client.raw import SignaldClient, connect

pytestmark = pytest.mark.timeout(90)

TIMERS = "typing_timeout_s = 1.0\n[presence]\naway_after_s = 2.0"


async def quiet_for(client: SignaldClient, seconds: float) -> list[Event]:
    """What ``client`` receives within ``seconds`` (to show that nothing more comes)."""
    seen: list[Event] = []
    with trio.move_on_after(seconds):
        while True:
            event = await client.next_event()
            seen.append((event["type"], event["data"]))
    return seen


def alices(seen: list[Event]) -> list[dict[str, object]]:
    """alice's status changes (bob, idle too, goes away himself meanwhile)."""
    return [update for update in of("presence.update", seen) if update["user_id"] == "alice"]


async def test_typing_expires_once_and_away_counts_activity_on_any_node(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    async with nodes(tmp_path, redis_url, postgres_url, 3, limits=TIMERS) as started:
        urls = [url for _, url in started]
        async with connect(urls[0], user="alice") as a1, connect(urls[2], user="alice") as a2, \
                connect(urls[1], user="bob") as bob:
            for client in (a1, a2, bob):
                await client.request("room.join", {"room": "lobby"})
            with trio.fail_after(10):  # bob's node has heard both of alice's devices (nodes 0 and 2)
                while True:
                    members = (await bob.request("room.join", {"room": "lobby"}))["members"]
                    if [len(m["devices"]) for m in members if m["user_id"] == "alice"] == [2]:
                        break
                    await trio.sleep(0.02)

            # Typing on node 0 reaches bob on node 1, and expires there once (not once per node).
            await a1.request("chat.typing", {"scope": "lobby", "typing": True})
            started_at = trio.current_time()
            typing = {"scope": "lobby", "user_id": "alice", "typing": True}
            seen = await wait_for(bob, [], lambda s: ("chat.typing.user", typing) in s)
            stopped = {**typing, "typing": False}
            seen = await wait_for(bob, seen, lambda s: ("chat.typing.user", stopped) in s)
            assert trio.current_time() - started_at >= 0.9  # not before typing_timeout_s
            seen += await quiet_for(bob, 0.5)
            assert of("chat.typing.user", seen) == [typing, stopped], seen

            # alice active on node 0 only (a ping every 0.3 s), idle on node 2: she stays online.
            with trio.move_on_after(3.0):
                while True:
                    await a1.request_raw("presence.ping")
                    await trio.sleep(0.3)
            assert not alices(await quiet_for(bob, 0.1))
            # Her last activity comes 0.45 s after one that node 0 shared at once: within the
            # 0.5 s (away_after_s / 4) in which it shares no more, so it goes later, saying how long
            # ago it was, and bob's node counts 2 s from it, not from the one before.
            await trio.sleep(0.6)
            await a1.request_raw("presence.ping")
            await trio.sleep(0.45)
            await a1.request_raw("presence.ping")
            last_active = trio.current_time()
            # Idle everywhere: away once, for everyone; active again on node 2: online.
            away, online = {"user_id": "alice", "status": "away"}, {"user_id": "alice", "status": "online"}
            seen = await wait_for(bob, [], lambda s: ("presence.update", away) in s, within=6.0)
            assert trio.current_time() - last_active >= 1.8  # 2.0 after her last activity, not 1.55
            await a2.request_raw("presence.ping")
            seen = await wait_for(bob, seen, lambda s: ("presence.update", online) in s)
            assert alices(seen) == [away, online], seen
