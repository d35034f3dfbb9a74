"""Slow consumers: a connection that stops reading is closed (1013) instead of slowing its room.

The end-to-end tests put three users in a room: ``slow`` (a raw WebSocket that never reads after
joining), ``fast`` (sends a stream of events) and ``watch`` (reads everything). With a small
``limits.send_queue`` the server must drop ``slow`` while ``fast`` keeps getting prompt replies and
``watch`` misses nothing. The unit tests pin down :class:`signald.delivery.outbox.Outbox` itself.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
import trio_websocket
from conftest import make_config, start_server
from trio_websocket import ConnectionClosed, WebSocketConnection

from signald.client.raw import SignaldClient, connect
from signald.delivery.frames import Frame
from signald.delivery.outbox import Outbox
from signald.delivery.wsframe import websocket_payload
from signald.protocol import RoomActiveEvent, RoomData
from signald.server import RunningServer

SEND_QUEUE = 8
MAX_FRAMES = 20_000  # far more than loopback socket buffers plus the queue can hold
PROMPT_S = 1.0  # a reply slower than this (real time) means the room was held up


@pytest.fixture
async def server(nursery: trio.Nursery, tmp_path: Path) -> RunningServer:
    """A daemon with a tiny send queue and no practical rate limit (the test floods on purpose)."""
    limits = {"send_queue": SEND_QUEUE, "rate_per_s": 1e6, "rate_burst": 1_000_000}
    return await start_server(nursery, make_config(tmp_path, limits=limits))


@asynccontextmanager
async def slow_member(server: RunningServer, room: str = "lobby") -> AsyncIterator[WebSocketConnection]:
    """A raw connection of user ``slow`` that joins ``room`` and then (unless the test says so) never reads."""
    async with trio_websocket.open_websocket_url(f"{server.url}?user=slow") as ws:
        await ws.get_message()  # welcome
        await ws.send_message(msgspec.json.encode({"type": "room.join", "id": "j", "data": {"room": room}}).decode())
        with trio.fail_after(5):
            ack = msgspec.json.decode(await ws.get_message())
        assert (ack["type"], ack["data"]["op_id"]) == ("ack", "j")
        yield ws


def slow_is_connected(server: RunningServer) -> bool:
    return server.hub.connection_count("slow") > 0


async def flood_until_slow_is_dropped(
    server: RunningServer, fast: SignaldClient, send_one: Callable[[int], Awaitable[None]], batch: int
) -> tuple[int, float]:
    """Send events (``batch`` per request round trip) until the server drops ``slow``.

    Returns how many were sent and the slowest round trip of ``fast``'s requests meanwhile.
    """
    sent, slowest = 0, 0.0
    with trio.fail_after(20):
        while slow_is_connected(server):
            assert sent < MAX_FRAMES, "the slow consumer was never closed"
            for _ in range(batch):
                await send_one(sent)
                sent += 1
            started = time.perf_counter()
            pong = await fast.request_raw("presence.ping")
            slowest = max(slowest, time.perf_counter() - started)
            assert pong["type"] == "presence.pong"
    return sent, slowest


async def received(c: SignaldClient, kind: str) -> list[dict[str, Any]]:
    """The data of every ``kind`` event that reached ``c`` so far (waits for those in flight)."""
    with trio.fail_after(10):
        await c.request_raw("presence.ping")
    return [e["data"] for e in c.pending_events() if e["type"] == kind]


async def wait_for_close_code(ws: WebSocketConnection) -> int | None:
    """Read whatever is buffered on ``ws`` until the close frame; its code."""
    with trio.fail_after(5):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed:
            pass
    assert ws.closed is not None
    return ws.closed.code


async def test_reader_that_never_reads_is_dropped_while_room_signals_flow(server: RunningServer) -> None:
    async with slow_member(server) as slow, connect(server.url, user="fast") as fast, \
            connect(server.url, user="watch") as watch:
        await fast.request("room.join", {"room": "lobby"})
        await watch.request("room.join", {"room": "lobby"})
        payload = "x" * 1000

        async def signal(n: int) -> None:
            # a fresh kind each time, so even a queue that keeps "the latest per (user, kind)" must grow
            await fast.send({"type": "room.signal", "data": {"room": "lobby", "kind": f"k{n}", "payload": payload}})

        sent, slowest = await flood_until_slow_is_dropped(server, fast, signal, batch=10)
        assert sent > SEND_QUEUE
        assert slowest < PROMPT_S
        signals = await received(watch, "room.signal")
        assert [s["kind"] for s in signals] == [f"k{n}" for n in range(sent)]
        assert all(s["user_id"] == "fast" for s in signals)
        assert fast.unmatched_errors == []
        assert set(server.hub.sessions) == {fast.session_id, watch.session_id}
        assert await wait_for_close_code(slow) == 1013


async def drain_presence(ws: WebSocketConnection, user: str) -> list[str]:
    """Read what ``ws`` has buffered until a reply to a ping; the statuses of ``user`` it saw."""
    await ws.send_message(msgspec.json.encode({"type": "presence.ping", "id": "drain"}).decode())
    statuses = []
    with trio.fail_after(10):
        while True:
            message = msgspec.json.decode(await ws.get_message())
            if message["type"] == "presence.pong":
                return statuses
            if message["type"] == "presence.update" and message["data"]["user_id"] == user:
                statuses.append(message["data"]["status"])


async def test_presence_storm_is_coalesced_for_a_reader_that_never_reads(server: RunningServer) -> None:
    async with slow_member(server) as slow, connect(server.url, user="fast") as fast, \
            connect(server.url, user="watch") as watch:
        await fast.request("room.join", {"room": "lobby"})
        await watch.request("room.join", {"room": "lobby"})
        toggles = 3000
        for n in range(toggles):
            await fast.send({"type": "presence.set", "data": {"status": "busy" if n % 2 == 0 else "online"}})
            if n % 100 == 99:
                await fast.request_raw("presence.ping")
        final = "busy" if (toggles - 1) % 2 == 0 else "online"
        updates = [u for u in await received(watch, "presence.update") if u["user_id"] == "fast"]
        assert len(updates) == toggles  # a reader that keeps up misses nothing
        assert slow_is_connected(server)  # superseded updates were dropped instead of closing it
        seen = await drain_presence(slow, "fast")
        assert len(seen) < toggles
        assert seen[-1] == final


async def test_the_room_sees_the_dropped_consumer_leave(server: RunningServer) -> None:
    async with slow_member(server), connect(server.url, user="fast") as fast, \
            connect(server.url, user="watch") as watch:
        await fast.request("room.join", {"room": "lobby"})
        await watch.request("room.join", {"room": "lobby"})

        async def signal(n: int) -> None:
            await fast.send({"type": "room.signal", "data": {"room": "lobby", "kind": f"k{n}", "payload": "y" * 1000}})

        await flood_until_slow_is_dropped(server, fast, signal, batch=10)
        assert {"room": "lobby", "user_id": "slow"} in await received(watch, "member.left")
        ack = await watch.request("room.join", {"room": "lobby"})
        assert [m["user_id"] for m in ack["members"]] == ["fast", "watch"]


# --------------------------------------------------------------------------- Outbox


def frame(room: str = "lobby") -> Frame:
    return Frame(RoomActiveEvent(data=RoomData(room=room)))


class Overflows:
    """An ``on_overflow`` callback that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


async def test_outbox_hands_out_queued_frames_in_order() -> None:
    box = Outbox(5, binary=False, on_overflow=Overflows())
    assert box.push(frame("a")) and box.push(frame("b"))
    assert len(box) == 2
    batch = await box.get_batch()
    assert [msgspec.json.decode(websocket_payload(f))["data"]["room"] for f in batch] == ["a", "b"]
    assert len(box) == 0


async def test_outbox_push_beyond_limit_calls_on_overflow_once_and_drops() -> None:
    overflow = Overflows()
    box = Outbox(2, binary=False, on_overflow=overflow)
    assert box.push(frame("a")) and box.push(frame("b"))
    assert box.push(frame("c")) is False
    assert overflow.calls == 1
    assert box.closed
    assert box.push(frame("d")) is False
    assert overflow.calls == 1
    assert await box.get_batch() == []  # the overflowing connection is dropped, not flushed


async def test_outbox_close_without_drop_flushes_what_is_queued() -> None:
    box = Outbox(5, binary=False, on_overflow=Overflows())
    box.push(frame("a"))
    box.push(frame("b"))
    box.close(drop=False)
    assert box.push(frame("late")) is False
    assert [msgspec.json.decode(websocket_payload(f))["data"]["room"] for f in await box.get_batch()] == ["a", "b"]
    assert await box.get_batch() == []


async def test_outbox_close_with_drop_discards_what_is_queued() -> None:
    box = Outbox(5, binary=False, on_overflow=Overflows())
    box.push(frame("a"))
    box.close(drop=True)
    assert await box.get_batch() == []


async def test_outbox_get_batch_returns_empty_when_closed_and_empty() -> None:
    box = Outbox(5, binary=False, on_overflow=Overflows())
    box.close(drop=False)
    with trio.fail_after(1):
        assert await box.get_batch() == []


async def test_outbox_get_batch_waits_for_a_frame(nursery: trio.Nursery) -> None:
    box = Outbox(5, binary=False, on_overflow=Overflows())
    batches: list[list[str | bytes]] = []

    async def writer() -> None:
        batches.append(await box.get_batch())

    nursery.start_soon(writer)
    await trio.testing.wait_all_tasks_blocked()
    assert batches == []
    box.push(frame("a"))
    await trio.testing.wait_all_tasks_blocked()
    assert len(batches) == 1 and len(batches[0]) == 1


async def test_outbox_close_wakes_a_waiting_writer(nursery: trio.Nursery) -> None:
    box = Outbox(5, binary=False, on_overflow=Overflows())
    done = trio.Event()
    batches: list[list[str | bytes]] = []

    async def writer() -> None:
        batches.append(await box.get_batch())
        done.set()

    nursery.start_soon(writer)
    await trio.testing.wait_all_tasks_blocked()
    box.close(drop=False)
    with trio.fail_after(1):
        await done.wait()
    assert batches == [[]]


async def test_outbox_queues_json_text_or_msgpack_bytes_and_encodes_once() -> None:
    text_box = Outbox(5, binary=False, on_overflow=Overflows())
    binary_box = Outbox(5, binary=True, on_overflow=Overflows())
    shared = frame("lobby")
    other_text_box = Outbox(5, binary=False, on_overflow=Overflows())
    for box in (text_box, binary_box, other_text_box):
        box.push(shared)
    (text,) = await text_box.get_batch()
    (binary,) = await binary_box.get_batch()
    (again,) = await other_text_box.get_batch()
    assert text[0] == 0x81 and binary[0] == 0x82  # FIN + text / binary opcode
    assert msgspec.json.decode(websocket_payload(text)) == msgspec.msgpack.decode(websocket_payload(binary)) == {
        "type": "room.active", "data": {"room": "lobby"}}
    assert again is text  # encoded once, shared by every recipient


def test_outbox_keeps_only_the_latest_ephemeral_event_per_key_above_the_high_water_mark() -> None:
    from signald.protocol import ChatMessage, ChatMessageEvent, PresenceUpdateData, PresenceUpdateEvent

    overflowed: list[bool] = []
    box = Outbox(8, binary=False, on_overflow=lambda: overflowed.append(True))

    def presence(status: str) -> Frame:
        return Frame(PresenceUpdateEvent(data=PresenceUpdateData(user_id="u", status=status)))  # type: ignore[arg-type]

    chat = Frame(ChatMessageEvent(data=ChatMessage(
        id="m", room="r", seq=1, rev=1, user_id="u", body="b", attachments=[], parent_id=None, created_at="t",
        edited_at=None, deleted_at=None, redacted=False, reactions={})))
    for _ in range(5):
        assert box.push(chat)
    for n in range(50):
        assert box.push(presence("busy" if n % 2 else "away"))
    assert not overflowed
    assert box.coalesced > 0
    while len(box) < 8:
        assert box.push(chat)
    assert not box.push(chat)  # full of frames that are never dropped: overflow
    assert overflowed == [True]


async def test_superseded_frames_are_not_written_and_the_latest_keeps_its_order() -> None:
    from signald.protocol import PresenceUpdateData, PresenceUpdateEvent, RoomData, RoomWaitingEvent

    box = Outbox(4, binary=False, on_overflow=lambda: None)
    waiting = Frame(RoomWaitingEvent(data=RoomData(room="r")))
    box.push(waiting)
    for status in ("away", "busy", "online", "away", "busy"):
        box.push(Frame(PresenceUpdateEvent(data=PresenceUpdateData(user_id="u", status=status))))  # type: ignore[arg-type]
    batch = [msgspec.json.decode(websocket_payload(f)) for f in await box.get_batch()]
    assert batch[0]["type"] == "room.waiting"
    statuses = [m["data"]["status"] for m in batch[1:]]
    assert statuses[-1] == "busy"
    assert len(statuses) < 5
