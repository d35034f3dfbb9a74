"""Refused handshakes as a browser sees them, in both ``server.refusals`` modes, over real WebSockets.

In ``"close"`` mode (the default) a refused connection completes the handshake with the subprotocol
it offered, receives exactly one ``error`` frame (``op_id`` null, ``retry_after_s`` only on 4429)
and is closed with 4401 / 4403 / 4429; in ``"http"`` mode it gets HTTP 401 / 403 / 429 (429 with
``Retry-After``). A subprotocol mismatch is HTTP 400 either way. A refused connection never gets
``welcome``, never reaches presence or the connection counts, and holds nothing once refused.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import jwt
import msgspec
import pytest
import trio
import trio_websocket
from conftest import clients, events_of, make_config, start_server, time_flies
from over_nodes import settle
from trio.testing import MockClock

from signald.auth import AuthRefused, HandshakeRequest, Identity
from signald.client.raw import Refused, connect
from signald.server import REFUSAL_WAIT_S, RunningServer
from signald.state.refusals import USER_LIMIT_RETRY_AFTER_S

SECRET = "signald-test-secret-0123456789abcdef"
MODES = ["close", "http"]
CLOSE_CODES = {"UNAUTHORIZED": 4401, "FORBIDDEN": 4403, "RATE_LIMITED": 4429}
HTTP_STATUS = {"UNAUTHORIZED": 401, "FORBIDDEN": 403, "RATE_LIMITED": 429}
BAD_USER = "?user=a%20b"  # auth mode none refuses a user id with a space
BAD_USER_REASON = "user must be 1-128 characters of [A-Za-z0-9._:@-]"


@attrs.frozen
class Seen:
    """All that a browser's ``WebSocket`` (and, for HTTP, the network panel) can know of an attempt."""

    status: int | None = None  # the HTTP status of a refused handshake
    headers: dict[str, str] = attrs.field(factory=dict)
    body: str = ""
    subprotocol: str | None = None  # the one the completed handshake selected
    frames: tuple[dict[str, Any], ...] = ()  # every frame received until the close
    close_code: int | None = None
    close_reason: str | None = None


async def attempt(url: str, *, subprotocols: tuple[str, ...] = ("signald.v1",),
                  headers: list[tuple[bytes, bytes]] | None = None) -> Seen:
    """Connect to ``url`` and read until the server closes (it must refuse: a welcome is a frame too)."""
    with trio.fail_after(5):
        try:
            async with trio_websocket.open_websocket_url(url, subprotocols=list(subprotocols),
                                                         extra_headers=headers) as ws:
                frames: list[dict[str, Any]] = []
                while True:
                    try:
                        message = await ws.get_message()
                    except trio_websocket.ConnectionClosed:
                        break
                    frames.append(msgspec.msgpack.decode(message) if isinstance(message, bytes)
                                  else json.loads(message))
                assert ws.closed is not None
                return Seen(subprotocol=ws.subprotocol, frames=tuple(frames), close_code=ws.closed.code,
                            close_reason=ws.closed.reason)
        except trio_websocket.ConnectionRejected as exc:
            return Seen(status=exc.status_code, headers={k.decode().lower(): v.decode() for k, v in exc.headers},
                        body=(exc.body or b"").decode())


def assert_refused(seen: Seen, mode: str, code: str, reason: str, *, subprotocol: str = "signald.v1") -> None:
    """``seen`` is the refusal ``code`` with ``reason`` as ``mode`` answers it."""
    if mode == "http":
        assert (seen.status, seen.body.strip(), seen.frames) == (HTTP_STATUS[code], reason, ())
        assert ("retry-after" in seen.headers) == (code == "RATE_LIMITED")
        return
    assert seen.status is None
    assert seen.subprotocol == subprotocol  # selected as usual: a browser accepts the handshake
    [frame] = seen.frames  # exactly one, and no welcome
    assert frame["type"] == "error"
    data = frame["data"]
    assert (data["op_id"], data["code"], data["message"]) == (None, code, reason)
    assert set(data) == ({"op_id", "code", "message", "retry_after_s"} if code == "RATE_LIMITED"
                         else {"op_id", "code", "message"})
    assert (seen.close_code, seen.close_reason) == (CLOSE_CODES[code], reason)


async def serve(nursery: trio.Nursery, tmp_path: Path, mode: str, **sections: dict[str, Any]) -> RunningServer:
    sections.setdefault("server", {})["refusals"] = mode
    return await start_server(nursery, make_config(tmp_path, **sections))


def token(sub: str = "alice", **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 3600, **claims}, SECRET, algorithm="HS256")


def refusals_counted(server: RunningServer, cause: str) -> float:
    value = server.hub.metrics.registry.get_sample_value("signald_refusals_total", {"cause": cause})
    return value or 0.0


# --------------------------------------------------------------------------- every cause, both modes


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("make_token", "reason"), [
    pytest.param(lambda: token(exp=int(time.time()) - 3600), "token expired", id="expired"),
    pytest.param(lambda: "not.a.jwt", "malformed token", id="malformed"),
    pytest.param(lambda: None, "missing token", id="missing"),
])
async def test_a_bad_token_is_unauthorized(
    nursery: trio.Nursery, tmp_path: Path, mode: str, make_token: Callable[[], str | None], reason: str
) -> None:
    server = await serve(nursery, tmp_path, mode, auth={"mode": "jwt", "jwt_secret": SECRET})
    bad = make_token()
    seen = await attempt(server.url + (f"?token={bad}" if bad else ""))
    assert_refused(seen, mode, "UNAUTHORIZED", reason)
    assert refusals_counted(server, "unauthorized") == 1
    assert server.hub.sessions == {}


@pytest.mark.parametrize("mode", MODES)
async def test_a_reserved_user_id_is_unauthorized(nursery: trio.Nursery, tmp_path: Path, mode: str) -> None:
    server = await serve(nursery, tmp_path, mode, auth={"mode": "jwt", "jwt_secret": SECRET})
    assert_refused(await attempt(server.url + f"?token={token('$system')}"), mode, "UNAUTHORIZED", "reserved user id")
    assert_refused(await attempt(server.url + BAD_USER), mode, "UNAUTHORIZED", "missing token")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("status", "code"), [(401, "UNAUTHORIZED"), (403, "FORBIDDEN"), (429, "RATE_LIMITED")])
async def test_an_authenticator_that_says_no_is_answered_by_its_status(
    nursery: trio.Nursery, tmp_path: Path, mode: str, status: int, code: str
) -> None:
    def authenticate(request: HandshakeRequest) -> Identity:
        raise AuthRefused(status, "not today")

    config = make_config(tmp_path, server={"refusals": mode})
    server = await start_server(nursery, config, authenticator=authenticate)
    seen = await attempt(server.url)
    assert_refused(seen, mode, code, "not today")
    if code == "RATE_LIMITED" and mode == "close":
        assert seen.frames[0]["data"]["retry_after_s"] == USER_LIMIT_RETRY_AFTER_S


@pytest.mark.parametrize("mode", MODES)
async def test_a_foreign_origin_is_forbidden(nursery: trio.Nursery, tmp_path: Path, mode: str) -> None:
    server = await serve(nursery, tmp_path, mode, server={"allowed_origins": ["https://app.example"]})
    seen = await attempt(server.url + "?user=alice", headers=[(b"Origin", b"https://evil.example")])
    assert_refused(seen, mode, "FORBIDDEN", "origin not allowed")
    assert refusals_counted(server, "forbidden") == 1


@pytest.mark.parametrize("mode", MODES)
async def test_too_many_connections_of_a_user_are_rate_limited_with_a_retry_after(
    nursery: trio.Nursery, tmp_path: Path, mode: str
) -> None:
    server = await serve(nursery, tmp_path, mode, limits={"max_connections_per_user": 1})
    async with connect(server.url, user="alice"):
        seen = await attempt(server.url + "?user=alice")
    assert_refused(seen, mode, "RATE_LIMITED", "too many connections for this user")
    if mode == "close":
        assert seen.frames[0]["data"]["retry_after_s"] == USER_LIMIT_RETRY_AFTER_S
    else:
        assert seen.headers["retry-after"] == str(int(USER_LIMIT_RETRY_AFTER_S))
    assert refusals_counted(server, "rate_limited_user") == 1


@pytest.mark.parametrize("mode", MODES)
async def test_too_many_new_connections_from_an_address_wait_until_its_next_token(
    frozen_clock: MockClock, nursery: trio.Nursery, tmp_path: Path, mode: str
) -> None:
    server = await serve(nursery, tmp_path, mode, server={"new_connections_per_ip_per_s": 4})
    async with clients(server, "u1", "u2", "u3", "u4"):
        seen = await attempt(server.url + "?user=u5")
    assert_refused(seen, mode, "RATE_LIMITED", "too many new connections from this address")
    if mode == "close":  # the clock stands still: a whole token's wait at 4 per second
        assert seen.frames[0]["data"]["retry_after_s"] == 0.25
    else:
        assert seen.headers["retry-after"] == "1"  # whole seconds, at least 1
    assert refusals_counted(server, "rate_limited_address") == 1


@pytest.mark.parametrize("mode", MODES)
async def test_the_address_limit_counts_refused_connections_too(
    frozen_clock: MockClock, nursery: trio.Nursery, tmp_path: Path, mode: str
) -> None:
    server = await serve(nursery, tmp_path, mode, server={"new_connections_per_ip_per_s": 2,
                                                          "allowed_origins": ["https://app.example"]})
    for _ in range(2):
        foreign = await attempt(server.url + "?user=a", headers=[(b"Origin", b"https://evil.example")])
        assert_refused(foreign, mode, "FORBIDDEN", "origin not allowed")
    seen = await attempt(server.url + "?user=a", headers=[(b"Origin", b"https://app.example")])
    assert_refused(seen, mode, "RATE_LIMITED", "too many new connections from this address")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("subprotocol", ["signald.v1", "signald.v1.msgpack"])
async def test_close_mode_speaks_the_subprotocol_the_client_chose(
    nursery: trio.Nursery, tmp_path: Path, mode: str, subprotocol: str
) -> None:
    server = await serve(nursery, tmp_path, mode)
    seen = await attempt(server.url + BAD_USER, subprotocols=("chat.v9", subprotocol))
    assert_refused(seen, mode, "UNAUTHORIZED", BAD_USER_REASON, subprotocol=subprotocol)


@pytest.mark.parametrize("mode", MODES)
async def test_a_subprotocol_mismatch_is_http_400_in_both_modes(
    nursery: trio.Nursery, tmp_path: Path, mode: str
) -> None:
    server = await serve(nursery, tmp_path, mode)
    seen = await attempt(server.url + "?user=alice", subprotocols=("chat.v2",))
    assert (seen.status, seen.body.strip()) == (400, "unsupported subprotocol; use signald.v1")
    assert refusals_counted(server, "subprotocol") == 1


@pytest.mark.usefixtures("nodes")  # over 3 nodes: the second connection is refused by another node
async def test_the_client_library_raises_refused_with_the_code_and_retry_after(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await start_server(nursery, make_config(tmp_path, limits={"max_connections_per_user": 1}))
    async with connect(server.url, user="alice"):
        await settle()  # every node knows of it
        with trio.fail_after(5), pytest.raises(Refused) as refused:
            async with connect(server.url, user="alice", msgpack=True):
                pass  # pragma: no cover
    assert (refused.value.code, refused.value.close_code, refused.value.retry_after_s) == (
        "RATE_LIMITED", 4429, USER_LIMIT_RETRY_AFTER_S)


# --------------------------------------------------------------------------- never connected


@pytest.mark.parametrize("mode", MODES)
async def test_a_refused_connection_never_reaches_presence_or_the_counts(
    nursery: trio.Nursery, tmp_path: Path, mode: str
) -> None:
    server = await serve(nursery, tmp_path, mode, limits={"max_connections_per_user": 1},
                         auth={"admins": ["root"]}, server={"metrics_port": 0})
    async with clients(server, "alice", "root") as (alice, root):
        for c in (alice, root):
            await c.request("room.join", {"room": "lobby"})
        await events_of(alice)
        await events_of(root)
        assert_refused(await attempt(server.url + "?user=alice"), mode, "RATE_LIMITED",
                       "too many connections for this user")
        assert_refused(await attempt(server.url + BAD_USER), mode, "UNAUTHORIZED", BAD_USER_REASON)
        assert await events_of(root) == []  # no device.online, presence.update or member.joined
        assert await events_of(alice) == []
        stats = await root.request("system.stats")
        assert (stats["connections"], stats["users"]) == (2, 2)
        assert server.hub.connection_count("alice") == 1
        assert server.hub.handshaking == {}
        members = {m.user_id: m.devices for m in server.members("lobby")}
        assert members == {"alice": (alice.session_id,), "root": (root.session_id,)}
        assert server.metrics_port is not None
        text = await trio.to_thread.run_sync(_scrape, server.metrics_port)
    assert 'signald_refusals_total{cause="rate_limited_user"} 1.0' in text
    assert 'signald_refusals_total{cause="unauthorized"} 1.0' in text
    assert "signald_connections 2.0" in text


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


async def test_a_refused_peer_that_never_answers_the_close_is_dropped_after_the_refusal_wait(
    frozen_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await start_server(nursery, make_config(tmp_path))
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await stream.send_all(b"GET /" + BAD_USER.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                          b"Sec-WebSocket-Version: 13\r\n\r\n")
    start = trio.current_time()
    received = b""
    with time_flies(frozen_clock):
        while chunk := await stream.receive_some(65536):  # read, but never send the close reply
            received += chunk
    assert received.startswith(b"HTTP/1.1 101 ")
    assert b'"code":"UNAUTHORIZED"' in received  # the error frame...
    assert (4401).to_bytes(2, "big") + BAD_USER_REASON.encode() in received  # ...then the close frame, 4401
    assert REFUSAL_WAIT_S <= trio.current_time() - start < REFUSAL_WAIT_S + 1
    assert server.hub.sessions == {}
    await stream.aclose()


async def test_a_refused_peer_that_answers_the_close_is_let_go_at_once(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await start_server(nursery, make_config(tmp_path))
    start = time.monotonic()
    seen = await attempt(server.url + BAD_USER)
    assert seen.close_code == 4401
    assert time.monotonic() - start < REFUSAL_WAIT_S / 2  # the close handshake, not the wait

