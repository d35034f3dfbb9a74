"""The server API and the health checks over real HTTP (httpx) against an in-process daemon.

Each call's effect must reach exactly the right WebSocket connections; a refused call must change
nothing. The daemon-subprocess side (curl examples, ``signald health``) is in test_server_api_docs.py.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import clients, events_of, make_config, start_server

from signald.api import ApiError, AsyncClient, Client
from signald.server import RunningServer

KEY = "test-key-0123456789"
AUTH = {"authorization": f"Bearer {KEY}"}


def base_url(server: RunningServer, port: int | None = None) -> str:
    return f"http://127.0.0.1:{port or server.port}"


@pytest.fixture
async def api_server(nursery: trio.Nursery, tmp_path: Path) -> RunningServer:
    return await start_server(nursery, make_config(tmp_path, api={"keys": [KEY]}))


@pytest.fixture
async def http(api_server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url(api_server)) as client:
        yield client


async def post(http: httpx.AsyncClient, call: str, body: Any, headers: dict[str, str] = AUTH) -> httpx.Response:
    return await http.post(f"/api/v1/{call}", json=body, headers=headers)


async def test_publish_reaches_exactly_the_rooms_connections(
    api_server: RunningServer, http: httpx.AsyncClient
) -> None:
    async with clients(api_server, "alice", "alice", "bob", "carol") as (a1, a2, bob, carol):
        for c in (a1, bob):
            await c.request("room.join", {"room": "lobby"})
        await carol.request("room.join", {"room": "other"})
        for c in (a1, a2, bob, carol):
            await events_of(c)  # drop the join events
        response = await post(http, "publish", {"room": "lobby", "type": "app.tasks", "data": {"n": 1}})
        assert response.status_code == 200
        assert response.json() == {"result": {"delivered": 2}}
        for c in (a1, bob):
            assert await events_of(c) == [("app.tasks", {"n": 1})]
        assert await events_of(a2) == []  # alice's other device is not in the room
        assert await events_of(carol) == []


async def test_notify_reaches_every_device_of_the_user_and_nobody_else(
    api_server: RunningServer, http: httpx.AsyncClient
) -> None:
    async with clients(api_server, "alice", "alice", "bob") as (a1, a2, bob):
        response = await post(http, "notify", {"user_id": "alice", "type": "app.invited", "data": ["x"]})
        assert response.json() == {"result": {"delivered": 2}}
        assert await events_of(a1) == await events_of(a2) == [("app.invited", ["x"])]
        assert await events_of(bob) == []


async def test_disconnect_revokes_every_session_of_the_user_with_4003(
    api_server: RunningServer, http: httpx.AsyncClient
) -> None:
    async with clients(api_server, "alice", "bob") as (alice, bob):
        response = await post(http, "disconnect", {"user_id": "alice", "reason": "banned"})
        assert response.json() == {"result": {"sessions": 1}}
        with trio.fail_after(5):
            await alice.closed.wait()
        assert alice.ws.closed is not None and alice.ws.closed.code == 4003
        assert ("session.revoked", {"reason": "banned"}) in [(e["type"], e["data"]) for e in alice.pending_events()]
        assert (await bob.request_raw("presence.ping"))["type"] == "presence.pong"


async def test_kick_is_room_kick_by_system(api_server: RunningServer, http: httpx.AsyncClient) -> None:
    async with clients(api_server, "alice", "bob") as (alice, bob):
        for c in (alice, bob):
            await c.request("room.join", {"room": "lobby"})
        await events_of(alice)
        await events_of(bob)
        response = await post(http, "kick", {"room": "lobby", "user_id": "bob", "reason": "spam"})
        assert response.json() == {"result": {"sessions": 1}}
        assert await events_of(bob) == [("room.kicked", {"room": "lobby", "by": "$system", "reason": "spam"})]
        assert ("member.left", {"room": "lobby", "user_id": "bob"}) in await events_of(alice)
        again = await post(http, "kick", {"room": "lobby", "user_id": "bob"})
        assert again.status_code == 404
        assert again.json()["error"]["code"] == "NOT_IN_ROOM"


async def test_presence_history_and_stats_answer_what_the_websocket_requests_answer(
    api_server: RunningServer, http: httpx.AsyncClient
) -> None:
    async with clients(api_server, "alice") as (alice,):
        joined = await alice.request("room.join", {"room": "lobby"})
        for i in range(3):
            await alice.request("chat.send", {"scope": "lobby", "body": f"m{i}"})
        presence = (await http.get("/api/v1/presence", params={"room": "lobby"}, headers=AUTH)).json()["result"]
        assert [(m["user_id"], m["status"], m["devices"]) for m in presence["members"]] == [
            (m["user_id"], m["status"], m["devices"]) for m in joined["members"]]
        assert "last_seen" in presence["members"][0]
        page = (await http.get("/api/v1/history?room=lobby&before=&after=1&limit=1", headers=AUTH)).json()["result"]
        assert page == await alice.request("chat.history", {"room": "lobby", "after": 1, "limit": 1})
        assert [m["body"] for m in page["messages"]] == ["m1"] and page["has_more"]
        stats = (await http.get("/api/v1/stats", headers=AUTH)).json()["result"]
        assert stats["connections"] == 1 and stats["rooms"] == 1 and stats["messages_in"] >= 4
        too_big = await http.get("/api/v1/history?room=lobby&limit=100000", headers=AUTH)
        assert too_big.status_code == 400
        assert "limit" in too_big.json()["error"]["message"]


async def test_history_refuses_an_unknown_query_parameter_as_presence_does(
    api_server: RunningServer, http: httpx.AsyncClient
) -> None:
    """``presence`` answered 400 to an unknown parameter, ``history`` ignored it: a backend's
    ``?room=lobby&limt=5`` (or ``&befor=9``) got a full first page and no sign of its typo. A name
    given empty (``limt=``) is a name all the same, and ``stats`` takes no parameter at all."""
    for call, query, name in (("presence", "room=lobby&limt=5", "limt"), ("history", "room=lobby&limt=5", "limt"),
                              ("history", "room=lobby&befor=9&limit=1", "befor"),
                              ("history", "room=lobby&limt=", "limt"),
                              ("stats", "verbose=1", "verbose"), ("stats", "verbose=", "verbose")):
        refused = await http.get(f"/api/v1/{call}?{query}", headers=AUTH)
        assert refused.status_code == 400, (call, query, refused.text)
        error = refused.json()["error"]
        assert error["code"] == "INVALID_PAYLOAD" and "unknown field" in error["message"], (call, error)
        assert f"`{name}`" in error["message"], (call, error)
    assert (await http.get("/api/v1/history?room=lobby&before=&limit=1", headers=AUTH)).status_code == 200
    assert (await http.get("/api/v1/stats", headers=AUTH)).status_code == 200


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer nope"}, {"authorization": KEY}])
async def test_a_missing_or_wrong_key_is_401_and_nothing_happens(
    api_server: RunningServer, http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    async with clients(api_server, "alice") as (alice,):
        await alice.request("room.join", {"room": "lobby"})
        await events_of(alice)
        for call, body in [("publish", {"room": "lobby", "type": "app.x", "data": 1}),
                           ("disconnect", {"user_id": "alice", "reason": "x"})]:
            response = await post(http, call, body, headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "UNAUTHORIZED"
        assert (await http.get("/api/v1/stats", headers=headers)).status_code == 401
        assert await events_of(alice) == []  # and alice is still connected


async def test_the_api_is_off_without_keys(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=base_url(server)) as http:
        for response in [await post(http, "publish", {"room": "lobby", "type": "app.x"}),
                         await http.get("/api/v1/stats", headers=AUTH)]:
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "NOT_FOUND"
        assert (await http.get("/healthz")).status_code == 200


@pytest.mark.parametrize(("call", "body", "status", "code", "names"), [
    ("publish", b"{not json", 400, "BAD_REQUEST", ""),
    ("publish", b'{"type": "app.x", "data": 1}', 400, "INVALID_PAYLOAD", "room"),
    ("publish", b'{"room": "lobby", "type": "chat.message", "data": 1}', 400, "INVALID_PAYLOAD", "$.type"),
    ("publish", b'{"room": "lob by", "type": "app.x"}', 400, "INVALID_PAYLOAD", "$.room"),
    ("publish", b'{"room": "lobby", "type": "app.x", "store": 1}', 400, "INVALID_PAYLOAD", "$.store"),
    ("publish", b'{"room": "lobby", "type": "app.x", "extra": 1}', 400, "INVALID_PAYLOAD", "extra"),
    ("notify", b'{"user_id": 5, "type": "app.x"}', 400, "INVALID_PAYLOAD", "$.user_id"),
    ("disconnect", b'{"user_id": "alice"}', 400, "INVALID_PAYLOAD", "reason"),
    ("kick", b'[]', 400, "INVALID_PAYLOAD", ""),
    ("publish", b'{"room": "lobby", "type": "app.x", "data": "' + b"x" * 70_000 + b'"}', 400, "TOO_LARGE", ""),
])
async def test_malformed_or_oversized_bodies_are_refused_with_a_code(
    http: httpx.AsyncClient, call: str, body: bytes, status: int, code: str, names: str
) -> None:
    response = await http.post(f"/api/v1/{call}", content=body, headers=AUTH)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    assert names in error["message"]


async def test_health_checks_and_426_for_any_other_plain_request(api_server: RunningServer,
                                                                  http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    ready = await http.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ok"})
    for method, path in [("GET", "/"), ("GET", "/?user=alice"), ("POST", "/chat")]:
        response = await http.request(method, path)
        assert response.status_code == 426
        assert response.headers["content-type"].startswith("text/plain")
        assert response.text.count("\n") == 1 and "signald WebSocket endpoint" in response.text
    wrong_method = await http.post("/healthz")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "GET"
    assert (await http.get("/api/v1/nope", headers=AUTH)).status_code == 404


async def test_readyz_is_503_with_the_reason_once_the_store_is_unavailable(
    api_server: RunningServer, http: httpx.AsyncClient
) -> None:
    assert (await http.get("/readyz")).status_code == 200
    assert api_server.hub.history is not None
    await api_server.hub.history.store.aclose()  # what a failed disk or a stuck writer looks like from here
    response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert "history store" in response.json()["reason"]
    assert (await http.get("/healthz")).status_code == 200  # the process still serves


async def test_api_port_serves_the_calls_and_the_websocket_port_keeps_health(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await start_server(nursery, make_config(tmp_path, api={"keys": [KEY], "port": 0}))
    assert server.api_port is not None and server.api_port != server.port
    async with httpx.AsyncClient(base_url=base_url(server, server.api_port)) as api, \
            httpx.AsyncClient(base_url=base_url(server)) as ws_port:
        assert (await api.get("/api/v1/stats", headers=AUTH)).status_code == 200
        assert (await api.get("/readyz")).status_code == 200
        assert (await api.get("/")).status_code == 404  # not a WebSocket port
        moved = await ws_port.get("/api/v1/stats", headers=AUTH)
        assert moved.status_code == 404 and "api.port" in moved.json()["error"]["message"]
        assert (await ws_port.get("/healthz")).status_code == 200


async def test_the_python_clients_sync_and_async(api_server: RunningServer) -> None:
    url = base_url(api_server)
    async with clients(api_server, "alice") as (alice,):
        await alice.request("room.join", {"room": "lobby"})
        async with AsyncClient(url, KEY) as client:
            assert await client.publish("lobby", "app.a", {"x": 1}) == 1
            assert [m["user_id"] for m in await client.presence("lobby")] == ["alice"]
            assert (await client.history("lobby"))["messages"] == []
            assert await client.publish("lobby", "app.kept", None, store=True) == 1
            assert [m["user_id"] for m in (await client.history("lobby"))["messages"]] == ["$app"]
            with pytest.raises(ApiError) as refused:
                await client.kick("lobby", "nobody")
            assert (refused.value.status, refused.value.code) == (404, "NOT_IN_ROOM")

        def blocking() -> tuple[int, dict[str, Any]]:
            with Client(url, KEY) as sync:
                return sync.notify("alice", "app.b"), sync.stats()

        delivered, stats = await trio.to_thread.run_sync(blocking)
        assert delivered == 1 and stats["connections"] == 1
        assert [e[0] for e in await events_of(alice)][-4:] == ["app.a", "chat.message", "app.kept", "app.b"]
        with pytest.raises(ApiError) as wrong:
            await AsyncClient(url, "wrong").stats()
        assert wrong.value.status == 401


async def test_api_calls_are_logged_without_the_key(
    api_server: RunningServer, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await http.get("/api/v1/stats", headers=AUTH)
    await http.get("/api/v1/stats", headers={"authorization": "Bearer wrong-key-secret"})
    lines = [r for r in caplog.records if r.getMessage() == "api call"]
    assert [r.signald_fields["status"] for r in lines] == [200, 401]  # type: ignore[attr-defined]
    text = caplog.text + "".join(str(getattr(r, "signald_fields", "")) for r in caplog.records)
    assert KEY not in text and "wrong-key-secret" not in text
    assert KEY not in repr(api_server.hub.config)


async def test_several_requests_on_one_kept_alive_connection(api_server: RunningServer) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", api_server.port)
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    await stream.send_all(request * 2 + b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    seen = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(4096):
            seen += chunk
    assert seen.count(b"HTTP/1.1 200") == 3
