"""Exactly one reply, for refused frames too, over real WebSockets.

A frame refused by the rate limiter (``RATE_LIMITED``), for its size (``TOO_LARGE``) or for its
envelope (``BAD_REQUEST``, ``UNKNOWN_TYPE``, ``INVALID_PAYLOAD``) answers with its ``id`` in
``op_id`` whenever one can be read, so a client's pending request always completes; a frame whose
``id`` cannot be read answers with ``op_id: null``. "Exactly one" is checked by collecting every
frame the connection received up to a later ``presence.ping``'s pong (or up to its close).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from conftest import make_config, start_server

from signald.client.raw import SignaldClient, connect
from signald.server import RunningServer

FRAME_LIMIT = 1000


async def replies_until_pong(c: SignaldClient, pong_id: str = "probe") -> list[tuple[str, Any, str | None]]:
    """Every frame ``c`` got before the pong of a ping sent now, as ``(type, op_id, code)``."""
    with trio.fail_after(5):
        pong = await c.request_raw("presence.ping", op_id=pong_id)
    assert pong["type"] == "presence.pong"
    return [(e["type"], e["data"].get("op_id"), e["data"].get("code")) for e in c.pending_events()]


def padded(message: dict[str, Any], size: int, *, msgpack: bool = False) -> str | bytes:
    """``message`` with a ``pad`` field that makes it at least ``size`` bytes on the wire."""
    message = {**message, "pad": "x" * size}
    return msgspec.msgpack.encode(message) if msgpack else json.dumps(message)


@pytest.fixture
async def small(nursery: trio.Nursery, tmp_path: Path) -> RunningServer:
    return await start_server(nursery, make_config(tmp_path, limits={"max_frame_bytes": FRAME_LIMIT}))


# --------------------------------------------------------------------------- TOO_LARGE


@pytest.mark.parametrize("msgpack", [False, True], ids=["json", "msgpack"])
@pytest.mark.parametrize("op_id", ["big-1", 77])
async def test_a_frame_over_max_frame_bytes_answers_too_large_once_with_its_id(
    small: RunningServer, msgpack: bool, op_id: Any
) -> None:
    async with connect(small.url, user="alice", msgpack=msgpack) as c:
        frame = padded({"type": "room.join", "id": op_id, "data": {"room": "lobby"}}, FRAME_LIMIT, msgpack=msgpack)
        await c.send(frame)
        assert await replies_until_pong(c) == [("error", op_id, "TOO_LARGE")]
        assert (await c.request("session.info"))["rooms"] == []  # not carried out


@pytest.mark.parametrize("frame", [
    pytest.param(json.dumps({"type": "presence.ping", "data": {"id": "nested"}, "pad": "x" * FRAME_LIMIT}),
                 id="id-only-inside-data"),
    pytest.param(json.dumps({"type": "presence.ping", "id": True, "pad": "x" * FRAME_LIMIT}), id="bool-id"),
    pytest.param(json.dumps({"type": "presence.ping", "id": "i" * 129, "pad": "x" * FRAME_LIMIT}), id="long-id"),
    pytest.param('{"type": "presence.ping", "id": "cut", "pad": "' + "x" * FRAME_LIMIT, id="not-json"),
    pytest.param(json.dumps([{"id": "in-an-array"}] * 100), id="not-an-object"),
])
async def test_a_too_large_frame_whose_id_cannot_be_read_answers_with_null(small: RunningServer, frame: str) -> None:
    assert len(frame.encode()) > FRAME_LIMIT
    async with connect(small.url, user="alice") as c:
        await c.send(frame)
        assert await replies_until_pong(c) == [("error", None, "TOO_LARGE")]


# --------------------------------------------------------------------------- RATE_LIMITED


@pytest.mark.parametrize("msgpack", [False, True], ids=["json", "msgpack"])
async def test_rate_limited_frames_answer_once_each_with_their_ids(
    nursery: trio.Nursery, tmp_path: Path, msgpack: bool
) -> None:
    # Two tokens and (practically) no refill: two frames are carried out, the next two refused,
    # the third refusal within 10 s closes the connection (1008) without a reply.
    server = await start_server(nursery, make_config(tmp_path, limits={"rate_per_s": 0.001, "rate_burst": 2}))
    async with connect(server.url, user="alice", msgpack=msgpack) as c:
        await c.send({"type": "presence.ping", "id": "ok-1"})
        await c.send({"type": "room.join", "id": "ok-2", "data": {"room": "lobby"}})
        await c.send({"type": "chat.send", "id": "limited-1", "data": {"scope": "lobby", "body": "hi"}})
        await c.send(b"\xc1 garbage" if msgpack else "not json, no id to read")
        await c.send({"type": "presence.ping", "id": "closes"})
        with trio.fail_after(5):
            await c.closed.wait()
        assert c.ws.closed is not None and c.ws.closed.code == 1008
        got = [(e["type"], e["data"].get("op_id"), e["data"].get("code")) for e in c.pending_events()]
    assert got == [
        ("presence.pong", "ok-1", None),
        ("ack", "ok-2", None),
        ("room.waiting", None, None),
        ("error", "limited-1", "RATE_LIMITED"),
        ("error", None, "RATE_LIMITED"),
    ]


# --------------------------------------------------------------------------- envelope


ENVELOPE: list[tuple[str, dict[str, Any], str]] = [
    ("unknown-type", {"type": "room.explode", "id": "e-1", "data": {}}, "UNKNOWN_TYPE"),
    ("invalid-payload", {"type": "room.join", "id": "e-2", "data": {"room": "a b"}}, "INVALID_PAYLOAD"),
    ("data-not-an-object", {"type": "room.join", "id": "e-3", "data": ["lobby"]}, "INVALID_PAYLOAD"),
    ("type-not-a-string", {"type": 3, "id": "e-4"}, "BAD_REQUEST"),
    ("type-missing", {"id": 5, "data": {}}, "BAD_REQUEST"),
]


@pytest.mark.parametrize("msgpack", [False, True], ids=["json", "msgpack"])
@pytest.mark.parametrize(("message", "code"), [c[1:] for c in ENVELOPE], ids=[c[0] for c in ENVELOPE])
async def test_a_bad_envelope_answers_once_with_its_id(
    server: RunningServer, message: dict[str, Any], code: str, msgpack: bool
) -> None:
    async with connect(server.url, user="alice", msgpack=msgpack) as c:
        await c.send(message)
        assert await replies_until_pong(c) == [("error", message["id"], code)]


@pytest.mark.parametrize("frame", [
    pytest.param('{"type": "presence.ping", "id": "x"', id="not-json"),
    pytest.param('[{"type": "presence.ping", "id": "x"}]', id="not-an-object"),
    pytest.param('{"type": "presence.ping", "id": false}', id="bool-id"),
    pytest.param('{"type": "room.join", "data": {"room": "lobby", "id": "inner"}, "extra": [}', id="broken"),
])
async def test_a_bad_frame_whose_id_cannot_be_read_answers_once_with_null(server: RunningServer, frame: str) -> None:
    async with connect(server.url, user="alice") as c:
        await c.send(frame)
        [(kind, op_id, _code)] = await replies_until_pong(c)
        assert (kind, op_id) == ("error", None)


async def test_a_json_text_frame_on_a_msgpack_connection_still_answers_with_its_id(server: RunningServer) -> None:
    async with connect(server.url, user="alice", msgpack=True) as c:
        await c.send('{"type": "presence.ping", "id": "text"}')
        assert await replies_until_pong(c) == [("error", "text", "BAD_REQUEST")]
