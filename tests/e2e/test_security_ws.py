"""Security over real WebSockets: who may connect, who may do what, and what abuse costs.

Every test runs an in-process daemon on port 0 and talks to it like a client would: handshakes
with JWTs (HS256, RS256, ES256), refresh/expiry/revocation of sessions, payloads that try to speak
for somebody else, the rights of roles, ``Origin``, connection limits, TLS, flooding and the
``signald.audit`` log. To assert that an event did *not* arrive, a client pings the server: the pong
is queued after every event already queued for it (:func:`events_of`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio
import trio_websocket
import trustme
from conftest import clients, events_of, make_config, start_server, time_flies
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from trio.testing import MockClock

from signald.client.raw import Refused, SignaldClient, connect
from signald.logfmt import FIELDS
from signald.server import RunningServer, serve_signald
from signald.timefmt import iso_utc

SECRET = "signald-test-secret-0123456789abcdef"  # HS256 needs >= 32 bytes
OTHER_SECRET = "somebody-elses-secret-0123456789abcdef"
AUDIENCE = "signald"
JWT_AUTH = {"mode": "jwt", "jwt_secret": SECRET}
BASE = 2_000_000_000.0  # the wall clock (epoch s) at MockClock time 0 in the expiry tests
DROP = object()  # a claim left out of the token



# --------------------------------------------------------------------------- helpers


async def serve(
    nursery: trio.Nursery, tmp_path: Path, *, wall_clock: Callable[[], float] | None = None,
    **sections: dict[str, Any],
) -> RunningServer:
    """Start a daemon with some config keys changed (heartbeats far away, so timed tests stay quiet)."""
    sections.setdefault("server", {}).setdefault("heartbeat_s", 3600.0)
    kwargs = {"wall_clock": wall_clock} if wall_clock is not None else {}
    return await start_server(nursery, make_config(tmp_path, **sections), **kwargs)


def make_token(
    sub: Any = "alice", *, ttl: float = 3600.0, now: float | None = None, key: Any = SECRET,
    algorithm: str = "HS256", **claims: Any,
) -> str:
    """A signed JWT for ``sub`` expiring ``ttl`` seconds after ``now``; claims set to DROP are left out."""
    issued = time.time() if now is None else now
    payload = {"sub": sub, "exp": int(issued + ttl), **claims}
    return jwt.encode({k: v for k, v in payload.items() if v is not DROP}, key, algorithm=algorithm)


def forged_hs256(payload: dict[str, Any], key: bytes) -> str:
    """An HS256 JWT keyed with ``key`` (PyJWT refuses to use a PEM public key as an HMAC secret)."""

    def segment(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    signing_input = segment(b'{"alg":"HS256","typ":"JWT"}') + b"." + segment(json.dumps(payload).encode())
    return (signing_input + b"." + segment(hmac.new(key, signing_input, hashlib.sha256).digest())).decode()


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"Authorization", f"Bearer {token}".encode())]


async def refusal(url: str, **kwargs: Any) -> Refused:
    """Connect and expect a refusal as browsers see it (``server.refusals = "close"``, the default):
    the one ``error`` frame instead of ``welcome``, then the close code. tests/e2e/test_refusals.py
    covers the HTTP statuses of ``"http"``."""
    with trio.fail_after(5), pytest.raises(Refused) as refused:
        async with connect(url, **kwargs):
            pass  # pragma: no cover - the connection must be refused
    return refused.value


async def join(c: SignaldClient, room: str = "lobby") -> dict[str, Any]:
    result: dict[str, Any] = await c.request("room.join", {"room": room})
    return result


async def error_code(c: SignaldClient, kind: str, data: Any = None) -> str:
    with trio.fail_after(5):
        reply = await c.request_raw(kind, data)
    assert reply["type"] == "error", reply
    code: str = reply["data"]["code"]
    return code


async def next_of(c: SignaldClient, kind: str) -> dict[str, Any]:
    """The next event of type ``kind`` (others before it dropped), within 5 s."""
    with trio.fail_after(5):
        return await c.next_event(kind)


async def reply_to(c: SignaldClient, op_id: Any) -> dict[str, Any]:
    """The ack or error for ``op_id`` of a frame sent with :meth:`SignaldClient.send` (events before it dropped)."""
    with trio.fail_after(5):
        while True:
            event = await c.next_event()
            if event["type"] in ("ack", "error") and event["data"]["op_id"] == op_id:
                return event


async def closed_with(c: SignaldClient) -> int:
    """Wait until the server closed ``c``; its close code."""
    with trio.fail_after(5):
        await c.closed.wait()
    assert c.ws.closed is not None
    return int(c.ws.closed.code)


async def wait_for_count(server: RunningServer, user: str, count: int) -> None:
    with trio.fail_after(5):
        while server.hub.connection_count(user) != count:  # noqa: ASYNC110 - server state, no event to wait on
            await trio.sleep(0.01)






@pytest.fixture
async def jwt_server(nursery: trio.Nursery, tmp_path: Path) -> RunningServer:
    return await serve(nursery, tmp_path, auth={**JWT_AUTH, "jwt_audience": AUDIENCE})


@pytest.fixture
async def srv(nursery: trio.Nursery, tmp_path: Path) -> RunningServer:
    """A daemon in auth mode none with a moderator ``mod1`` and an admin ``root``."""
    return await serve(nursery, tmp_path, auth={"mods": ["mod1"], "admins": ["root"]})


# --------------------------------------------------------------------------- handshake: JWT


@pytest.mark.parametrize("via", ["query", "header"])
async def test_valid_jwt_connects_as_its_sub(jwt_server: RunningServer, via: str) -> None:
    token = make_token("alice", aud=AUDIENCE)
    kwargs: dict[str, Any] = {"token": token} if via == "query" else {"extra_headers": bearer(token)}
    async with connect(jwt_server.url, **kwargs) as c:
        assert c.welcome["data"]["user_id"] == "alice"
        info = await c.request("session.info")
        assert info["user_id"] == "alice"
        assert info["roles"] == []


async def test_user_parameter_cannot_override_the_tokens_sub(jwt_server: RunningServer) -> None:
    async with connect(jwt_server.url, user="mallory", token=make_token("alice", aud=AUDIENCE)) as c:
        assert c.user_id == "alice"


async def test_bearer_header_wins_over_the_query_token(jwt_server: RunningServer) -> None:
    header_token = make_token("alice", aud=AUDIENCE)
    async with connect(jwt_server.url, token="garbage", extra_headers=bearer(header_token)) as c:
        assert c.user_id == "alice"
    rejection = await refusal(jwt_server.url, token=make_token("bob", aud=AUDIENCE), extra_headers=bearer("garbage"))
    assert (rejection.close_code, rejection.code) == (4401, "UNAUTHORIZED")


def _no_sub() -> str:
    return make_token(DROP, aud=AUDIENCE)


REFUSED_TOKENS: list[tuple[str, Callable[[], str | None], str]] = [
    # (id, token factory, the reason in the error frame (the 401 body in "http" mode))
    ("expired", lambda: make_token(ttl=-3600, aud=AUDIENCE), "token expired"),
    ("wrong-signature", lambda: make_token(key=OTHER_SECRET, aud=AUDIENCE), "bad signature"),
    ("missing-sub", _no_sub, "missing sub"),
    ("empty-sub", lambda: make_token("", aud=AUDIENCE), "bad sub claim"),
    ("wrong-aud", lambda: make_token(aud="billing"), "bad audience"),
    ("missing-aud", lambda: make_token(), "missing aud"),
    ("missing-exp", lambda: jwt.encode({"sub": "alice", "aud": AUDIENCE}, SECRET), "missing exp"),
    ("not-yet-valid", lambda: make_token(aud=AUDIENCE, nbf=int(time.time()) + 3600), "token not yet valid"),
    ("alg-none", lambda: make_token(aud=AUDIENCE, key="", algorithm="none"), "algorithm not allowed"),
    ("rooms-null", lambda: make_token(aud=AUDIENCE, rooms=None), "bad rooms claim"),
    ("roles-not-a-list", lambda: make_token(aud=AUDIENCE, roles="admin"), "bad roles claim"),
    ("garbage", lambda: "not.a.jwt-at-all", "malformed token"),
    ("empty", lambda: "", "missing token"),
    ("missing", lambda: None, "missing token"),
]


@pytest.mark.parametrize(("factory", "reason", "via"), [
    pytest.param(factory, reason, via, id=f"{name}-{via}")
    for name, factory, reason in REFUSED_TOKENS
    for via in ("query", "header") if via == "query" or name not in ("empty", "missing")
])
async def test_bad_token_is_refused_with_4401_and_a_short_reason_without_the_token(
    jwt_server: RunningServer, factory: Callable[[], str | None], reason: str, via: str
) -> None:
    token = factory()
    if via == "query":
        rejection = await refusal(jwt_server.url, token=token)
    else:
        assert token
        rejection = await refusal(jwt_server.url, extra_headers=bearer(token))
    assert (rejection.close_code, rejection.code, rejection.retry_after_s) == (4401, "UNAUTHORIZED", None)
    body = rejection.message
    assert body == reason
    assert len(body) < 80
    if token:
        assert token not in body
        assert all(part not in body for part in token.split(".") if len(part) > 8)
    assert jwt_server.hub.sessions == {}


@pytest.fixture(scope="module")
def signing_keys() -> dict[str, Any]:
    """Private keys per algorithm, plus a second one of each kind that the daemon does not know."""
    return {
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "RS256-other": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256-other": ec.generate_private_key(ec.SECP256R1()),
    }


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_public_key_algorithms_accept_their_tokens_and_refuse_forgeries(
    nursery: trio.Nursery, tmp_path: Path, signing_keys: dict[str, Any], algorithm: str
) -> None:
    private = signing_keys[algorithm]
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    key_file = tmp_path / "jwt-public.pem"
    key_file.write_bytes(public_pem)
    server = await serve(nursery, tmp_path, auth={
        "mode": "jwt", "jwt_algorithms": [algorithm], "jwt_public_key_file": str(key_file)})

    async with connect(server.url, token=make_token("carol", key=private, algorithm=algorithm)) as c:
        assert c.user_id == "carol"

    other = make_token("carol", key=signing_keys[f"{algorithm}-other"], algorithm=algorithm)
    wrong_key = await refusal(server.url, token=other)
    assert (wrong_key.close_code, wrong_key.message) == (4401, "bad signature")

    # Algorithm confusion: an HS256 token "signed" with the public key as the HMAC secret.
    confused = forged_hs256({"sub": "carol", "exp": int(time.time()) + 3600}, public_pem)
    refused = await refusal(server.url, extra_headers=bearer(confused))
    assert refused.close_code == 4401
    hs = await refusal(server.url, token=make_token("carol"))
    assert hs.close_code == 4401
    assert server.hub.sessions == {}


async def test_roles_claim_shows_in_session_info_and_grants_its_rights(jwt_server: RunningServer) -> None:
    mod_token = make_token("mia", aud=AUDIENCE, roles=["mod", "beta-tester"])
    async with connect(jwt_server.url, token=mod_token) as mia, \
            connect(jwt_server.url, token=make_token("bob", aud=AUDIENCE)) as bob:
        assert (await mia.request("session.info"))["roles"] == ["beta-tester", "mod"]
        await join(mia)
        await join(bob)
        assert await mia.request("room.kick", {"room": "lobby", "user_id": "bob"}) is None
        kicked = await next_of(bob, "room.kicked")
        assert kicked["data"]["by"] == "mia"
        assert await error_code(mia, "system.stats") == "FORBIDDEN"  # mod is not admin


async def test_rooms_claim_globs_limit_which_rooms_can_be_joined(jwt_server: RunningServer) -> None:
    token = make_token("alice", aud=AUDIENCE, rooms=["team-*", "lobby"])
    async with connect(jwt_server.url, token=token) as c:
        for room in ("team-a", "team-", "lobby"):
            assert (await join(c, room))["room"] == room
        for room in ("other", "Team-a", "lobby2", "xteam-a"):
            assert await error_code(c, "room.join", {"room": room}) == "FORBIDDEN"
        assert (await c.request("session.info"))["rooms"] == ["lobby", "team-", "team-a"]


async def test_token_without_rooms_claim_may_join_any_room(jwt_server: RunningServer) -> None:
    async with connect(jwt_server.url, token=make_token("alice", aud=AUDIENCE)) as c:
        assert (await join(c, "anything.at:all"))["room"] == "anything.at:all"


# --------------------------------------------------------------------------- refresh and expiry


async def test_refresh_with_a_later_token_of_the_same_user_extends_the_session(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await serve(nursery, tmp_path, auth=JWT_AUTH)
    async with connect(server.url, token=make_token("alice", ttl=600)) as c:
        before = (await c.request("session.info"))["expires_at"]
        ack = await c.request("auth.refresh", {"refresh_token": make_token("alice", ttl=7200)})
        assert set(ack) == {"expires_at"}
        assert ack["expires_at"] > before
        assert (await c.request("session.info"))["expires_at"] == ack["expires_at"]


async def test_refresh_replaces_roles_and_rooms_with_the_new_tokens(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await serve(nursery, tmp_path, auth=JWT_AUTH)
    async with connect(server.url, token=make_token("alice", rooms=["a"])) as c:
        assert await error_code(c, "system.stats") == "FORBIDDEN"
        assert await error_code(c, "room.join", {"room": "b"}) == "FORBIDDEN"
        await c.request("auth.refresh", {"refresh_token": make_token("alice", roles=["admin"], rooms=["b"])})
        assert (await c.request("session.info"))["roles"] == ["admin"]
        assert "connections" in await c.request("system.stats")
        assert (await join(c, "b"))["room"] == "b"
        assert await error_code(c, "room.join", {"room": "a"}) == "FORBIDDEN"


@pytest.mark.parametrize(("case", "code"), [("other-user", "FORBIDDEN"), ("garbage", "UNAUTHORIZED"),
                                            ("expired", "UNAUTHORIZED"), ("wrong-signature", "UNAUTHORIZED")])
async def test_refresh_with_a_bad_token_fails_and_keeps_the_old_session(
    nursery: trio.Nursery, tmp_path: Path, case: str, code: str
) -> None:
    server = await serve(nursery, tmp_path, auth=JWT_AUTH)
    new_token = {
        "other-user": make_token("bob", ttl=7200, roles=["admin"]),
        "garbage": "garbage",
        "expired": make_token("alice", ttl=-3600, roles=["admin"]),
        "wrong-signature": make_token("alice", ttl=7200, key=OTHER_SECRET, roles=["admin"]),
    }[case]
    async with connect(server.url, token=make_token("alice", ttl=600)) as c:
        before = await c.request("session.info")
        reply = await c.request_raw("auth.refresh", {"refresh_token": new_token})
        assert reply["type"] == "error"
        assert reply["data"]["code"] == code
        assert new_token not in reply["data"]["message"]
        after = await c.request("session.info")
        assert (after["user_id"], after["roles"], after["expires_at"]) == ("alice", [], before["expires_at"])


async def test_refresh_in_auth_mode_none_is_unauthorized(srv: RunningServer) -> None:
    async with connect(srv.url, user="alice") as c:
        assert await error_code(c, "auth.refresh", {"refresh_token": make_token("alice")}) == "UNAUTHORIZED"
        assert (await c.request("session.info"))["expires_at"] is None


async def test_session_expires_when_its_token_does_then_closes_4001(
    frozen_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await serve(nursery, tmp_path, auth=JWT_AUTH, wall_clock=lambda: BASE + trio.current_time())
    async with connect(server.url, token=make_token("alice", now=BASE, ttl=60)) as c, \
            connect(server.url, token=make_token("bob", now=BASE, ttl=3600)) as bob:
        assert (await c.request("session.info"))["expires_at"] == iso_utc(BASE + 60)
        with time_flies(frozen_clock), trio.fail_after(600):
            expired = await c.next_event("session.expired")
            expired_after = trio.current_time()
            assert await closed_with(c) == 4001
            await wait_for_count(server, "alice", 0)
        assert expired["data"] == {"expired_at": iso_utc(BASE + 60)}
        assert 60 <= expired_after < 61
        assert [e for e in await events_of(bob) if e[0] == "session.expired"] == []  # bob's token lives on


async def test_refreshed_session_does_not_expire_at_the_old_time(
    frozen_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await serve(nursery, tmp_path, auth=JWT_AUTH, wall_clock=lambda: BASE + trio.current_time())
    async with connect(server.url, token=make_token("alice", now=BASE, ttl=60)) as c:
        with time_flies(frozen_clock):
            await trio.sleep(30)
        ack = await c.request("auth.refresh", {"refresh_token": make_token("alice", now=BASE, ttl=120)})
        assert ack == {"expires_at": iso_utc(BASE + 120)}
        with time_flies(frozen_clock):
            await trio.sleep(60)  # 30 s past the old expiry
        assert await events_of(c) == []
        with time_flies(frozen_clock), trio.fail_after(600):
            expired = await c.next_event("session.expired")
            expired_after = trio.current_time()
            assert await closed_with(c) == 4001
        assert expired["data"] == {"expired_at": iso_utc(BASE + 120)}
        assert 120 <= expired_after < 121


async def test_refresh_to_a_shorter_lived_token_expires_at_the_new_time(
    frozen_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await serve(nursery, tmp_path, auth=JWT_AUTH, wall_clock=lambda: BASE + trio.current_time())
    async with connect(server.url, token=make_token("alice", now=BASE, ttl=3000)) as c:
        ack = await c.request("auth.refresh", {"refresh_token": make_token("alice", now=BASE, ttl=60)})
        assert ack == {"expires_at": iso_utc(BASE + 60)}
        with time_flies(frozen_clock), trio.move_on_after(600):
            await c.next_event("session.expired")
        assert trio.current_time() < 61, "session.expired came long after the refreshed token had expired"


# --------------------------------------------------------------------------- revocation


async def test_revoking_a_user_ends_all_their_sessions_with_4003_and_spares_others(srv: RunningServer) -> None:
    async with clients(srv, "alice", "alice", "bob") as (a1, a2, bob):
        for c in (a1, a2, bob):
            await join(c)
        await events_of(bob)
        assert srv.hub.revoke_user("alice", "banned") == 2
        for c in (a1, a2):
            assert (await next_of(c, "session.revoked"))["data"] == {"reason": "banned"}
            assert await closed_with(c) == 4003
        await wait_for_count(srv, "alice", 0)
        seen_by_bob = await events_of(bob)
        assert ("member.left", {"room": "lobby", "user_id": "alice"}) in seen_by_bob
        assert [e for e in seen_by_bob if e[0] == "session.revoked"] == []
        assert (await bob.request("session.info"))["rooms"] == ["lobby"]
        assert srv.hub.revoke_user("nobody", "whatever") == 0


async def test_a_revoked_session_carries_out_nothing_more(srv: RunningServer) -> None:
    async with clients(srv, "alice", "bob") as (alice, bob):
        await join(alice)
        await join(bob)
        await events_of(bob)
        srv.hub.revoke_user("alice", "banned")
        with contextlib.suppress(trio_websocket.ConnectionClosed):  # racing the close
            await alice.send({"type": "chat.send", "data": {"scope": "lobby", "body": "still here?"}})
        assert await closed_with(alice) == 4003
        assert [e for e in await events_of(bob) if e[0] == "chat.message"] == []
        assert (await bob.request("chat.history", {"room": "lobby"}))["messages"] == []


# --------------------------------------------------------------------------- impersonation

SPOOF = {"user_id": "bob", "from_user": "bob", "by": "bob", "sender": "bob"}

IMPERSONATIONS: list[tuple[str, Callable[[str], dict[str, Any]], str, str]] = [
    # (request type, data builder (gets a message id of bob's), the event carol sees, field naming the sender)
    ("chat.send", lambda m: {"scope": "lobby", "body": "hi"}, "chat.message", "user_id"),
    ("chat.typing", lambda m: {"scope": "lobby", "typing": True}, "chat.typing.user", "user_id"),
    ("room.signal", lambda m: {"room": "lobby", "kind": "cursor", "payload": {"x": 1}}, "room.signal", "user_id"),
    ("chat.reaction", lambda m: {"message_id": m, "reaction": "+1", "action": "add", "scope": "lobby"},
     "chat.reaction.update", "user_id"),
    ("chat.read", lambda m: {"message_id": m, "room": "lobby"}, "chat.read.update", "user_id"),
    ("presence.set", lambda m: {"status": "busy"}, "presence.update", "user_id"),
    ("room.join", lambda m: {"room": "side"}, "member.joined", "user_id"),
    ("call.offer", lambda m: {"target_id": "carol", "call_type": "audio", "sdp": {"type": "offer", "sdp": "v=0"}},
     "call.offer", "from_user"),
]


@pytest.mark.parametrize(("kind", "build", "event", "field"), IMPERSONATIONS, ids=[c[0] for c in IMPERSONATIONS])
async def test_payload_fields_cannot_impersonate_another_user(
    srv: RunningServer, kind: str, build: Callable[[str], dict[str, Any]], event: str, field: str
) -> None:
    async with clients(srv, "alice", "bob", "carol") as (alice, bob, carol):
        for c in (alice, bob, carol):
            await join(c)
        await join(carol, "side")
        message_id = (await bob.request("chat.send", {"scope": "lobby", "body": "bob's"}))["id"]
        for c in (alice, bob, carol):
            await events_of(c)
        data = {**build(message_id), **SPOOF}
        await alice.send({"type": kind, "id": "spoof", "data": data, **SPOOF})
        reply = await reply_to(alice, "spoof")
        assert reply["type"] == "ack", reply
        seen = await next_of(carol, event)
        assert seen["data"][field] == "alice"
        result = reply["data"]["data"]
        if isinstance(result, dict) and "user_id" in result:
            assert result["user_id"] == "alice"
        # Bob's own state is untouched: his status, his rooms, no reaction or receipt in his name.
        assert (await bob.request("session.info"))["rooms"] == ["lobby"]
        members = {m["user_id"]: m for m in (await join(carol))["members"]}
        assert members["bob"]["status"] == "online"
        history = await bob.request("chat.history", {"room": "lobby"})
        assert all("bob" not in users for m in history["messages"] for users in m["reactions"].values())


async def test_spoofed_sender_in_chat_send_is_stored_under_the_real_sender(srv: RunningServer) -> None:
    async with clients(srv, "alice", "bob") as (alice, bob):
        await join(alice)
        await join(bob)
        ack = await alice.request("chat.send", {"scope": "lobby", "body": "it was me", "user_id": "bob"})
        assert ack["user_id"] == "alice"
        history = await bob.request("chat.history", {"room": "lobby"})
        assert [(m["user_id"], m["body"]) for m in history["messages"]] == [("alice", "it was me")]
        # ... and so bob cannot edit it, while alice can.
        assert await error_code(bob, "chat.edit", {"message_id": ack["id"], "new_body": "x"}) == "FORBIDDEN"
        assert (await alice.request("chat.edit", {"message_id": ack["id"], "new_body": "y"}))["body"] == "y"


# --------------------------------------------------------------------------- rights

RIGHTS: list[tuple[str, str, str, Callable[[dict[str, str]], dict[str, Any] | None]]] = [
    # (id, actor, request type, data builder (gets {"alice": alice's message id}))
    ("non-mod-kick", "bob", "room.kick", lambda m: {"room": "lobby", "user_id": "alice"}),
    ("non-mod-redact", "bob", "chat.redact", lambda m: {"message_id": m["alice"]}),
    ("non-admin-stats", "bob", "system.stats", lambda m: None),
    ("mod-is-not-admin-stats", "mod1", "system.stats", lambda m: None),
    ("edit-someone-elses", "bob", "chat.edit", lambda m: {"message_id": m["alice"], "new_body": "pwned"}),
    ("mod-edit-someone-elses", "mod1", "chat.edit", lambda m: {"message_id": m["alice"], "new_body": "pwned"}),
    ("soft-delete-someone-elses", "bob", "chat.delete", lambda m: {"message_id": m["alice"], "mode": "soft"}),
    ("hard-delete-someone-elses", "bob", "chat.delete", lambda m: {"message_id": m["alice"], "mode": "hard"}),
    ("call-without-shared-room", "bob", "call.offer", lambda m: {
        "target_id": "carol", "call_type": "video", "sdp": {"type": "offer", "sdp": "v=0"}}),
]


@pytest.mark.parametrize(("actor", "kind", "build"), [c[1:] for c in RIGHTS], ids=[c[0] for c in RIGHTS])
async def test_request_without_the_right_is_forbidden_and_changes_nothing(
    srv: RunningServer, actor: str, kind: str, build: Callable[[dict[str, str]], dict[str, Any] | None]
) -> None:
    async with clients(srv, "alice", "bob", "mod1", "carol") as (alice, bob, mod1, carol):
        for c in (alice, bob, mod1):
            await join(c)
        await join(carol, "elsewhere")
        messages = {"alice": (await alice.request("chat.send", {"scope": "lobby", "body": "original"}))["id"]}
        for c in (alice, bob, mod1, carol):
            await events_of(c)
        requester = {"bob": bob, "mod1": mod1}[actor]
        assert await error_code(requester, kind, build(messages)) == "FORBIDDEN"

        history = await alice.request("chat.history", {"room": "lobby"})
        [message] = history["messages"]
        assert (message["body"], message["deleted_at"], message["redacted"]) == ("original", None, False)
        assert (await alice.request("session.info"))["rooms"] == ["lobby"]
        for c in (alice, bob, mod1, carol):
            assert await events_of(c) == []


async def test_moderator_and_admin_may_do_what_others_may_not(srv: RunningServer) -> None:
    async with clients(srv, "alice", "mod1", "root") as (alice, mod1, root):
        for c in (alice, mod1, root):
            await join(c)
        first = (await alice.request("chat.send", {"scope": "lobby", "body": "one"}))["id"]
        second = (await alice.request("chat.send", {"scope": "lobby", "body": "two"}))["id"]
        assert (await mod1.request("chat.redact", {"message_id": first}))["new_body"] == "[redacted]"
        assert (await mod1.request("chat.delete", {"message_id": second}))["message_id"] == second
        assert "uptime_s" in await root.request("system.stats")
        assert await root.request("room.kick", {"room": "lobby", "user_id": "alice"}) is None
        assert (await next_of(alice, "room.kicked"))["data"]["by"] == "root"


# --------------------------------------------------------------------------- origin


@pytest.fixture
async def origin_server(nursery: trio.Nursery, tmp_path: Path) -> RunningServer:
    return await serve(nursery, tmp_path, server={"allowed_origins": ["https://app.example"]})


@pytest.mark.parametrize("origin", ["https://evil.example", "http://app.example", "https://app.example.evil.com",
                                    "null"])
async def test_handshake_from_a_foreign_origin_is_refused_with_4403(origin_server: RunningServer, origin: str) -> None:
    rejection = await refusal(origin_server.url, user="alice", extra_headers=[(b"Origin", origin.encode())])
    assert (rejection.close_code, rejection.code) == (4403, "FORBIDDEN")
    assert origin_server.hub.sessions == {}


@pytest.mark.parametrize("origin", ["https://app.example", "HTTPS://APP.EXAMPLE", "https://app.example:443"])
async def test_handshake_from_the_allowed_origin_connects(origin_server: RunningServer, origin: str) -> None:
    async with connect(origin_server.url, user="alice", extra_headers=[(b"Origin", origin.encode())]) as c:
        assert c.user_id == "alice"


async def test_handshake_without_origin_connects_when_origins_are_restricted(origin_server: RunningServer) -> None:
    async with connect(origin_server.url, user="cli-tool") as c:
        assert c.user_id == "cli-tool"


# --------------------------------------------------------------------------- connection limits


async def test_connections_per_user_beyond_the_limit_get_4429(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await serve(nursery, tmp_path, limits={"max_connections_per_user": 2})
    async with clients(server, "alice", "alice", "bob", "bob") as (a1, _a2, _b1, _b2):
        rejection = await refusal(server.url, user="alice")
        assert (rejection.close_code, rejection.code) == (4429, "RATE_LIMITED")
        assert server.hub.connection_count("alice") == 2
        await a1.ws.aclose()
        await wait_for_count(server, "alice", 1)
        async with connect(server.url, user="alice") as again:
            assert again.user_id == "alice"


async def test_concurrent_handshakes_cannot_exceed_the_connections_per_user_limit(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await serve(nursery, tmp_path, limits={"max_connections_per_user": 1})
    accepted: list[str] = []
    refused: list[int] = []
    hold = trio.Event()

    async def attempt() -> None:
        try:
            async with connect(server.url, user="alice") as c:
                accepted.append(c.session_id)
                await hold.wait()
        except Refused as exc:
            assert exc.close_code is not None
            refused.append(exc.close_code)

    async with trio.open_nursery() as attempts:
        for _ in range(6):
            attempts.start_soon(attempt)
        with trio.fail_after(5):
            while len(accepted) + len(refused) < 6:  # noqa: ASYNC110 - waiting for the attempts' outcome
                await trio.sleep(0.01)
        count = server.hub.connection_count("alice")
        hold.set()
    assert (len(accepted), refused, count) == (1, [4429] * 5, 1)


async def test_rapid_new_connections_from_one_address_beyond_the_burst_get_4429(
    frozen_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await serve(nursery, tmp_path, server={"new_connections_per_ip_per_s": 2})
    async with clients(server, "u1", "u2") as _:
        for user in ("u3", "u4"):
            rejection = await refusal(server.url, user=user)
            assert (rejection.close_code, rejection.retry_after_s) == (4429, 0.5)  # the clock stands still
        with time_flies(frozen_clock):
            await trio.sleep(0.5)  # one connection's worth of refill
        async with connect(server.url, user="u5") as c:
            assert c.user_id == "u5"
        assert (await refusal(server.url, user="u6")).close_code == 4429


# --------------------------------------------------------------------------- TLS


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[trustme.CA, str, str]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    return ca, str(certfile), str(keyfile)


async def test_tls_server_serves_wss_to_a_client_trusting_its_ca_and_nothing_to_plain_ws(
    nursery: trio.Nursery, tmp_path: Path, tls_files: tuple[trustme.CA, str, str]
) -> None:
    ca, certfile, keyfile = tls_files
    server = await serve(nursery, tmp_path, server={"certfile": certfile, "keyfile": keyfile,
                                                    "connect_timeout_s": 0.5})
    assert server.url.startswith("wss://127.0.0.1:")
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    async with connect(server.url, user="alice", ssl_context=trusting) as alice, \
            connect(server.url, user="bob", ssl_context=trusting) as bob:
        pong = await alice.request_raw("presence.ping", op_id="tls-1")
        assert (pong["type"], pong["data"]["op_id"]) == ("presence.pong", "tls-1")
        await join(alice)
        await join(bob)
        sent = await alice.request("chat.send", {"scope": "lobby", "body": "over TLS"})
        received = await next_of(bob, "chat.message")
        assert received["data"] == sent

    plain = server.url.replace("wss://", "ws://", 1) + "?user=mallory"
    with trio.fail_after(5), pytest.raises(trio_websocket.HandshakeError):
        async with trio_websocket.open_websocket_url(plain, connect_timeout=0.5):
            pass  # pragma: no cover - a plaintext client gets no WebSocket
    untrusting = ssl.create_default_context()  # does not know our CA
    with trio.fail_after(5), pytest.raises((trio_websocket.HandshakeError, ssl.SSLError, trio.BrokenResourceError)):
        async with trio_websocket.open_websocket_url(server.url + "?user=mallory", ssl_context=untrusting,
                                                     connect_timeout=0.5):
            pass  # pragma: no cover
    assert server.hub.connection_count("mallory") == 0
    async with connect(server.url, user="carol", ssl_context=trusting) as carol:  # still serving
        assert carol.user_id == "carol"


async def test_a_stopping_tls_server_closes_its_clients_with_1001_too(
    nursery: trio.Nursery, tmp_path: Path, tls_files: tuple[trustme.CA, str, str]
) -> None:
    """Over TLS no close frame can be written from outside a connection's task: each closes itself."""
    ca, certfile, keyfile = tls_files
    config = make_config(tmp_path, server={"certfile": certfile, "keyfile": keyfile, "heartbeat_s": 3600.0})
    stop = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[RunningServer]) -> None:
        with stop:
            await serve_signald(config, task_status=task_status)

    server: RunningServer = await nursery.start(run)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    async with connect(server.url, user="alice", ssl_context=trusting) as alice, \
            connect(server.url, user="bob", ssl_context=trusting) as bob:
        await join(alice)
        await join(bob)
        stop.cancel()  # what SIGTERM does to serve_signald
        with trio.fail_after(10):
            await alice.closed.wait()
            await bob.closed.wait()
        assert [(c.ws.closed.code, c.ws.closed.reason) for c in (alice, bob) if c.ws.closed] == [
            (1001, "server shutting down")] * 2


# --------------------------------------------------------------------------- flooding


async def test_flooding_client_is_rate_limited_then_closed_while_a_polite_one_is_served_promptly(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await serve(nursery, tmp_path, limits={"rate_per_s": 5, "rate_burst": 5})
    async with clients(server, "flood", "polite") as (flood, polite):
        await join(flood)
        await join(polite)
        await events_of(polite)
        latencies: list[float] = []

        async def hammer() -> None:
            for i in range(100):
                try:
                    await flood.send({"type": "chat.send", "id": f"f-{i}", "data": {"scope": "lobby", "body": f"{i}"}})
                except trio_websocket.ConnectionClosed:
                    return

        async with trio.open_nursery() as running:
            running.start_soon(hammer)
            for i in range(3):
                started = time.monotonic()
                with trio.fail_after(1):
                    pong = await polite.request_raw("presence.ping", op_id=f"polite-{i}")
                latencies.append(time.monotonic() - started)
                assert pong["type"] == "presence.pong"
                await trio.sleep(0.25)
        assert await closed_with(flood) == 1008
        assert max(latencies) < 1.0

        replies = flood.pending_events()
        acked = {r["data"]["data"]["id"] for r in replies if r["type"] == "ack"}
        errors = [r["data"] for r in replies if r["type"] == "error"]
        assert [e["code"] for e in errors] == ["RATE_LIMITED"] * 5
        refused = [e["op_id"] for e in errors]  # each refused frame answers with its own id
        assert len(set(refused)) == 5 and all(str(op_id).startswith("f-") for op_id in refused)
        assert not set(refused) & {r["data"]["op_id"] for r in replies if r["type"] == "ack"}
        assert 1 <= len(acked) <= 7  # the bucket's tokens (and a little refill), nowhere near 100

        seen = await events_of(polite)
        assert all(kind != "error" for kind, _ in seen)
        assert polite.unmatched_errors == []
        assert {data["id"] for kind, data in seen if kind == "chat.message"} == acked  # the rest was not carried out
        with trio.fail_after(5):
            stored = (await polite.request("chat.history", {"room": "lobby"}))["messages"]
        assert {m["id"] for m in stored} == acked


async def test_garbage_frames_count_toward_the_rate_limit(
    frozen_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await serve(nursery, tmp_path, limits={"rate_per_s": 5, "rate_burst": 5})
    async with connect(server.url, user="junk") as c:
        for _ in range(100):
            try:
                await c.send(b"\xff\x00 not json")
            except trio_websocket.ConnectionClosed:
                break
        assert await closed_with(c) == 1008
        codes = [(e["data"]["code"], e["data"]["op_id"]) for e in c.pending_events()]
        # The clock stands still: exactly the bucket (5) is decoded, then 5 refusals, then the close.
        assert codes == [("BAD_REQUEST", None)] * 5 + [("RATE_LIMITED", None)] * 5


# --------------------------------------------------------------------------- audit log


async def test_refused_handshake_is_audited_with_status_peer_and_reason_but_not_the_token(
    jwt_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="signald")
    expired = make_token("alice", ttl=-3600, aud=AUDIENCE)
    forged = make_token("alice", key=OTHER_SECRET, aud=AUDIENCE)
    assert (await refusal(jwt_server.url, token=expired)).close_code == 4401
    assert (await refusal(jwt_server.url, extra_headers=bearer(forged))).close_code == 4401
    lines = [getattr(r, FIELDS) for r in caplog.records if r.name == "signald.audit" and hasattr(r, FIELDS)
             and r.getMessage() == "connection refused"]
    assert len(lines) == 2
    for line, reason in zip(lines, ("token expired", "bad signature"), strict=True):
        assert (line["cause"], line["status"], line["close_code"]) == ("unauthorized", 401, 4401)
        assert line["peer"] == "127.0.0.1"
        assert line["reason"] == reason
    everything = "\n".join(f"{r.getMessage()} {getattr(r, FIELDS, '')}" for r in caplog.records)
    for token in (expired, forged):
        assert token not in everything
        assert token.split(".")[2] not in everything  # not even the signature


async def test_flooding_close_is_audited(
    frozen_clock: MockClock, nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="signald.audit")
    server = await serve(nursery, tmp_path, limits={"rate_per_s": 1, "rate_burst": 2})
    async with connect(server.url, user="flooder") as c:
        for i in range(20):
            try:
                await c.send({"type": "presence.ping", "id": i})
            except trio_websocket.ConnectionClosed:
                break
        assert await closed_with(c) == 1008
    lines = [r.getMessage() for r in caplog.records if r.name == "signald.audit" and "1008" in r.getMessage()]
    assert len(lines) == 1
    assert "flooder" in lines[0]
    assert "127.0.0.1" in lines[0]
