"""What backends and operators see of a real daemon process (``python -m signald serve``).

- ``publish {store: true}``: stored in the room's history, delivered live, and given back on an
  exact resume exactly once;
- an oversized or malformed API body: 400 with a code;
- a flood of plain HTTP from one address: 429 with ``Retry-After``, other addresses and callers
  with a valid key unaffected, health checks never limited;
- the server API on ``api.port``, plain and over TLS;
- ``/readyz`` answers 503 while the daemon drains after SIGTERM, ``/healthz`` 200, then it closes;
- the metrics port serves ``/metrics`` only.
"""

from __future__ import annotations

import json
import re
import signal
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import trio
import trustme
from conftest import daemon, events_of
from redis_fixture import free_port

from signald.client.raw import Refused, connect

KEY = "daemon-test-key-5a4b3c"
AUTH = {"authorization": f"Bearer {KEY}"}
API = f'[api]\nkeys = ["{KEY}"]\n'


def http_base(ws_url: str) -> str:
    return ws_url.replace("ws://", "http://").rstrip("/")


@asynccontextmanager
async def api_daemon(
    tmp_path: Path, config_text: str = "", *args: str, limits: str = "", api: str = ""
) -> AsyncIterator[tuple[trio.Process, str]]:
    """A daemon with the API on; ``limits``, ``api``: more keys of those tables (TOML lines)."""
    async with daemon(tmp_path, "daemon", *args, config_text=limits + API + api + config_text) as (process, url):
        yield process, url


# ---------------------------------------------------------------------- publish {store: true}


async def test_publish_with_store_keeps_the_event_in_history_and_resume_gives_it_back_once(tmp_path: Path) -> None:
    async with api_daemon(tmp_path) as (_, url), httpx.AsyncClient(base_url=http_base(url)) as http:
        async with connect(url, user="carol") as carol:  # was here, then goes away
            joined = await carol.request("room.join", {"room": "lobby"})
            rev_before, seq_before = joined["rev"], 0
        async with connect(url, user="alice") as alice, connect(url, user="bob") as bob:
            await alice.request("room.join", {"room": "lobby"})
            await events_of(alice)
            body = {"room": "lobby", "type": "app.tasks_updated", "data": {"list": "groceries"}, "store": True}
            response = await http.post("/api/v1/publish", json=body, headers=AUTH)
            assert (response.status_code, response.json()) == (200, {"result": {"delivered": 1}})
            seen = await events_of(alice)
            assert [kind for kind, _ in seen] == ["chat.message", "app.tasks_updated"]
            stored = seen[0][1]
            assert stored["user_id"] == "$app" and stored["room"] == "lobby" and stored["rev"] > rev_before
            assert json.loads(stored["body"]) == {"type": "app.tasks_updated", "data": {"list": "groceries"}}
            assert seen[1][1] == {"list": "groceries"}
            assert await events_of(bob) == []  # not in the room

            plain = {"room": "lobby", "type": "app.ping", "data": 1}  # without store: nothing kept
            assert (await http.post("/api/v1/publish", json=plain, headers=AUTH)).json()["result"]["delivered"] == 1
            page = (await http.get("/api/v1/history", params={"room": "lobby"}, headers=AUTH)).json()["result"]
            assert page["messages"] == [stored]
            assert await alice.request("chat.history", {"room": "lobby"}) == page

        async with connect(url, user="carol") as carol:  # comes back: the stored event, once
            rejoined = await carol.request("room.join", {"room": "lobby", "since": seq_before, "since_rev": rev_before})
            assert rejoined["missed"] == [stored] and rejoined["changes"] == [stored]
            assert rejoined["rev"] == stored["rev"]
            assert [kind for kind, _ in await events_of(carol)] == ["room.waiting"]  # nothing twice


async def test_a_stored_event_over_max_body_chars_is_too_large_and_nothing_is_kept(tmp_path: Path) -> None:
    async with api_daemon(tmp_path, limits="max_body_chars = 100\n") as (_, url), \
            httpx.AsyncClient(base_url=http_base(url)) as http, connect(url, user="alice") as alice:
        await alice.request("room.join", {"room": "lobby"})
        await events_of(alice)
        body = {"room": "lobby", "type": "app.big", "data": "x" * 100, "store": True}
        response = await http.post("/api/v1/publish", json=body, headers=AUTH)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "TOO_LARGE"
        assert "max_body_chars" in response.json()["error"]["message"]
        assert await events_of(alice) == []
        assert (await alice.request("chat.history", {"room": "lobby"}))["messages"] == []


# ---------------------------------------------------------------------- bodies


async def test_an_oversized_or_malformed_body_is_400_with_a_code(tmp_path: Path) -> None:
    async with api_daemon(tmp_path) as (_, url), httpx.AsyncClient(base_url=http_base(url)) as http:
        for body, code in [
            (b'{"room": "lobby", "type": "app.x", "data": "' + b"x" * 70_000 + b'"}', "TOO_LARGE"),  # > 64 KiB
            (b"{not json", "BAD_REQUEST"),
            (b'{"room": "lobby", "type": "app.x", "store": "yes"}', "INVALID_PAYLOAD"),
        ]:
            response = await http.post("/api/v1/publish", content=body, headers=AUTH)
            assert (response.status_code, response.json()["error"]["code"]) == (400, code)


# ---------------------------------------------------------------------- per-address limit

# One token per address, the next one 5 s later: nothing in the test refills it meanwhile.
LIMITED = '[server]\nnew_connections_per_ip_per_s = 0.2\ntrusted_proxies = ["127.0.0.1"]\n'


async def test_a_flood_of_plain_http_from_one_address_is_429_and_nobody_else_notices(tmp_path: Path) -> None:
    metrics_port = free_port()
    async with api_daemon(tmp_path, LIMITED.replace("[server]\n", f"[server]\nmetrics_port = {metrics_port}\n")) \
            as (_, url), httpx.AsyncClient(base_url=http_base(url)) as http:
        flooder, other = {"x-forwarded-for": "203.0.113.5"}, {"x-forwarded-for": "203.0.113.6"}
        wrong_key = {**flooder, "authorization": "Bearer guessing"}
        statuses = [(await http.get("/api/v1/stats", headers=wrong_key)).status_code for _ in range(6)]
        assert statuses == [401] + [429] * 5  # guessing keys is as slow as the budget
        limited = await http.get("/", headers=flooder)  # not an API call: limited all the same
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert limited.json()["error"]["code"] == "RATE_LIMITED"
        assert (await http.get("/", headers=other)).status_code == 426  # another address: its own budget
        assert (await http.get("/api/v1/stats", headers={**flooder, **AUTH})).status_code == 200  # a key: not limited
        health = [(await http.get(path, headers=flooder)).status_code for path in ["/healthz", "/readyz"] * 3]
        assert health == [200] * 6  # never limited
        with pytest.raises(Refused) as refused:  # one budget per address: its WebSocket handshakes too
            async with connect(url, user="alice", extra_headers=[(b"x-forwarded-for", b"203.0.113.5")]):
                pass
        assert (refused.value.code, refused.value.close_code) == ("RATE_LIMITED", 4429)
        metrics = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
        assert 'signald_refusals_total{cause="http_rate_limited_address"} 6.0' in metrics  # 5 keys + 1 page
        assert 'signald_refusals_total{cause="rate_limited_address"} 1.0' in metrics  # the handshake

        # Each refusal is logged, but a flood does not flood the log: lines left out are counted.
        log = tmp_path / "daemon.log"
        assert len(re.findall(r"http request refused .*client=203\.0\.113\.5 ", log.read_text())) == 6
        refusals = 6
        with trio.fail_after(10):
            while not re.search(r"http request refused .*not_logged_before=[1-9]", log.read_text()):
                assert (await http.get("/", headers=flooder)).status_code == 429
                refusals += 1
        assert len(re.findall("http request refused", log.read_text())) < refusals


# ---------------------------------------------------------------------- draining on SIGTERM


async def ready_status(http: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    response = await http.get("/readyz")
    return response.status_code, response.json()


async def first_not_ready(http: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    """Poll ``/readyz`` until it is not 200; its answer then."""
    while True:
        status = await ready_status(http)
        if status[0] != 200:
            return status
        await trio.sleep(0.01)


async def test_sigterm_drains_readyz_503_healthz_200_then_closes(tmp_path: Path) -> None:
    async with api_daemon(tmp_path, "[server]\ndrain_s = 3.0\n") as (process, url), \
            httpx.AsyncClient(base_url=http_base(url)) as http, connect(url, user="alice") as alice:
        assert await ready_status(http) == (200, {"status": "ok"})
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(2):  # the signal is handled at once; the drain lasts 3 s
            status = await first_not_ready(http)
        assert status == (503, {"status": "unavailable", "reason": "shutting down"})
        assert (await http.get("/healthz")).status_code == 200
        assert (await alice.request_raw("presence.ping"))["type"] == "presence.pong"  # still served
        async with connect(url, user="bob") as bob:  # a client the balancer sent meanwhile is served
            assert bob.user_id == "bob"
        with trio.fail_after(10):  # then, with no other signal, the daemon closes and exits
            await alice.closed.wait()
            assert await process.wait() == 0
        assert alice.ws.closed is not None and alice.ws.closed.code == 1001


async def test_a_second_signal_ends_the_drain_at_once(tmp_path: Path) -> None:
    async with api_daemon(tmp_path, "[server]\ndrain_s = 600.0\n") as (process, url), \
            httpx.AsyncClient(base_url=http_base(url)) as http:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(5):
            await first_not_ready(http)
        process.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            assert await process.wait() == 0


# ---------------------------------------------------------------------- the metrics port


async def test_the_metrics_port_serves_metrics_at_slash_metrics_only(tmp_path: Path) -> None:
    async with daemon(tmp_path, "metrics", "--metrics-port", "0") as (_, url):
        found = re.search(r"metrics_port=(\d+)", (tmp_path / "metrics.log").read_text())
        assert found is not None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{found.group(1)}") as http, \
                connect(url, user="alice"):
            text = await http.get("/metrics")
            assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain; version=")
            assert "\nsignald_connections 1.0\n" in text.text
            openmetrics = await http.get("/metrics", headers={"accept": "application/openmetrics-text"})
            assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
            assert openmetrics.text.endswith("# EOF\n")  # prometheus-client's own exposition, as asked
            for path in ["/", "/healthz", "/metricsx", "/favicon.ico", "/metrics/"]:
                response = await http.get(path)
                assert response.status_code == 404, path
                assert "signald_connections" not in response.text


# ---------------------------------------------------------------------- api.port, plain and TLS


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_the_api_on_its_own_port_plain_and_over_tls(tmp_path: Path, tls: bool) -> None:
    trusting: ssl.SSLContext | bool = False
    server = "[server]\n"
    if tls:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
        cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
        trusting = ssl.create_default_context()
        ca.configure_trust(trusting)
        server += f'certfile = "{tmp_path / "cert.pem"}"\nkeyfile = "{tmp_path / "key.pem"}"\n'
    async with api_daemon(tmp_path, server, api="port = 0\n") as (_, url):
        scheme = "https" if tls else "http"
        assert url.startswith("wss://" if tls else "ws://")
        found = re.search(r"api_port=(\d+)", (tmp_path / "daemon.log").read_text())
        assert found is not None and f":{found.group(1)}/" not in url
        ssl_context = trusting if isinstance(trusting, ssl.SSLContext) else None
        async with httpx.AsyncClient(base_url=f"{scheme}://127.0.0.1:{found.group(1)}", verify=trusting) as api, \
                httpx.AsyncClient(base_url=url.replace("ws", "http", 1).rstrip("/"), verify=trusting) as ws_port, \
                connect(url, user="alice", ssl_context=ssl_context) as alice:
            await alice.request("room.join", {"room": "lobby"})
            await events_of(alice)
            published = await api.post("/api/v1/publish", json={"room": "lobby", "type": "app.x", "data": 7},
                                       headers=AUTH)
            assert published.json() == {"result": {"delivered": 1}}
            assert await events_of(alice) == [("app.x", 7)]
            assert (await api.get("/api/v1/stats")).status_code == 401
            assert (await api.get("/readyz")).status_code == 200
            assert (await api.get("/")).status_code == 404  # not the WebSocket port
            moved = await ws_port.get("/api/v1/stats", headers=AUTH)
            assert moved.status_code == 404 and "api.port" in moved.json()["error"]["message"]
            if tls:  # nothing in clear text on the TLS port
                async with httpx.AsyncClient() as clear:
                    with pytest.raises(httpx.HTTPError):
                        await clear.get(f"http://127.0.0.1:{found.group(1)}/readyz", timeout=5)


# ---------------------------------------------------------------------- logs an operator can use

SECRET = "log-test-jwt-secret-0123456789abcdef"
ISO_MS_OFFSET = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"


async def line_in(log: Path, text: str) -> None:
    """Wait until ``text`` is in the log file."""
    while True:
        if text in await trio.Path(log).read_text():
            return
        await trio.sleep(0.01)


def jwt_for(user: str, ttl_s: int = 600, **claims: Any) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + ttl_s, **claims}, SECRET, algorithm="HS256")


async def test_the_json_log_of_a_session_has_every_event_with_its_fields_and_no_secret(tmp_path: Path) -> None:
    auth = f'[auth]\nmode = "jwt"\njwt_secret = "{SECRET}"\n'
    alice_token, bob_token, expired = jwt_for("alice", rooms=["*"]), jwt_for("bob"), jwt_for("eve", ttl_s=-3600)
    narrower = jwt_for("alice", rooms=["lobby", "side"])
    async with api_daemon(tmp_path, auth, "--log-format", "json", "--log-level", "debug") as (process, url), \
            httpx.AsyncClient(base_url=http_base(url)) as http:
        async with connect(url, token=alice_token) as alice, connect(url, token=bob_token) as bob:
            for c in (alice, bob):
                await c.request("room.join", {"room": "lobby"})
            await alice.request("room.join", {"room": "side"})
            await alice.request("room.leave", {"room": "side"})
            await alice.request("room.join", {"room": "other"})
            await alice.request("auth.refresh", {"refresh_token": narrower})  # no more "other"
            with pytest.raises(Refused):
                async with connect(url, token=expired):
                    pass
            kick = {"room": "lobby", "user_id": "bob", "reason": "spam"}
            assert (await http.post("/api/v1/kick", json=kick, headers=AUTH)).status_code == 200
            assert (await http.post("/api/v1/disconnect", json={"user_id": "alice", "reason": "bye"},
                                    headers=AUTH)).status_code == 200
            with trio.fail_after(5):
                await alice.closed.wait()
        port = int(url.rsplit(":", 1)[1].strip("/"))  # carol's device vanishes: no close frame at all
        carol = await trio.open_tcp_stream("127.0.0.1", port)
        await carol.send_all(
            f"GET /?token={jwt_for('carol')} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        assert b" 101 " in await carol.receive_some(4096)
        await carol.aclose()
        with trio.fail_after(5):
            await line_in(tmp_path / "daemon.log", '"message": "connection closed", "user": "carol"')
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            await process.wait()
    text = (tmp_path / "daemon.log").read_text()
    entries = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    assert all(re.fullmatch(ISO_MS_OFFSET, e["time"]) for e in entries)

    def one(message: str, **fields: Any) -> dict[str, Any]:
        found = [e for e in entries if e["message"] == message and fields.items() <= e.items()]
        assert len(found) == 1, (message, fields, [e for e in entries if e["message"] == message])
        return found[0]

    assert one(f"signald ready on {url}", url=url, level="info")
    opened = one("connection opened", user="alice", level="info", logger="signald.audit")
    assert opened["peer"] == "127.0.0.1" and opened["session"].startswith("s-")
    session = opened["session"]
    one("room joined", room="side", user="alice", session=session, level="debug")
    one("room left", room="side", user="alice", session=session, level="debug")
    one("room left", room="lobby", user="alice", session=session, level="debug", why="disconnected")
    one("connection refused", cause="unauthorized", close_code=4401, peer="127.0.0.1", reason="token expired")
    one("kicked", room="lobby", user="bob", by="$system", reason="spam", sessions=1, level="info")
    one("kicked", room="other", user="alice", by="$system", reason="token", sessions=1, level="info")
    one("sessions revoked", user="alice", reason="bye", sessions=1, level="info")
    closed = one("connection closed", user="alice", session=session, close_code=4003, closed_by="server")
    assert closed["duration_s"] >= 0 and closed["peer"] == "127.0.0.1"
    one("connection closed", user="bob", closed_by="client", close_code=1000, level="info")
    one("connection closed", user="carol", closed_by="client", close_code=1006, level="info")
    for secret in (alice_token, bob_token, expired, narrower, SECRET, KEY):
        assert secret not in text and secret.split(".")[-1] not in text
