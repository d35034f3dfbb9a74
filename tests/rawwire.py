"""A WebSocket client at the byte level, for tests that need exact frames and exact reads.

wsproto and trio-websocket clients frame correctly and decide themselves how bytes are split over
writes; these helpers let a test send a close frame cut in two, two frames in one write, a
close code that is not allowed, and read back exactly what the server wrote.
"""

from __future__ import annotations

import os
import socket

import trio

UPGRADE = ("GET /?user={user} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


def masked(opcode: int, payload: bytes, *, fin: bool = True, key: bytes | None = None) -> bytes:
    """One client frame (masked, as clients must); payloads under 126 bytes."""
    assert len(payload) < 126
    key = os.urandom(4) if key is None else key
    return bytes(((0x80 if fin else 0) | opcode, 0x80 | len(payload))) + key + \
        bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code: int | None, reason: bytes = b"") -> bytes:
    return b"" if code is None else code.to_bytes(2, "big") + reason


def server_frames(wire: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each whole frame the server wrote (unmasked, FIN); a cut-off tail fails."""
    frames = []
    while wire:
        size, start = wire[1] & 0x7F, 2
        if size == 126:
            size, start = int.from_bytes(wire[2:4], "big"), 4
        elif size == 127:
            size, start = int.from_bytes(wire[2:10], "big"), 10
        assert wire[1] & 0x80 == 0 and len(wire) >= start + size, f"not whole server frames: {wire!r}"
        frames.append((wire[0] & 0x0F, wire[start:start + size]))
        wire = wire[start + size:]
    return frames


async def until_eof(stream: trio.SocketStream) -> bytes:
    """Everything the server still writes, until it closes TCP."""
    got = b""
    while chunk := await stream.receive_some(65536):
        got += chunk
    return got


async def welcomed(port: int, user: str, *, receive_buffer: int | None = None) -> trio.SocketStream:
    """A connection upgraded to a WebSocket whose welcome has been read (and nothing after it);
    ``receive_buffer`` fixes the socket's receive buffer (before connecting: no autotuning)."""
    sock = trio.socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    await stream.send_all(UPGRADE.format(user=user).encode())
    got = b""
    while b"\r\n\r\n" not in got or not got.endswith(b"}}"):
        chunk = await stream.receive_some(65536)
        assert chunk, "closed before the welcome"
        got += chunk
    head, _, welcome = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert server_frames(welcome)[0][1].startswith(b'{"type":"welcome"')
    return stream
