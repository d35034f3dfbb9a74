"""RFC 6455 byte framing of what the server sends: sans-IO, no Trio.

Delivery frames each outbound message once per fan-out (:class:`signald.delivery.frames.Frame`),
so the framing must live at or below delivery; transport, above it, imports it from here too (the
whole-frame read path and the close frames). Keeping it in its own module, free of outboxes and
sockets, lets both layers share one definition without delivery ever importing transport.
"""

from __future__ import annotations

import struct
from typing import Final

OPCODE_TEXT: Final = 0x1
OPCODE_BINARY: Final = 0x2
OPCODE_CLOSE: Final = 0x8


def websocket_frame(payload: bytes, opcode: int) -> bytes:
    """One complete, unmasked (server-to-client) WebSocket frame carrying ``payload`` (RFC 6455 5.2)."""
    size = len(payload)
    first = 0x80 | opcode  # FIN + opcode; no extensions are negotiated, so RSV bits stay 0
    if size < 126:
        header = bytes((first, size))
    elif size < 1 << 16:
        header = struct.pack("!BBH", first, 126, size)
    else:
        header = struct.pack("!BBQ", first, 127, size)
    return header + payload


def websocket_payload(ws_frame: bytes) -> bytes:
    """The payload of a frame built by :func:`websocket_frame` (for tests and tools)."""
    size = ws_frame[1] & 0x7F
    offset = 2 + {126: 2, 127: 8}.get(size, 0)
    return ws_frame[offset:]
