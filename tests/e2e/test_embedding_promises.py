"""What docs/embedding.md promises of the embedding API and no other test held, on a real server:

- ``await server.publish_and_store(room, "app.*", data)``: the room gets the stored ``chat.message``
  of ``"$app"`` (its body the event as JSON), then the event; a member that was away gets the message
  back on ``room.join {since_rev}``; it returns how many got the event;
- ``await server.last_seen(...)``: epoch seconds, read from the store after a restart for a user
  ``presence()`` no longer knows; users signald never saw are left out;
- a bind error raises from ``nursery.start(serve_signald, ...)`` before it reports started.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import make_config, start_server

from signald import serve_signald
from signald.client.raw import connect


async def test_publish_and_store_reaches_the_room_and_comes_back_to_who_was_away(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    srv = await start_server(nursery, make_config(tmp_path))
    async with connect(srv.url, user="away") as away:
        rev = (await away.request("room.join", {"room": "lobby"}))["rev"]
    async with connect(srv.url, user="here") as here:
        await here.request("room.join", {"room": "lobby"})
        assert await srv.publish_and_store("lobby", "app.tasks_updated", {"n": 1}) == 1
        wanted: list[dict[str, Any]] = []
        while len(wanted) < 2:  # the two in the order they came, other events (room.waiting...) aside
            if (got := await here.next_event())["type"] in ("chat.message", "app.tasks_updated"):
                wanted.append(got)
        message, event = wanted
    assert (message["type"], message["data"].get("user_id")) == ("chat.message", "$app"), wanted
    assert json.loads(message["data"]["body"]) == {"type": "app.tasks_updated", "data": {"n": 1}}
    assert event == {"type": "app.tasks_updated", "data": {"n": 1}}
    async with connect(srv.url, user="away") as back:
        ack = await back.request("room.join", {"room": "lobby", "since_rev": rev})
    assert [change["id"] for change in ack["changes"]] == [message["data"]["id"]]
    with pytest.raises(ValueError):
        await srv.publish_and_store("lobby", "chat.message", {})


async def test_last_seen_survives_a_restart_in_epoch_seconds(tmp_path: Path) -> None:
    before = time.time()
    config = make_config(tmp_path)
    async with trio.open_nursery() as nursery:
        srv = await start_server(nursery, config)
        async with connect(srv.url, user="alice"):
            pass
        nursery.cancel_scope.cancel()  # persists last-seen times on the way out
    async with trio.open_nursery() as nursery:
        srv = await start_server(nursery, config)
        seen = await srv.last_seen("alice", "never-here")
        nursery.cancel_scope.cancel()
    assert list(seen) == ["alice"]
    assert isinstance(seen["alice"], float) and before - 1 <= seen["alice"] <= time.time() + 1


async def test_a_bind_error_raises_before_started(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = make_config(tmp_path, server={"port": taken.getsockname()[1]})
        caught: list[BaseException] = []
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_signald, config)
                raise AssertionError("serve_signald reported started on a port it could not bind")
        except* OSError as group:  # in Trio's groups, as any nursery's failure
            caught.extend(group.exceptions)
    assert caught
