"""Every inbound type, end to end: a real daemon and a real client, one minimal valid request each.

Each request must get exactly one reply: the one its type documents (an ``ack``, ``presence.pong``,
or an ``error`` a client can act on), never ``UNKNOWN_TYPE`` (no handler), ``INVALID_PAYLOAD`` (the
sample no longer matches its type) or ``INTERNAL`` (a handler crashed). The samples are keyed by
type and must cover ``INBOUND_TYPES`` exactly, so a new type cannot be added without one.

The client is fresh each time (in no room, no call, no role), so several types answer with the
error their rules give such a client; that still proves the type is decoded, routed and handled.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from conftest import events_of

from signald.client.raw import REPLY_TYPES, connect
from signald.protocol import INBOUND_TYPES
from signald.server import RunningServer

NOT_HANDLED: frozenset[str] = frozenset({"UNKNOWN_TYPE", "INVALID_PAYLOAD", "INTERNAL"})
SDP = {"type": "offer", "sdp": "v=0\r\n"}

# type -> (the request's data, or None for no data; the reply: "ack", "presence.pong" or an error code)
SAMPLES: dict[str, tuple[dict[str, Any] | None, str]] = {
    "auth.refresh": ({"refresh_token": "not-a-token"}, "UNAUTHORIZED"),
    "room.join": ({"room": "lobby"}, "ack"),
    "room.leave": ({"room": "lobby"}, "NOT_IN_ROOM"),
    "chat.send": ({"scope": "lobby", "body": "hello"}, "NOT_IN_ROOM"),
    "chat.edit": ({"message_id": "m-1", "new_body": "hello"}, "NOT_FOUND"),
    "chat.delete": ({"message_id": "m-1"}, "NOT_FOUND"),
    "chat.redact": ({"message_id": "m-1"}, "FORBIDDEN"),
    "chat.read": ({"message_id": "m-1", "room": "lobby"}, "NOT_IN_ROOM"),
    "chat.reaction": ({"message_id": "m-1", "reaction": "+1", "action": "add", "scope": "lobby"}, "NOT_IN_ROOM"),
    "chat.typing": ({"scope": "lobby", "typing": True}, "NOT_IN_ROOM"),
    "chat.history": ({"room": "lobby"}, "NOT_IN_ROOM"),
    "chat.changes": ({"room": "lobby", "after_rev": 0}, "NOT_IN_ROOM"),
    "call.offer": ({"target_id": "bob", "call_type": "audio", "sdp": SDP}, "FORBIDDEN"),
    "call.answer": ({"target_id": "bob", "sdp": SDP}, "NOT_FOUND"),
    "call.ice": ({"target_id": "bob", "candidate": {"candidate": "candidate:1 1 udp 1 192.0.2.1 9 typ host"}},
                 "NOT_FOUND"),
    "call.end": ({"target_id": "bob"}, "NOT_FOUND"),
    "presence.set": ({"status": "away"}, "ack"),
    "room.signal": ({"room": "lobby", "kind": "hand", "payload": {"up": True}}, "NOT_IN_ROOM"),
    "room.kick": ({"room": "lobby", "user_id": "bob"}, "FORBIDDEN"),
    "session.info": (None, "ack"),
    "presence.ping": (None, "presence.pong"),
    "system.stats": (None, "FORBIDDEN"),
}


def test_the_samples_cover_exactly_the_inbound_types() -> None:
    assert set(SAMPLES) == INBOUND_TYPES
    assert all(reply not in NOT_HANDLED for _, reply in SAMPLES.values())


@pytest.mark.parametrize("msgpack", [False, True], ids=["json", "msgpack"])
@pytest.mark.parametrize("kind", sorted(INBOUND_TYPES))
async def test_every_inbound_type_gets_exactly_one_handled_reply(
    server: RunningServer, kind: str, msgpack: bool
) -> None:
    data, expected = SAMPLES[kind]
    async with connect(server.url, user="alice", msgpack=msgpack) as c:
        with trio.fail_after(5):
            reply = await c.request_raw(kind, data, op_id=f"every-{kind}")
        assert reply["data"]["op_id"] == f"every-{kind}"
        if reply["type"] == "error":
            assert reply["data"]["code"] not in NOT_HANDLED, reply
            assert reply["data"]["code"] == expected, reply
        else:
            assert reply["type"] == expected, reply
        later = await events_of(c)  # waits for anything still in flight behind a presence.ping
        assert [e for e in later if e[0] in REPLY_TYPES] == [], f"a second reply to {kind}: {later}"
        assert c.unmatched_errors == []
