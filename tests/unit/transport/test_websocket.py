"""signald's own server side of RFC 6455 (signald.transport.websocket) and the hub-wide heartbeats.

The wire tests talk to a real daemon through a raw wsproto client, so they can do what a
well-behaved client library never does: ignore pings, break the framing, fragment messages.
"""

from __future__ import annotations

import json
import math
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio_websocket
from conftest import client_wire, make_config, start_server, time_flies
from hypothesis import given, settings
from hypothesis import strategies as st
from trio.testing import MockClock
from wsproto import WSConnection
from wsproto.connection import Connection, ConnectionType
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Ping,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import Opcode

from signald.client.raw import connect
from signald.server import RunningServer
from signald.state.heartbeat import Heartbeats

# ---------------------------------------------------------------------- heartbeats, sans-IO


@attrs.define(eq=False)
class FakeConn:
    heard_at: float = 0.0
    ping_sent_at: float | None = None
    gone: bool = False
    pings: list[float] = attrs.field(factory=list)
    timed_out: bool = False
    now: float = 0.0

    def send_ping(self) -> None:
        self.pings.append(self.now)

    def silent(self) -> None:
        self.timed_out = True


def run(beats: Heartbeats, conns: list[FakeConn], until: float, *, answer: bool = True) -> None:
    """Drive the heartbeats to ``until``, each conn answering its pings at once if ``answer``."""
    while beats.next_due() <= until:
        now = beats.next_due()
        for conn in conns:
            conn.now = now
        before = {id(c): len(c.pings) for c in conns}
        beats.tick(now)
        if answer:
            for conn in conns:
                if len(conn.pings) > before[id(conn)]:
                    conn.heard_at = now + 0.001


def test_a_silent_connection_is_pinged_every_interval_and_kept_while_it_answers() -> None:
    beats = Heartbeats(interval=20, timeout=10)
    conn = FakeConn()
    beats.add(conn, now=0)
    run(beats, [conn], until=19.9)
    assert conn.pings == []
    run(beats, [conn], until=100)
    assert len(conn.pings) == 4  # at 20, ~40, ~60, ~80 (each interval after the last answer)
    # never early; late by at most the wheel's resolution (due times are rounded up to it)
    assert all(20 < b - a <= 20 + beats.resolution for a, b in zip(conn.pings, conn.pings[1:], strict=False))
    assert not conn.timed_out


def test_a_connection_that_does_not_answer_is_given_up_after_the_timeout() -> None:
    beats = Heartbeats(interval=20, timeout=10)
    conn = FakeConn()
    beats.add(conn, now=0)
    run(beats, [conn], until=29.9, answer=False)
    assert conn.pings == [20] and not conn.timed_out
    run(beats, [conn], until=30, answer=False)
    assert conn.timed_out
    assert len(beats) == 0  # forgotten once given up on


def test_a_busy_connection_is_never_pinged() -> None:
    beats = Heartbeats(interval=20, timeout=10)
    conn = FakeConn()
    beats.add(conn, now=0)
    for t in range(0, 200, 5):
        conn.heard_at = float(t)
        beats.tick(float(t))
    assert conn.pings == [] and not conn.timed_out
    assert len(beats) == 1


def test_closed_connections_are_dropped_and_cost_nothing() -> None:
    beats = Heartbeats(interval=20, timeout=10)
    conns = [FakeConn() for _ in range(1000)]
    for conn in conns:
        beats.add(conn, now=0)
        conn.gone = True
    beats.tick(20)
    assert len(beats) == 0 and beats.next_due() == math.inf
    assert not any(c.pings for c in conns)


def test_the_wheel_does_not_keep_a_closed_connection_alive() -> None:
    """It holds connections weakly: an ended one is freed with its task, not when its slot comes due."""
    beats = Heartbeats(interval=20, timeout=10)
    conn, kept = FakeConn(), FakeConn()
    beats.add(conn, now=0)
    beats.add(kept, now=0)
    freed = weakref.ref(conn)
    del conn
    assert freed() is None
    run(beats, [kept], until=30)
    assert kept.pings == [20] and not kept.timed_out  # the one still held is looked after as before


# ---------------------------------------------------------------------- on the wire


@attrs.define
class RawClient:
    """A WebSocket client that does only what the test tells it to."""

    stream: trio.SocketStream
    ws: WSConnection
    pending: list[Event] = attrs.field(factory=list)

    async def send_event(self, event: Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.send_event(TextMessage(data=json.dumps(message)))

    async def next_event(self) -> Event | None:
        """The next protocol event, or None when the server closed TCP."""
        while not self.pending:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.ws.receive_data(data)
            self.pending.extend(self.ws.events())
        return self.pending.pop(0)

    async def next_of(self, kind: type[Event]) -> Any:
        while True:
            event = await self.next_event()
            assert event is not None, f"closed while waiting for {kind.__name__}"
            if isinstance(event, kind):
                return event

    async def reply(self, op_id: str) -> dict[str, Any]:
        """The decoded frame answering ``op_id``."""
        while True:
            message: TextMessage = await self.next_of(TextMessage)
            decoded: dict[str, Any] = json.loads(message.data)
            if decoded["data"].get("op_id") == op_id:
                return decoded


@asynccontextmanager
async def raw_client(server: RunningServer, user: str) -> AsyncIterator[RawClient]:
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    client = RawClient(stream, WSConnection(ConnectionType.CLIENT))
    await client.send_event(Request(host="localhost", target=f"/?user={user}"))
    await client.next_of(AcceptConnection)
    welcome: TextMessage = await client.next_of(TextMessage)
    assert json.loads(welcome.data)["type"] == "welcome"
    try:
        yield client
    finally:
        await stream.aclose()


async def test_a_client_that_ignores_pings_is_closed_with_1001_after_the_timeout(
    autojump_clock: MockClock, tmp_path: Path, nursery: trio.Nursery
) -> None:
    autojump_clock.autojump_threshold = math.inf
    server = await start_server(nursery, make_config(
        tmp_path, server={"heartbeat_s": 20, "heartbeat_timeout_s": 10}))
    async with raw_client(server, "mute") as mute, connect(server.url, user="alive") as alive:
        start = trio.current_time()
        with time_flies(autojump_clock), trio.fail_after(60):  # virtual seconds
            await mute.next_of(Ping)  # not answered
            pinged = trio.current_time() - start
            close: CloseConnection = await mute.next_of(CloseConnection)
            closed = trio.current_time() - start
        assert 20 <= pinged < 21 and 30 <= closed < 31
        assert (close.code, close.reason) == (1001, "heartbeat timeout")
        # trio-websocket answers pings: that client is still fine after several intervals.
        assert (await alive.request_raw("presence.ping"))["type"] == "presence.pong"


async def test_a_client_ping_gets_a_pong(server: RunningServer) -> None:
    async with connect(server.url, user="alice") as alice:
        with trio.fail_after(5):
            await alice.ws.ping(b"are you there")  # returns when the matching pong arrives


async def test_fragmented_messages_are_reassembled(server: RunningServer) -> None:
    async with raw_client(server, "alice") as alice:
        text = json.dumps({"type": "presence.ping", "id": "frag"})
        for i, part in enumerate((text[:5], text[5:12], text[12:])):
            await alice.send_event(TextMessage(data=part, message_finished=i == 2))
        with trio.fail_after(5):
            assert (await alice.reply("frag"))["type"] == "presence.pong"


def test_the_pong_fast_path_recognises_what_wsproto_clients_send() -> None:
    """The server skips wsproto for a lone 6-byte pong; it must be what clients really send."""
    from wsproto.connection import Connection
    from wsproto.events import Pong

    from signald.transport.framing import PONG_HEAD, PONG_SIZE
    from signald.transport.wsproto_probe import frame_decoder

    wire = Connection(ConnectionType.CLIENT).send(Pong())
    assert len(wire) == PONG_SIZE and wire[:2] == PONG_HEAD
    # wsproto's decoder is where the fast path looks for a half-received frame
    server_side = Connection(ConnectionType.SERVER)
    decoder = frame_decoder(server_side)
    assert decoder is not None and decoder.header is None and not len(decoder.buffer)
    server_side.receive_data(Connection(ConnectionType.CLIENT).send(TextMessage(data="hello"))[:4])
    list(server_side.events())
    assert decoder.header is not None or len(decoder.buffer)


def test_the_wsproto_probe_finds_the_frame_decoder_in_the_installed_wsproto() -> None:
    """Without it the fast paths turn themselves off (everything goes through wsproto, slower):
    a wsproto release that moves ``_proto._frame_decoder`` must fail here, not go unnoticed."""
    from wsproto.connection import Connection
    from wsproto.frame_protocol import FrameDecoder

    from signald.transport.wsproto_probe import frame_decoder

    for side in (ConnectionType.SERVER, ConnectionType.CLIENT):
        assert isinstance(frame_decoder(Connection(side)), FrameDecoder), "wsproto moved _proto._frame_decoder"


async def test_a_frame_whose_last_six_bytes_look_like_a_pong_is_not_taken_for_one(server: RunningServer) -> None:
    """A frame split so its tail arrives alone, looking like a pong, is still parsed as a frame."""
    async with raw_client(server, "alice") as alice:
        text = json.dumps({"type": "presence.ping", "id": "tail"})
        while (len(text) - 6) % 4:
            text = text[:-1] + " }"
        payload = text.encode()
        n = len(payload)
        assert n < 126
        # a masking key that turns the payload's last six bytes into 8a 80 ...: a masked empty pong
        key = bytes([payload[n - 6] ^ 0x8A, payload[n - 5] ^ 0x80, 0, 0])
        masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        wire = bytes([0x81, 0x80 | n]) + key + masked
        head, tail = wire[:-6], wire[-6:]
        assert tail[:2] == b"\x8a\x80"
        await alice.stream.send_all(head)
        await trio.testing.wait_all_tasks_blocked(0.01)  # the server has read the head alone
        await alice.stream.send_all(tail)
        with trio.fail_after(5):
            assert (await alice.reply("tail"))["type"] == "presence.pong"


async def test_fragments_adding_up_over_the_transport_cap_close_with_1009(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await start_server(nursery, make_config(tmp_path, server={"max_transport_bytes": 1000}))
    async with raw_client(server, "alice") as alice, connect(server.url, user="bob") as bob:
        for _ in range(3):
            await alice.send_event(TextMessage(data="x" * 400, message_finished=False))
        with trio.fail_after(5):
            close: CloseConnection = await alice.next_of(CloseConnection)
        assert close.code == 1009
        assert (await bob.request_raw("presence.ping"))["type"] == "presence.pong"


@pytest.mark.parametrize(("garbage", "code"), [
    (b"\x81\x05hello", 1002),  # an unmasked client frame
    (b"\x83\x80\x00\x00\x00\x00", 1002),  # a reserved opcode
])
async def test_a_protocol_violation_closes_with_its_code_and_nobody_else_notices(
    server: RunningServer, garbage: bytes, code: int
) -> None:
    async with raw_client(server, "alice") as alice, connect(server.url, user="bob") as bob:
        await alice.stream.send_all(garbage)
        with trio.fail_after(5):
            close: CloseConnection = await alice.next_of(CloseConnection)
        assert close.code == code
        assert (await bob.request_raw("presence.ping"))["type"] == "presence.pong"


async def test_invalid_utf8_in_a_text_frame_closes_with_1007(server: RunningServer) -> None:
    async with raw_client(server, "alice") as alice:
        # FIN + text, masked with a zero key, one byte: a lone UTF-8 continuation byte.
        await alice.stream.send_all(b"\x81\x81\x00\x00\x00\x00\x80")
        with trio.fail_after(5):
            close: CloseConnection = await alice.next_of(CloseConnection)
        assert close.code == 1007


async def test_the_server_echoes_a_client_close_and_ends_tcp(server: RunningServer) -> None:
    async with raw_client(server, "alice") as alice:
        await alice.send_event(CloseConnection(code=4321, reason="bye"))
        with trio.fail_after(5):
            close: CloseConnection = await alice.next_of(CloseConnection)
            assert close.code == 4321
            assert await alice.next_event() is None  # then TCP is closed by the server


async def test_a_client_close_completes_the_closing_handshake(server: RunningServer) -> None:
    async with connect(server.url, user="alice") as alice:
        ws = alice.ws
    assert ws.closed is not None and ws.closed.code == 1000


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"426"),  # plain HTTP, no upgrade (see tests/e2e/test_http.py)
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", b"426"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n", b"426"),
    (b"\x16\x03\x01 not http at all\r\n\r\n", b"400"),
])
async def test_requests_that_are_not_websocket_upgrades_get_an_http_error(
    server: RunningServer, request_bytes: bytes, status: bytes
) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await stream.send_all(request_bytes)
    response = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(4096):
            response += chunk
    assert response.split(b" ")[1] == status
    async with connect(server.url, user="alice") as alice:  # and the server is fine
        assert (await alice.request_raw("presence.ping"))["type"] == "presence.pong"


async def test_a_client_that_never_finishes_its_handshake_is_dropped_after_connect_timeout(
    autojump_clock: MockClock, tmp_path: Path, nursery: trio.Nursery
) -> None:
    server = await start_server(nursery, make_config(tmp_path, server={"connect_timeout_s": 7}))
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    start = trio.current_time()
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and nothing more
    assert await stream.receive_some(100) == b""
    assert 7 <= trio.current_time() - start < 8


async def test_handshake_refusals_still_carry_their_status_and_reason(tmp_path: Path, nursery: trio.Nursery) -> None:
    server = await start_server(nursery, make_config(tmp_path, server={"refusals": "http"}))
    with trio.fail_after(5), pytest.raises(trio_websocket.ConnectionRejected) as refused:
        async with trio_websocket.open_websocket_url(server.url + "?user=a%20b"):
            pass  # pragma: no cover
    assert refused.value.status_code == 401
    assert refused.value.body is not None and b"user must be" in refused.value.body


async def test_handshake_refusals_by_default_complete_it_send_one_error_and_close(server: RunningServer) -> None:
    with trio.fail_after(5):
        async with trio_websocket.open_websocket_url(server.url + "?user=a%20b") as ws:
            frame = json.loads(await ws.get_message())
            with pytest.raises(trio_websocket.ConnectionClosed):
                await ws.get_message()
    assert frame["type"] == "error" and "user must be" in frame["data"]["message"]
    assert ws.closed is not None and (ws.closed.code, ws.closed.reason) == (4401, frame["data"]["message"])


def test_opcode_constants_match_wsproto() -> None:
    from signald.transport.framing import PING_FRAME

    assert PING_FRAME[0] & 0x0F == Opcode.PING and PING_FRAME[0] & 0x80 and PING_FRAME[1] == 0


# --------------------------------------------------------------------------- whole-frame fast path


@asynccontextmanager
async def server_socket(max_message_bytes: int = 1 << 20) -> AsyncIterator[tuple[Any, Any, list[bytes]]]:
    """A ServerWebSocket on a memory stream, the client end, and what reached wsproto's parser."""
    from wsproto.connection import Connection

    from signald.delivery.outbox import Outbox
    from signald.transport.websocket import ServerWebSocket

    client_end, server_end = trio.testing.memory_stream_pair()
    conn = Connection(ConnectionType.SERVER)
    parsed: list[bytes] = []
    receive_data = conn.receive_data

    def spy(data: bytes | None) -> None:
        parsed.append(data or b"")
        receive_data(data)

    conn.receive_data = spy  # type: ignore[method-assign]
    ws = ServerWebSocket(server_end, conn, Outbox(8, binary=False, on_overflow=lambda box: None),
                         max_message_bytes=max_message_bytes)
    yield ws, client_end, parsed


@given(st.one_of(st.text(max_size=400), st.binary(max_size=400)))
@settings(max_examples=200, deadline=None)
def test_a_whole_message_skips_wsproto_and_reads_exactly_as_wsproto_would(message: str | bytes) -> None:
    async def main() -> None:
        async with server_socket() as (ws, client_end, parsed):
            await client_end.send_all(client_wire(message))
            assert await ws.receive_message() == message
            assert parsed == []  # 7- and 16-bit lengths, text and binary: wsproto never saw it
            # wsproto, which keeps the connection's state, takes over for a fragmented message
            half = len(message) // 2
            await client_end.send_all(client_wire(message[:half], message[half:]))
            assert await ws.receive_message() == message
            assert len(parsed) == 1
            await client_end.send_all(client_wire(message))
            assert await ws.receive_message() == message
            assert len(parsed) == 1  # and the next whole message skips it again

    trio.run(main)


async def test_several_whole_messages_in_one_read_skip_wsproto_and_come_in_order() -> None:
    async with server_socket(max_message_bytes=1000) as (ws, client_end, parsed):
        three = client_wire('{"a":1}') + client_wire(b"\x00\x01") + client_wire("é" * 200)  # 7-, 16-bit
        await client_end.send_all(three)
        assert [await ws.receive_message() for _ in range(3)] == ['{"a":1}', b"\x00\x01", "é" * 200]
        assert parsed == []


async def test_a_burst_is_parsed_ahead_up_to_what_only_wsproto_handles() -> None:
    """Whole messages, then a ping, a message and half a frame: the messages come in the order sent,
    the ping is answered (queued), and wsproto parses from the ping on (at a frame boundary)."""
    async with server_socket(max_message_bytes=1000) as (ws, client_end, parsed):
        client = Connection(ConnectionType.CLIENT)
        ping = client.send(Ping(b"p"))
        last = client_wire("x" * 300)
        wire = client_wire("one") + client_wire("two") + ping + client_wire("three") + last[:100]
        received: list[str | bytes | None] = []

        async def receive(count: int) -> None:
            for _ in range(count):
                received.append(await ws.receive_message())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive, 4)
            await client_end.send_all(wire)
            await trio.testing.wait_all_tasks_blocked()
            assert received == ["one", "two", "three"]
            await client_end.send_all(last[100:])
        assert received == ["one", "two", "three", "x" * 300]
        tail = wire[len(client_wire("one") + client_wire("two")):]
        assert parsed == [tail, last[100:]]
        assert ws.outbox.queued_bytes == 3  # the pong (b"\\x8a\\x01p"), for the writer (this test runs none)


async def test_messages_parsed_ahead_are_dropped_once_our_close_went_out() -> None:
    """As for wsproto's events: what the peer sent after the message during which the server
    closed is not handed over; the peer's close reply still ends the connection cleanly."""
    async with socket_pair() as (ws, client_end, client):
        await client_end.send_all(client_wire("first") + client_wire("second") + client_wire("third"))
        assert await ws.receive_message() == "first"
        assert ws.send_close_now(1001, "server shutting down")  # while "first" is handled
        client.receive_data(await client_end.receive_some())
        (close,) = client.events()
        await client_end.send_all(client.send(close.response()))
        with trio.fail_after(5):
            assert await ws.receive_message() is None
        assert ws.failure is None and not ws.broken


@pytest.mark.parametrize("wire", [client_wire("é" * 8), client_wire("éé", "é" * 6)], ids=["whole", "fragments"])
async def test_the_cap_counts_the_bytes_of_text_not_its_characters(wire: bytes) -> None:
    async with server_socket(max_message_bytes=10) as (ws, client_end, _):
        await client_end.send_all(wire)  # 8 characters, 16 bytes of UTF-8
        assert await ws.receive_message() is None
        assert ws.failure is not None and ws.failure[0] == 1009


async def test_a_message_over_the_cap_in_a_burst_fails_with_1009_after_those_before_it() -> None:
    async with server_socket(max_message_bytes=10) as (ws, client_end, parsed):
        await client_end.send_all(client_wire("ok") + client_wire("y" * 11) + client_wire("never"))
        assert await ws.receive_message() == "ok"
        assert await ws.receive_message() is None
        assert ws.failure is not None and ws.failure[0] == 1009
        assert parsed == []


_FRAMES = st.lists(st.one_of(
    st.text(max_size=200).map(lambda t: ("message", t)),
    st.binary(max_size=200).map(lambda b: ("message", b)),
    st.lists(st.text(max_size=40), min_size=2, max_size=4).map(lambda parts: ("fragments", parts)),
    st.binary(max_size=20).map(lambda b: ("ping", b)),
), min_size=1, max_size=12)


@given(_FRAMES, st.lists(st.integers(min_value=1, max_value=400), max_size=6))
@settings(max_examples=150, deadline=None)
def test_any_frames_cut_anywhere_read_as_the_client_sent_them(frames: list[tuple[str, Any]], cuts: list[int]) -> None:
    """Whole messages, fragmented ones and pings, sent as one stream cut into reads at random
    places: the server reads every message whole and in order, whichever parser took each."""
    client = Connection(ConnectionType.CLIENT)
    wire, expected = b"", []
    for kind, value in frames:
        if kind == "ping":
            wire += client.send(Ping(value))
        elif kind == "fragments":
            wire += client_wire(*value)
            expected.append("".join(value))
        else:
            wire += client_wire(value)
            expected.append(value)
    pieces, at = [], 0
    for cut in cuts:
        if at >= len(wire):
            break
        pieces.append(wire[at:at + cut])
        at += cut
    pieces.append(wire[at:])

    async def main() -> None:
        async with server_socket(max_message_bytes=10_000) as (ws, client_end, _):
            received: list[str | bytes | None] = []

            async def receive() -> None:
                for _ in expected:
                    received.append(await ws.receive_message())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                for piece in pieces:
                    if piece:
                        await client_end.send_all(piece)
                        await trio.testing.wait_all_tasks_blocked()
            assert received == expected

    trio.run(main)


@pytest.mark.parametrize(("wire", "code"), [
    (b"\x81\xfe\x00\x05\x00\x00\x00\x00hello", 1002),  # 16-bit length for 5 bytes: not the shortest
    (b"\x81\x81\x00\x00\x00\x00\x80", 1007),  # whole, but not UTF-8
    (b"\xc1\x80\x00\x00\x00\x00", 1002),  # RSV1 without a negotiated extension
])
async def test_whole_but_invalid_frames_get_wsprotos_verdict(wire: bytes, code: int) -> None:
    async with server_socket() as (ws, client_end, parsed):
        await client_end.send_all(wire)
        assert await ws.receive_message() is None
        assert ws.failure is not None and ws.failure[0] == code
        assert parsed == [wire]


async def test_a_whole_message_over_the_cap_fails_with_1009() -> None:
    async with server_socket(max_message_bytes=200) as (ws, client_end, parsed):
        await client_end.send_all(client_wire("y" * 201))
        assert await ws.receive_message() is None
        assert ws.failure is not None and ws.failure[0] == 1009
        assert parsed == []


# --------------------------------------------------------------------------- a stopping server's close


@asynccontextmanager
async def socket_pair() -> AsyncIterator[tuple[Any, Any, Any]]:
    """A ServerWebSocket on one end of a real socket pair (its outbox writes directly), the other
    end, and a wsproto client speaking on it."""
    from wsproto.connection import Connection

    from signald.delivery.outbox import Outbox, direct_writer
    from signald.transport.websocket import ServerWebSocket

    server_sock, client_sock = trio.socket.socketpair()
    server_end, client_end = trio.SocketStream(server_sock), trio.SocketStream(client_sock)
    outbox = Outbox(8, binary=False, on_overflow=lambda: None)
    outbox.attach_writer(direct_writer(server_end), lambda: None)
    ws = ServerWebSocket(server_end, Connection(ConnectionType.SERVER), outbox, max_message_bytes=1 << 20)
    async with client_end:
        yield ws, client_end, Connection(ConnectionType.CLIENT)


async def test_a_close_frame_written_from_outside_completes_on_the_peers_reply() -> None:
    async with socket_pair() as (ws, client_end, client):
        assert ws.send_close_now(1001, "server shutting down")
        client.receive_data(await client_end.receive_some())
        (close,) = client.events()
        assert (close.code, close.reason) == (1001, "server shutting down")
        # a request the client sent before it saw the close frame is not handed to the server
        await client_end.send_all(client_wire('{"type":"presence.ping","id":1}') + client.send(close.response()))
        assert await ws.receive_message() is None
        assert ws.failure is None  # a clean close, not a protocol error
        ws.outbox.push_control(b"\x89\x00")  # nothing goes out after the close frame
        assert ws.close_now()
        assert await client_end.receive_some() == b""  # and the server ended TCP


@pytest.mark.parametrize("arrival", ["whole", "cut in two", "after a request of its own", "without a code"])
async def test_the_reply_to_a_close_frame_written_from_outside_ends_the_connection_however_it_arrives(
    arrival: str,
) -> None:
    """A plain close reply alone in one read is taken without wsproto; the others go through it."""
    async with socket_pair() as (ws, client_end, client), trio.open_nursery() as nursery:
        assert ws.send_close_now(1001, "server shutting down")
        client.receive_data(await client_end.receive_some())
        (close,) = client.events()
        reply = client.send(CloseConnection(code=1005) if arrival == "without a code" else close.response())
        ended: list[str | bytes | None] = []
        done = trio.Event()

        async def read() -> None:
            ended.append(await ws.receive_message())
            done.set()

        nursery.start_soon(read)
        parts = {"cut in two": [reply[:3], reply[3:]],
                 "after a request of its own": [client_wire('{"type":"presence.ping","id":1}'), reply]}
        for part in parts.get(arrival, [reply]):
            await trio.testing.wait_all_tasks_blocked()  # the server has read what came before
            await client_end.send_all(part)
        with trio.fail_after(5):
            await done.wait()
        assert ended == [None] and ws.failure is None and not ws.broken  # a clean close, nothing handed over
        assert ws.close_now()
        assert await client_end.receive_some() == b""  # the server ended TCP, writing nothing more


async def test_a_close_frame_is_not_written_from_outside_while_a_frame_is_half_sent() -> None:
    async with socket_pair() as (ws, client_end, _):
        ws.outbox.keep_unsent(b"\x81\x05hel")  # the tail of a frame a cancelled writer left
        assert not ws.send_close_now(1001, "server shutting down")
        with trio.move_on_after(0.05):
            assert await client_end.receive_some() == b"", "nothing may be written"
