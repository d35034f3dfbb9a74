"""Durability with a real daemon process: an acked ``chat.send`` survives ``kill -9``, and the
``signald history export|stats`` commands read what a server stored.

The daemon's stderr goes to a file (not a pipe nobody drains), which is polled for the ready line.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
from conftest import daemon, events_of, make_config, start_server
from roomview import RoomView

from signald.cli import main
from signald.client.raw import SignaldClient, connect

N = 300


async def all_history(c: SignaldClient, room: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    after = 0
    while True:
        page = await c.request("chat.history", {"room": room, "after": after, "limit": 200})
        messages += page["messages"]
        if not page["has_more"]:
            return messages
        after = messages[-1]["seq"]


async def test_every_acked_message_survives_kill_9_and_an_immediate_restart_on_the_same_port(tmp_path: Path) -> None:
    db = str(tmp_path / "d.db")
    with trio.fail_after(20):
        async with daemon(tmp_path, "first", "--db", db) as (process, url):
            port = urlsplit(url).port
            assert port
            async with connect(url, user="alice") as client:
                await client.request("room.join", {"room": "lobby"})
                for i in range(N):  # pipelined: every frame goes out before any ack is read
                    await client.send({"type": "chat.send", "id": f"s-{i}",
                                       "data": {"scope": "lobby", "body": f"message {i}"}})
                acks: dict[str, dict[str, Any]] = {}
                while len(acks) < N:
                    reply = await client.next_event()
                    assert reply["type"] != "error", reply
                    if reply["type"] == "ack":
                        acks[reply["data"]["op_id"]] = reply["data"]["data"]
                process.kill()  # SIGKILL, right after the last ack arrived
                await process.wait()
        assert process.returncode == -signal.SIGKILL
        acked = [acks[f"s-{i}"] for i in range(N)]
        assert [(m["seq"], m["body"]) for m in acked] == [(i + 1, f"message {i}") for i in range(N)]

        async with daemon(tmp_path, "restarted", "--db", db, port=port) as (_, again):
            assert again == url
            async with connect(again, user="alice") as client:
                assert (await client.request("room.join", {"room": "lobby"}))["unread"] == N
                assert await all_history(client, "lobby") == acked
                after_restart = await client.request("chat.send", {"scope": "lobby", "body": "still here"})
                assert after_restart["seq"] == N + 1


async def test_a_client_resumes_exactly_across_kill_9(tmp_path: Path) -> None:
    """Changes made while a client was away, some acked just before ``kill -9``, some after the
    restart: its ``since_rev`` resume ends in exactly the stored room."""
    db = str(tmp_path / "d.db")
    view = RoomView("lobby")

    async def change(alice: SignaldClient, bob: SignaldClient, ids: list[str], round_: int) -> None:
        base = len(ids)
        for i in range(6):
            ids.append((await alice.request("chat.send", {"scope": "lobby", "body": f"{round_}.{i}"}))["id"])
        await alice.request("chat.edit", {"message_id": ids[base], "new_body": f"edited in {round_}"})
        await alice.request("chat.delete", {"message_id": ids[base + 1], "mode": "hard"})
        await alice.request("chat.delete", {"message_id": ids[base + 2], "mode": "soft"})
        await bob.request("chat.reaction", {"message_id": ids[base + 3], "reaction": "+1", "action": "add",
                                            "scope": "lobby"})
        if base:  # and changes to older messages, which a since (seq) resume would not see
            await alice.request("chat.edit", {"message_id": ids[base - 6], "new_body": f"again in {round_}"})
            await bob.request("chat.reaction", {"message_id": ids[base - 3], "reaction": "ok", "action": "add",
                                                "scope": "lobby"})

    ids: list[str] = []
    with trio.fail_after(30):
        async with daemon(tmp_path, "first", "--db", db) as (process, url):
            port = urlsplit(url).port
            assert port
            async with connect(url, user="alice") as alice, connect(url, user="bob") as bob:
                for c in (alice, bob):
                    await c.request("room.join", {"room": "lobby"})
                async with connect(url, user="rita") as rita:
                    await view.join(rita)
                    await change(alice, bob, ids, 0)
                    for event in await events_of(rita):
                        view.apply_event(*event)
                await change(alice, bob, ids, 1)  # while rita is away; acked, then killed
                process.kill()
                await process.wait()
        async with (daemon(tmp_path, "restarted", "--db", db, port=port) as (_, again),
                    connect(again, user="alice") as alice, connect(again, user="bob") as bob):
            for c in (alice, bob):
                await c.request("room.join", {"room": "lobby"})
            await change(alice, bob, ids, 2)
            async with connect(again, user="rita") as rita:
                ack = await view.join(rita)
                # the resume carries changes to messages rita already had (an edit of seq 1)
                assert any(entry["seq"] == 1 for entry in ack["changes"])
                await change(alice, bob, ids, 3)
                for event in await events_of(rita):
                    view.apply_event(*event)
                assert view.as_history() == await all_history(rita, "lobby")
                assert len(view.messages) == 4 * 6 - 4  # four hard deletes


def test_history_export_and_stats_commands_print_what_a_server_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(tmp_path)
    db = config.server.db

    async def fill() -> dict[str, list[dict[str, Any]]]:
        stored: dict[str, list[dict[str, Any]]] = {"lobby": [], "dev": []}
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, config)
            async with connect(server.url, user="alice") as alice, connect(server.url, user="bob") as bob:
                for c in (alice, bob):
                    for room in stored:
                        await c.request("room.join", {"room": room})
                for i, (c, room) in enumerate([(alice, "lobby"), (bob, "dev"), (bob, "lobby"), (alice, "dev"),
                                               (alice, "lobby")]):
                    stored[room].append(await c.request("chat.send", {"scope": room, "body": f"m{i}"}))
                gone = await alice.request("chat.send", {"scope": "lobby", "body": "regret"})
                await alice.request("chat.delete", {"message_id": gone["id"], "mode": "hard"})
                first = stored["lobby"][0]
                reacted = await bob.request("chat.reaction", {"message_id": first["id"], "reaction": "+1",
                                                              "action": "add", "scope": "lobby"})
                stored["lobby"][0] = {**first, "reactions": {"+1": ["bob"]}, "rev": reacted["rev"]}
            nursery.cancel_scope.cancel()
        return stored

    stored = trio.run(fill)
    capsys.readouterr()

    assert main(["history", "export", "--db", db]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == stored["dev"] + stored["lobby"]  # by room name, then seq

    assert main(["history", "export", "--db", db, "--room", "lobby"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == stored["lobby"]

    assert main(["history", "stats", "--db", db]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["rooms"], stats["messages"]) == (2, 5)  # the hard-deleted one is not counted
    assert stats["db_bytes"] > 0
