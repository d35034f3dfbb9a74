"""Trusted proxies with a real nginx (Debian package) in front of a real daemon.

Clients connect from distinct loopback addresses (127.0.0.0/8 is all loopback on Linux) to a private
nginx that the test configures and starts on a free port; nginx forwards the upgrade with
``X-Forwarded-For``. With ``server.trusted_proxies = ["127.0.0.1"]`` (nginx's address towards the
daemon) the per-address limiter sees each client's own address: 200 users reconnecting at once are
all admitted, while one address flooding through nginx is still limited, and a peer that is not
trusted cannot pick its address with a forged header. ``./dev test`` installs nginx when missing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from conftest import make_config, start_server
from nginx_fixture import NGINX, nginx
from wsproto.connection import Connection, ConnectionType
from wsproto.events import TextMessage

from signald.server import RunningServer

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (./dev test installs it)")

PER_ADDRESS = 50  # new connections per address per second, and the burst (the default)

SERVER = """
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 1h;
        }}
    }}
"""


def proxy_to(upstream: int) -> Callable[[int], str]:
    return lambda port: SERVER.format(port=port, upstream=upstream)


async def attempt(port: int, source: str, user: str, headers: dict[str, str] | None = None) -> bool:
    """Open a WebSocket from ``source`` as ``user``; True if it got ``welcome`` (admitted)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=source)
    try:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        await stream.send_all(
            f"GET /?user={user} HTTP/1.1\r\nHost: signald\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return False
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            return False  # refused in HTTP (server.refusals = "http")
        ws = Connection(ConnectionType.CLIENT)
        ws.receive_data(rest)
        while True:  # refused after the handshake ("close"): an error frame instead of welcome
            for event in ws.events():
                if isinstance(event, TextMessage):
                    return '"welcome"' in event.data
            chunk = await stream.receive_some(4096)
            if not chunk:
                return False
            ws.receive_data(chunk)
    finally:
        await stream.aclose()


@asynccontextmanager
async def proxied(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[tuple[RunningServer, int]]:
    config = make_config(tmp_path, server={"trusted_proxies": ["127.0.0.1"],
                                           "new_connections_per_ip_per_s": PER_ADDRESS})
    server = await start_server(nursery, config)
    with nginx(tmp_path, proxy_to(server.port)) as port:
        yield server, port


async def test_200_users_reconnecting_through_nginx_at_once_are_all_admitted(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with proxied(nursery, tmp_path) as (server, port):
        admitted: list[bool] = []
        remotes: set[str] = set()

        async def user(n: int) -> None:
            admitted.append(await attempt(port, f"127.0.1.{n + 1}", f"u{n}"))

        def note(view: object) -> None:
            remotes.add(view.remote)  # type: ignore[attr-defined]

        server.on_connect(note)
        with trio.fail_after(30):
            async with trio.open_nursery() as users:
                for n in range(200):
                    users.start_soon(user, n)
        assert admitted.count(True) == 200
        assert remotes == {f"127.0.1.{n + 1}" for n in range(200)}  # the clients, not nginx


async def flood(port: int, source: str, count: int, headers: dict[str, str]) -> int:
    """``count`` connections at once from ``source``, each with its own forged addresses; how many got in."""
    results: list[bool] = []

    async def one(n: int) -> None:
        forged = {k: v.format(n=n) for k, v in headers.items()}
        results.append(await attempt(port, source, f"{source}-{n}", forged))

    with trio.fail_after(30):
        async with trio.open_nursery() as attempts:
            for n in range(count):
                attempts.start_soon(one, n)
    return results.count(True)


async def test_one_address_flooding_through_nginx_is_still_limited(nursery: trio.Nursery, tmp_path: Path) -> None:
    async with proxied(nursery, tmp_path) as (_, port):
        # A forged X-Forwarded-For does not help: nginx appends the real address to its right.
        admitted = await flood(port, "127.0.2.1", 2 * PER_ADDRESS, {"X-Forwarded-For": "198.51.100.{n}"})
        assert PER_ADDRESS <= admitted < 2 * PER_ADDRESS
        assert await attempt(port, "127.0.2.2", "other")  # another address is not affected


async def test_an_untrusted_peer_cannot_pick_its_address(nursery: trio.Nursery, tmp_path: Path) -> None:
    async with proxied(nursery, tmp_path) as (server, _):
        remotes: set[str] = set()
        server.on_connect(lambda view: remotes.add(view.remote))
        # Straight to the daemon: 127.0.3.1 is not a trusted proxy, its headers are ignored.
        admitted = await flood(server.port, "127.0.3.1", 2 * PER_ADDRESS,
                               {"X-Forwarded-For": "198.51.100.{n}", "Forwarded": "for=198.51.100.{n}"})
        assert PER_ADDRESS <= admitted < 2 * PER_ADDRESS
        assert remotes == {"127.0.3.1"}
