"""The one place that looks inside wsproto: its frame decoder, behind a probe with a public fallback.

The fast paths of :class:`signald.transport.websocket.ServerWebSocket` (a lone pong, a whole
message in one read) skip wsproto's parser, which is only safe when no part of a frame waits in
wsproto's decoder. wsproto has no public way to ask, so this probe finds the decoder; when a
wsproto release moves it, the probe returns None and every byte goes through wsproto (correct,
only slower). tests/unit/transport/test_websocket.py fails if the installed wsproto moved it, so that a release
that disables the fast paths does not go unnoticed.
"""

from __future__ import annotations

from wsproto.connection import Connection
from wsproto.frame_protocol import FrameDecoder


def frame_decoder(conn: Connection) -> FrameDecoder | None:
    """wsproto's frame decoder inside ``conn`` (its ``header`` and ``buffer``), or None if it moved."""
    decoder = getattr(getattr(conn, "_proto", None), "_frame_decoder", None)
    if isinstance(decoder, FrameDecoder) and hasattr(decoder, "header") and hasattr(decoder, "buffer"):
        return decoder
    return None
