"""Fuzzing a live in-process daemon over real WebSockets.

A fuzzing client ``fz`` and an observer ``ob`` share the room ``lobby``. ``fz`` sends a stream of
hostile frames: random bytes and text, random JSON values, and mutations of valid messages
(fields dropped, replaced, added or of the wrong type, a wrong ``type``, bad ids, strings sized
around ``max_frame_bytes``). Whatever the stream, these must hold:

- every frame gets at most one reply; a frame that carries our (valid) id and fits the frame limit
  gets exactly one, carrying that id; nothing is answered ``INTERNAL``;
- ``fz`` stays connected (malformed input never closes a connection), the daemon keeps serving
  (a fresh client connects and pings) and forgets everyone once they leave;
- ``ob`` keeps getting prompt replies and sees no error and no event that an acknowledged request
  of ``fz`` did not cause (so invalid frames cause no events).

Two drivers share the checks: hypothesis, which draws batches (a fresh daemon per batch, run with
``trio.run`` inside a sync test, since ``@given`` cannot drive a pytest-trio test), and a longer
stream from a seeded :class:`random.Random` against one daemon.
"""

from __future__ import annotations

import json
import random
import string
import tempfile
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import trio
from conftest import make_config, start_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from signald.client.raw import SignaldClient, connect
from signald.protocol import INBOUND_TYPES
from signald.server import RunningServer

FRAME_LIMIT = 2048
BODY_LIMIT = 600
FUZZ_SECTIONS: dict[str, dict[str, Any]] = {
    "limits": {
        "max_frame_bytes": FRAME_LIMIT, "max_body_chars": BODY_LIMIT, "rate_per_s": 100_000.0,
        "rate_burst": 100_000, "typing_timeout_s": 600.0, "ring_timeout_s": 600.0,
    },
    "server": {"heartbeat_s": 3600.0, "new_connections_per_ip_per_s": 0},
    "calls": {"call_log": False},  # call-log messages would be events no chat.send caused
}
ERROR_CODES = {
    "BAD_REQUEST", "UNKNOWN_TYPE", "INVALID_PAYLOAD", "TOO_LARGE", "UNAUTHORIZED", "FORBIDDEN", "NOT_FOUND",
    "NOT_IN_ROOM", "TARGET_OFFLINE", "RATE_LIMITED", "LIMIT_EXCEEDED", "CONFLICT",
}  # every code but INTERNAL
REPLY_TYPES = {"ack", "error", "presence.pong"}
# Which acknowledged requests of fz may cause each event that ob sees.
CAUSES: dict[str, set[str]] = {
    "chat.message": {"chat.send"},
    "chat.edited": {"chat.edit"},
    "chat.deleted": {"chat.delete"},
    "chat.redacted": {"chat.redact"},
    "chat.read.update": {"chat.read"},
    "chat.reaction.update": {"chat.reaction"},
    "chat.typing.user": {"chat.typing", "room.leave"},
    "member.joined": {"room.join"},
    "member.left": {"room.leave"},
    "room.active": {"room.join"},
    "room.waiting": {"room.leave"},
    "room.signal": {"room.signal"},
    "room.kicked": {"room.kick"},
    "presence.update": {"presence.set"},
    "call.offer": {"call.offer"},
    "call.answer": {"call.answer"},
    "call.ice": {"call.ice"},
    "call.end": {"call.end"},
}


class Frame(NamedTuple):
    payload: str | bytes
    op_id: str | None  # the valid id we put in, None if the frame has none (or a bad one)
    kind: str | None  # the ``type`` it claims, if a string
    oversize: bool  # over max_frame_bytes


def templates(ids: dict[str, str]) -> list[dict[str, Any]]:
    """Valid messages of every inbound type, aimed at ``ob`` and its messages where it matters."""
    own, other = ids["fz"], ids["ob"]
    sdp = {"type": "offer", "sdp": "v=0\r\n"}
    return [
        {"type": "chat.send", "data": {"scope": "lobby", "body": "hello", "client_msg_id": "k-1"}},
        {"type": "chat.send", "data": {"scope": "lobby", "body": " ", "parent_id": other,
                                       "attachments": [{"url": "https://x.example/a.png", "size": 3}]}},
        {"type": "chat.edit", "data": {"message_id": own, "new_body": "edited"}},
        {"type": "chat.edit", "data": {"message_id": other, "new_body": "not yours"}},
        {"type": "chat.delete", "data": {"message_id": other, "mode": "hard"}},
        {"type": "chat.delete", "data": {"message_id": own}},
        {"type": "chat.redact", "data": {"message_id": other, "mask": "***"}},
        {"type": "chat.read", "data": {"message_id": other, "room": "lobby"}},
        {"type": "chat.reaction", "data": {"message_id": other, "reaction": "+1", "action": "add", "scope": "lobby"}},
        {"type": "chat.typing", "data": {"scope": "lobby", "typing": True}},
        {"type": "chat.history", "data": {"room": "lobby", "before": 10, "limit": 5}},
        {"type": "room.join", "data": {"room": "side", "since": 0}},
        {"type": "room.leave", "data": {"room": "side"}},
        {"type": "room.leave", "data": {"room": "lobby"}},
        {"type": "room.join", "data": {"room": "lobby"}},
        {"type": "room.signal", "data": {"room": "lobby", "kind": "cursor", "payload": {"x": 1, "y": 2}}},
        {"type": "room.kick", "data": {"room": "lobby", "user_id": "ob", "reason": "bye"}},
        {"type": "call.offer", "data": {"target_id": "ob", "call_type": "video", "sdp": sdp, "call_id": "call-1"}},
        {"type": "call.answer", "data": {"target_id": "ob", "sdp": sdp}},
        {"type": "call.ice", "data": {"target_id": "ob", "call_id": "call-1",
                                      "candidate": {"candidate": "c", "sdpMid": "0", "sdpMLineIndex": 0}}},
        {"type": "call.end", "data": {"target_id": "ob", "reason": "hangup", "call_id": "call-1"}},
        {"type": "presence.set", "data": {"status": "away"}},
        {"type": "presence.ping"},
        {"type": "session.info"},
        {"type": "system.stats"},
        {"type": "auth.refresh", "data": {"refresh_token": "x.y.z"}},
    ]


# --------------------------------------------------------------------------- frame making


def random_text(rng: random.Random, max_size: int = 24) -> str:
    alphabet = string.printable + "é€😀\u0000\u200b\ud7ff"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, max_size)))


def random_json(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.randrange(9 if depth < 3 else 6)
    if roll == 0:
        return None
    if roll == 1:
        return rng.choice([True, False])
    if roll == 2:
        return rng.choice([0, -1, 1, 2**31, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30, rng.randint(-999, 999)])
    if roll == 3:
        return rng.choice([0.0, -0.0, 1.5, 1e308, -1e-308, rng.uniform(-1e6, 1e6)])
    if roll in (4, 5):
        return random_text(rng)
    if roll in (6, 7):
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {random_text(rng, 8): random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))}


BAD_IDS: list[Any] = [True, False, 1.5, -0.0, [], ["x"], {"x": 1}, "i" * 129]


def encode(message: Any) -> str:
    return json.dumps(message, ensure_ascii=False, allow_nan=False)


def finish(message: Any, rng: random.Random, serial: int, *, bad_ids: bool = True) -> Frame:
    """Give a dict its unique valid id (or, sometimes, a bad one), encode it and classify it."""
    op_id: str | None = None
    if isinstance(message, dict):
        if bad_ids and rng.random() < 0.1:
            message["id"] = rng.choice(BAD_IDS)
        else:
            op_id = message["id"] = f"fz-{serial}"
    text = encode(message)
    oversize = len(text.encode()) > FRAME_LIMIT
    kind = message.get("type") if isinstance(message, dict) else None
    return Frame(text, op_id, kind if isinstance(kind, str) else None, oversize)


def mutate(message: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """One to three random edits of a valid message."""
    message = json.loads(encode(message))
    for _ in range(rng.randint(1, 3)):
        data = message.get("data")
        op = rng.randrange(8)
        if op <= 2 and isinstance(data, dict) and data:
            field = rng.choice(sorted(data))
            if op == 0:
                del data[field]
            elif op == 1:
                data[field] = random_json(rng)
            else:  # the same value with the wrong type
                value = data[field]
                data[field] = [value] if not isinstance(value, list) else str(value)
        elif op == 3 and isinstance(data, dict):
            data[rng.choice(["user_id", "from_user", "seq", "id", random_text(rng, 6)])] = random_json(rng)
        elif op == 4:
            message["data"] = random_json(rng)
        elif op == 5:
            message["type"] = rng.choice([*sorted(INBOUND_TYPES), random_text(rng, 12), "app.nope", 7, None])
        elif op == 6:
            message.pop("data", None)
        else:
            message[random_text(rng, 6) or "extra"] = random_json(rng)
    return message


def sized(message: dict[str, Any], rng: random.Random, serial: int) -> Frame:
    """The message with one string field padded so the frame lands just under or over the frame limit."""
    message = json.loads(encode(message))
    data = message.setdefault("data", {})
    if not isinstance(data, dict):
        message["data"] = data = {}
    field = rng.choice([*sorted(k for k, v in data.items() if isinstance(v, str)), "padding"])
    data[field] = ""
    message["id"] = f"fz-{serial}"
    base = len(encode(message).encode())
    target = FRAME_LIMIT + rng.randint(-40, 40)
    filler = rng.choice(["x", "é", "€"])  # the limit counts UTF-8 bytes, not characters
    data[field] = filler * max(0, (target - base) // len(filler.encode()))
    return finish(message, rng, serial, bad_ids=False)


def make_frames(rng: random.Random, ids: dict[str, str], count: int, start: int = 0) -> list[Frame]:
    valid = templates(ids)
    frames = []
    for serial in range(start, start + count):
        roll = rng.random()
        if roll < 0.08:
            frames.append(Frame(rng.randbytes(rng.randint(0, 40)), None, None, False))
        elif roll < 0.16:
            frames.append(Frame(random_text(rng, 40), None, None, False))
        elif roll < 0.26:
            frames.append(finish(random_json(rng), rng, serial))
        elif roll < 0.36:
            frames.append(sized(rng.choice(valid), rng, serial))
        elif roll < 0.56:
            frames.append(finish(json.loads(encode(rng.choice(valid))), rng, serial))
        else:
            frames.append(finish(mutate(rng.choice(valid), rng), rng, serial))
    return frames


# --------------------------------------------------------------------------- the checks


async def ping(c: SignaldClient, op_id: str, within: float = 2.0) -> None:
    with trio.fail_after(within):
        pong = await c.request_raw("presence.ping", op_id=op_id)
    assert (pong["type"], pong["data"]["op_id"]) == ("presence.pong", op_id)


async def exercise(server: RunningServer, frames_for: Callable[[dict[str, str]], list[Frame]]) -> None:
    """Send ``fz``'s frames and check every invariant of the module docstring."""
    async with connect(server.url, user="ob") as ob, connect(server.url, user="fz") as fz:
        for c in (ob, fz):
            await c.request("room.join", {"room": "lobby"})
        ids = {c.user_id: (await c.request("chat.send", {"scope": "lobby", "body": "mine"}))["id"] for c in (ob, fz)}
        await ping(ob, "ob-start")
        ob.pending_events()
        frames = frames_for(ids)

        for n, frame in enumerate(frames):
            await fz.send(frame.payload)
            if n % 8 == 7:
                await ping(ob, f"ob-{n}")  # ob is served while fz's frames are being carried out
        await ping(fz, "sentinel", within=10)  # fz's frames are all carried out, their replies all here
        assert not fz.closed.is_set(), "malformed input closed the connection"

        replies = [e for e in fz.pending_events() if e["type"] in REPLY_TYPES]
        per_id = Counter(r["data"]["op_id"] for r in replies)
        sent_ids = Counter(f.op_id for f in frames if f.op_id is not None)
        assert all(n == 1 for n in sent_ids.values())
        missing = [op_id for op_id in sent_ids if per_id[op_id] != 1]
        assert not missing, f"frames with an id not answered exactly once: {missing[:5]}"
        unexpected = set(per_id) - set(sent_ids) - {None}
        assert not unexpected, f"replies for ids never sent: {unexpected}"
        assert per_id[None] <= sum(f.op_id is None for f in frames)
        errors = [r["data"] for r in replies if r["type"] == "error"]
        assert [e for e in errors if set(e) != {"op_id", "code", "message"} or e["code"] not in ERROR_CODES] == []
        oversize = [f for f in frames if f.oversize]
        too_large = Counter(e["op_id"] for e in errors if e["code"] == "TOO_LARGE")
        assert all(too_large[f.op_id] == 1 for f in oversize if f.op_id is not None)  # its id read, nothing else
        assert too_large[None] == sum(f.op_id is None for f in oversize)

        kinds = {f.op_id: f.kind for f in frames if f.op_id is not None}
        acked = Counter(kinds[r["data"]["op_id"]] for r in replies if r["type"] == "ack")
        await ping(ob, "ob-end")  # every event fz's frames caused for ob is queued before this pong
        seen = ob.pending_events()
        assert ob.unmatched_errors == []
        for event_type, n in Counter(e["type"] for e in seen).items():
            causes = CAUSES.get(event_type)
            assert causes is not None, f"ob got {event_type!r}, which nothing fz did can cause"
            assert n <= sum(acked[c] for c in causes), (event_type, n, acked)
        for event in seen:
            data = event["data"]
            assert data.get("user_id", "fz") == "fz" and data.get("from_user", "fz") == "fz", event

    async with connect(server.url, user="fresh") as fresh:
        await ping(fresh, "fresh")
    with trio.fail_after(5):
        while server.hub.sessions or server.hub.rooms.room_count:  # noqa: ASYNC110 - server state, no event
            await trio.sleep(0.01)


async def fuzz_fresh_server(frames_for: Callable[[dict[str, str]], list[Frame]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, make_config(Path(tmp), **FUZZ_SECTIONS))
            await exercise(server, frames_for)
            nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- the drivers

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False), values=st.lists(json_values, max_size=6),
       count=st.integers(min_value=0, max_value=30))
def test_hypothesis_frame_batches_never_break_the_daemon_or_reach_others(
    rng: random.Random, values: list[Any], count: int
) -> None:
    def frames_for(ids: dict[str, str]) -> list[Frame]:
        drawn = [finish(value, rng, 10_000 + n) for n, value in enumerate(values)]
        return make_frames(rng, ids, count) + drawn

    trio.run(fuzz_fresh_server, frames_for)


@pytest.mark.parametrize("seed", [1, 2026])
async def test_seeded_stream_of_hostile_frames_never_breaks_the_daemon_or_reaches_others(
    nursery: trio.Nursery, tmp_path: Path, seed: int
) -> None:
    server = await start_server(nursery, make_config(tmp_path, **FUZZ_SECTIONS))
    await exercise(server, partial(make_frames, random.Random(seed), count=400))
