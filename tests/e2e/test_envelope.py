"""The envelope over real WebSockets: every error path, subprotocols, ``welcome``, custom types.

Malformed input gets an ``error`` and the connection stays open (each test checks that the same
connection still answers ``presence.ping`` afterwards); only a frame over the transport cap closes
it. The second half checks the decoder itself with hypothesis: whatever the bytes, the outcome is a
decoded message or a :class:`FrameError` with a client-facing code, and every wire Struct survives
a JSON and a MessagePack round trip.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Union

import msgspec
import pytest
import trio
import trio_websocket
from conftest import make_config, start_server
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from msgspec import inspect as mi

from signald.app.context import Context
from signald.client.raw import SignaldClient, connect
from signald.handlers import default_router
from signald.protocol import (
    INBOUND_MESSAGES,
    INBOUND_TYPES,
    OUTBOUND_MESSAGES,
    FrameError,
    Inbound,
    decode_frame,
    type_of,
)
from signald.router import CustomMessage, Router
from signald.server import RunningServer

LIMIT_KEYS = {
    "max_frame_bytes", "max_body_chars", "rate_per_s", "rate_burst", "max_rooms", "max_connections_per_user",
    "send_queue", "history_page_max", "ring_timeout_s", "typing_timeout_s",
}
DECODE_CODES = {"BAD_REQUEST", "UNKNOWN_TYPE", "INVALID_PAYLOAD"}
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def assert_alive(c: SignaldClient, op_id: str = "alive") -> None:
    """The connection still answers requests: ``presence.ping`` gets its ``presence.pong``."""
    with trio.fail_after(5):
        pong = await c.request_raw("presence.ping", op_id=op_id)
    assert pong["type"] == "presence.pong"
    assert pong["data"]["op_id"] == op_id


async def error_for(c: SignaldClient, frame: str | bytes) -> dict[str, Any]:
    """Send a raw frame, return the ``data`` of the ``error`` it gets, and check the connection survived."""
    await c.send(frame)
    with trio.fail_after(5):
        reply = await c.next_event()
    assert reply["type"] == "error", reply
    await assert_alive(c)
    data: dict[str, Any] = reply["data"]
    assert set(data) == {"op_id", "code", "message"}
    return data


@asynccontextmanager
async def raw_ws(
    server: RunningServer, user: str = "raw", subprotocols: list[str] | None = None
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    async with trio_websocket.open_websocket_url(f"{server.url}?user={user}", subprotocols=subprotocols) as ws:
        yield ws


# --------------------------------------------------------------------------- malformed frames

BAD_FRAMES: list[tuple[str, str | bytes, str, Any, str]] = [
    # (id, frame, code, op_id in the error, text the message must contain)
    ("not-json", '{"type": "presence.ping", ', "BAD_REQUEST", None, ""),
    ("binary-garbage", b"\xff\xfe\x00", "BAD_REQUEST", None, ""),
    ("empty-frame", "", "BAD_REQUEST", None, ""),
    ("array", '[{"type": "presence.ping", "id": "a"}]', "BAD_REQUEST", None, ""),
    ("number", "42", "BAD_REQUEST", None, ""),
    ("string", '"presence.ping"', "BAD_REQUEST", None, ""),
    ("null", "null", "BAD_REQUEST", None, ""),
    ("empty-object", "{}", "BAD_REQUEST", None, "type"),
    ("missing-type-id-echoed", '{"id": "m1", "data": {}}', "BAD_REQUEST", "m1", "type"),
    ("type-not-string", '{"type": 5, "id": "t1"}', "BAD_REQUEST", "t1", "type"),
    ("type-null", '{"type": null, "id": 9}', "BAD_REQUEST", 9, "type"),
    ("unknown-type", '{"type": "room.explode", "id": "u1"}', "UNKNOWN_TYPE", "u1", "room.explode"),
    # what a browser's JSON.stringify writes for text cut in the middle of an emoji: valid JSON grammar
    ("lone-surrogate", '{"type": "chat.send", "id": "s3", "data": {"scope": "lobby", "body": "a\\udc00b"}}',
     "BAD_REQUEST", "s3", "surrogate"),
    # the id itself a lone surrogate: no text, so it cannot be echoed (the reply could not be encoded)
    ("lone-surrogate-id", '{"type": "chat.send", "id": "\\udc00", "data": {"scope": "lobby", "body": "b"}}',
     "BAD_REQUEST", None, "surrogate"),
    ("unknown-type-no-id", '{"type": "nope"}', "UNKNOWN_TYPE", None, "nope"),
    ("data-array", '{"type": "room.join", "id": "d1", "data": [1]}', "INVALID_PAYLOAD", "d1", "$.data"),
    ("data-string", '{"type": "room.join", "id": "d2", "data": "lobby"}', "INVALID_PAYLOAD", "d2", "$.data"),
    ("data-of-no-field-type", '{"type": "session.info", "id": "d3", "data": 5}', "INVALID_PAYLOAD", "d3", "$.data"),
    ("data-missing", '{"type": "room.join", "id": "d4"}', "INVALID_PAYLOAD", "d4", "data"),
    ("field-missing", '{"type": "room.join", "id": "f1", "data": {}}', "INVALID_PAYLOAD", "f1", "room"),
    ("field-wrong-type", '{"type": "room.join", "id": "f2", "data": {"room": 5}}',
     "INVALID_PAYLOAD", "f2", "$.data.room"),
    ("room-bad-chars", '{"type": "room.join", "id": "r1", "data": {"room": "a b"}}',
     "INVALID_PAYLOAD", "r1", "$.data.room"),
    ("room-empty", '{"type": "room.join", "id": "r2", "data": {"room": ""}}', "INVALID_PAYLOAD", "r2", "$.data.room"),
    ("room-too-long", json.dumps({"type": "room.join", "id": "r3", "data": {"room": "x" * 129}}),
     "INVALID_PAYLOAD", "r3", "$.data.room"),
    ("since-negative", '{"type": "room.join", "id": "s1", "data": {"room": "a", "since": -1}}',
     "INVALID_PAYLOAD", "s1", "$.data.since"),
    ("status-not-in-enum", '{"type": "presence.set", "id": "p1", "data": {"status": "sleepy"}}',
     "INVALID_PAYLOAD", "p1", "$.data.status"),
    ("bool-wrong-type", '{"type": "chat.typing", "id": "b1", "data": {"scope": "a", "typing": "yes"}}',
     "INVALID_PAYLOAD", "b1", "$.data.typing"),
    ("string-too-short", '{"type": "room.signal", "id": "k1", "data": {"room": "a", "kind": ""}}',
     "INVALID_PAYLOAD", "k1", "$.data.kind"),
    ("invalid-no-id", '{"type": "room.join", "data": {"room": "a b"}}', "INVALID_PAYLOAD", None, "$.data.room"),
    ("id-bool", '{"type": "presence.ping", "id": true}', "INVALID_PAYLOAD", None, "$.id"),
    ("id-float", '{"type": "presence.ping", "id": 1.5}', "INVALID_PAYLOAD", None, "$.id"),
    ("id-array", '{"type": "presence.ping", "id": ["x"]}', "INVALID_PAYLOAD", None, "$.id"),
    ("id-object", '{"type": "presence.ping", "id": {"x": 1}}', "INVALID_PAYLOAD", None, "$.id"),
    ("id-too-long", json.dumps({"type": "presence.ping", "id": "i" * 129}), "INVALID_PAYLOAD", None, "$.id"),
]


@pytest.mark.parametrize(("frame", "code", "op_id", "mentions"), [c[1:] for c in BAD_FRAMES],
                         ids=[c[0] for c in BAD_FRAMES])
async def test_malformed_frame_gets_an_error_and_the_connection_stays_open(
    server: RunningServer, frame: str | bytes, code: str, op_id: Any, mentions: str
) -> None:
    async with connect(server.url, user="alice") as c:
        error = await error_for(c, frame)
        assert (error["code"], error["op_id"]) == (code, op_id)
        assert mentions in error["message"]


async def test_op_id_survives_a_bad_value_that_quotes_the_id_path(server: RunningServer) -> None:
    async with connect(server.url, user="alice") as c:
        error = await error_for(c, '{"type": "presence.set", "id": "p1", "data": {"status": "`$.id`"}}')
        assert (error["code"], error["op_id"]) == ("INVALID_PAYLOAD", "p1")


async def test_many_errors_in_a_row_keep_the_connection_open(server: RunningServer) -> None:
    async with connect(server.url, user="alice") as c:
        for _, frame, code, _, _ in BAD_FRAMES[:12]:
            assert (await error_for(c, frame))["code"] == code


async def test_message_without_id_that_succeeds_gets_no_reply(server: RunningServer) -> None:
    async with connect(server.url, user="alice") as c:
        await c.send({"type": "presence.set", "data": {"status": "busy"}})
        await c.send({"type": "room.join", "data": {"room": "lobby"}})
        await assert_alive(c)
        assert [e["type"] for e in c.pending_events()] == ["room.waiting"]
        assert (await c.request("session.info"))["rooms"] == ["lobby"]


async def test_message_without_id_that_fails_gets_an_error_with_null_op_id(server: RunningServer) -> None:
    async with connect(server.url, user="alice") as c:
        error = await error_for(c, '{"type": "room.leave", "data": {"room": "lobby"}}')
        assert (error["code"], error["op_id"]) == ("NOT_IN_ROOM", None)


async def test_every_request_with_an_id_gets_exactly_one_reply(server: RunningServer) -> None:
    async with connect(server.url, user="alice") as c:
        ok = await c.request_raw("room.join", {"room": "lobby"}, op_id=41)
        failed = await c.request_raw("room.leave", {"room": "elsewhere"}, op_id="x-42")
        assert (ok["type"], ok["data"]["op_id"]) == ("ack", 41)
        assert (failed["type"], failed["data"]["op_id"], failed["data"]["code"]) == ("error", "x-42", "NOT_IN_ROOM")
        await assert_alive(c)
        assert [e["type"] for e in c.pending_events()] == ["room.waiting"]


# --------------------------------------------------------------------------- sizes


@pytest.fixture
async def small(nursery: trio.Nursery, tmp_path: Path) -> RunningServer:
    """A daemon with a 1000-byte frame limit and a 4096-byte transport cap."""
    config = make_config(tmp_path, limits={"max_frame_bytes": 1000}, server={"max_transport_bytes": 4096})
    return await start_server(nursery, config)


def padded_ping(size: int, op_id: str = "big", pad: str = "x") -> str:
    """A ``presence.ping`` frame of exactly ``size`` UTF-8 bytes (padding in an ignored field)."""
    head = f'{{"type": "presence.ping", "id": "{op_id}", "pad": "'
    fill = size - len(head.encode()) - 2
    count = fill // len(pad.encode())
    frame = head + pad * count + "x" * (fill - count * len(pad.encode())) + '"}'
    assert len(frame.encode()) == size
    return frame


async def test_frame_at_the_size_limit_is_carried_out(small: RunningServer) -> None:
    async with connect(small.url, user="alice") as c:
        await c.send(padded_ping(1000, op_id="edge"))
        with trio.fail_after(5):
            pong = await c.next_event()
        assert (pong["type"], pong["data"]["op_id"]) == ("presence.pong", "edge")


async def test_frame_over_the_size_limit_is_too_large_with_its_op_id(small: RunningServer) -> None:
    async with connect(small.url, user="alice") as c:
        error = await error_for(c, padded_ping(1001, op_id="over"))
        assert (error["code"], error["op_id"]) == ("TOO_LARGE", "over")


async def test_frame_size_counts_utf8_bytes_not_characters(small: RunningServer) -> None:
    async with connect(small.url, user="alice") as c:
        frame = padded_ping(1200, pad="é")
        assert len(frame) < 1000
        error = await error_for(c, frame)
        assert error["code"] == "TOO_LARGE"


async def test_oversize_frame_is_not_carried_out(small: RunningServer) -> None:
    async with connect(small.url, user="alice") as c:
        frame = json.dumps({"type": "room.join", "data": {"room": "lobby"}, "pad": "x" * 1000})
        assert (await error_for(c, frame))["code"] == "TOO_LARGE"
        assert (await c.request("session.info"))["rooms"] == []


async def test_frame_over_the_transport_cap_closes_with_1009(small: RunningServer) -> None:
    assert small.hub.config.server.max_transport_bytes == 4096
    async with connect(small.url, user="alice") as c:
        await c.send(padded_ping(5000))
        with trio.fail_after(5):
            await c.closed.wait()
        assert c.ws.closed is not None
        assert c.ws.closed.code == 1009
    with trio.fail_after(5):
        while small.hub.sessions:  # noqa: ASYNC110 - server state, no event to wait on
            await trio.sleep(0.01)
    async with connect(small.url, user="alice") as again:
        await assert_alive(again)


async def test_default_transport_cap_is_one_mebibyte(server: RunningServer) -> None:
    async with connect(server.url, user="alice") as c:
        assert (await error_for(c, padded_ping(1 << 20)))["code"] == "TOO_LARGE"
        await c.send(padded_ping((1 << 20) + 1))
        with trio.fail_after(5):
            await c.closed.wait()
        assert c.ws.closed is not None and c.ws.closed.code == 1009


# --------------------------------------------------------------------------- welcome


async def test_welcome_carries_the_configured_limits_exactly(nursery: trio.Nursery, tmp_path: Path) -> None:
    limits = {
        "max_frame_bytes": 5000, "max_body_chars": 321, "rate_per_s": 12.5, "rate_burst": 17, "max_rooms": 7,
        "max_connections_per_user": 3, "send_queue": 99, "history_page_max": 55, "ring_timeout_s": 12.0,
        "typing_timeout_s": 4.5,
    }
    server = await start_server(nursery, make_config(tmp_path, limits=limits, server={"heartbeat_s": 15}))
    async with connect(server.url, user="alice") as c:
        welcome = c.welcome
        assert welcome["type"] == "welcome"
        data = welcome["data"]
        assert set(data) == {"protocol_version", "session_id", "user_id", "server_time", "heartbeat_s", "limits"}
        assert data["protocol_version"] == 1
        assert data["user_id"] == "alice"
        assert data["session_id"] and isinstance(data["session_id"], str)
        assert ISO_UTC.match(data["server_time"])
        assert data["heartbeat_s"] == 15
        assert set(data["limits"]) == LIMIT_KEYS
        assert data["limits"] == limits


async def test_welcome_limits_have_the_documented_keys_by_default(server: RunningServer) -> None:
    async with connect(server.url) as c:
        assert set(c.welcome["data"]["limits"]) == LIMIT_KEYS
        assert c.welcome["data"]["limits"]["max_frame_bytes"] == server.hub.config.limits.max_frame_bytes
        assert c.user_id  # a made-up guest id without ?user=


async def test_every_connection_gets_its_own_session_id(server: RunningServer) -> None:
    async with connect(server.url, user="alice") as a, connect(server.url, user="alice") as b:
        assert a.session_id != b.session_id


# --------------------------------------------------------------------------- subprotocols


@pytest.mark.parametrize("offered", [["signald.v1"], ["chat.v2", "signald.v1"]])
async def test_offering_signald_v1_selects_it(server: RunningServer, offered: list[str]) -> None:
    async with connect(server.url, user="alice", subprotocols=offered) as c:
        assert c.ws.subprotocol == "signald.v1"
        await assert_alive(c)


async def test_offering_only_unknown_subprotocols_is_refused_with_400(server: RunningServer) -> None:
    with pytest.raises(trio_websocket.ConnectionRejected) as refused:
        async with connect(server.url, user="alice", subprotocols=["chat.v2", "signald.v2"]):
            pass  # pragma: no cover
    assert refused.value.status_code == 400
    assert server.hub.sessions == {}


async def test_offering_no_subprotocol_gets_json(server: RunningServer) -> None:
    async with raw_ws(server, subprotocols=[]) as ws:
        assert ws.subprotocol is None
        welcome = await ws.get_message()
        assert isinstance(welcome, str)
        assert json.loads(welcome)["type"] == "welcome"
        await ws.send_message('{"type": "presence.ping", "id": 1}')
        pong = json.loads(await ws.get_message())
        assert (pong["type"], pong["data"]["op_id"]) == ("presence.pong", 1)


async def test_msgpack_subprotocol_gets_binary_messagepack_frames(server: RunningServer) -> None:
    async with raw_ws(server, subprotocols=["signald.v1.msgpack"]) as ws:
        assert ws.subprotocol == "signald.v1.msgpack"
        welcome = await ws.get_message()
        assert isinstance(welcome, bytes)
        assert msgspec.msgpack.decode(welcome)["type"] == "welcome"
        await ws.send_message(msgspec.msgpack.encode({"type": "room.join", "id": 3, "data": {"room": "lobby"}}))
        ack = await ws.get_message()
        assert isinstance(ack, bytes)
        decoded = msgspec.msgpack.decode(ack)
        assert (decoded["type"], decoded["data"]["op_id"], decoded["data"]["data"]["room"]) == ("ack", 3, "lobby")


async def test_msgpack_client_round_trip_and_errors(server: RunningServer) -> None:
    async with connect(server.url, user="alice", msgpack=True) as c:
        assert c.ws.subprotocol == "signald.v1.msgpack"
        ack = await c.request("room.join", {"room": "lobby"})
        assert ack["room"] == "lobby" and [m["user_id"] for m in ack["members"]] == ["alice"]
        await assert_alive(c)
        assert [e["type"] for e in c.pending_events()] == ["room.waiting"]
        bad = await c.request_raw("room.join", {"room": "a b"})
        assert (bad["data"]["code"], bad["data"]["op_id"]) == ("INVALID_PAYLOAD", "c-2")
        assert "$.data.room" in bad["data"]["message"]
        garbage = await error_for(c, b"\xc1")  # 0xc1 is never valid MessagePack
        assert (garbage["code"], garbage["op_id"]) == ("BAD_REQUEST", None)


async def test_json_and_msgpack_clients_share_a_room(server: RunningServer) -> None:
    async with connect(server.url, user="alice") as a, connect(server.url, user="bob", msgpack=True) as b:
        await a.request("room.join", {"room": "lobby"})
        await b.request("room.join", {"room": "lobby"})
        await b.request("room.signal", {"room": "lobby", "kind": "hand", "payload": {"up": True}})
        with trio.fail_after(5):
            signal = await a.next_event("room.signal")
        assert signal["data"] == {"room": "lobby", "user_id": "bob", "kind": "hand", "payload": {"up": True}}



@pytest.mark.parametrize(("frame", "op_id"), [
    pytest.param('{"type": "presence.ping", "id": "t"}', "t", id="text-frame"),  # JSON text: its id is readable
    pytest.param(b"\xa1\x80", None, id="bad-utf8-str"),
])
async def test_undecodable_frame_on_a_msgpack_connection_is_bad_request(
    tmp_path: Path, frame: str | bytes, op_id: str | None
) -> None:
    async with trio.open_nursery() as nursery:  # a decoder crash once took the server down: own nursery
        server = await start_server(nursery, make_config(tmp_path))
        async with connect(server.url, user="alice", msgpack=True) as c:
            error = await error_for(c, frame)
            assert (error["code"], error["op_id"]) == ("BAD_REQUEST", op_id)
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- handler failures and custom types


class EchoData(msgspec.Struct):
    text: str
    times: int = 1


async def boom(ctx: Context, msg: CustomMessage) -> None:
    raise RuntimeError("kaboom")


async def echo(ctx: Context, msg: CustomMessage) -> dict[str, Any]:
    data: EchoData = msg.data
    return {"echo": data.text * data.times, "user_id": ctx.session.user_id}


@pytest.fixture
async def custom(nursery: trio.Nursery, tmp_path: Path) -> RunningServer:
    """A daemon whose router adds ``app.boom`` (always raises) and ``app.echo``."""
    router: Router = default_router()
    router.add_custom("app.boom", dict, boom)
    router.add_custom("app.echo", EchoData, echo)
    return await start_server(nursery, make_config(tmp_path), router=router)


async def test_failing_handler_answers_internal_and_the_connection_keeps_working(
    custom: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with connect(custom.url, user="alice") as c, connect(custom.url, user="bob") as other:
        with caplog.at_level(logging.ERROR, logger="signald.router"):
            reply = await c.request_raw("app.boom", {"x": 1}, op_id="b1")
        assert (reply["type"], reply["data"]["code"], reply["data"]["op_id"]) == ("error", "INTERNAL", "b1")
        assert "kaboom" not in reply["data"]["message"]  # no internals leak to the client
        assert any("app.boom" in r.getMessage() and r.exc_info for r in caplog.records)
        await assert_alive(c)
        await assert_alive(other)
        assert (await c.request("app.echo", {"text": "still here"}))["echo"] == "still here"


async def test_failing_handler_without_id_gets_internal_with_null_op_id(custom: RunningServer) -> None:
    async with connect(custom.url, user="alice") as c:
        error = await error_for(c, '{"type": "app.boom"}')
        assert (error["code"], error["op_id"]) == ("INTERNAL", None)


async def test_custom_type_is_acked_with_the_handlers_result(custom: RunningServer) -> None:
    async with connect(custom.url, user="alice") as c:
        reply = await c.request_raw("app.echo", {"text": "ab", "times": 2}, op_id=5)
        assert reply == {"type": "ack", "data": {"op_id": 5, "data": {"echo": "abab", "user_id": "alice"}}}


async def test_custom_type_without_id_gets_no_reply(custom: RunningServer) -> None:
    async with connect(custom.url, user="alice") as c:
        await c.send({"type": "app.echo", "data": {"text": "quiet"}})
        await assert_alive(c)
        assert c.pending_events() == []


async def test_custom_type_with_bad_data_is_invalid_payload(custom: RunningServer) -> None:
    async with connect(custom.url, user="alice") as c:
        error = await error_for(c, '{"type": "app.echo", "id": "e1", "data": {"text": 5}}')
        assert (error["code"], error["op_id"]) == ("INVALID_PAYLOAD", "e1")
        assert "$.data.text" in error["message"]
        error = await error_for(c, '{"type": "app.echo", "id": "e2", "data": {}}')
        assert (error["code"], error["op_id"]) == ("INVALID_PAYLOAD", "e2")
        assert "text" in error["message"]


async def test_unregistered_app_type_is_unknown(custom: RunningServer) -> None:
    async with connect(custom.url, user="alice") as c:
        error = await error_for(c, '{"type": "app.nothing", "id": "n1"}')
        assert (error["code"], error["op_id"]) == ("UNKNOWN_TYPE", "n1")


async def test_custom_type_over_msgpack(custom: RunningServer) -> None:
    async with connect(custom.url, user="alice", msgpack=True) as c:
        assert (await c.request("app.echo", {"text": "mp"}))["echo"] == "mp"


def test_custom_types_must_live_under_app() -> None:
    router = default_router()
    with pytest.raises(ValueError, match="app"):
        router.add_custom("room.join", dict, echo)
    with pytest.raises(ValueError, match="app"):
        router.add_custom("app.", dict, echo)


# --------------------------------------------------------------------------- decoder properties (hypothesis)

INT64 = (-(2**63), 2**63 - 1)
texts = st.text(st.characters(codec="utf-8"), max_size=20)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(*INT64) | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)


def strategy_for(t: mi.Type) -> st.SearchStrategy[Any]:
    """Values msgspec accepts for the type ``t`` (constraints included), from its introspection."""
    if isinstance(t, mi.Metadata):
        return strategy_for(t.type)
    if isinstance(t, mi.AnyType):
        return json_values
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.IntType):
        assert t.gt is None and t.lt is None and t.multiple_of is None
        return st.integers(INT64[0] if t.ge is None else t.ge, INT64[1] if t.le is None else t.le)
    if isinstance(t, mi.FloatType):
        return st.floats(allow_nan=False, allow_infinity=False)
    if isinstance(t, mi.StrType):
        low, high = t.min_length or 0, min(t.max_length or 30, 30)
        if t.pattern is not None:
            return st.from_regex(t.pattern, fullmatch=True).filter(lambda s: low <= len(s) <= (t.max_length or 10**9))
        return st.text(st.characters(codec="utf-8"), min_size=low, max_size=max(low, high))
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, mi.UnionType):
        return st.one_of([strategy_for(member) for member in t.types])
    if isinstance(t, mi.ListType):
        return st.lists(strategy_for(t.item_type), min_size=t.min_length or 0, max_size=min(t.max_length or 3, 3))
    if isinstance(t, mi.DictType):
        return st.dictionaries(strategy_for(t.key_type), strategy_for(t.value_type), max_size=3)
    if isinstance(t, mi.StructType):
        return st.builds(t.cls, **{f.name: strategy_for(f.type) for f in t.fields})
    raise AssertionError(f"no strategy for {t!r}")  # pragma: no cover - a new kind of field


def messages_of(classes: tuple[type[msgspec.Struct], ...]) -> st.SearchStrategy[Any]:
    return st.one_of([strategy_for(mi.type_info(cls)) for cls in classes])


inbound_messages = messages_of(INBOUND_MESSAGES)
outbound_messages = messages_of(OUTBOUND_MESSAGES)
OutboundUnion = Union[OUTBOUND_MESSAGES]  # type: ignore[valid-type]
outbound_json = msgspec.json.Decoder(OutboundUnion)
outbound_msgpack = msgspec.msgpack.Decoder(OutboundUnion)


def readable_id(value: Any) -> bool:
    """Whether ``value`` is an id the protocol accepts (so an error must echo it)."""
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and len(value) <= 128)


def check_outcome(frame: str | bytes, sent: Any, *, binary: bool, router: Router | None = None) -> None:
    """The only outcomes of decoding: a message of the frame's type, or a FrameError a client can act on."""
    try:
        message = router.decode(frame, binary=binary) if router else decode_frame(frame, msgpack=binary)
    except FrameError as exc:
        assert exc.code in DECODE_CODES
        if not isinstance(sent, dict):
            assert (exc.code, exc.op_id) == ("BAD_REQUEST", None)
            return
        kind = sent.get("type")
        if not isinstance(kind, str):
            assert exc.code == "BAD_REQUEST"
        elif kind not in INBOUND_TYPES and not (router and kind in router.handled_types):
            assert exc.code == "UNKNOWN_TYPE"
        if exc.op_id is not None:
            assert exc.op_id == sent.get("id")
        elif exc.code != "INVALID_PAYLOAD" and readable_id(sent.get("id")):
            raise AssertionError(f"{exc.code} dropped the readable id {sent.get('id')!r}") from None
        return
    assert isinstance(sent, dict)
    if isinstance(message, CustomMessage):
        assert message.type == sent["type"]
    else:
        assert isinstance(message, Inbound)
        assert type_of(type(message)) == sent["type"]
    assert message.id == sent.get("id")


def encode(value: Any, binary: bool) -> str | bytes:
    return msgspec.msgpack.encode(value) if binary else msgspec.json.encode(value).decode()


HYPO = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HYPO
@given(frame=st.binary(max_size=200))
def test_arbitrary_bytes_as_json_never_escape_as_anything_but_frame_errors(frame: bytes) -> None:
    try:
        decode_frame(frame)
    except FrameError as exc:
        assert exc.code in DECODE_CODES


@HYPO
@example(frame=b"\xa1\x80")
@given(frame=st.binary(max_size=200))
def test_arbitrary_bytes_as_msgpack_never_escape_as_anything_but_frame_errors(frame: bytes) -> None:
    try:
        decode_frame(frame, msgpack=True)
    except FrameError as exc:
        assert exc.code in DECODE_CODES


@HYPO
@given(frame=st.text(st.characters(codec="utf-8"), max_size=200))
def test_arbitrary_text_frames_never_escape_as_anything_but_frame_errors(frame: str) -> None:
    try:
        decode_frame(frame)
    except FrameError as exc:
        assert exc.code in DECODE_CODES


@HYPO
@given(value=json_values, binary=st.booleans())
def test_arbitrary_json_values_decode_or_fail_with_a_client_code(value: Any, binary: bool) -> None:
    check_outcome(encode(value, binary), value, binary=binary)


@HYPO
@given(value=st.dictionaries(st.sampled_from(["type", "id", "data", "extra"]), json_values, max_size=4),
       binary=st.booleans())
def test_arbitrary_envelopes_decode_or_fail_with_a_client_code(value: dict[str, Any], binary: bool) -> None:
    check_outcome(encode(value, binary), value, binary=binary)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside nested dicts and lists (the root included)."""
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths(child, (*prefix, index))
    return found


@st.composite
def mutated(draw: st.DrawFn, messages: st.SearchStrategy[Any]) -> Any:
    """A valid message with one value replaced, one key removed or one key added somewhere."""
    value = msgspec.to_builtins(draw(messages))
    path = draw(st.sampled_from(paths(value)))
    replacement = draw(json_values | st.sampled_from(["", "x" * 129, -1, 2**63 - 1, "lobby\n", True, "`$.id`"]))
    if not path:
        return replacement
    *parents, last = path
    holder = value
    for key in parents:
        holder = holder[key]
    action = draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "replace":
        holder[last] = replacement
    elif action == "delete":
        del holder[last]
    elif isinstance(holder, dict):
        holder[draw(st.sampled_from(["type", "id", "data", "room", "extra"]))] = replacement
    else:
        holder.insert(last, replacement)
    return value


@HYPO
@given(value=mutated(inbound_messages), binary=st.booleans())
def test_mutated_messages_decode_or_fail_with_a_client_code(value: Any, binary: bool) -> None:
    check_outcome(encode(value, binary), value, binary=binary)


def echo_router() -> Router:
    router = Router()
    router.add_custom("app.echo", EchoData, echo)
    return router


echo_messages = st.builds(lambda d, i: {"type": "app.echo", "id": i, "data": d},
                          strategy_for(mi.type_info(EchoData)).map(msgspec.to_builtins),
                          st.none() | st.integers(*INT64) | texts)


@HYPO
@given(value=mutated(echo_messages | inbound_messages), binary=st.booleans())
def test_router_decode_of_mutated_custom_messages(value: Any, binary: bool) -> None:
    check_outcome(encode(value, binary), value, binary=binary, router=echo_router())


# --------------------------------------------------------------------------- wire round trips


@HYPO
@given(message=inbound_messages)
def test_every_inbound_message_round_trips_through_json_and_msgpack(message: Inbound) -> None:
    assert decode_frame(msgspec.json.encode(message)) == message
    assert decode_frame(msgspec.json.encode(message).decode()) == message
    assert decode_frame(msgspec.msgpack.encode(message), msgpack=True) == message


@HYPO
@given(message=outbound_messages)
def test_every_outbound_message_round_trips_through_json_and_msgpack(message: msgspec.Struct) -> None:
    assert outbound_json.decode(msgspec.json.encode(message)) == message
    assert outbound_msgpack.decode(msgspec.msgpack.encode(message)) == message
    assert msgspec.json.decode(msgspec.json.encode(message))["type"] == type_of(type(message))


def test_room_name_with_a_trailing_newline_is_invalid() -> None:
    with pytest.raises(FrameError) as refused:
        decode_frame('{"type": "room.join", "id": 1, "data": {"room": "lobby\\n"}}')
    assert refused.value.code == "INVALID_PAYLOAD"
    assert "$.data.room" in refused.value.message
