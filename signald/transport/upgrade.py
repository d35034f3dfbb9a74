"""The common WebSocket upgrade request, read and answered without h11 (sans-IO).

Why: wsproto's :class:`~wsproto.handshake.H11Handshake` parses the request and writes the
``101`` with h11, about 165 µs of CPU per connection here, most of what a connection costs to set
up; a reconnect storm pays it for every client at once. This module handles the request every
real client sends — one read holding exactly one well-formed ``GET ... HTTP/1.1`` upgrade, nothing
after it — in a few microseconds, and answers it with the very bytes wsproto would have written.

It only ever says yes or "not mine": :func:`parse_upgrade` returns None for anything it is not
sure about (another method or version, a header h11 would refuse or treat specially, folding,
control characters, duplicates of the headers that matter, a body, bytes after the request, a
request that is not a valid upgrade at all), and :class:`signald.transport.handshake.Handshake`
then hands the same bytes to wsproto, which accepts, refuses or answers exactly as before. So
every refusal and every odd request still gets wsproto's answer; only the plain accept is faster.
``tests/unit/transport/test_upgrade.py`` holds the two paths to the same result and bytes.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Final

import attrs

#: RFC 6455 1.3: the GUID appended to the client's key for ``Sec-WebSocket-Accept``.
ACCEPT_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Bigger requests go to h11 (its limit is 16 KiB; browsers send well under 2 KiB).
MAX_FAST_BYTES: Final = 8192

_TOKEN: Final = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")  # h11's header-name token
_TARGET: Final = re.compile(rb"[\x21-\x7e]+")  # h11's request-target: visible ASCII
_BAD_VALUE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # controls but HTAB: h11 refuses those
# Headers that h11 or wsproto give a meaning to: seen twice, the request goes to wsproto.
_ONCE: Final = frozenset({b"host", b"connection", b"upgrade", b"sec-websocket-key", b"sec-websocket-version"})
# Where h11 would expect a body or refuse the framing: wsproto's problem, not ours.
_BODY: Final = frozenset({b"content-length", b"transfer-encoding"})
# What wsproto keeps out of the request's extra headers.
_NOT_EXTRA: Final = frozenset({b"host", b"sec-websocket-extensions", b"sec-websocket-protocol"})


@attrs.frozen
class FastUpgrade:
    """A valid upgrade request, as wsproto's ``Request`` event would have described it."""

    target: str
    extra_headers: tuple[tuple[bytes, bytes], ...]  # lower-cased names, in order; as wsproto's
    subprotocols: tuple[str, ...]
    key: bytes


def _split_comma(value: bytes) -> list[str]:
    """wsproto's ``split_comma_header``: the non-empty comma-separated items, stripped."""
    return [item.strip() for item in value.decode("ascii").split(",") if item.strip()]


def parse_upgrade(data: bytes) -> FastUpgrade | None:
    """The upgrade request that is exactly ``data``, or None to let wsproto (h11) read it."""
    if len(data) > MAX_FAST_BYTES or not data.startswith(b"GET ") or not data.endswith(b"\r\n\r\n"):
        return None
    if not data.isascii():
        return None  # obs-text and non-ASCII targets: h11 and wsproto have their own views
    lines = data[:-4].split(b"\r\n")
    request_line = lines[0].split(b" ")
    if len(request_line) != 3 or request_line[2] != b"HTTP/1.1" or not _TARGET.fullmatch(request_line[1]):
        return None
    seen: set[bytes] = set()
    extra: list[tuple[bytes, bytes]] = []
    subprotocols: list[str] = []
    connection: list[str] | None = None
    upgrade = version = key = None
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            return None  # also an empty line (bytes after the head) and folding (a name with a space)
        name = name.lower()
        value = value.strip(b" \t")
        if name in _BODY or (name in _ONCE and name in seen):
            return None
        seen.add(name)
        if name == b"host":
            try:
                value.decode("idna")  # wsproto decodes it, and fails the connection if it cannot
            except UnicodeError:
                return None
        elif name == b"connection":
            connection = _split_comma(value)
        elif name == b"sec-websocket-protocol":
            subprotocols.extend(_split_comma(value))
        elif name == b"sec-websocket-key":
            key = value
        elif name == b"sec-websocket-version":
            version = value
        elif name == b"upgrade":
            upgrade = value
        if name not in _NOT_EXTRA:
            extra.append((name, value))
    if (connection is None or not any(token.lower() == "upgrade" for token in connection) or version != b"13"
            or not key or upgrade is None or upgrade.lower() != b"websocket" or b"host" not in seen):
        return None  # wsproto refuses it, with its own status and headers
    return FastUpgrade(request_line[1].decode("ascii"), tuple(extra), tuple(subprotocols), key)


def accept_response(key: bytes, subprotocol: str | None) -> bytes:
    """The ``101 Switching Protocols`` wsproto (h11) writes for ``key``, no extension accepted."""
    token = base64.b64encode(hashlib.sha1(key + ACCEPT_GUID).digest())
    head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "
    if subprotocol is None:
        return head + token + b"\r\n\r\n"
    return head + token + b"\r\nSec-WebSocket-Protocol: " + subprotocol.encode("ascii") + b"\r\n\r\n"
