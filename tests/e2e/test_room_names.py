"""Room-name syntax, 1-128 of ``[A-Za-z0-9._:@-]``, at every field that names a room.

The contract lists it among the limits; over WebSocket a name outside it is ``INVALID_PAYLOAD``
naming the field (``$.data.room`` or ``$.data.scope``), for every inbound type that carries one,
and the server API's ``room`` answers 400 alike. The edges: every allowed character and 128 of them
pass; 129, none, and one character outside the set (space, ``/``, ``#``, a non-ASCII letter, a
trailing newline, NUL) do not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import events_of, make_config, start_server
from test_field_paths import named_path

from signald.client.raw import connect
from signald.server import RunningServer

KEY = "room-names-key-0123456789"
GOOD = ["Az09._:@-", "r" * 128, "x"]
BAD = ["", "r" * 129, "a b", "a/b", "a#b", "caf\u00e9", "lobby\n", "a\x00b"]

# type -> (the field that names the room, the rest of a request that is otherwise valid)
ROOM_FIELDS: dict[str, tuple[str, dict[str, Any]]] = {
    "room.join": ("room", {}),
    "room.leave": ("room", {}),
    "chat.send": ("scope", {"body": "hi"}),
    "chat.read": ("room", {"message_id": "m-1"}),
    "chat.reaction": ("scope", {"message_id": "m-1", "reaction": "+1", "action": "add"}),
    "chat.typing": ("scope", {"typing": True}),
    "chat.history": ("room", {}),
    "chat.changes": ("room", {"after_rev": 0}),
    "room.signal": ("room", {"kind": "hand"}),
    "room.kick": ("room", {"user_id": "bob"}),
}


@pytest.fixture
async def srv(nursery: trio.Nursery, tmp_path: Path) -> RunningServer:
    return await start_server(nursery, make_config(tmp_path, api={"keys": [KEY]}))


async def test_names_of_the_allowed_characters_up_to_128_are_rooms(srv: RunningServer) -> None:
    async with connect(srv.url, user="alice") as alice, connect(srv.url, user="bob") as bob:
        for name in GOOD:
            assert (await alice.request("room.join", {"room": name}))["room"] == name
            await bob.request("room.join", {"room": name})
            await events_of(alice)
            sent = await bob.request("chat.send", {"scope": name, "body": "hi"})
            assert await events_of(alice) == [("chat.message", sent)]
            assert sent["room"] == name


@pytest.mark.parametrize("kind", sorted(ROOM_FIELDS))
async def test_a_name_outside_the_syntax_is_invalid_payload_naming_the_field(srv: RunningServer, kind: str) -> None:
    field, rest = ROOM_FIELDS[kind]
    async with connect(srv.url, user="alice") as c:
        for i, name in enumerate(BAD):
            reply = await c.request_raw(kind, {field: name, **rest}, op_id=i)
            data = reply["data"]
            assert (reply["type"], data["op_id"], data["code"], named_path(data["message"])) == (
                "error", i, "INVALID_PAYLOAD", f"$.data.{field}"), (name, reply)
        assert (await c.request("session.info"))["rooms"] == []


async def test_the_server_api_refuses_the_same_names(srv: RunningServer) -> None:
    auth = {"authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.port}", headers=auth) as http:
        for name in BAD:
            for response in (
                await http.get("/api/v1/presence", params={"room": name}),
                await http.get("/api/v1/history", params={"room": name}),
                await http.post("/api/v1/publish", json={"room": name, "type": "app.x", "data": 1}),
                await http.post("/api/v1/kick", json={"room": name, "user_id": "bob"}),
            ):
                error = response.json()["error"]
                assert (response.status_code, error["code"], named_path(error["message"])) == (
                    400, "INVALID_PAYLOAD", "$.room"), (name, response.request.url, error)
        for name in GOOD:
            response = await http.get("/api/v1/presence", params={"room": name})
            assert response.json() == {"result": {"members": []}}
