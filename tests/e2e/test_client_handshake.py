"""The Trio client against a server that accepts the TCP connection and never answers the
WebSocket upgrade (a daemon stopping, or a port another process holds): the opening handshake gives
up after ``wire.OPEN_TIMEOUT_S``, as the asyncio client's does (``websockets``' ``open_timeout``).
Without that limit the client waited for ever, and a reconnect that met such a socket never came
back (tests/e2e/test_client_live.py timed out that way under load).
"""

from __future__ import annotations

import pytest
import trio

from signald.client import ClientClosed, wire
from signald.client import connect as trio_connect


async def test_a_handshake_the_server_never_answers_gives_up(nursery: trio.Nursery, autojump_clock: object) -> None:
    async def silent(stream: trio.SocketStream) -> None:
        async with stream:
            await trio.sleep_forever()

    listeners = await nursery.start(trio.serve_tcp, silent, 0)
    port = listeners[0].socket.getsockname()[1]
    started = trio.current_time()
    with trio.fail_after(10 * wire.OPEN_TIMEOUT_S), pytest.raises(ClientClosed, match="could not connect"):
        async with trio_connect(f"ws://127.0.0.1:{port}/ws", user="patient"):
            pass
    assert trio.current_time() - started == pytest.approx(wire.OPEN_TIMEOUT_S, abs=1.0)
