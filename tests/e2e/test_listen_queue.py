"""A client that gave up while its connection waited in the listen queue is not served.

In a reconnect storm the kernel's queue of connections not yet accepted fills up; a client that
waits there longer than its own timeout closes and tries again on a new connection. Its old one
is still queued with its upgrade request: the server must drop it for the price of a read and a
close, not set up (and tear down) a session that nobody will read, announcing a device to the
room on the way.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from urllib.parse import urlsplit

import trio
from conftest import clients, events_of, make_config, start_server

from signald.server import RunningServer

UPGRADE = (
    b"GET /?user=alice HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: signald.v1\r\n\r\n"
)


def queued_upgrade(server: RunningServer) -> socket.socket:
    """A connection with alice's upgrade request sent, still in the listen queue: this runs with no
    checkpoint, so the server's accept loop has not run since the kernel queued it."""
    where = urlsplit(server.url)
    sock = socket.create_connection((where.hostname, where.port))
    sock.sendall(UPGRADE % where.netloc.encode())
    return sock


def abandoned(server: RunningServer) -> float:
    value = server.hub.metrics.registry.get_sample_value("signald_handshakes_abandoned_total")
    return value or 0.0


async def test_a_connection_closed_before_it_was_accepted_gets_no_session(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await start_server(nursery, make_config(tmp_path))
    async with clients(server, "alice", "bob") as (alice, bob):
        for c in (alice, bob):
            await c.request("room.join", {"room": "lobby"})
        await events_of(bob)

        queued_upgrade(server).close()  # gave up: closed before the server got to it
        with trio.fail_after(5):
            while not abandoned(server):  # noqa: ASYNC110 - a counter, nothing to wait on
                await trio.sleep(0.01)
        assert await events_of(bob) == []  # no device.online / device.offline for a device nobody used
        assert server.hub.connection_count("alice") == 1

        # The same bytes on a connection that stays open are served: the 101 and the welcome.
        stays = trio.SocketStream(trio.socket.from_stdlib_socket(queued_upgrade(server)))
        received = b""
        with trio.fail_after(5):
            while b'"welcome"' not in received:
                received += await stays.receive_some(65536)
        assert received.startswith(b"HTTP/1.1 101 ")
        seen = await events_of(bob)
        assert ("device.online", {"user_id": "alice", "device_id": seen[0][1]["device_id"]}) in seen
        await stays.aclose()
        assert abandoned(server) == 1


async def test_the_listen_queue_is_as_long_as_configured(nursery: trio.Nursery, tmp_path: Path) -> None:
    """``server.backlog``: what ``ss`` shows as the listening socket's queue limit (Send-Q)."""
    server = await start_server(nursery, make_config(tmp_path, server={"backlog": 7}))
    ss = shutil.which("ss") or "/bin/ss"
    shown = await trio.run_process([ss, "-ltnH", f"sport = :{server.port}"], capture_stdout=True)
    [line] = shown.stdout.decode().splitlines()
    state, queued, limit = line.split()[:3]
    assert (state, queued, limit) == ("LISTEN", "0", "7")
