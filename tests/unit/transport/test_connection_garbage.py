"""An ended connection is freed when its task ends: nothing of it waits for the garbage collector.

Kept alive (by the heartbeat wheel until the connection's slot came due, or in a reference cycle
until a collection found it), every short connection's objects outlived Python's young
collections, which traversed them again and again: about a tenth of the CPU of a connection
closed right after its set-up. These tests run a real server in-process with the collector off
and look for what is left of the connections after they ended.
"""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from conftest import make_config, start_server
from rawwire import OP_CLOSE, OP_TEXT, close_payload, masked, server_frames, until_eof, welcomed

from signald.app.session import Session
from signald.server import RunningServer
from signald.transport.websocket import ServerWebSocket


async def client_closes(server: RunningServer, user: str) -> None:
    stream = await welcomed(server.port, user)
    await stream.send_all(masked(OP_CLOSE, close_payload(1000)))
    assert server_frames(await until_eof(stream)) == [(OP_CLOSE, close_payload(1000))]
    await stream.aclose()


async def client_works_then_closes(server: RunningServer, user: str) -> None:
    stream = await welcomed(server.port, user)
    await stream.send_all(masked(OP_TEXT, b'{"type":"room.join","id":1,"data":{"room":"lobby"}}'))
    await stream.send_all(masked(OP_TEXT, b'{"type":"chat.send","id":2,"data":{"scope":"lobby","body":"hi"}}'))
    got = b""
    while b'"op_id":2' not in got:
        got += await stream.receive_some(65536)
    await stream.send_all(masked(OP_CLOSE, close_payload(1001)))
    assert server_frames(got + await until_eof(stream))[-1] == (OP_CLOSE, close_payload(1001))
    await stream.aclose()


async def client_vanishes(server: RunningServer, user: str) -> None:
    stream = await welcomed(server.port, user)
    await stream.aclose()  # no close frame


async def server_closes(server: RunningServer, user: str) -> None:
    stream = await welcomed(server.port, user)
    assert server.revoke_user(user, "go away") == 1
    got = b""
    while not got or server_frames(got)[-1][0] != OP_CLOSE:  # session.revoked, then the close frame
        got += await stream.receive_some(65536)
    assert server_frames(got)[-1] == (OP_CLOSE, close_payload(4003, b"session revoked"))
    await stream.send_all(masked(OP_CLOSE, close_payload(4003)))
    assert await until_eof(stream) == b""
    await stream.aclose()


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("ending", [client_closes, client_works_then_closes, client_vanishes, server_closes])
async def test_an_ended_connection_leaves_nothing_for_the_garbage_collector(
    nursery: trio.Nursery, tmp_path: Path, collector_off: None,
    ending: Callable[[RunningServer, str], Awaitable[None]],
) -> None:
    server = await start_server(nursery, make_config(tmp_path, server={"new_connections_per_ip_per_s": 0}))
    with trio.fail_after(10):
        for i in range(5):
            await ending(server, f"u{i}")
        await trio.testing.wait_all_tasks_blocked()  # the connection tasks have returned
    assert not server.hub.sessions
    left = [type(o).__name__ for o in gc.get_objects() if isinstance(o, (ServerWebSocket, Session))]
    assert left == []
