"""Session expiry end to end, with a custom authenticator whose ``refresh`` decides the expiry.

The handshake identity may have no expiry at all; whatever ``auth.refresh`` later sets, moves or
removes is what the daemon enforces (``session.expired`` then close 4001).
"""

from __future__ import annotations

from pathlib import Path

import trio
from conftest import events_of, make_config, start_server, time_flies
from trio.testing import MockClock

from signald import AuthRefused, HandshakeRequest, Identity
from signald.client.raw import SignaldClient, connect
from signald.server import RunningServer
from signald.timefmt import iso_utc

BASE = 2_000_000_000.0  # the wall clock (epoch s) at MockClock time 0


class TtlAuthenticator:
    """``?user=NAME&ttl=S`` at the handshake (no ttl: no expiry); refresh tokens are ``ttl:S`` or ``forever``."""

    def __call__(self, request: HandshakeRequest) -> Identity:
        user = request.query.get("user")
        if not user:
            raise AuthRefused(401, "user required")
        ttl = request.query.get("ttl")
        return Identity(user, expires_at=BASE + float(ttl) if ttl else None)

    def refresh(self, current: Identity, token: str) -> Identity:
        if token == "forever":
            return Identity(current.user_id)
        now = BASE + trio.current_time()
        return Identity(current.user_id, expires_at=now + float(token.removeprefix("ttl:")))


async def serve(nursery: trio.Nursery, tmp_path: Path) -> RunningServer:
    config = make_config(tmp_path, limits={"rate_per_s": 1000, "rate_burst": 1000})
    return await start_server(nursery, config, authenticator=TtlAuthenticator(),
                              wall_clock=lambda: BASE + trio.current_time())


async def closed_with(c: SignaldClient) -> int:
    await c.closed.wait()
    assert c.ws.closed is not None
    return int(c.ws.closed.code)


async def refresh(c: SignaldClient, token: str) -> object:
    return (await c.request("auth.refresh", {"refresh_token": token}))["expires_at"]


async def test_an_expiry_first_set_by_refresh_is_enforced(
    frozen_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await serve(nursery, tmp_path)
    async with connect(server.url + "?user=alice") as alice, connect(server.url + "?user=bob") as bob:
        assert (await alice.request("session.info"))["expires_at"] is None
        assert await refresh(alice, "ttl:1") == iso_utc(BASE + 1)
        with time_flies(frozen_clock), trio.fail_after(600):
            expired = await alice.next_event("session.expired")
            expired_after = trio.current_time()
            assert await closed_with(alice) == 4001
        assert expired["data"] == {"expired_at": iso_utc(BASE + 1)}
        assert 1 <= expired_after < 2
        assert [e for e in await events_of(bob) if e[0] == "session.expired"] == []  # bob never had an expiry


async def test_a_refresh_that_removes_the_expiry_keeps_the_session(
    frozen_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await serve(nursery, tmp_path)
    async with connect(server.url + "?user=alice&ttl=60") as alice:
        assert (await alice.request("session.info"))["expires_at"] == iso_utc(BASE + 60)
        assert await refresh(alice, "forever") is None
        with time_flies(frozen_clock):
            await trio.sleep(7200)  # past the handshake's expiry and past the watcher's longest sleep
        assert await events_of(alice) == []
        assert (await alice.request("session.info"))["expires_at"] is None


async def test_a_refresh_that_moves_the_expiry_earlier_wakes_the_watcher(
    frozen_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await serve(nursery, tmp_path)
    async with connect(server.url + "?user=alice") as alice:
        assert await refresh(alice, "ttl:3000") == iso_utc(BASE + 3000)
        assert await refresh(alice, "ttl:5") == iso_utc(BASE + 5)
        with time_flies(frozen_clock), trio.fail_after(600):
            expired = await alice.next_event("session.expired")
            assert 5 <= trio.current_time() < 6
            assert await closed_with(alice) == 4001
        assert expired["data"] == {"expired_at": iso_utc(BASE + 5)}


async def test_repeated_refreshes_do_not_pile_up_entries(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await serve(nursery, tmp_path)
    async with connect(server.url + "?user=alice") as alice:
        for ttl in range(1000, 1300):
            await refresh(alice, f"ttl:{ttl}")
        assert len(server.hub.expiries) < 200  # stale entries are dropped as the heap grows
        assert await events_of(alice) == []
