"""The fast upgrade path (signald.transport.upgrade) says what wsproto says, or leaves it to wsproto.

Every request here is read by both: where the fast path takes one, the request it describes and
the 101 it writes must be wsproto's, byte for byte; where wsproto refuses (or would fail), the fast
path must have declined it. A wsproto release that changes its answer fails here first.
"""

from __future__ import annotations

import pytest
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, Request
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from signald.transport.upgrade import accept_response, parse_upgrade

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def request(*headers: bytes, line: bytes = b"GET /?user=alice HTTP/1.1", tail: bytes = b"") -> bytes:
    return line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + tail


COMMON = (b"Host: 127.0.0.1:8765", b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Key: " + KEY,
          b"Sec-WebSocket-Version: 13")

ACCEPTED = {
    "minimal": request(*COMMON),
    "subprotocols": request(*COMMON, b"Sec-WebSocket-Protocol: signald.v1, signald.msgpack.v1"),
    "browser": request(
        b"Host: chat.example.com", b"Connection: keep-alive, Upgrade", b"Pragma: no-cache",
        b"Cache-Control: no-cache", b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0.0.0 Safari/537.36",
        b"Upgrade: websocket", b"Origin: https://chat.example.com", b"Sec-WebSocket-Version: 13",
        b"Accept-Encoding: gzip, deflate, br, zstd", b"Accept-Language: en-US,en;q=0.9",
        b"Cookie: a=b; c=d", b"Sec-WebSocket-Key: " + KEY,
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
        b"Sec-WebSocket-Protocol: signald.v1", line=b"GET /ws?token=abc.def.ghi HTTP/1.1"),
    "odd case and spacing": request(b"HOST:x", b"upgrade:   WebSocket\t", b"CONNECTION: upgrade",
                                    b"sec-websocket-key:\t" + KEY, b"Sec-Websocket-Version: 13",
                                    b"X-Forwarded-For: 203.0.113.9,  198.51.100.2", b"X-Empty:"),
    "repeated ordinary header": request(*COMMON, b"X-Forwarded-For: 1.1.1.1", b"X-Forwarded-For: 2.2.2.2"),
}

DECLINED = {  # the fast path leaves these to wsproto, which refuses or reads them itself
    "POST": request(*COMMON, line=b"POST / HTTP/1.1"),
    "HTTP/1.0": request(*COMMON, line=b"GET / HTTP/1.0"),
    "no Host": request(*COMMON[1:]),
    "two Hosts": request(*COMMON, b"Host: other"),
    "bad Host": request(b"Host: xn--zz", *COMMON[1:]),
    "no Upgrade": request(COMMON[0], *COMMON[2:]),
    "Upgrade: h2c": request(COMMON[0], b"Upgrade: h2c", *COMMON[2:]),
    "no Connection: Upgrade": request(*COMMON[:2], b"Connection: keep-alive", *COMMON[3:]),
    "no key": request(*COMMON[:3], COMMON[4]),
    "empty key": request(*COMMON[:3], b"Sec-WebSocket-Key:", COMMON[4]),
    "two keys": request(*COMMON, b"Sec-WebSocket-Key: " + KEY),
    "version 8": request(*COMMON[:4], b"Sec-WebSocket-Version: 8"),
    "no version": request(*COMMON[:4]),
    "a body": request(*COMMON, b"Content-Length: 3", tail=b"abc"),
    "chunked": request(*COMMON, b"Transfer-Encoding: chunked"),
    "bytes after the request": request(*COMMON, tail=b"\x81\x80\x00\x00\x00\x00"),
    "space before colon": request(*COMMON, b"X-Bad : 1"),
    "folded header": request(*COMMON, b"X-Long: a", b" folded"),
    "control character": request(*COMMON, b"X-Bad: a\x01b"),
    "non-ASCII value": request(*COMMON, "X-Name: é".encode()),
    "space in target": request(*COMMON, line=b"GET /a b HTTP/1.1"),
    "plain HTTP": request(b"Host: x", line=b"GET /healthz HTTP/1.1"),
    "incomplete": request(*COMMON)[:-2],
}


def wsproto_reads(data: bytes) -> Request | None:
    h11 = H11Handshake(ConnectionType.SERVER)
    try:
        h11.receive_data(data)
    except (RemoteProtocolError, UnicodeError):
        return None
    events = [e for e in h11.events() if isinstance(e, Request)]
    return events[0] if events else None


@pytest.mark.parametrize("name", sorted(ACCEPTED))
@pytest.mark.parametrize("subprotocol", [None, "signald.v1"])
def test_an_accepted_request_is_what_wsproto_reads_and_gets_its_101(name: str, subprotocol: str | None) -> None:
    data = ACCEPTED[name]
    fast = parse_upgrade(data)
    assert fast is not None
    h11 = H11Handshake(ConnectionType.SERVER)
    h11.receive_data(data)
    (event,) = h11.events()
    assert isinstance(event, Request)
    assert (fast.target, list(fast.extra_headers), list(fast.subprotocols)) == (
        event.target, list(event.extra_headers), list(event.subprotocols))
    if subprotocol is not None and subprotocol not in fast.subprotocols:
        return
    assert accept_response(fast.key, subprotocol) == h11.send(AcceptConnection(subprotocol=subprotocol))


@pytest.mark.parametrize("name", sorted(DECLINED))
def test_what_wsproto_refuses_or_reads_differently_is_left_to_it(name: str) -> None:
    assert parse_upgrade(DECLINED[name]) is None


def test_every_valid_upgrade_declined_here_is_still_one_wsproto_accepts() -> None:
    # The fast path may decline a valid request (wsproto then reads it); it must never accept an
    # invalid one. These valid ones are declined only out of caution, and still served.
    for name in ("repeated ordinary header",):
        assert wsproto_reads(ACCEPTED[name]) is not None
    for name in ("two Hosts", "no key", "version 8", "no Upgrade", "POST", "bad Host"):
        assert wsproto_reads(DECLINED[name]) is None, name
