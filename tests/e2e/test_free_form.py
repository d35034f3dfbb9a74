"""Free-form values (``room.signal`` ``payload``, ``sdp``, ``candidate``) between JSON and MessagePack.

The contract: frames carry JSON objects, MessagePack ones "the same structure", and the server
"relays [sdp, candidate] untouched"; docs/protocol.md: free-form JSON is relayed untouched within
what every recipient's format needs, anything beyond is ``INVALID_PAYLOAD`` naming the field. A
MessagePack client can encode what no JSON value is (a map key that is not a string, binary data,
an extension type, a timestamp, NaN): such a value cannot reach a JSON member untouched, so it is
refused before anyone gets it, and no traceback is logged. Every JSON value reaches both kinds of
member exactly as sent.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from conftest import events_of, make_config, start_server
from test_field_paths import named_path

from signald.client.raw import SignaldClient, connect
from signald.server import RunningServer

NOT_JSON: dict[str, Any] = {
    "int-key": {1: "one"},
    "bool-key": {True: 1},
    "nil-key": {None: 1},
    "float-key": {1.5: 1},
    "binary": b"\x00\x01",
    "ext": msgspec.msgpack.Ext(5, b"xy"),
    "timestamp": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
    "nan": float("nan"),
    "infinity": float("-inf"),
    "nested": {"a": [1, {"b": b"\x02"}]},
}
JSON_VALUES: list[Any] = [None, True, False, 0, -(2**63), 2**64 - 1, 1.5, -0.25, "", "é😀\u2028",
                          [], {}, {"a": [1, "x", None, {"b": False}]}]


@pytest.fixture
async def srv(nursery: trio.Nursery, tmp_path: Path) -> RunningServer:
    return await start_server(nursery, make_config(tmp_path, server={"heartbeat_s": 3600.0},
                                                   calls={"call_log": False}))


async def reply_to(c: SignaldClient, message: dict[str, Any]) -> dict[str, Any]:
    await c.send(msgspec.msgpack.encode(message))
    with trio.fail_after(5):
        while True:
            event = await c.next_event()
            if event["type"] in ("ack", "error"):
                return event


@asynccontextmanager
async def in_lobby(srv: RunningServer) -> AsyncIterator[tuple[SignaldClient, SignaldClient, SignaldClient]]:
    """A MessagePack sender, a JSON reader and a MessagePack other member, all in "lobby", events read."""
    async with connect(srv.url, user="packer", msgpack=True) as packer, \
            connect(srv.url, user="reader") as reader, connect(srv.url, user="other", msgpack=True) as other:
        for c in (packer, reader, other):
            await c.request("room.join", {"room": "lobby"})
        for c in (packer, reader, other):
            await events_of(c)
        yield packer, reader, other


@pytest.mark.parametrize("value", list(NOT_JSON.values()), ids=list(NOT_JSON))
async def test_a_value_that_is_not_json_is_refused_naming_the_field_and_reaches_nobody(
    srv: RunningServer, value: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with in_lobby(srv) as (packer, reader, other):
        requests = [
            ("room.signal", {"room": "lobby", "kind": "k", "payload": value}, "$.data.payload"),
            ("call.offer", {"target_id": "reader", "call_type": "data", "sdp": {"type": "offer", "x": value}},
             "$.data.sdp"),
            ("call.ice", {"target_id": "reader", "call_id": "c-1", "candidate": {"candidate": value}},
             "$.data.candidate"),
        ]
        for kind, data, path in requests:
            reply = await reply_to(packer, {"type": kind, "id": kind, "data": data})
            assert (reply["type"], reply["data"]["op_id"], reply["data"]["code"],
                    named_path(reply["data"]["message"])) == ("error", kind, "INVALID_PAYLOAD", path), reply
        assert await events_of(reader) == []
        assert await events_of(other) == []
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


async def test_every_json_value_reaches_json_and_msgpack_members_as_sent(srv: RunningServer) -> None:
    async with in_lobby(srv) as (packer, reader, other):
        for sender, receivers in ((packer, (reader, other)), (reader, (packer, other))):
            for value in JSON_VALUES:
                assert await sender.request("room.signal", {"room": "lobby", "kind": "k", "payload": value}) is None
                for c in receivers:
                    assert await events_of(c) == [("room.signal", {"room": "lobby", "user_id": sender.user_id,
                                                                   "kind": "k", "payload": value})]
