"""RFC 6455 byte framing, both ways: the frames the server builds once per fan-out
(signald.delivery.wsframe) and the whole-frame fast path of its reads (signald.transport.framing),
each checked against what wsproto does."""

from __future__ import annotations

import pytest
import wsproto
from conftest import client_wire
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, Request, TextMessage

from signald.delivery.wsframe import OPCODE_BINARY, OPCODE_TEXT, websocket_frame, websocket_payload
from signald.transport.framing import PING_FRAME, fit_close_reason, is_lone_pong, whole_message


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


# ------------------------------------------------------------------ the read fast path (transport)


@given(st.one_of(st.text(max_size=400), st.binary(max_size=400)))
@settings(max_examples=200, deadline=None)
def test_a_whole_message_reads_as_the_client_sent_it(message: str | bytes) -> None:
    assert whole_message(client_wire(message)) == message


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_7_and_16_bit_lengths_are_read_and_64_bit_ones_left_to_wsproto(size: int) -> None:
    message = "é" * (size // 2) + "x" * (size % 2)  # size bytes of UTF-8
    assert whole_message(client_wire(message)) == (message if size < 1 << 16 else None)


@pytest.mark.parametrize(("wire", "why"), [
    (client_wire('{"a":1}') + client_wire('{"b":2}'), "two messages in one read"),
    (client_wire("x" * 300)[:100], "a ws_frame split over reads"),
    (client_wire("hel", "lo")[:9], "the first fragment of a message"),
    (b"\x81\x05hello", "unmasked"),
    (b"\x81\xfe\x00\x05\x00\x00\x00\x00hello", "16-bit length for 5 bytes: not the shortest"),
    (b"\x81\x81\x00\x00\x00\x00\x80", "not UTF-8"),
    (b"\xc1\x80\x00\x00\x00\x00", "RSV1 without a negotiated extension"),
    (b"\x89\x80\x00\x00\x00\x00", "a ping"),
    (b"\x81\xfe\x01", "a truncated header"),
])
def test_what_is_not_exactly_one_valid_whole_message_is_left_to_wsproto(wire: bytes, why: str) -> None:
    assert whole_message(wire) is None, why


def test_a_lone_pong_is_what_wsproto_clients_answer_our_ping_with() -> None:
    from wsproto.connection import Connection
    from wsproto.events import Ping, Pong

    server = Connection(ConnectionType.SERVER)
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(PING_FRAME)
    (ping,) = client.events()
    assert isinstance(ping, Ping) and ping.payload == b""
    assert server.send(Ping()) == PING_FRAME
    pong = client.send(ping.response())
    assert is_lone_pong(pong) and is_lone_pong(Connection(ConnectionType.CLIENT).send(Pong()))
    assert not is_lone_pong(pong + pong) and not is_lone_pong(client_wire("hi")[:6])


def test_close_reasons_are_cut_to_123_bytes_on_a_character_boundary() -> None:
    assert fit_close_reason("short") == "short"
    assert fit_close_reason("x" * 200) == "x" * 123
    cut = fit_close_reason("é" * 100)  # 2 bytes each: 61 fit
    assert cut == "é" * 61 and len(cut.encode()) <= 123
