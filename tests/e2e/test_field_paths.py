"""Every ``INVALID_PAYLOAD`` names the field it is about, over real WebSockets and the HTTP API.

The contract: "fields missing, of the wrong type or out of range → ``INVALID_PAYLOAD``, with a
message that names the field (e.g. ``$.data.room``)". A message names a field in one of two forms,
both read by :func:`named_path`: the field's path in backquotes (`` `$.data.limit` must be at most
... ``, ``Expected `int` >= 1 - at `$.data.limit` ``), or the field's name under the path of the
object that holds it (``Object missing required field `room` - at `$.data` ``). A
client can show or log that path; these tests pin it for every way a request can be refused so, the
schema's own errors and the rules the handlers check (calls to yourself, ambiguous calls, blank
bodies, page sizes) alike.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
from conftest import events_of, make_config, start_server
from over_nodes import settle

from signald.client.raw import SignaldClient, connect
from signald.server import RunningServer

KEY = "field-paths-key-0123456789"
SDP = {"type": "offer", "sdp": "v=0\r\n"}
# "Object missing required field `room` - at `$.data`", "`payload` nests ... - at `$.data`": a name
# under the path of the object that holds it
_NAME_AT = re.compile(r"(?:^|missing required field )`([A-Za-z_]\w*)`.* - at `(\$[^`]*)`$")
_AT = re.compile(r" - at `(\$[^`]*)`$")  # msgspec's "Expected `int` >= 1 - at `$.data.limit`"
_PATH = re.compile(r"`(\$[^`]*)`")  # "`$.data.target_id` is yourself"


def named_path(message: str) -> str | None:
    """The path of the field ``message`` names, or None if it names none."""
    if name_at := _NAME_AT.search(message):
        return f"{name_at.group(2)}.{name_at.group(1)}"
    path = _AT.search(message) or _PATH.search(message)
    return path.group(1) if path else None


@pytest.fixture
async def srv(nursery: trio.Nursery, tmp_path: Path) -> RunningServer:
    return await start_server(nursery, make_config(
        tmp_path, api={"keys": [KEY]}, limits={"history_page_max": 20},
        calls={"allow_concurrent_calls": True}, server={"heartbeat_s": 3600.0}))


@asynccontextmanager
async def in_lobby(server: RunningServer, *users: str) -> AsyncIterator[list[SignaldClient]]:
    """One client per listed user (a repeated name is another device), all in ``lobby``."""
    async with AsyncExitStack() as stack:
        cs = [await stack.enter_async_context(connect(server.url, user=u)) for u in users]
        for c in cs:
            await c.request("room.join", {"room": "lobby"})
        await settle()
        for c in cs:
            await events_of(c)
        yield cs


async def refusal(c: SignaldClient, frame: dict[str, Any]) -> tuple[Any, str, str | None]:
    """``(op_id, code, the path its message names)`` of the one reply to ``frame``."""
    await c.send(frame)
    with trio.fail_after(5):
        reply = await c.next_event("error")
    data = reply["data"]
    return data["op_id"], data["code"], named_path(data["message"])


# (request, the field its INVALID_PAYLOAD must name); every one is refused whatever the state
SCHEMA: list[tuple[str, dict[str, Any], str]] = [
    ("data-missing", {"type": "room.join"}, "$.data"),
    ("data-not-an-object", {"type": "room.join", "data": "lobby"}, "$.data"),
    ("room-missing", {"type": "room.join", "data": {}}, "$.data.room"),
    ("room-bad-syntax", {"type": "room.join", "data": {"room": "a/b"}}, "$.data.room"),
    ("scope-bad-syntax", {"type": "chat.send", "data": {"scope": "", "body": "x"}}, "$.data.scope"),
    ("limit-zero", {"type": "chat.history", "data": {"room": "lobby", "limit": 0}}, "$.data.limit"),
    ("status-unknown", {"type": "presence.set", "data": {"status": "gone"}}, "$.data.status"),
    ("since-negative", {"type": "room.join", "data": {"room": "lobby", "since": -1}}, "$.data.since"),
    ("call-type-unknown", {"type": "call.offer", "data": {"target_id": "bob", "call_type": "fax", "sdp": SDP}},
     "$.data.call_type"),
]


@pytest.mark.parametrize(("frame", "path"), [c[1:] for c in SCHEMA], ids=[c[0] for c in SCHEMA])
async def test_a_schema_refusal_names_its_field(srv: RunningServer, frame: dict[str, Any], path: str) -> None:
    async with connect(srv.url, user="alice") as c:
        assert await refusal(c, {**frame, "id": "p-1"}) == ("p-1", "INVALID_PAYLOAD", path)


async def test_a_messagepack_map_key_that_is_not_a_string_names_the_object_holding_it(srv: RunningServer) -> None:
    async with connect(srv.url, user="alice", msgpack=True) as c:
        for frame, path in (({"type": "room.join", "id": "k-1", "data": {"room": "lobby", 7: 1}}, "$.data"),
                            ({"type": "presence.ping", "id": "k-2", 7: 1}, "$")):
            await c.send(msgspec.msgpack.encode(frame))
            with trio.fail_after(5):
                reply = (await c.next_event("error"))["data"]
            got = (reply["op_id"], reply["code"], named_path(reply["message"]))
            assert got == (frame["id"], "INVALID_PAYLOAD", path)


async def test_a_bad_id_names_the_id_with_a_null_op_id(srv: RunningServer) -> None:
    async with connect(srv.url, user="alice") as c:
        assert await refusal(c, {"type": "presence.ping", "id": 1.5}) == (None, "INVALID_PAYLOAD", "$.id")


@pytest.mark.usefixtures("nodes")  # over 1 node and over 3: the call rules run where the call is known
async def test_the_rules_handlers_check_name_their_field_too(srv: RunningServer) -> None:
    async with in_lobby(srv, "alice", "alice", "bob", "carol") as (a1, a2, bob, _carol):
        assert await refusal(a1, {"type": "chat.send", "id": 1, "data": {"scope": "lobby", "body": "  "}}) == (
            1, "INVALID_PAYLOAD", "$.data.body")
        assert await refusal(a1, {"type": "chat.history", "id": 2, "data": {"room": "lobby", "limit": 21}}) == (
            2, "INVALID_PAYLOAD", "$.data.limit")
        assert await refusal(a1, {"type": "chat.changes", "id": 3, "data": {
            "room": "lobby", "after_rev": 0, "limit": 21}}) == (3, "INVALID_PAYLOAD", "$.data.limit")
        offer = {"call_type": "audio", "sdp": SDP}
        assert await refusal(a1, {"type": "call.offer", "id": 4, "data": {"target_id": "alice", **offer}}) == (
            4, "INVALID_PAYLOAD", "$.data.target_id")
        await settle()
        assert (await a1.request("call.offer", {"target_id": "bob", "call_id": "one", **offer}))["call_id"] == "one"
        assert (await a2.request("call.offer", {"target_id": "bob", "call_id": "two", **offer}))["call_id"] == "two"
        await settle()
        # to yourself, ambiguous without call_id, to someone who is not the call's other party
        for kind in ("call.answer", "call.ice", "call.end"):
            extra = {"call.answer": {"sdp": SDP}, "call.ice": {"candidate": {"candidate": ""}}, "call.end": {}}[kind]
            assert await refusal(bob, {"type": kind, "id": 5, "data": {"target_id": "bob", "call_id": "one",
                                                                       **extra}}) == (
                5, "INVALID_PAYLOAD", "$.data.target_id")
            assert await refusal(bob, {"type": kind, "id": 6, "data": {"target_id": "alice", **extra}}) == (
                6, "INVALID_PAYLOAD", "$.data.call_id")
            assert await refusal(bob, {"type": kind, "id": 7, "data": {"target_id": "carol", "call_id": "one",
                                                                       **extra}}) == (
                7, "INVALID_PAYLOAD", "$.data.target_id")


# (method, path, JSON body or None, the field its 400 INVALID_PAYLOAD must name)
API: list[tuple[str, str, str, dict[str, Any] | None, str]] = [
    ("presence-room-missing", "GET", "/api/v1/presence", None, "$.room"),
    ("history-room-bad-syntax", "GET", "/api/v1/history?room=a%2Fb", None, "$.room"),
    ("history-limit-not-a-number", "GET", "/api/v1/history?room=lobby&limit=x", None, "$.limit"),
    ("publish-empty", "POST", "/api/v1/publish", {}, "$.room"),
    ("publish-type-not-app", "POST", "/api/v1/publish", {"room": "lobby", "type": "chat.x", "data": 1}, "$.type"),
    ("notify-user-missing", "POST", "/api/v1/notify", {"type": "app.x", "data": 1}, "$.user_id"),
    ("disconnect-reason-missing", "POST", "/api/v1/disconnect", {"user_id": "bob"}, "$.reason"),
]


@pytest.mark.parametrize(("method", "url", "body", "path"), [c[1:] for c in API], ids=[c[0] for c in API])
async def test_a_server_api_refusal_names_its_field(
    srv: RunningServer, method: str, url: str, body: dict[str, Any] | None, path: str
) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.port}") as http:
        response = await http.request(method, url, json=body, headers={"authorization": f"Bearer {KEY}"})
    error = response.json()["error"]
    assert (response.status_code, error["code"], named_path(error["message"])) == (400, "INVALID_PAYLOAD", path)
