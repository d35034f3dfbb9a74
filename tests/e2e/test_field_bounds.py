"""The field bounds docs/protocol.md gives ("Inbound messages": field types, attachments, limits of
free-form JSON), each at its edge over a real WebSocket: the largest allowed value is not refused for
its size, one more is ``INVALID_PAYLOAD`` naming the field.

docs/protocol.schema.json is generated from the same types, so a bound that changes there and not in
the prose would go unnoticed by the schema test; this one fails.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import make_config, start_server
from test_field_paths import named_path

from signald.client.raw import connect
from signald.server import RunningServer

BIG = 2**63  # integer fields: 0 <= n < 2**63
M = "m-1"  # any message id: the request may fail for other reasons, never for its size


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def send(**extra: Any) -> tuple[str, dict[str, Any]]:
    return "chat.send", {"scope": "lobby", "body": "b", **extra}


# (field, the request given the value at the edge, the largest allowed value, one over, the path)
Request = Callable[[Any], tuple[str, dict[str, Any]]]
BOUNDS: list[tuple[str, Request, Any, Any, str]] = [
    ("message_id", lambda v: ("chat.read", {"room": "lobby", "message_id": v}), "i" * 64, "i" * 65,
     "$.data.message_id"),
    ("parent_id", lambda v: send(parent_id=v), "p" * 64, "p" * 65, "$.data.parent_id"),
    ("client_msg_id", lambda v: send(client_msg_id=v), "c" * 128, "c" * 129, "$.data.client_msg_id"),
    ("target_id", lambda v: ("call.end", {"target_id": v}), "t" * 128, "t" * 129, "$.data.target_id"),
    ("user_id", lambda v: ("room.kick", {"room": "lobby", "user_id": v}), "u" * 128, "u" * 129, "$.data.user_id"),
    ("call_id", lambda v: ("call.end", {"target_id": "bob", "call_id": v}), "k" * 128, "k" * 129, "$.data.call_id"),
    ("reaction", lambda v: ("chat.reaction", {"message_id": M, "reaction": v, "action": "add", "scope": "lobby"}),
     "r" * 64, "r" * 65, "$.data.reaction"),
    ("kind", lambda v: ("room.signal", {"room": "lobby", "kind": v}), "k" * 64, "k" * 65, "$.data.kind"),
    ("call reason", lambda v: ("call.end", {"target_id": "bob", "reason": v}), "r" * 64, "r" * 65, "$.data.reason"),
    ("kick reason", lambda v: ("room.kick", {"room": "lobby", "user_id": "bob", "reason": v}), "r" * 256, "r" * 257,
     "$.data.reason"),
    ("mask", lambda v: ("chat.redact", {"message_id": M, "mask": v}), "x" * 256, "x" * 257, "$.data.mask"),
    ("refresh_token", lambda v: ("auth.refresh", {"refresh_token": v}), "t" * 8192, "t" * 8193,
     "$.data.refresh_token"),
    ("attachments", lambda v: send(attachments=[{"url": "u"}] * v), 10, 11, "$.data.attachments"),
    ("url", lambda v: send(attachments=[{"url": v}]), "u" * 2048, "u" * 2049, "$.data.attachments[0].url"),
    ("name", lambda v: send(attachments=[{"url": "u", "name": v}]), "n" * 256, "n" * 257,
     "$.data.attachments[0].name"),
    ("mime", lambda v: send(attachments=[{"url": "u", "mime": v}]), "m" * 128, "m" * 129,
     "$.data.attachments[0].mime"),
    ("size", lambda v: send(attachments=[{"url": "u", "size": v}]), BIG - 1, BIG, "$.data.attachments[0].size"),
    ("since", lambda v: ("room.join", {"room": "lobby", "since": v}), BIG - 1, BIG, "$.data.since"),
    ("since_rev", lambda v: ("room.join", {"room": "lobby", "since_rev": v}), BIG - 1, BIG, "$.data.since_rev"),
    ("before", lambda v: ("chat.history", {"room": "lobby", "before": v}), BIG - 1, BIG, "$.data.before"),
    ("after_rev", lambda v: ("chat.changes", {"room": "lobby", "after_rev": v}), BIG - 1, BIG, "$.data.after_rev"),
    ("payload depth", lambda v: ("room.signal", {"room": "lobby", "kind": "k", "payload": v}), nested(64), nested(65),
     "$.data.payload"),
    ("payload integer", lambda v: ("room.signal", {"room": "lobby", "kind": "k", "payload": [v]}), 2**64 - 1, 2**64,
     "$.data.payload"),
    ("sdp integer", lambda v: ("call.offer", {"target_id": "bob", "call_type": "audio", "sdp": {"n": v}}),
     -(2**63), -(2**63) - 1, "$.data.sdp"),
]


@pytest.fixture
async def srv(nursery: trio.Nursery, tmp_path: Path) -> RunningServer:
    return await start_server(nursery, make_config(tmp_path, limits={"max_frame_bytes": 32768}))


async def test_every_documented_bound_holds_at_its_edge(srv: RunningServer) -> None:
    async with connect(srv.url, user="alice") as alice, connect(srv.url, user="bob") as bob:
        for c in (alice, bob):
            await c.request("room.join", {"room": "lobby"})
        for field, request, largest, over, path in BOUNDS:
            with trio.fail_after(5):
                kind, data = request(largest)
                reply = await alice.request_raw(kind, data)
                assert reply["type"] != "error" or reply["data"]["code"] != "INVALID_PAYLOAD", (field, reply)
                kind, data = request(over)
                reply = await alice.request_raw(kind, data)
            got = (reply["type"], reply["data"].get("code"), named_path(reply["data"].get("message", "")))
            assert got == ("error", "INVALID_PAYLOAD", path), (field, reply)
