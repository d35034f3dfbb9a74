"""The whole-frame fast path of the server's reads, as pure functions on bytes (no Trio, no wsproto).

A client sends one request at a time, so most reads hold exactly one whole, unfragmented, masked
text or binary frame (several when the client sends faster than the server reads: a burst, a busy
server), or the 6-byte pong that answers our heartbeat ping, and a client that leaves sends one
close frame. Recognising those here skips wsproto's frame parser (about four fifths of the cost of
receiving a small message; for a close, parsing it and building the reply, about 30 µs of a
connection's set-up and tear-down).
These functions look at the bytes only: the caller must also know that no earlier frame is half
received (wsproto's decoder is idle, see :mod:`signald.transport.wsproto_probe`) and that the
connection is open; anything these functions do not recognise (None, False, what follows the
leading messages) goes through wsproto, which also reports every protocol error.

The server's own close frames are built here too (:func:`close_frame`), byte for byte as wsproto
builds them; the caller tells wsproto of them when it needs its state
(:class:`signald.transport.closing.ClosableWebSocket`).

Names: a *message* is what the peer sent (text or bytes); a *ws_frame* is one RFC 6455 frame;
*wire* is the bytes as read from the socket.
"""

from __future__ import annotations

from typing import Final

from signald.delivery.wsframe import OPCODE_CLOSE, websocket_frame

PING_FRAME: Final = b"\x89\x00"  # FIN + ping, empty payload, unmasked (server to client)
# The answer to PING_FRAME: FIN + pong, masked, empty payload, then the 4-byte masking key.
PONG_HEAD: Final = b"\x8a\x80"
PONG_SIZE: Final = 6
MAX_CLOSE_REASON_BYTES: Final = 123  # RFC 6455 5.5: control frames carry at most 125 bytes, 2 of them the code
CLOSE_NO_CODE: Final = 1005  # RFC 6455 7.1.5: the code of a close frame that carries none (never sent itself)
CLOSE_NORMAL: Final = 1000
# RFC 6455 7.4.1: codes that name what happened locally and may never be sent; wsproto sends 1000 instead.
CLOSE_LOCAL_ONLY: Final = frozenset({1006, 1015})


def is_lone_pong(wire: bytes) -> bool:
    """``wire`` is exactly the answer to :data:`PING_FRAME` (if it starts a ws_frame: the caller's to know)."""
    return len(wire) == PONG_SIZE and wire[:2] == PONG_HEAD


def leading_messages(wire: bytes) -> tuple[list[str | bytes], int]:
    """The whole text and binary messages that ``wire`` starts with, and where the rest of it begins.

    Each is one unfragmented, masked ws_frame with a 7- or 16-bit length and no RSV bits (no
    extension is negotiated), its payload unmasked with one XOR of two ints, not byte by byte; text
    must be valid UTF-8. Parsing stops at the first ws_frame that is anything else (a control
    frame, a fragment, one cut off at the end of ``wire``, invalid UTF-8, a 64-bit length); wsproto
    parses from there on, at a frame boundary. A client that sends faster than the server reads (a
    burst, a busy server) puts several frames in one read: each costs here what a lone one does.
    """
    messages: list[str | bytes] = []
    size = len(wire)
    at = 0
    while size - at >= 6:
        first, second = wire[at], wire[at + 1]
        if (first != 0x81 and first != 0x82) or second < 0x80:  # FIN + text/binary, masked
            break
        n = second & 0x7F
        start = at + 6
        if n == 126:
            if size - at < 8:
                break
            n, start = int.from_bytes(wire[at + 2:at + 4], "big"), at + 8
            if n < 126:  # not the shortest length encoding: wsproto fails the connection
                break
        elif n == 127:
            break
        end = start + n
        if end > size:
            break
        payload = _unmasked(wire, start, n)
        if first == 0x81:
            try:
                messages.append(payload.decode("utf-8"))
            except UnicodeDecodeError:
                break  # wsproto closes with 1007
        else:
            messages.append(payload)
        at = end
    return messages, at


def lone_close(wire: bytes) -> int | None:
    """The code of the peer's close frame if ``wire`` is exactly one that needs no further checks, else None.

    That is: one masked close ws_frame (no RSV bits) with no code (:data:`CLOSE_NO_CODE`, as
    wsproto reports it) or with 1000, 1001 or an application code (3000-4999) and a reason that
    is valid UTF-8. Every other close (a code that is reserved or not allowed, a bad reason, one
    byte of payload, a frame cut over two reads) goes through wsproto, which fails the connection
    with 1002 or 1007 where RFC 6455 says so.
    """
    size = len(wire)
    if size < 6 or wire[0] != 0x88 or wire[1] < 0x80:  # FIN + close, masked
        return None
    n = wire[1] & 0x7F
    if 6 + n != size:  # also a 16- or 64-bit length: a control frame carries at most 125 bytes
        return None
    if n == 0:
        return CLOSE_NO_CODE
    if n == 1:
        return None
    payload = _unmasked(wire, 6, n)
    code = int.from_bytes(payload[:2], "big")
    if code != 1000 and code != 1001 and not 3000 <= code <= 4999:
        return None
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        return None  # wsproto closes with 1007
    return code


def close_frame(code: int, reason: str) -> bytes:
    """The server's close frame with ``code`` and ``reason``, byte for byte as wsproto's
    ``send(CloseConnection(code, reason))`` builds it: the reason cut to 123 bytes of UTF-8 on a
    character boundary (RFC 6455 5.5: a control frame carries at most 125 bytes, 2 of them the
    code), 1000 for a code that may never be sent, and no payload at all for :data:`CLOSE_NO_CODE`:
    the reply to a peer's close without code (RFC 6455 5.5.1 echoes the code alone, ``reason`` "").

    (wsproto tells 1005 by identity with its own enum, which is how it reports a close without code;
    a plain ``int`` 1005 it would send as 1000. Both reach here only as the code to echo.)
    """
    if code == CLOSE_NO_CODE:
        return b"\x88\x00"
    if code in CLOSE_LOCAL_ONLY:
        code = CLOSE_NORMAL
    encoded = reason.encode("utf-8")
    if len(encoded) > MAX_CLOSE_REASON_BYTES:
        encoded = encoded[:MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore").encode("utf-8")
    return websocket_frame(code.to_bytes(2, "big") + encoded, OPCODE_CLOSE)


def _unmasked(wire: bytes, start: int, n: int) -> bytes:
    """The ``n`` payload bytes from ``start``, unmasked with the 4-byte key before them: one XOR of two ints."""
    key = wire[start - 4:start]
    mask = int.from_bytes((key * ((n >> 2) + 1))[:n], "little")
    return (int.from_bytes(wire[start:start + n], "little") ^ mask).to_bytes(n, "little")
