"""What makes an HTTP request a WebSocket upgrade (RFC 6455 4.2.1), and the ``101`` that accepts it.

Sans-IO: :func:`vet_request` looks at a request h11 parsed (never at bytes) and returns the
:class:`Upgrade` it asks for, or the :class:`BadUpgrade` status to answer. The checks and their
statuses are wsproto's (``H11Handshake``), in its order, plus one wsproto leaves out: the
``Sec-WebSocket-Key`` must be 16 bytes in base64. :func:`switching_protocols` is the ``101
Switching Protocols`` answer, as h11 writes it.

Why not wsproto's ``H11Handshake``: it keeps a second copy of the request (its ``Request``
event), reads every header into a dict to find the key again, builds the ``101`` through h11's
state machine, and runs extension negotiation signald never offers: 115 µs per connection here,
60 µs now, of a set-up of about 0.4 ms (docs/benchmarks.md, "Connection set-up: the upgrade on h11
directly").
"""

from __future__ import annotations

import binascii
import functools
from typing import Final

import attrs
import h11
from wsproto.utilities import generate_accept_token

#: RFC 6455 4.2.1: the one version this server speaks.
WEBSOCKET_VERSION: Final = b"13"
_KEY_BYTES: Final = 16  # RFC 6455 4.1: the key is 16 random bytes, base64-encoded
_TOKEN_CHARS: Final = 28  # base64 of a SHA-1 digest (20 bytes): every accept token is this long
# Where h11 writes the accept token: "=" ends a base64 token and is no token character (RFC 9110 5.6.2),
# so no other header of the 101 (a subprotocol is a token) holds it.
_PLACEHOLDER: Final = b"=" * _TOKEN_CHARS


@attrs.frozen
class Upgrade:
    """What the client's upgrade request asked for."""

    path: str
    headers: tuple[tuple[bytes, bytes], ...]  # lower-cased names; Host and Sec-WebSocket-Protocol excluded
    subprotocols: tuple[str, ...]
    key: bytes  # Sec-WebSocket-Key, for the accept token


@attrs.frozen
class BadUpgrade:
    """A request that is not an acceptable upgrade: the status (and headers) to refuse it with."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...] = ()


#: wsproto's answer to anything that is not a well-formed upgrade.
BAD_REQUEST: Final = BadUpgrade(400)

#: The largest request head (request line and headers) either server reads: h11's default bound.
MAX_HEAD_BYTES: Final = 16384
#: The answer to a larger one, whether it is an upgrade or plain HTTP.
HEAD_TOO_LARGE: Final = BadUpgrade(431)


def head_bytes(request: h11.Request) -> int:
    """The size of ``request``'s head as h11 read it (less any optional whitespace it dropped).

    h11 bounds a head only while it is incomplete (``max_incomplete_event_size``): one that a single
    read completes may be larger by up to that read's size. Checking this size against
    :data:`MAX_HEAD_BYTES` makes the bound the same whatever the read boundaries.
    """
    size = len(request.method) + len(request.target) + len(request.http_version) + 9  # " ", " HTTP/", CRLF
    for name, value in request.headers.raw_items():
        size += len(name) + len(value) + 4  # ": ", CRLF
    return size + 2  # the blank line


def vet_request(request: h11.Request) -> Upgrade | BadUpgrade:
    """The upgrade ``request`` asks for, or how to refuse it.

    In wsproto's order: the method must be ``GET``, ``Connection`` must name ``upgrade``,
    ``Sec-WebSocket-Version`` must be 13 (else 426 when one was given, 400 when none, both with
    ``Sec-WebSocket-Version: 13``), ``Sec-WebSocket-Key`` must be there (and 16 bytes in base64),
    ``Upgrade`` must be ``websocket``, ``Host`` must be there; anything else is 400. A header
    given twice counts with its last value, except ``Sec-WebSocket-Protocol``, whose lists add up.
    """
    if request.method != b"GET":
        return BAD_REQUEST
    connection: bytes | None = None
    key: bytes | None = None
    version: bytes | None = None
    upgrade = b""
    host = False
    offered: list[str] = []
    headers: list[tuple[bytes, bytes]] = []
    for raw_name, value in request.headers.raw_items():  # a list: cheaper to walk than the Headers sequence
        name = raw_name.lower()  # (h11's own lower-case names are what iterating the sequence costs)
        if name == b"host":
            host = True
            continue
        if name == b"sec-websocket-protocol":
            # Not ASCII is no subprotocol of ours: latin-1 keeps it unmatched rather than failing here.
            offered += [piece.strip() for piece in value.decode("latin-1").split(",")]
            continue
        if name == b"sec-websocket-extensions":
            continue  # none is offered back
        if name == b"connection":
            connection = value
        elif name == b"sec-websocket-key":
            key = value
        elif name == b"sec-websocket-version":
            version = value
        elif name == b"upgrade":
            upgrade = value
        headers.append((name, value))
    if connection is None or not _names(connection, b"upgrade"):
        return BAD_REQUEST
    if version != WEBSOCKET_VERSION:
        return BadUpgrade(426 if version else 400, ((b"Sec-WebSocket-Version", WEBSOCKET_VERSION),))
    if key is None or not _well_formed_key(key) or upgrade.lower() != b"websocket" or not host:
        return BAD_REQUEST
    return Upgrade(request.target.decode("ascii"), tuple(headers), tuple(offered), key)


def asks_for_websocket(request: h11.Request) -> bool:
    """Whether ``request`` tries to open a WebSocket, well-formed or not: it names ``websocket`` in
    ``Upgrade`` or carries a ``Sec-WebSocket-Key`` or ``Sec-WebSocket-Version``. Such a request that
    :func:`vet_request` refuses gets its status (400, 426), not the plain-HTTP answer that a request
    which never asked for a WebSocket gets (426 Upgrade Required "connect with a WebSocket client")."""
    for raw_name, value in request.headers.raw_items():
        name = raw_name.lower()
        if name in (b"sec-websocket-key", b"sec-websocket-version"):
            return True
        if name == b"upgrade" and _names(value, b"websocket"):
            return True
    return False


def _names(value: bytes, token: bytes) -> bool:
    """Whether the comma-separated header ``value`` names ``token`` (lower case), in any case."""
    return any(piece.strip().lower() == token for piece in value.split(b","))


def _well_formed_key(key: bytes) -> bool:
    """RFC 6455 4.2.1: ``Sec-WebSocket-Key`` decodes (strict base64) to 16 bytes."""
    try:
        return len(binascii.a2b_base64(key, strict_mode=True)) == _KEY_BYTES
    except binascii.Error:
        return False


def switching_protocols(key: bytes, subprotocol: str | None) -> bytes:
    """The ``101 Switching Protocols`` accepting the upgrade with ``key``, selecting ``subprotocol``.

    Byte for byte what h11 writes for it (wsproto's headers, in its order): h11 writes it once per
    subprotocol, with a placeholder where the accept token goes, and each connection's token is
    put in its place (validating and writing the same headers again for each connection would
    cost a tenth of its set-up).
    """
    before, after = _switching_protocols_around_token(subprotocol)
    return before + generate_accept_token(key) + after


@functools.lru_cache(maxsize=8)  # the subprotocols this server selects: its own few
def _switching_protocols_around_token(subprotocol: str | None) -> tuple[bytes, bytes]:
    """h11's ``101`` for ``subprotocol``, split where the accept token goes."""
    client = h11.Connection(h11.CLIENT)  # a request h11 writes and parses, for a server in the state to answer it
    server = h11.Connection(h11.SERVER)
    request = h11.Request(method=b"GET", target=b"/", headers=[
        (b"Host", b"signald"), (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")])
    server.receive_data((client.send(request) or b"") + (client.send(h11.EndOfMessage()) or b""))
    while server.next_event() not in (h11.PAUSED, h11.NEED_DATA):
        pass
    headers = [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"), (b"Sec-WebSocket-Accept", _PLACEHOLDER)]
    if subprotocol is not None:
        headers.append((b"Sec-WebSocket-Protocol", subprotocol.encode("ascii")))
    answer = server.send(h11.InformationalResponse(status_code=101, headers=headers, reason=b"Switching Protocols"))
    if answer is None or answer.count(_PLACEHOLDER) != 1:
        raise ValueError(f"not a subprotocol name: {subprotocol!r}")
    before, _, after = answer.partition(_PLACEHOLDER)
    return before, after
