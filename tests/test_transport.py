"""Our transport layer: frames built once per event, written under trio-websocket's lock.

These tests fail loudly if trio-websocket's internals we rely on change shape.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import wsproto
from conftest import make_config, start_server
from trio_websocket import WebSocketConnection
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, Request, TextMessage

from signald.client import connect
from signald.connection import transport_of
from signald.fanout import OPCODE_BINARY, OPCODE_TEXT, websocket_frame, websocket_payload
from signald.server import RunningServer


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
@pytest.mark.parametrize("opcode", [OPCODE_TEXT, OPCODE_BINARY])
def test_prebuilt_frames_parse_like_wsproto_frames(size: int, opcode: int) -> None:
    payload = b"x" * size
    frame = websocket_frame(payload, opcode)
    assert websocket_payload(frame) == payload
    client = wsproto.WSConnection(ConnectionType.CLIENT)
    server = wsproto.WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="h", target="/")))
    next(server.events())
    client.receive_data(server.send(AcceptConnection()))
    next(client.events())
    client.receive_data(frame)
    received = list(client.events())
    assert len(received) == 1
    data = received[0].data
    assert (data.encode() if isinstance(received[0], TextMessage) else data) == payload
    assert isinstance(received[0], TextMessage) == (opcode == OPCODE_TEXT)


async def test_trio_websocket_internals_we_write_through_still_exist(server: RunningServer) -> None:
    captured: list[WebSocketConnection] = []
    async with connect(server.url, user="alice") as client:
        captured.append(client.ws)
        stream, lock = transport_of(client.ws)
        assert isinstance(stream, trio.abc.SendStream)
        assert isinstance(lock, trio.StrictFIFOLock)


async def test_fan_out_frames_interleave_cleanly_with_pings(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await start_server(nursery, make_config(tmp_path, limits={"rate_per_s": 10_000, "rate_burst": 10_000}))
    async with connect(server.url, user="alice") as alice, connect(server.url, user="bob") as bob:
        await alice.request("room.join", {"room": "lobby"})
        await bob.request("room.join", {"room": "lobby"})
        async with trio.open_nursery() as nursery:
            async def ping_a_lot() -> None:
                for _ in range(50):
                    await bob.ws.ping()
            nursery.start_soon(ping_a_lot)
            for n in range(200):
                await alice.send({"type": "room.signal", "data": {"room": "lobby", "kind": f"k{n}", "payload": n}})
        await alice.request("presence.ping")
        with trio.fail_after(5):
            seen = [(await bob.next_event("room.signal"))["data"]["payload"] for _ in range(200)]
        assert seen == list(range(200))
