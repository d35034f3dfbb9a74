"""Plain regression tests for what the property tests (``test_input_properties_*.py``) found, each
shrunk to the one input that broke a promise of docs/protocol.md, against an in-process daemon.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
from conftest import events_of, make_config, start_server

from signald.client.raw import SignaldClient, connect
from signald.server import RunningServer

KEY = "k" * 40
AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture
async def api_server(nursery: trio.Nursery, tmp_path: Path) -> RunningServer:
    return await start_server(nursery, make_config(tmp_path, api={"keys": [KEY]}))


def http_url(server: RunningServer) -> str:
    return server.url.replace("ws://", "http://").rstrip("/")


async def reply_to(c: SignaldClient, frame: str | bytes) -> dict[str, Any]:
    """The one reply to a raw frame, checked to be the only one (a ping behind it answers next)."""
    await c.send(frame)
    with trio.fail_after(5):
        pong = await c.request_raw("presence.ping", op_id="behind")
    assert pong["type"] == "presence.pong" and not c.closed.is_set()
    [reply] = [e for e in c.pending_events() if e["type"] in ("ack", "error", "presence.pong")]
    return reply


# --------------------------------------------------------------------------- WebSocket frames


async def test_a_number_beyond_a_float_is_invalid_payload_naming_its_field_and_keeps_the_id(
    server: RunningServer,
) -> None:
    """``1e400`` is JSON grammar (JSON.parse reads Infinity); msgspec refuses it as out of range. The
    frame got ``BAD_REQUEST "frame is not valid JSON"`` with ``op_id: null``: a request whose id could
    be read never completed, and the code named no field."""
    async with connect(server.url, user="alice") as alice:
        await alice.request("room.join", {"room": "lobby"})
        cases = [
            ('{"type":"chat.history","id":1,"data":{"room":"lobby","limit":1e400}}', 1, "INVALID_PAYLOAD",
             "$.data.limit"),
            ('{"type":"room.signal","id":"s","data":{"room":"lobby","kind":"k","payload":[-1e400]}}', "s",
             "INVALID_PAYLOAD", "$.data.payload"),
            ('{"type":"room.jion","id":3,"data":{"room":"lobby","n":1E+999}}', 3, "UNKNOWN_TYPE", "room.jion"),
            ('{"type":"chat.history","id":1e400,"data":{"room":"lobby"}}', None, "INVALID_PAYLOAD", "$.id"),
            ('[1e400]', None, "BAD_REQUEST", "object"),
        ]
        for frame, op_id, code, named in cases:
            reply = await reply_to(alice, frame)
            assert reply["type"] == "error", (frame, reply)
            assert (reply["data"]["op_id"], reply["data"]["code"]) == (op_id, code), (frame, reply)
            assert named in reply["data"]["message"], (frame, reply)
        # An unknown field holding one is ignored, as any unknown field is.
        reply = await reply_to(alice, '{"type":"chat.history","id":6,"data":{"room":"lobby","x":1e400}}')
        assert (reply["type"], reply["data"]["op_id"]) == ("ack", 6)


async def test_a_text_frame_whose_id_msgpack_cannot_carry_is_refused_on_a_msgpack_connection_which_stays(
    server: RunningServer,
) -> None:
    """A JSON text frame on a MessagePack connection is answered in MessagePack with its id; an id
    past 64 bits (``2**64``) failed the reply's encoding, which dropped the whole connection with a
    traceback. Now it gets its ``BAD_REQUEST`` with ``op_id: null``; an id that fits is still echoed."""
    async with connect(server.url, user="alice", msgpack=True) as alice:
        for big in (2**64, -(2**63) - 1, 10**30):
            reply = await reply_to(alice, f'{{"type":"presence.ping","id":{big}}}')
            assert (reply["type"], reply["data"]["code"], reply["data"]["op_id"]) == ("error", "BAD_REQUEST", None)
        reply = await reply_to(alice, f'{{"type":"presence.ping","id":{2**64 - 1}}}')
        assert (reply["data"]["code"], reply["data"]["op_id"]) == ("BAD_REQUEST", 2**64 - 1)
        too_large = f'{{"type":"presence.ping","id":{2**64},"pad":"{"x" * 70_000}"}}'  # over max_frame_bytes
        reply = await reply_to(alice, too_large)
        assert (reply["data"]["code"], reply["data"]["op_id"]) == ("TOO_LARGE", None)
        assert (await alice.request_raw("presence.ping", op_id=7))["data"]["op_id"] == 7


async def test_a_refused_msgpack_frame_whose_map_has_a_key_that_is_no_string_keeps_its_id(
    server: RunningServer,
) -> None:
    """MessagePack maps may have keys of any type. A frame refused before it is decoded (here
    TOO_LARGE) was answered with ``op_id: null`` when its map held such a key, though its ``id`` was
    readable and the same frame, refused after decoding, kept it."""
    async with connect(server.url, user="alice", msgpack=True) as alice:
        for op_id in (9, "big-1"):
            frame = msgspec.msgpack.encode({1: 2, "type": "presence.ping", "id": op_id, "pad": "x" * 70_000})
            reply = await reply_to(alice, frame)
            assert (reply["type"], reply["data"]["code"], reply["data"]["op_id"]) == ("error", "TOO_LARGE", op_id)
        reply = await reply_to(alice, msgspec.msgpack.encode({1: 2, "type": "presence.pang", "id": 10}))
        assert (reply["data"]["code"], reply["data"]["op_id"]) == ("UNKNOWN_TYPE", 10)


async def test_text_cut_after_half_an_emoji_is_refused_as_a_lone_surrogate_with_its_id(server: RunningServer) -> None:
    """``"😀".slice(0, 1)`` in a browser is a lone high surrogate, which JSON.stringify writes as
    ``"\\ud83d"``; the frame got ``BAD_REQUEST "frame is not valid JSON"`` with ``op_id: null`` (msgspec
    reports it as truncated input), so the request never completed. Now it is refused as a lone
    surrogate with its id, as a lone low surrogate already was."""
    async with connect(server.url, user="alice") as alice:
        await alice.request("room.join", {"room": "lobby"})
        reply = await reply_to(alice, '{"type":"chat.send","id":"cut","data":{"scope":"lobby","body":"hi \\ud83d"}}')
        assert (reply["type"], reply["data"]["code"], reply["data"]["op_id"]) == ("error", "BAD_REQUEST", "cut")
        assert "surrogate" in reply["data"]["message"]
        assert (await alice.request("chat.history", {"room": "lobby"}))["messages"] == []


# --------------------------------------------------------------------------- the server API (HTTP)


async def test_app_event_data_past_64_bits_or_too_deep_is_refused_before_anything_is_delivered(
    api_server: RunningServer, caplog: pytest.LogCaptureFixture,
) -> None:
    """``data`` of ``publish``/``notify`` is free-form like ``room.signal``'s payload, but was not held to
    its bounds: an integer past 64 bits answered 500 (the MessagePack member's frame failed to encode,
    after the JSON member may have got it; with ``store`` the message was stored first), and a body nested
    deeper than the decoder goes raised RecursionError, 500 as well. Now both are 400 and nothing moves."""
    async with connect(api_server.url, user="mp", msgpack=True) as mp, connect(api_server.url, user="js") as js, \
            httpx.AsyncClient(base_url=http_url(api_server)) as http:
        for c in (mp, js):
            await c.request("room.join", {"room": "lobby"})
        await events_of(mp)
        await events_of(js)
        refused = [
            ("publish", f'{{"room": "lobby", "type": "app.t", "data": {{"n": {2**64}}}}}', "INVALID_PAYLOAD",
             "64 bits"),
            ("publish", f'{{"room": "lobby", "type": "app.t", "data": [{-(2**63) - 1}], "store": true}}',
             "INVALID_PAYLOAD", "64 bits"),
            ("notify", f'{{"user_id": "mp", "type": "app.t", "data": {10**30}}}', "INVALID_PAYLOAD", "64 bits"),
            ("publish", '{"room": "lobby", "type": "app.t", "data": ' + "[" * 65 + "]" * 65 + "}", "INVALID_PAYLOAD",
             "64 levels"),
            ("publish", '{"room": "lobby", "type": "app.t", "data": ' + "[" * 5000 + "]" * 5000 + "}", "BAD_REQUEST",
             "nests too deeply"),
        ]
        with caplog.at_level(logging.ERROR):
            for call, body, code, said in refused:
                response = await http.post(f"/api/v1/{call}", content=body, headers=AUTH)
                assert response.status_code == 400, (body[:80], response.text)
                error = response.json()["error"]
                assert error["code"] == code and said in error["message"], (body[:80], error)
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
        assert await events_of(mp) == [] and await events_of(js) == []
        assert (await mp.request("chat.history", {"room": "lobby"}))["messages"] == []
        response = await http.post("/api/v1/publish", json={"room": "lobby", "type": "app.t", "data": [2**64 - 1]},
                                   headers=AUTH)
        assert response.json() == {"result": {"delivered": 2}}


async def test_a_kick_body_with_an_unknown_field_is_refused_as_every_body_is(api_server: RunningServer) -> None:
    """docs/server-api.md: "unknown fields are refused"; ``kick`` reused ``room.kick``'s struct, which
    ignores them, so a misspelt ``reson`` dropped the reason silently and kicked all the same."""
    async with connect(api_server.url, user="bob") as bob, httpx.AsyncClient(base_url=http_url(api_server)) as http:
        await bob.request("room.join", {"room": "lobby"})
        response = await http.post("/api/v1/kick", json={"room": "lobby", "user_id": "bob", "reson": "spam"},
                                   headers=AUTH)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "INVALID_PAYLOAD" and "reson" in response.json()["error"]["message"]
        assert [e for e in await events_of(bob) if e[0] == "room.kicked"] == []
        response = await http.post("/api/v1/kick", json={"room": "lobby", "user_id": "bob", "reason": "spam"},
                                   headers=AUTH)
        assert response.json() == {"result": {"sessions": 1}}


@pytest.mark.parametrize("target", ["http://[zz]/healthz", "http://[::1/healthz", "//[/api/v1/stats"])
async def test_a_request_target_that_is_no_url_gets_400_not_a_dropped_connection(
    api_server: RunningServer, target: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """h11 takes any visible characters as the target; ``urlsplit`` raised ValueError on a bracketed host
    that is no address, which dropped the connection unanswered with a traceback."""
    port = int(http_url(api_server).rsplit(":", 1)[1])
    with caplog.at_level(logging.ERROR):
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            got = b""
            with trio.fail_after(5):
                while chunk := await stream.receive_some(65536):
                    got += chunk
    assert got.startswith(b"HTTP/1.1 400 ") and got.endswith(b"bad HTTP request\n"), got
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    async with httpx.AsyncClient(base_url=http_url(api_server)) as http:
        assert (await http.get("/healthz")).status_code == 200


async def test_an_upgrade_whose_target_is_no_url_still_reads_its_query(
    api_server: RunningServer, caplog: pytest.LogCaptureFixture,
) -> None:
    """The request path is not checked (docs/protocol.md), so ``GET http://[zz]/?user=ann`` is an upgrade
    like any other: ``?user=`` was read with ``urlsplit``, whose ValueError dropped the connection."""
    port = int(http_url(api_server).rsplit(":", 1)[1])
    with caplog.at_level(logging.ERROR):
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(b"GET http://[zz]/?user=ann HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                                  b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                  b"Sec-WebSocket-Version: 13\r\n\r\n")
            got = b""
            with trio.fail_after(5):
                while b'"user_id":"ann"' not in got:
                    chunk = await stream.receive_some(65536)
                    assert chunk, got
                    got += chunk
    assert got.startswith(b"HTTP/1.1 101 ")
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


# --------------------------------------------------------------------------- the handshake

UPGRADE = (b"GET /?user=ann HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")


async def answer_to(server: RunningServer, request: bytes) -> bytes:
    """Everything the daemon writes back to ``request`` on a new connection, until it closes."""
    port = int(server.url.rstrip("/").rsplit(":", 1)[1])
    got = b""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(request)
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                got += chunk
    return got


@pytest.mark.parametrize(("request_bytes", "status"), [
    (UPGRADE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"short"), b"400"),  # a key that is not 16 bytes
    (UPGRADE.replace(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b""), b"400"),  # no key
    (UPGRADE.replace(b"GET ", b"POST "), b"400"),
    (UPGRADE.replace(b"Connection: Upgrade", b"Connection: keep-alive"), b"400"),
    (UPGRADE.replace(b"Upgrade: websocket\r\n", b"Upgrade: h2c\r\n"), b"400"),  # a key, but no websocket
    (UPGRADE.replace(b"Version: 13", b"Version: 8"), b"426"),
])
async def test_an_upgrade_that_cannot_be_accepted_gets_its_documented_status_not_the_plain_426(
    server: RunningServer, request_bytes: bytes, status: bytes,
) -> None:
    """docs/protocol.md: a WebSocket upgrade the server cannot accept (RFC 6455 4.2.1) gets 400, a
    version other than 13 gets 426, both with ``Sec-WebSocket-Version: 13``. Every such request was
    handed to the plain-HTTP server and answered its 426 "connect with a WebSocket client" instead,
    which tells a client that did use one nothing (and a bad key is no reason to upgrade)."""
    got = await answer_to(server, request_bytes)
    assert got.startswith(b"HTTP/1.1 " + status + b" "), got
    assert b"signald WebSocket endpoint" not in got
    if status == b"426":
        assert b"Sec-WebSocket-Version: 13" in got


@pytest.mark.parametrize("padding", [17_000, 20_000, 30_000])
@pytest.mark.parametrize("upgrade", [True, False])
async def test_a_request_head_over_16_kib_gets_431_whatever_the_read_boundaries(
    server: RunningServer, padding: int, upgrade: bool,
) -> None:
    """h11 bounds only a request it has not seen whole (16 KiB), and the daemon reads 16 KiB at a
    time: an upgrade of 17-32 KiB written at once was completed by its second read and accepted
    (101), while the same request arriving in smaller pieces got 431. Now its size decides."""
    request = UPGRADE if upgrade else b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    request = request.replace(b"Host: x\r\n", b"Host: x\r\nX-Padding: " + b"p" * padding + b"\r\n")
    got = await answer_to(server, request)
    assert got.startswith(b"HTTP/1.1 431 "), got[:200]


async def test_a_request_head_of_exactly_16_kib_is_still_served(server: RunningServer) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Padding: \r\n\r\n"
    for size, status in ((16384, b"200"), (16385, b"431")):
        request = head.replace(b"X-Padding: ", b"X-Padding: " + b"p" * (size - len(head)))
        assert len(request) == size
        got = await answer_to(server, request)
        assert got.startswith(b"HTTP/1.1 " + status + b" "), (size, got[:200])


async def whole_answer_despite_unread_input(server: RunningServer, request: bytes, more: bytes) -> bytes:
    """What the daemon answers to ``request`` followed by ``more`` (which it refuses to read as a
    request), read to the end once all of it is written, as an HTTP client that sends its whole
    body first does; a TCP reset fails the write or cuts the answer short."""
    port = int(server.url.rstrip("/").rsplit(":", 1)[1])
    got = b""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        # A small send buffer: the writes wait on the daemon's reads, as over a long path.
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        with trio.fail_after(5):
            try:
                await stream.send_all(request + more)
                while chunk := await stream.receive_some(65536):
                    got += chunk
            except trio.BrokenResourceError as exc:
                raise AssertionError(f"connection reset after {got[:100]!r}") from exc
    return got


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nNo colon here\r\nContent-Length: 400000\r\n\r\n", b"400"),
    (b"POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 400000\r\n\r\n", b"400"),  # TOO_LARGE
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"p" * 20_000 + b"\r\n\r\n", b"431"),
])
async def test_a_refused_request_is_answered_whole_though_the_client_sent_more_than_was_read(
    api_server: RunningServer, request_bytes: bytes, status: bytes,
) -> None:
    """A refused plain HTTP request closed the connection with the client's input unread: the
    kernel then answers with a TCP reset, and a client still writing (a large body after a bad
    header) lost the response it had not read yet. The daemon now half-closes and reads what
    follows (bounded) before it closes, as HTTP servers do."""
    got = await whole_answer_despite_unread_input(api_server, request_bytes, b"b" * 600_000)
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 " + status + b" "), got[:200]
    fields = dict(line.split(b":", 1) for line in head.lower().split(b"\r\n")[1:])
    length = int(fields[b"content-length"])
    assert len(body) == length, got


@pytest.mark.parametrize(("request_bytes", "status"), [
    (UPGRADE.replace(b"Version: 13", b"Version: 8"), b"426"),
    (UPGRADE.replace(b"GET ", b"POST "), b"400"),
    (UPGRADE.replace(b"Host: x\r\n", b"Host: x\r\nX-Padding: " + b"p" * 20_000 + b"\r\n"), b"431"),
])
async def test_a_refused_upgrade_is_answered_whole_though_the_client_sent_more_than_was_read(
    server: RunningServer, request_bytes: bytes, status: bytes,
) -> None:
    """A WebSocket upgrade refused with an HTTP status closed the connection at once, with what the
    client sent after its request unread: the kernel then resets the connection, and the client
    lost the answer it had not read yet. It now lingers as a refused plain request does."""
    got = await whole_answer_despite_unread_input(server, request_bytes, b"b" * 600_000)
    assert got.startswith(b"HTTP/1.1 " + status + b" "), got[:200]
    assert got.endswith(b"\r\n\r\n"), got[:200]  # the whole head, and its body is empty
    assert b"content-length: 0\r\n" in got.lower()
    if status == b"426":
        assert b"Sec-WebSocket-Version: 13" in got


async def test_a_lingering_refused_upgrade_holds_no_connection_of_its_user(
    nursery: trio.Nursery, tmp_path: Path,
) -> None:
    """While ann's refused upgrade lingers (her client keeps its end open, the daemon reads on), her one
    allowed connection (``max_connections_per_user = 1``) is still hers to open."""
    server = await start_server(nursery, make_config(tmp_path, limits={"max_connections_per_user": 1}))
    port = int(server.url.rstrip("/").rsplit(":", 1)[1])
    async with await trio.open_tcp_stream("127.0.0.1", port) as refused:
        await refused.send_all(UPGRADE.replace(b"Version: 13", b"Version: 8"))
        got = b""
        with trio.fail_after(5):
            while chunk := await refused.receive_some(65536):  # up to the daemon's half-close
                got += chunk
        assert got.startswith(b"HTTP/1.1 426 "), got
        async with connect(server.url, user="ann") as ann:
            assert (await ann.request_raw("presence.ping"))["type"] == "presence.pong"


async def test_requests_that_never_asked_for_a_websocket_are_still_plain_http(server: RunningServer) -> None:
    got = await answer_to(server, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 426 ") and b"signald WebSocket endpoint" in got
    got = await answer_to(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n"
                                  b"Connection: Upgrade, close\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b'{"status":"ok"}')


@pytest.mark.parametrize(("origins", "refused"), [
    ((b"https://good.example", b"https://evil.example"), True),
    ((b"https://evil.example", b"https://good.example"), True),
    ((b"https://good.example", b"HTTPS://GOOD.EXAMPLE:443/"), False),
])
async def test_every_origin_header_must_be_allowed(
    nursery: trio.Nursery, tmp_path: Path, origins: tuple[bytes, bytes], refused: bool,
) -> None:
    """With an allow-list, only the first of two ``Origin`` headers was checked: an allowed one first let
    any second one through. A browser sends one; now each must pass."""
    server = await start_server(nursery, make_config(tmp_path, server={"allowed_origins": ["https://good.example"]}))
    port = int(server.url.rstrip("/").rsplit(":", 1)[1])
    request = UPGRADE.replace(b"\r\n\r\n", b"".join(b"\r\nOrigin: " + o for o in origins) + b"\r\n\r\n")
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(request)
        got = b""
        with trio.fail_after(5):
            while b'"type":"welcome"' not in got and b"\x88" not in got.partition(b'"FORBIDDEN"')[2]:
                chunk = await stream.receive_some(65536)
                assert chunk, got
                got += chunk
    assert got.startswith(b"HTTP/1.1 101 ")
    assert (b'"code":"FORBIDDEN"' in got) == refused and (b'"type":"welcome"' in got) == (not refused), got
