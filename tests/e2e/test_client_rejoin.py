"""The Python client keeps a room whose rejoin the server refused for now, and gets it back in sync.

A real daemon on PostgreSQL, paused (SIGSTOP) to make the history store hang: the client's
automatic rejoin after the server closed its connection with 1012 (as a node whose store is away
does, docs/cluster.md) gets ``INTERNAL`` after ``history.request_timeout_s``. (A locked SQLite
file would not do: a rejoin only reads, and reads go on beside the lock.) Before, the client dropped the room's view
for good on that reply; now it keeps the view and rejoins after a backoff until the store is back,
and the program sees every message, with no ``join()`` of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from conftest import start_server
from postgres import PostgresServer, create_database
from test_store_hangs import REQUEST_TIMEOUT_S, config
from test_store_outages import paused

from signald.client import Backoff
from signald.client import connect as trio_connect
from signald.client.raw import connect as raw_connect
from signald.cluster.recovery import close_to_resume

FAST = Backoff(initial_s=0.05, max_s=0.5, harder_min_s=0.5)


async def until(condition: Callable[[], bool], within: float) -> None:
    with trio.fail_after(within):
        while not condition():  # noqa: ASYNC110 - the client's view and the server's counters: nothing to wait on
            await trio.sleep(0.01)


def internal_errors(server: Any) -> float:
    return server.hub.metrics.registry.get_sample_value("signald_errors_total", {"code": "INTERNAL"}) or 0.0


async def test_a_rejoin_refused_while_the_store_hangs_is_tried_again_and_loses_nothing(
    nursery: trio.Nursery, tmp_path: Path, postgres_server: PostgresServer
) -> None:
    server = await start_server(nursery, config(tmp_path, url=create_database(postgres_server)))
    async with raw_connect(server.url, user="ann") as ann, trio_connect(server.url, user="bot", backoff=FAST) as bot:
        await ann.request("room.join", {"room": "lobby"})
        sent = [await ann.request("chat.send", {"scope": "lobby", "body": "before"})]
        room = await bot.join("lobby")
        events = bot.events("chat.message")
        await until(lambda: [m["id"] for m in room.messages] == [sent[0]["id"]], 5)
        with paused(postgres_server):
            refused = internal_errors(server)
            bot_conns = [conn for conn in server.hub.rooms.conns_in("lobby")
                         if server.hub.sessions[conn].user_id == "bot"]
            assert close_to_resume(server.hub, bot_conns, "the history store is away") == 1
            await until(lambda: internal_errors(server) > refused, REQUEST_TIMEOUT_S + 5)  # the rejoin's INTERNAL
            assert not room.synced and not room.left
            assert bot.rooms.get("lobby") is room  # still the program's view, waiting to be rejoined
        # The store is back: sent while the bot is out of the room on the server, these reach it
        # only through its rejoin's changes (or live, if the retry came first).
        sent += [await ann.request("chat.send", {"scope": "lobby", "body": f"after {i}"}) for i in range(3)]
        await until(lambda: room.synced and [m["id"] for m in room.messages] == [m["id"] for m in sent], 10)
        assert not room.left and bot.rooms.get("lobby") is room
        seen = [event.data["id"] for event in events.pending()]
        assert seen == [m["id"] for m in sent[1:]]  # each once, none lost
        assert (await bot.request("chat.send", {"scope": "lobby", "body": "bot is back"}))["body"] == "bot is back"
