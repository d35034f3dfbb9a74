"""Plain regression tests for what the property tests (``test_input_properties_*.py``) found, each
shrunk to the one input that broke a promise of docs/protocol.md, against an in-process daemon.
"""

from __future__ import annotations

from typing import Any

import trio

from signald.client.raw import SignaldClient, connect
from signald.server import RunningServer


async def reply_to(c: SignaldClient, frame: str | bytes) -> dict[str, Any]:
    """The one reply to a raw frame, checked to be the only one (a ping behind it answers next)."""
    await c.send(frame)
    with trio.fail_after(5):
        pong = await c.request_raw("presence.ping", op_id="behind")
    assert pong["type"] == "presence.pong" and not c.closed.is_set()
    [reply] = [e for e in c.pending_events() if e["type"] in ("ack", "error", "presence.pong")]
    return reply


# --------------------------------------------------------------------------- WebSocket frames


async def test_a_number_beyond_a_float_is_invalid_payload_naming_its_field_and_keeps_the_id(
    server: RunningServer,
) -> None:
    """``1e400`` is JSON grammar (JSON.parse reads Infinity); msgspec refuses it as out of range. The
    frame got ``BAD_REQUEST "frame is not valid JSON"`` with ``op_id: null``: a request whose id could
    be read never completed, and the code named no field."""
    async with connect(server.url, user="alice") as alice:
        await alice.request("room.join", {"room": "lobby"})
        cases = [
            ('{"type":"chat.history","id":1,"data":{"room":"lobby","limit":1e400}}', 1, "INVALID_PAYLOAD",
             "$.data.limit"),
            ('{"type":"room.signal","id":"s","data":{"room":"lobby","kind":"k","payload":[-1e400]}}', "s",
             "INVALID_PAYLOAD", "$.data.payload"),
            ('{"type":"room.jion","id":3,"data":{"room":"lobby","n":1E+999}}', 3, "UNKNOWN_TYPE", "room.jion"),
            ('{"type":"chat.history","id":1e400,"data":{"room":"lobby"}}', None, "INVALID_PAYLOAD", "$.id"),
            ('[1e400]', None, "BAD_REQUEST", "object"),
        ]
        for frame, op_id, code, named in cases:
            reply = await reply_to(alice, frame)
            assert reply["type"] == "error", (frame, reply)
            assert (reply["data"]["op_id"], reply["data"]["code"]) == (op_id, code), (frame, reply)
            assert named in reply["data"]["message"], (frame, reply)
        # An unknown field holding one is ignored, as any unknown field is.
        reply = await reply_to(alice, '{"type":"chat.history","id":6,"data":{"room":"lobby","x":1e400}}')
        assert (reply["type"], reply["data"]["op_id"]) == ("ack", 6)


async def test_a_text_frame_whose_id_msgpack_cannot_carry_is_refused_on_a_msgpack_connection_which_stays(
    server: RunningServer,
) -> None:
    """A JSON text frame on a MessagePack connection is answered in MessagePack with its id; an id
    past 64 bits (``2**64``) failed the reply's encoding, which dropped the whole connection with a
    traceback. Now it gets its ``BAD_REQUEST`` with ``op_id: null``; an id that fits is still echoed."""
    async with connect(server.url, user="alice", msgpack=True) as alice:
        for big in (2**64, -(2**63) - 1, 10**30):
            reply = await reply_to(alice, f'{{"type":"presence.ping","id":{big}}}')
            assert (reply["type"], reply["data"]["code"], reply["data"]["op_id"]) == ("error", "BAD_REQUEST", None)
        reply = await reply_to(alice, f'{{"type":"presence.ping","id":{2**64 - 1}}}')
        assert (reply["data"]["code"], reply["data"]["op_id"]) == ("BAD_REQUEST", 2**64 - 1)
        too_large = f'{{"type":"presence.ping","id":{2**64},"pad":"{"x" * 70_000}"}}'  # over max_frame_bytes
        reply = await reply_to(alice, too_large)
        assert (reply["data"]["code"], reply["data"]["op_id"]) == ("TOO_LARGE", None)
        assert (await alice.request_raw("presence.ping", op_id=7))["data"]["op_id"] == 7
