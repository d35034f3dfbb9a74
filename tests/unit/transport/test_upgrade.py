"""The upgrade checks and the 101 (signald.transport.upgrade), through the real handshake on a socket pair.

wsproto's ``H11Handshake`` is what signald used before and what the checks copy: for every request
below, what the server answers (the 101, or the refusal, byte for byte) and the upgrade it reads
are compared with what ``H11Handshake`` gives for the same bytes. Where signald is stricter (a
malformed ``Sec-WebSocket-Key``), the test says so.
"""

from __future__ import annotations

import base64
import os
import socket

import h11
import pytest
from conftest import handshake_over
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, RejectConnection, Request, TextMessage
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from signald.transport.handshake import Upgrade, send_now
from signald.transport.upgrade import BadUpgrade, switching_protocols, vet_request

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT_TOKEN = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 1.3's example key


def request(*lines: str, method: str = "GET", target: str = "/?user=ann", version: str = "1.1") -> bytes:
    head = f"{method} {target} HTTP/{version}\r\n" + "".join(f"{line}\r\n" for line in lines)
    return (head + "\r\n").encode("latin-1")


BASE = ("Host: example", "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {KEY.decode()}",
        "Sec-WebSocket-Version: 13")


def without(name: str, *extra: str) -> tuple[str, ...]:
    return tuple(line for line in BASE if not line.lower().startswith(name.lower() + ":")) + extra


# (request, the status it is refused with): each of wsproto's checks, in its order.
BAD = {
    "method": (request(*BASE, method="POST"), 400),
    "no Connection": (request(*without("Connection")), 400),
    "Connection without upgrade": (request(*without("Connection", "Connection: keep-alive")), 400),
    "no version": (request(*without("Sec-WebSocket-Version")), 400),
    "another version": (request(*without("Sec-WebSocket-Version", "Sec-WebSocket-Version: 8")), 426),
    "no key": (request(*without("Sec-WebSocket-Key")), 400),
    "no Upgrade": (request(*without("Upgrade")), 400),
    "Upgrade: h2c": (request(*without("Upgrade", "Upgrade: h2c")), 400),
    "no Host (HTTP/1.0)": (request(*without("Host"), version="1.0"), 400),
    "no Host (HTTP/1.1: h11 refuses it)": (request(*without("Host")), 400),
    "not HTTP": (b"\x16\x03\x01 not http at all\r\n\r\n", 400),
    # the version is checked before the key and the Upgrade header, as wsproto does
    "another version, no key": (request("Host: x", "Connection: upgrade", "Sec-WebSocket-Version: 7"), 426),
}
GOOD = {
    "plain": request(*BASE),
    "tokens in any case, Connection a list": request(*without("Upgrade", "upgrade: WebSocket"),
                                                     "Connection: keep-alive, UPGRADE"),
    "subprotocols over two headers": request(*BASE, "Sec-WebSocket-Protocol: a, signald.v1.json",
                                             "Sec-WebSocket-Protocol: signald.v1.msgpack"),
    "extensions and other headers": request(*BASE, "Sec-WebSocket-Extensions: permessage-deflate",
                                            "Origin: https://example.org", "Authorization: Bearer x.y.z"),
    "HTTP/1.0": request(*BASE, version="1.0"),
}


def wsproto_reading(data: bytes) -> Request | RejectConnection:
    """What wsproto's H11Handshake made of ``data``: the request, or the refusal it suggested."""
    handshake = H11Handshake(ConnectionType.SERVER)
    try:
        handshake.receive_data(data)
    except RemoteProtocolError as exc:
        assert isinstance(exc.event_hint, RejectConnection)
        return exc.event_hint
    (event,) = handshake.events()
    assert isinstance(event, Request)
    return event


def wsproto_answer(data: bytes, subprotocol: str | None = None) -> bytes:
    """The bytes wsproto's H11Handshake answers ``data`` with (a 101 accepting ``subprotocol``, or its refusal)."""
    handshake = H11Handshake(ConnectionType.SERVER)
    try:
        handshake.receive_data(data)
    except RemoteProtocolError as exc:
        assert isinstance(exc.event_hint, RejectConnection)
        return handshake.send(exc.event_hint)
    return handshake.send(AcceptConnection(subprotocol=subprotocol))


def answered(peer: socket.socket) -> bytes:
    peer.settimeout(5)
    return peer.recv(65536)


@pytest.mark.parametrize("case", list(BAD))
async def test_a_bad_upgrade_gets_the_status_wsproto_gave_it_byte_for_byte(
    pair: tuple[socket.socket, socket.socket], case: str,
) -> None:
    data, status = BAD[case]
    _, upgrade, answer = await handshake_over(pair, data)
    assert upgrade is None
    assert answer.startswith(b"HTTP/1.1 %d " % status)
    assert answer == wsproto_answer(data)
    if status == 426 or case == "no version":
        assert b"Sec-WebSocket-Version: 13\r\n" in answer


@pytest.mark.parametrize("case", list(GOOD))
async def test_a_good_upgrade_is_read_as_wsproto_read_it_and_accepted_with_its_101(
    pair: tuple[socket.socket, socket.socket], case: str,
) -> None:
    data = GOOD[case]
    handshake, upgrade, _ = await handshake_over(pair, data)
    assert upgrade is not None
    theirs = wsproto_reading(data)
    assert isinstance(theirs, Request)
    assert (upgrade.path, upgrade.headers, upgrade.subprotocols) == (
        theirs.target, tuple(theirs.extra_headers), tuple(theirs.subprotocols))
    assert all(name not in (b"host", b"sec-websocket-protocol", b"sec-websocket-extensions")
               for name, _ in upgrade.headers)
    subprotocol = upgrade.subprotocols[-1] if upgrade.subprotocols else None
    answer, connection = handshake.upgrade(subprotocol)
    assert answer == wsproto_answer(data, subprotocol)
    await send_now(handshake.stream, answer + connection.send(TextMessage(data="hi")))
    assert answered(pair[1]) == answer + b"\x81\x02hi"


def test_the_101_holds_the_accept_token_and_the_selected_subprotocol_only() -> None:
    assert switching_protocols(KEY, None) == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + ACCEPT_TOKEN + b"\r\n\r\n")
    assert switching_protocols(KEY, "signald.v1.msgpack") == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + ACCEPT_TOKEN + b"\r\nSec-WebSocket-Protocol: signald.v1.msgpack\r\n\r\n")


@pytest.mark.parametrize("subprotocol", [None, "signald.v1.json", "signald.v1.msgpack", "x"])
def test_the_101_is_what_h11_writes_for_each_connection(subprotocol: str | None) -> None:
    for _ in range(20):
        key = base64.b64encode(os.urandom(16))
        data = request(*without("Sec-WebSocket-Key", f"Sec-WebSocket-Key: {key.decode()}"),
                       *([f"Sec-WebSocket-Protocol: {subprotocol}"] if subprotocol else []))
        assert switching_protocols(key, subprotocol) == wsproto_answer(data, subprotocol)


async def test_only_an_offered_subprotocol_can_be_selected(pair: tuple[socket.socket, socket.socket]) -> None:
    handshake, upgrade, _ = await handshake_over(pair, request(*BASE, "Sec-WebSocket-Protocol: signald.v1.json"))
    assert upgrade is not None and upgrade.subprotocols == ("signald.v1.json",)
    with pytest.raises(ValueError, match="not offered"):
        handshake.upgrade("signald.v1.msgpack")


@pytest.mark.parametrize("key", [b"", b"c2hvcnQ=", b"dGhlIHNhbXBsZSBub25jZQ", b"dGhlIHNhbXBsZSBub25jZQ==dGhl",
                                 b"dGhlIHNhbXBsZSBub25j!Q==", b"dGhlIHNhbXBsZSBub25jZSBhbmQgbW9yZQ=="])
async def test_a_key_that_is_not_16_bytes_in_base64_is_refused_400_where_wsproto_let_it_through(
    pair: tuple[socket.socket, socket.socket], key: bytes,
) -> None:
    data = request(*without("Sec-WebSocket-Key"), "Sec-WebSocket-Key: " + key.decode())
    _, upgrade, answer = await handshake_over(pair, data)
    assert upgrade is None
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert isinstance(wsproto_reading(data), Request)  # stricter than before: RFC 6455 4.2.1


def test_a_subprotocol_header_that_is_not_ascii_is_read_not_failed() -> None:
    data = request(*BASE, "Sec-WebSocket-Protocol: caf\xe9, signald.v1.json")
    with pytest.raises(UnicodeDecodeError):
        wsproto_reading(data)  # before: the connection failed unanswered (and was logged as an error)
    parser = h11.Connection(h11.SERVER)
    parser.receive_data(data)
    event = parser.next_event()
    assert isinstance(event, h11.Request)
    vetted = vet_request(event)  # now: a subprotocol that is not ours, refused as any other (server.py)
    assert isinstance(vetted, Upgrade) and vetted.subprotocols == ("caf\xe9", "signald.v1.json")


def test_a_request_h11_parsed_is_vetted_without_io() -> None:
    parser = h11.Connection(h11.SERVER)
    parser.receive_data(request(*without("Sec-WebSocket-Version", "Sec-WebSocket-Version: 8")))
    event = parser.next_event()
    assert isinstance(event, h11.Request)
    assert vet_request(event) == BadUpgrade(426, ((b"Sec-WebSocket-Version", b"13"),))


@pytest.mark.parametrize("case", list(BAD))
async def test_beside_a_plain_http_server_a_bad_upgrade_is_still_refused_and_only_plain_http_is_kept(
    pair: tuple[socket.socket, socket.socket], case: str,
) -> None:
    """The daemon always has a plain-HTTP server (keep_plain): a request that asked for a WebSocket
    (``Upgrade: websocket``, a key or a version) gets its refusal as above; it used to be handed over
    and answered 426 "connect with a WebSocket client". What never asked for one, or is not HTTP, is kept."""
    data, status = BAD[case]
    handshake, upgrade, answer = await handshake_over(pair, data, keep_plain=True)
    assert upgrade is None
    if case in ("not HTTP", "no Host (HTTP/1.1: h11 refuses it)"):  # the plain-HTTP server answers 400 itself
        assert (handshake.plain, answer) == (data, b"")
        return
    assert handshake.plain is None
    assert answer == wsproto_answer(data)
    assert wsproto_answer(data).startswith(b"HTTP/1.1 %d " % status)


def test_only_a_request_that_names_websocket_or_carries_its_headers_asks_for_one() -> None:
    from signald.transport.upgrade import asks_for_websocket

    def parsed(*lines: str) -> h11.Request:
        parser = h11.Connection(h11.SERVER)
        parser.receive_data(request(*lines))
        event = parser.next_event()
        assert isinstance(event, h11.Request)
        return event

    assert asks_for_websocket(parsed("Host: x", "Upgrade: h2c, WebSocket"))
    assert asks_for_websocket(parsed("Host: x", "Sec-WebSocket-Version: 8"))
    assert asks_for_websocket(parsed("Host: x", f"Sec-WebSocket-Key: {KEY.decode()}"))
    assert not asks_for_websocket(parsed("Host: x", "Upgrade: h2c", "Connection: Upgrade"))
    assert not asks_for_websocket(parsed("Host: x", "Sec-WebSocket-Protocol: signald.v1"))
