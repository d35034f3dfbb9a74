"""RFC 6455 byte framing, both ways: the frames the server builds once per fan-out
(signald.delivery.wsframe) and the whole-frame fast path of its reads (signald.transport.framing),
each checked against what wsproto does."""

from __future__ import annotations

import pytest
import wsproto
from conftest import client_wire
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import AcceptConnection, BytesMessage, Message, Ping, Request, TextMessage

from signald.delivery.wsframe import OPCODE_BINARY, OPCODE_TEXT, websocket_frame, websocket_payload
from signald.transport.framing import (
    CLOSE_NO_CODE,
    PING_FRAME,
    close_frame,
    is_lone_pong,
    leading_messages,
    lone_close,
)


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
    wire = client_wire(message)
    assert leading_messages(wire) == ([message], len(wire))


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_7_and_16_bit_lengths_are_read_and_64_bit_ones_left_to_wsproto(size: int) -> None:
    message = "é" * (size // 2) + "x" * (size % 2)  # size bytes of UTF-8
    wire = client_wire(message)
    assert leading_messages(wire) == (([message], len(wire)) if size < 1 << 16 else ([], 0))


@pytest.mark.parametrize(("wire", "why"), [
    (client_wire("x" * 300)[:100], "a ws_frame split over reads"),
    (client_wire("hel", "lo")[:9], "the first fragment of a message"),
    (b"\x81\x05hello", "unmasked"),
    (b"\x81\xfe\x00\x05\x00\x00\x00\x00hello", "16-bit length for 5 bytes: not the shortest"),
    (b"\x81\x81\x00\x00\x00\x00\x80", "not UTF-8"),
    (b"\xc1\x80\x00\x00\x00\x00", "RSV1 without a negotiated extension"),
    (b"\x89\x80\x00\x00\x00\x00", "a ping"),
    (b"\x81\xfe\x01", "a truncated header"),
])
def test_what_is_not_a_valid_whole_message_is_left_to_wsproto(wire: bytes, why: str) -> None:
    assert leading_messages(wire) == ([], 0), why
    before = client_wire("a") + client_wire(b"b")  # after whole messages, it stops there too
    assert leading_messages(before + wire) == (["a", b"b"], len(before)), why


_FRAMES = st.lists(st.one_of(
    st.text(max_size=150), st.binary(max_size=150),
    st.lists(st.text(max_size=30), min_size=2, max_size=3).map(tuple),  # a fragmented message
    st.binary(max_size=10).map(lambda payload: ("ping", payload)),
), max_size=10)


@given(_FRAMES)
@settings(max_examples=200, deadline=None)
def test_leading_messages_and_wsproto_on_the_rest_read_what_wsproto_reads_alone(frames: list[object]) -> None:
    client = Connection(ConnectionType.CLIENT)
    wire = b""
    for frame in frames:
        if isinstance(frame, tuple) and frame[:1] == ("ping",):
            wire += client.send(Ping(frame[1]))
        elif isinstance(frame, tuple):
            wire += client_wire(*frame)
        else:
            assert isinstance(frame, (str, bytes))
            wire += client_wire(frame)

    def wsproto_reads(data: bytes) -> list[str | bytes]:
        server, parts, out = Connection(ConnectionType.SERVER), [], []
        server.receive_data(data)
        for event in server.events():
            if isinstance(event, Message):
                parts.append(event.data)
                if event.message_finished:
                    out.append(b"".join(parts) if isinstance(event, BytesMessage) else "".join(parts))
                    parts = []
        return out

    ahead, end = leading_messages(wire)
    assert ahead + wsproto_reads(wire[end:]) == wsproto_reads(wire)


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
    assert close_frame(1000, "short")[4:] == b"short"
    assert close_frame(1000, "x" * 200)[4:] == b"x" * 123
    cut = close_frame(1000, "é" * 100)  # 2 bytes each: 61 fit
    assert cut[4:] == ("é" * 61).encode() and cut[1] == 2 + 122


# ------------------------------------------------------------------ a lone close frame (transport)


def masked_close(payload: bytes, key: bytes = b"\x12\x34\x56\x78") -> bytes:
    return bytes((0x88, 0x80 | len(payload))) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def wsproto_answer(wire: bytes) -> tuple[int, bytes] | tuple[str, int]:
    """What wsproto makes of ``wire`` on an open server connection: (code, the reply the server builds
    with it: the code alone, as ServerWebSocket.close_now) for a peer's close, or ("failed", the
    code it fails the connection with)."""
    from wsproto.connection import Connection, ConnectionState
    from wsproto.events import CloseConnection

    server = Connection(ConnectionType.SERVER)
    server.receive_data(wire)
    (event,) = server.events()
    assert isinstance(event, CloseConnection)
    if server.state is not ConnectionState.REMOTE_CLOSING:  # ParseFailed: reported as a close, state OPEN
        return "failed", event.code
    code = event.response().code
    return code, server.send(CloseConnection(code=code))


@given(code=st.one_of(st.none(), st.integers(0, 65535), st.sampled_from([1000, 1001, 1005, 1015, 2999, 3000, 4999])),
       reason=st.one_of(st.text(max_size=40), st.binary(max_size=40)))
@settings(max_examples=500, deadline=None)
def test_a_close_taken_without_wsproto_is_one_wsproto_accepts_with_the_same_code_and_reply(
    code: int | None, reason: str | bytes
) -> None:
    raw_reason = reason.encode() if isinstance(reason, str) else reason
    payload = b"" if code is None else code.to_bytes(2, "big") + raw_reason[:123]
    wire = masked_close(payload)
    taken = lone_close(wire)
    if taken is not None:
        assert wsproto_answer(wire) == (taken, close_frame(taken, ""))


@pytest.mark.parametrize(("payload", "code"), [
    (b"", CLOSE_NO_CODE),  # no code: 1005, answered with an empty close frame
    ((1000).to_bytes(2, "big"), 1000),
    ((1001).to_bytes(2, "big") + b"going away", 1001),
    ((4321).to_bytes(2, "big") + "é".encode() * 61, 4321),  # a 122-byte reason
    ((3000).to_bytes(2, "big"), 3000),
])
def test_the_closes_clients_send_are_taken_without_wsproto(payload: bytes, code: int) -> None:
    wire = masked_close(payload)
    assert lone_close(wire) == code
    assert wsproto_answer(wire) == (code, close_frame(code, ""))


@pytest.mark.parametrize(("wire", "why"), [
    (masked_close((1002).to_bytes(2, "big")), "a protocol code: wsproto's to judge"),
    (masked_close((1005).to_bytes(2, "big")), "1005 may not be sent: wsproto fails it (1002)"),
    (masked_close((999).to_bytes(2, "big")), "below the codes"),
    (masked_close((5000).to_bytes(2, "big")), "above the codes"),
    (masked_close((2999).to_bytes(2, "big")), "reserved"),
    (masked_close(b"\x03"), "one byte of payload"),
    (masked_close((1000).to_bytes(2, "big") + b"\xff"), "a reason that is not UTF-8: wsproto closes 1007"),
    (masked_close((1000).to_bytes(2, "big"))[:7], "cut over two reads"),
    (masked_close((1000).to_bytes(2, "big")) + client_wire("hi"), "a message after it in the same read"),
    (b"\x88\x02\x03\xe8", "unmasked"),
    (b"\x08\x82" + masked_close((1000).to_bytes(2, "big"))[2:], "not FIN: a fragmented control frame"),
    (b"\xc8\x82" + masked_close((1000).to_bytes(2, "big"))[2:], "RSV1 set"),
])
def test_any_other_close_is_left_to_wsproto(wire: bytes, why: str) -> None:
    assert lone_close(wire) is None, why
