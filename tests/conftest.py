"""Shared fixtures: an in-process daemon on port 0 with a real SQLite file, and clients."""

from __future__ import annotations

import math
import os
import re
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import over_nodes
import pytest
import trio
from over_nodes import nodes, nodes_database  # noqa: F401  # fixtures: a test over 1 node and over 3 nodes
from postgres import fresh_databases, postgres_server, postgres_url  # noqa: F401  # fixtures: a private PostgreSQL
from redis_cluster import redis_cluster  # noqa: F401  # fixture: a private Redis Cluster
from redis_fixture import redis_server, redis_url  # noqa: F401  # fixtures: a private Redis
from trio.testing import MockClock

from signald.client.raw import SignaldClient, connect
from signald.config import Config, load_config
from signald.server import RunningServer, serve_signald
from signald.transport.handshake import Handshake, Upgrade


def pytest_configure(config: pytest.Config) -> None:
    """The daemons tests start as subprocesses run from compiled bytecode, as an installed one does.

    Where the environment says ``PYTHONDONTWRITEBYTECODE`` (this CI's does), every subprocess
    would compile signald's modules from source at each start (about 0.15 s of each of the suite's
    daemon starts); they share a cache outside the repository instead. Python checks each cached
    file against its source, so an edited module is compiled again.
    """
    if os.environ.pop("PYTHONDONTWRITEBYTECODE", ""):
        os.environ.setdefault("PYTHONPYCACHEPREFIX", os.path.join(tempfile.gettempdir(),
                                                                  f"signald-test-pycache-{os.getuid()}"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    twice = [item for item in items if over_nodes.on_sqlite_over_nodes(item) or over_nodes.off_redis_cluster(item)]
    if twice:
        config.hook.pytest_deselected(items=twice)
        dropped = set(map(id, twice))
        items[:] = [item for item in items if id(item) not in dropped]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(ours, peer): a real connected socket pair; ours is the non-blocking server side (a reader
    parks on it, a handshake reads it), peer the client's."""
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    with ours, peer:
        yield ours, peer


async def handshake_over(
    pair: tuple[socket.socket, socket.socket], data: bytes, *, keep_plain: bool = False,
) -> tuple[Handshake, Upgrade | None, bytes]:
    """A :class:`Handshake` on ``pair``'s server end reads ``data``, which the client end sent, and the
    client reads the answer as a real one does: a refused upgrade's answer up to the end of the
    server's side of the stream, then it closes its own side. The handshake half-closes after a
    refusal, then lingers (signald.transport.http.linger) until the client has closed its side,
    which it does at once here; a client that never closed would hold the handshake for the whole
    linger. When the handshake is over, the stream is closed, as the daemon closes it.

    Returns the handshake, the upgrade read (None when it was refused, or kept for plain HTTP in
    ``handshake.plain``), and what the client read up to the server's end: ``b""`` when the server
    did not answer yet (an upgrade to accept, plain HTTP to serve).
    """
    ours, peer = pair
    peer.sendall(data)
    handshake = Handshake(trio.SocketStream(trio.socket.from_stdlib_socket(ours)), keep_plain=keep_plain)
    client = trio.socket.from_stdlib_socket(peer)  # non-blocking from now on
    answer = bytearray()

    async def read_to_the_servers_end() -> None:
        while chunk := await client.recv(65536):
            answer.extend(chunk)
        peer.shutdown(socket.SHUT_WR)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_to_the_servers_end)
        upgrade = handshake.read_now() or await handshake.read_request()
        if upgrade is None and handshake.plain is None:
            await handshake.stream.aclose()  # refused: signald.server closes the stream then
        else:
            nursery.cancel_scope.cancel()  # not answered yet: no end to read up to
    return handshake, upgrade, bytes(answer)


def make_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    overrides: dict[str, dict[str, Any]] = {"server": {"port": 0, "db": str(tmp_path / "signald.db")}}
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    return load_config(env={}, overrides=overrides)


async def start_server(nursery: trio.Nursery, config: Config, **kwargs: Any) -> RunningServer:
    """One daemon; in a test over "3 nodes" (tests/over_nodes.py), three that it uses as one."""
    if over_nodes.current.count == 1:
        running: RunningServer = await nursery.start(lambda task_status: serve_signald(
            config, task_status=task_status, **kwargs))
        return running
    started: dict[int, RunningServer] = {}

    async def start_node(index: int) -> None:
        node_config = over_nodes.node_config(config, index)
        started[index] = await nursery.start(lambda task_status: serve_signald(
            node_config, task_status=task_status, **kwargs))

    async with trio.open_nursery() as starting:  # together, as a cluster's nodes come up: waits overlap
        for index in range(over_nodes.current.count):
            starting.start_soon(start_node, index)
    cluster = over_nodes.Nodes([started[index] for index in sorted(started)])
    over_nodes.current.started.append(cluster)
    nursery.start_soon(over_nodes.unlisted_once_stopped, cluster)
    return cluster  # type: ignore[return-value]  # it stands for a RunningServer


@pytest.fixture
async def server(nursery: trio.Nursery, tmp_path: Path) -> RunningServer:
    return await start_server(nursery, make_config(tmp_path))


ClientFactory = Callable[..., AbstractAsyncContextManager[SignaldClient]]


@pytest.fixture
def client(server: RunningServer) -> ClientFactory:
    """``async with client("alice") as c:`` connects to the fixture server as alice."""

    def factory(user: str | None = None, **kwargs: Any) -> AbstractAsyncContextManager[SignaldClient]:
        return connect(server.url, user=user, **kwargs)

    return factory


async def collect(client: SignaldClient) -> AsyncIterator[dict[str, Any]]:  # pragma: no cover
    while True:
        yield await client.next_event()


@contextmanager
def time_flies(clock: MockClock) -> Iterator[None]:
    """Let the mock clock jump to the next deadline whenever every task waits, only inside the block.

    Outside it the clock stands still: a wait on the history database thread also counts as
    "every task waits", and a jump there would fire the timers under test during the set-up.
    """
    clock.autojump_threshold = 0
    try:
        yield
    finally:
        clock.autojump_threshold = math.inf


@pytest.fixture
def frozen_clock(autojump_clock: MockClock) -> MockClock:
    """The test's MockClock, standing still until a :func:`time_flies` block."""
    autojump_clock.autojump_threshold = math.inf
    return autojump_clock


Event = tuple[str, dict[str, Any]]


@asynccontextmanager
async def clients(server: RunningServer, *users: str) -> AsyncIterator[list[SignaldClient]]:
    """One connected client per listed user name (repeat a name for a second device); over several
    nodes, once every node knows of them all (tests/over_nodes.py)."""
    async with AsyncExitStack() as stack:
        connected = [await stack.enter_async_context(connect(server.url, user=u)) for u in users]
        await over_nodes.settle()
        yield connected


async def events_of(c: SignaldClient) -> list[Event]:
    """Every event that reached ``c`` so far, as ``(type, data)``; waits for in-flight ones.

    The ``fail_after(5)`` guard would fire spuriously under a jumping MockClock, so the mock-clock
    test files (rooms, calls) keep their own unguarded variant.
    """
    with trio.fail_after(5):
        await over_nodes.settle()
        pong = await c.request_raw("presence.ping")
    assert pong["type"] == "presence.pong"
    return [(e["type"], e["data"]) for e in c.pending_events()]


def client_wire(*parts: str | bytes) -> bytes:
    """One message in ``parts`` fragments, as a wsproto client frames (and masks) it."""
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import BytesMessage, TextMessage

    client = Connection(ConnectionType.CLIENT)
    wire = b""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        event = TextMessage(data=part, message_finished=last) if isinstance(part, str) \
            else BytesMessage(data=part, message_finished=last)
        wire += client.send(event)
    return wire


READY = re.compile(r"signald ready on (wss?://[^\s\"]+)")  # text or JSON log format


@asynccontextmanager
async def daemon(
    tmp_path: Path, name: str, *args: str, port: int = 0, config_text: str = ""
) -> AsyncIterator[tuple[trio.Process, str]]:
    """Start ``python -m signald serve`` and yield (process, url) once it is ready; killed on exit.

    Its config file allows 100,000 frames/s (tests pipeline hundreds at once) plus ``config_text``
    (more TOML sections); its stderr goes to ``<tmp_path>/<name>.log``, polled for the ready line.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALD_")}
    config = tmp_path / "signald.toml"
    config.write_text("[limits]\nrate_per_s = 100000.0\nrate_burst = 100000\n" + config_text)
    log = tmp_path / f"{name}.log"
    with log.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "signald", "serve", "--port", str(port), "--config", str(config), *args],
            stderr=stderr, cwd=tmp_path, env=env,
        )
    try:
        with trio.fail_after(8):
            while not (match := READY.search(log.read_text(errors="replace"))):
                if process.poll() is not None:
                    raise AssertionError(f"daemon exited early: {log.read_text(errors='replace')}")
                await trio.sleep(0.01)
        yield process, match.group(1)
    finally:
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(5):
            await process.wait()
