"""Abuse over real WebSockets: what a hostile client could learn, break or take (issue 16).

Each test plays one attack of the adversarial review against an in-process daemon on port 0 and
checks the bound that now holds: no presence oracle in ``call.offer``, out-of-range numbers get
``INVALID_PAYLOAD`` naming the field, client input never writes a traceback into the log, a
refresh that narrows the token narrows the session, the per-user rate limit survives reconnects,
and pings or fragments cost memory and CPU only within bounds.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import clients, events_of, make_config, start_server

from signald.client import SignaldClient, connect
from signald.server import RunningServer


async def serve(nursery: trio.Nursery, tmp_path: Path, **sections: dict[str, Any]) -> RunningServer:
    """A daemon with some config keys changed (heartbeats far away, so timed tests stay quiet)."""
    sections.setdefault("server", {}).setdefault("heartbeat_s", 3600.0)
    return await start_server(nursery, make_config(tmp_path, **sections))


@pytest.fixture
async def srv(nursery: trio.Nursery, tmp_path: Path) -> RunningServer:
    return await serve(nursery, tmp_path)


async def reply_of(c: SignaldClient, kind: str, data: Any = None) -> dict[str, Any]:
    with trio.fail_after(5):
        reply: dict[str, Any] = await c.request_raw(kind, data)
    return reply


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every log record that carries a traceback (or says it does)."""
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records
            if r.exc_info or r.exc_text or r.stack_info or "Traceback" in r.getMessage()]


# --------------------------------------------------------------------------- 5: no presence oracle

SDP = {"type": "offer", "sdp": "v=0\r\n"}


async def test_call_offer_to_a_stranger_answers_the_same_whether_they_are_online_or_not(srv: RunningServer) -> None:
    async with clients(srv, "alice", "carol", "bob") as (alice, carol, bob):
        await alice.request("room.join", {"room": "lobby"})
        await bob.request("room.join", {"room": "lobby"})
        await carol.request("room.join", {"room": "elsewhere"})
        online = await reply_of(alice, "call.offer", {"target_id": "carol", "call_type": "audio", "sdp": SDP})
        offline = await reply_of(alice, "call.offer", {"target_id": "dave", "call_type": "audio", "sdp": SDP})
        never_in_a_room = await reply_of(alice, "call.offer", {"target_id": "dave", "call_type": "video", "sdp": SDP})
        for reply, name in ((online, "carol"), (offline, "dave"), (never_in_a_room, "dave")):
            assert reply["type"] == "error"
            assert reply["data"]["code"] == "FORBIDDEN"
            assert reply["data"]["message"] == f"you share no room with {name!r}"
        assert [e for e in await events_of(carol) if e[0] == "call.offer"] == []  # nobody rang
        # A room-mate is still callable.
        ack = await reply_of(alice, "call.offer", {"target_id": "bob", "call_type": "audio", "sdp": SDP})
        assert ack["type"] == "ack"


# --------------------------------------------------------------------------- 6: numbers out of range

BIG = 2**70
OUT_OF_RANGE: list[tuple[str, str, dict[str, Any], str]] = [
    # (id, request type, data, the field the error names)
    ("join-since-2^70", "room.join", {"room": "lobby", "since": BIG}, "$.data.since"),
    ("join-since-2^63", "room.join", {"room": "lobby", "since": 2**63}, "$.data.since"),
    ("history-after-2^63", "chat.history", {"room": "lobby", "after": 2**63}, "$.data.after"),
    ("history-before-2^64", "chat.history", {"room": "lobby", "before": 2**64}, "$.data.before"),
    ("history-limit-2^70", "chat.history", {"room": "lobby", "limit": BIG}, "$.data.limit"),
    ("attachment-size-2^63", "chat.send",
     {"scope": "lobby", "body": "x", "attachments": [{"url": "https://x.example/a", "size": 2**63}]},
     "$.data.attachments[0].size"),
]


@pytest.mark.parametrize("msgpack", [False, True], ids=["json", "msgpack"])
@pytest.mark.parametrize(("kind", "data", "field"), [c[1:] for c in OUT_OF_RANGE], ids=[c[0] for c in OUT_OF_RANGE])
async def test_a_number_out_of_range_is_invalid_payload_naming_the_field(
    srv: RunningServer, kind: str, data: dict[str, Any], field: str, msgpack: bool, caplog: pytest.LogCaptureFixture
) -> None:
    if msgpack and ("2^70" in repr(data).replace(str(BIG), "2^70") or str(2**64) in repr(data)):
        pytest.skip("MessagePack carries no integer above 2**64 - 1")
    caplog.set_level(logging.DEBUG, logger="signald")
    async with connect(srv.url, user="alice", msgpack=msgpack) as alice:
        await alice.request("room.join", {"room": "lobby"})
        await alice.request("chat.send", {"scope": "lobby", "body": "one"})
        reply = await reply_of(alice, kind, data)
        assert reply["type"] == "error", reply
        assert reply["data"]["code"] == "INVALID_PAYLOAD"
        assert field in reply["data"]["message"]
        # The largest number that fits is a number like any other, and the connection is still up.
        if "since" in data:
            fits = await alice.request("room.join", {"room": "lobby", "since": 2**63 - 1})
            assert fits["missed"] == []
        history = await alice.request("chat.history", {"room": "lobby", "after": 2**63 - 1})
        assert history == {"messages": [], "has_more": False}
    assert tracebacks(caplog) == []
