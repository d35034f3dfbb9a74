"""An embedder's ``app.*`` handler that takes its time does not stall its connection.

While such a handler awaits, the connection goes on reading: heartbeats are answered (a healthy
client is not given up on), pings get their pongs, a close is seen and ends the handler. The frames
read meanwhile are carried out after it, in the order sent, and every reply leaves in request
order, as if the handler had been quick (docs/embedding.md, "Handlers that take their time").
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import make_config, start_server
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from signald.app.beside import BACKLOG_FRAMES
from signald.app.context import Context
from signald.client.raw import build_url
from signald.handlers import default_router
from signald.router import CustomMessage, Router
from signald.server import RunningServer


class Gate:
    """What the test's ``app.wait`` handler waits for, and what it saw."""

    def __init__(self) -> None:
        self.entered = trio.Event()
        self.release = trio.Event()
        self.cancelled = trio.Event()


@pytest.fixture
def gate() -> Gate:
    return Gate()


Serve = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
def serve(nursery: trio.Nursery, tmp_path: Path, gate: Gate) -> Serve:
    """Start a daemon whose router adds ``app.wait`` (waits for the gate) and ``app.quick``."""
    async def wait(ctx: Context, msg: CustomMessage) -> dict[str, Any]:
        gate.entered.set()
        try:
            await gate.release.wait()
        except trio.Cancelled:
            gate.cancelled.set()
            raise
        return {"in_room": ctx.is_member("lobby")}

    async def quick(ctx: Context, msg: CustomMessage) -> dict[str, Any]:
        return {"n": msg.data["n"]}

    async def start(heartbeat_s: float = 3600.0, **limits: Any) -> RunningServer:
        router = default_router()
        router.add_custom("app.wait", dict, wait)
        router.add_custom("app.quick", dict, quick)
        config = make_config(tmp_path, server={"heartbeat_s": heartbeat_s, "heartbeat_timeout_s": heartbeat_s},
                             limits=limits, history={"request_timeout_s": heartbeat_s})  # below the heartbeat's 2x
        return await start_server(nursery, config, router=router)

    return start


@asynccontextmanager
async def frames(server: RunningServer, user: str) -> AsyncIterator[WebSocketConnection]:
    """A plain WebSocket: every frame it receives, in order (trio-websocket answers pings)."""
    async with open_websocket_url(build_url(server.url, user=user), subprotocols=["signald.v1"]) as ws:
        assert json.loads(await ws.get_message())["type"] == "welcome"
        yield ws


async def send(ws: WebSocketConnection, kind: str, op_id: str, data: Any = None) -> None:
    await ws.send_message(json.dumps({"type": kind, "id": op_id, "data": data}))


async def replies(ws: WebSocketConnection, count: int) -> list[tuple[str, str, Any]]:
    """The next ``count`` replies as (type, op_id, data or error code), events skipped."""
    got: list[tuple[str, str, Any]] = []
    with trio.fail_after(5):
        while len(got) < count:
            frame = json.loads(await ws.get_message())
            if frame["type"] in ("ack", "error", "presence.pong"):
                data = frame["data"]
                got.append((frame["type"], data["op_id"], data.get("code", data.get("data"))))
    return got


async def test_a_handler_slower_than_the_heartbeat_keeps_its_connection(serve: Serve, gate: Gate) -> None:
    # Heartbeats every 0.1 s, given up 0.1 s after an unanswered ping: a connection that reads
    # nothing for 0.2 s is dropped.
    server = await serve(heartbeat_s=0.1)
    async with frames(server, "alice") as ws:
        await send(ws, "app.wait", "w1", {})
        await gate.entered.wait()
        await trio.sleep(0.6)  # three times what a connection that reads nothing survives
        with trio.fail_after(2):
            await ws.ping()  # answered while the handler still waits
        gate.release.set()
        assert await replies(ws, 1) == [("ack", "w1", {"in_room": False})]
        await send(ws, "app.quick", "q1", {"n": 1})
        assert await replies(ws, 1) == [("ack", "q1", {"n": 1})]


async def test_frames_behind_a_slow_handler_are_carried_out_after_it_in_order(serve: Serve, gate: Gate) -> None:
    server = await serve()
    async with frames(server, "alice") as ws:
        await send(ws, "app.wait", "w1", {})
        await send(ws, "room.join", "j1", {"room": "lobby"})
        await send(ws, "app.quick", "q1", {"n": 1})
        await send(ws, "presence.ping", "p1")
        await gate.entered.wait()
        with trio.fail_after(2):
            await ws.ping()  # the server has read all four frames
        gate.release.set()
        got = await replies(ws, 4)
        # The join was read while the handler waited but carried out after it: not yet in the room.
        assert got[0] == ("ack", "w1", {"in_room": False})
        assert [(kind, op_id) for kind, op_id, _ in got[1:]] == [
            ("ack", "j1"), ("ack", "q1"), ("presence.pong", "p1")]


async def test_a_full_backlog_loses_nothing_and_keeps_the_order(serve: Serve, gate: Gate) -> None:
    server = await serve()
    count = BACKLOG_FRAMES + 8  # the reader holds BACKLOG_FRAMES, then waits with the rest unread
    async with frames(server, "alice") as ws:
        await send(ws, "app.wait", "w1", {})
        await gate.entered.wait()
        for n in range(count):
            await send(ws, "app.quick", f"q{n}", {"n": n})
        await trio.sleep(0.2)
        gate.release.set()
        got = await replies(ws, count + 1)
    assert got == [("ack", "w1", {"in_room": False})] + [("ack", f"q{n}", {"n": n}) for n in range(count)]


async def test_frames_read_at_a_steady_pace_are_not_rate_limited_for_waiting(serve: Serve, gate: Gate) -> None:
    server = await serve(rate_per_s=10.0, rate_burst=2)
    async with frames(server, "alice") as ws:
        await send(ws, "app.wait", "w1", {})
        await gate.entered.wait()
        for n in range(5):  # one every 0.15 s under a limit of 10/s with a burst of 2
            await send(ws, "app.quick", f"q{n}", {"n": n})
            await trio.sleep(0.15)
        with trio.fail_after(2):
            await ws.ping()
        gate.release.set()  # carried out together now, but they were read at a steady pace
        got = await replies(ws, 6)
    assert [kind for kind, _, _ in got] == ["ack"] * 6


async def test_a_client_closing_during_a_slow_handler_ends_it(serve: Serve, gate: Gate) -> None:
    server = await serve()
    gone = trio.Event()
    server.on_disconnect(lambda session: gone.set())
    async with frames(server, "alice") as ws:
        await send(ws, "app.wait", "w1", {})
        await gate.entered.wait()
        with trio.fail_after(2):
            await ws.aclose()  # the server reads the close frame and answers it
    assert ws.closed is not None and ws.closed.code == 1000
    with trio.fail_after(2):
        await gate.cancelled.wait()
        await gone.wait()
    assert server.sessions_of("alice") == ()


class FailingRouter(Router):
    """A router whose dispatch itself fails for ``app.fail``: a bug below the handler."""

    async def dispatch(self, ctx: Context, message: Any) -> Any:
        if isinstance(message, CustomMessage) and message.type == "app.fail":
            raise RuntimeError("dispatch bug")
        return await super().dispatch(ctx, message)


async def test_a_failure_beside_the_reader_ends_that_connection_only(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def quick(ctx: Context, msg: CustomMessage) -> dict[str, Any]:
        return {"n": msg.data["n"]}

    router = FailingRouter()
    for message_type, handler in default_router()._handlers.items():
        router._handlers[message_type] = handler
    router.add_custom("app.fail", dict, quick)
    router.add_custom("app.quick", dict, quick)
    server = await start_server(nursery, make_config(tmp_path), router=router)
    async with frames(server, "bob") as other:
        with caplog.at_level(logging.ERROR, logger="signald.connection"):
            async with frames(server, "alice") as ws:
                await send(ws, "app.fail", "f1", {"n": 1})
                with trio.fail_after(5), pytest.raises(ConnectionClosed):
                    await ws.get_message()
        assert any("dispatch bug" in repr(record.exc_info) for record in caplog.records)
        await send(other, "app.quick", "q1", {"n": 2})
        assert await replies(other, 1) == [("ack", "q1", {"n": 2})]


async def test_a_flood_behind_a_slow_handler_keeps_the_rate_limits_rule(serve: Serve, gate: Gate) -> None:
    """As if the reader had waited (docs/protocol.md, limits): the first ``rate_burst`` frames are
    carried out (the slow handler's among them), the next ``rate_burst`` get ``RATE_LIMITED``, and
    the one after closes with 1008, after those replies, not before them, nor with them lost."""
    server = await serve(rate_per_s=0.1, rate_burst=2)
    async with frames(server, "alice") as ws:
        await send(ws, "app.wait", "w1", {})
        await gate.entered.wait()
        for n in range(4):  # q0 carried out, q1 and q2 refused, q3 the one rejection too many
            await send(ws, "app.quick", f"q{n}", {"n": n})
        (session,) = server.hub.sessions_by_user["alice"].values()
        def read_all() -> bool:
            return session.close_code is not None or (session.beside is not None and len(session.beside.backlog) == 4)

        with trio.fail_after(5):  # until the server has read all four (no ping: it would be limited too)
            while not read_all():  # noqa: ASYNC110 - the server's reader holds them, no event to wait on
                await trio.sleep(0.01)
        gate.release.set()
        got: list[tuple[str, str, Any]] = []
        with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
            while True:
                frame = json.loads(await ws.get_message())
                if frame["type"] in ("ack", "error"):
                    data = frame["data"]
                    got.append((frame["type"], data["op_id"], data.get("code", data.get("data"))))
    assert got == [("ack", "w1", {"in_room": False}), ("ack", "q0", {"n": 0}),
                   ("error", "q1", "RATE_LIMITED"), ("error", "q2", "RATE_LIMITED")]
    assert closed.value.reason.code == 1008
