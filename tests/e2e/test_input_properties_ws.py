"""Bad WebSocket input never breaks anything: hypothesis-drawn frames against one real daemon process.

Each example connects a fuzzing client ``fz`` (JSON or MessagePack) and a well-behaved observer
``ob`` to a room of their own, sends ``fz``'s frames, then checks what docs/protocol.md promises:

- every frame whose ``id`` can be read gets exactly one reply carrying it, and an ``error`` has the
  code of the fault the frame was built with (a wrong type, a missing field or a value out of range
  in ``data`` → ``INVALID_PAYLOAD``; an unknown ``type`` → ``UNKNOWN_TYPE``; not an object, no
  ``type`` or not a string → ``BAD_REQUEST``; over ``max_frame_bytes`` → ``TOO_LARGE``); a frame
  whose ``id`` cannot be read gets at most one reply, with ``op_id: null``; nothing is ``INTERNAL``;
- ``fz`` stays connected, ``ob`` gets no error, only events an ``fz`` request could cause, and its
  own requests keep working;
- every ``chat.send`` that was acked is in the room's history exactly once;
- the daemon logs no traceback (checked after every example, so hypothesis shrinks what causes one).

The frames are messages of every inbound type built from the protocol's own types
(``signald.protocol.inbound``, through ``msgspec.inspect``), then mutated once: a field of the wrong
JSON type, dropped, out of range (``1e400``, integers past 64 bits, strings past their length), an
``id`` of every JSON type, duplicate keys, deep nesting, Unicode edge cases (lone surrogates, NUL,
right-to-left, not NFC), a binary frame on JSON and a text frame on MessagePack. The JSON is written
by hand (:func:`dump`) so it can hold what ``json.dumps`` never writes (``1e400``, duplicate keys).
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import attrs
import msgspec
import msgspec.inspect as mi
import pytest
import trio
from daemon_process import Served, serving
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed

from signald.client.raw import connect
from signald.protocol.types import INBOUND_BY_TYPE

FRAME_LIMIT = 4096
CONFIG = f"""
[limits]
max_frame_bytes = {FRAME_LIMIT}
rate_per_s = 100000.0
rate_burst = 100000
user_rate_per_s = 100000.0
user_rate_burst = 100000
ring_timeout_s = 600.0
[server]
heartbeat_s = 3600.0
new_connections_per_ip_per_s = 0
[calls]
call_log = false
"""
DECODE_CODES = frozenset({"BAD_REQUEST", "UNKNOWN_TYPE", "INVALID_PAYLOAD"})
CONTRACT_CODES = frozenset({
    "BAD_REQUEST", "UNKNOWN_TYPE", "INVALID_PAYLOAD", "TOO_LARGE", "UNAUTHORIZED", "FORBIDDEN", "NOT_FOUND",
    "NOT_IN_ROOM", "TARGET_OFFLINE", "RATE_LIMITED", "LIMIT_EXCEEDED", "CONFLICT"})  # INTERNAL never
CARRIED_OUT_CODES = CONTRACT_CODES - DECODE_CODES - {"TOO_LARGE", "RATE_LIMITED"} | {"INVALID_PAYLOAD"}
REPLIES = {"ack", "error", "presence.pong"}
CAUSES: dict[str, set[str]] = {  # which fz requests may cause each event ob sees
    "chat.message": {"chat.send"}, "chat.edited": {"chat.edit"}, "chat.deleted": {"chat.delete"},
    "chat.redacted": {"chat.redact"}, "chat.read.update": {"chat.read"}, "chat.reaction.update": {"chat.reaction"},
    "chat.typing.user": {"chat.typing", "room.leave"}, "member.joined": {"room.join"}, "member.left": {"room.leave"},
    "room.active": {"room.join"}, "room.waiting": {"room.leave"}, "room.signal": {"room.signal"},
    "presence.update": {"presence.set"}, "call.offer": {"call.offer"}, "call.answer": {"call.answer"},
    "call.ice": {"call.ice"}, "call.end": {"call.end", "call.offer"},
}
rooms = itertools.count(1)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(tmp_path_factory.mktemp("props-ws"), CONFIG) as served:
        yield served


# --------------------------------------------------------------------------- writing frames


@attrs.frozen
class Raw:
    """JSON text written as is: ``1e400``, ``-0``, a 30-digit integer."""

    text: str


@attrs.frozen
class Pairs:
    """A JSON object that may repeat a key."""

    items: tuple[tuple[str, Any], ...]


def dump(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Pairs | dict):
        items = value.items if isinstance(value, Pairs) else tuple(value.items())
        return "{" + ",".join(f"{json.dumps(k)}:{dump(v)}" for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:  # a lone surrogate: only an escape can carry it
            return json.dumps(value)
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value)


def plain(value: Any) -> bool:
    """Whether MessagePack can carry ``value`` as the JSON text would say it."""
    if isinstance(value, Raw | Pairs):
        return False
    if isinstance(value, dict):
        return all(plain(v) for v in value.values())
    if isinstance(value, list):
        return all(plain(v) for v in value)
    if isinstance(value, int) and not isinstance(value, bool):
        return -(2**63) <= value < 2**64
    if isinstance(value, str):
        return plain_text(value)
    return True


def plain_text(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


@attrs.frozen
class Case:
    """One frame and what the contract says about its reply."""

    frame: dict[str, Any] | Pairs | Raw | Any
    op_id: Any  # the op_id its reply carries (None: no readable id)
    codes: frozenset[str] | None  # the error codes its fault must get; None: it is valid and carried out
    why: str
    as_text: bool | None = None  # force a text (True) or binary (False) frame; None: the connection's own


# --------------------------------------------------------------------------- the messages, from the types

SDP = {"type": "offer", "sdp": "v=0\r\n"}


def templates(room: str) -> dict[str, dict[str, Any] | None]:
    """Valid ``data`` of every inbound type (None: the type has no fields), aimed at ``ob``."""
    return {
        "auth.refresh": {"refresh_token": "x.y.z"}, "room.join": {"room": room, "since": 0, "since_rev": 0},
        "room.leave": {"room": room}, "chat.send": {"scope": room, "body": "hello", "client_msg_id": "k"},
        "chat.edit": {"message_id": "m" * 24, "new_body": "e"}, "chat.delete": {"message_id": "m" * 24, "mode": "soft"},
        "chat.redact": {"message_id": "m" * 24, "mask": "***"}, "chat.read": {"message_id": "m" * 24, "room": room},
        "chat.reaction": {"message_id": "m" * 24, "reaction": "+1", "action": "add", "scope": room},
        "chat.typing": {"scope": room, "typing": True}, "chat.history": {"room": room, "before": 9, "limit": 5},
        "chat.changes": {"room": room, "after_rev": 0, "limit": 5},
        "call.offer": {"target_id": "ob", "call_type": "data", "sdp": SDP, "call_id": f"c-{room}"},
        "call.answer": {"target_id": "ob", "sdp": SDP, "call_id": f"c-{room}"},
        "call.ice": {"target_id": "ob", "candidate": {"candidate": "c", "sdpMid": "0"}, "call_id": f"c-{room}"},
        "call.end": {"target_id": "ob", "reason": "hangup", "call_id": f"c-{room}"},
        "presence.set": {"status": "away"}, "room.signal": {"room": room, "kind": "k", "payload": {"x": [1, 2.5]}},
        "room.kick": {"room": room, "user_id": "ob", "reason": "r"},
        "session.info": None, "presence.ping": None, "system.stats": None,
    }


def data_fields(kind: str) -> dict[str, mi.Type]:
    """The fields of ``kind``'s ``data`` and their types (empty for the types without fields)."""
    info = mi.type_info(INBOUND_BY_TYPE[kind])
    assert isinstance(info, mi.StructType)
    data = next(f.type for f in info.fields if f.name == "data")
    if isinstance(data, mi.UnionType):
        data = next(t for t in data.types if isinstance(t, mi.StructType))
    assert isinstance(data, mi.StructType)
    return {f.name: f.type for f in data.fields}


def required(kind: str) -> set[str]:
    info = mi.type_info(INBOUND_BY_TYPE[kind])
    assert isinstance(info, mi.StructType)
    data = next(f.type for f in info.fields if f.name == "data")
    if not isinstance(data, mi.StructType):
        return set()
    return {f.name for f in data.fields if f.required}


SAMPLES: dict[str, Any] = {"null": None, "bool": True, "int": 7, "float": 1.5, "str": "x", "array": [1], "object": {}}


def accepted(t: mi.Type) -> set[str]:
    """The JSON kinds a field of type ``t`` takes."""
    if isinstance(t, mi.Metadata):
        return accepted(t.type)
    if isinstance(t, mi.UnionType):
        return set().union(*(accepted(m) for m in t.types))
    return {mi.NoneType: {"null"}, mi.BoolType: {"bool"}, mi.IntType: {"int"}, mi.FloatType: {"int", "float"},
            mi.StrType: {"str"}, mi.LiteralType: {"str"}, mi.ListType: {"array"}, mi.DictType: {"object"},
            mi.StructType: {"object"}, mi.AnyType: set(SAMPLES)}[type(t)]


def out_of_range(t: mi.Type) -> list[Any]:
    """Values of the right JSON kind that ``t`` refuses for their range or shape."""
    if isinstance(t, mi.UnionType):
        return [v for m in t.types for v in out_of_range(m)]
    if isinstance(t, mi.LiteralType):
        return ["no-such-" + str(t.values[0])]
    if not isinstance(t, mi.Metadata):
        return [Raw("1e400")] if isinstance(t, mi.AnyType) else []
    inner, found = t.type, []
    if isinstance(inner, mi.IntType):
        if inner.ge is not None:
            found += [inner.ge - 1]
        found += [2**63, Raw("1" + "0" * 30), Raw("1e400")]
    elif isinstance(inner, mi.StrType):
        if inner.max_length is not None:
            found.append("x" * (inner.max_length + 1))
        if inner.min_length:
            found.append("")
        if inner.pattern is not None:
            found += ["lobby\n", "room with spaces", "\u05e9\u05dc\u05d5\u05dd"]
    return found


# --------------------------------------------------------------------------- the mutations

ID_KINDS: list[tuple[Any, bool]] = [  # (id, readable)
    (True, False), (False, False), (1.5, False), (Raw("-0.0"), False), ([], False), ({"a": 1}, False),
    ("x" * 129, False), (Raw("1e400"), False), (None, True),
]


def readable_ids(serial: int) -> list[Any]:
    """Ids the contract echoes, distinct for each frame of a batch."""
    return [-(2**63) + serial, 2**63 - 1 - serial, f"\u202e{serial}", "é" * 120 + str(serial)[-8:], f"n\u0000{serial}",
            2**64 + serial, -(2**63) - 1 - serial, 10**30 + serial]  # past 64 bits: echoed to JSON as given
UNICODE_BODIES: list[tuple[str, frozenset[str] | None, str]] = [
    ("\u202eevil\u202c", None, "right-to-left override"), ("e\u0301", None, "not NFC"), ("\u200b.", None, "zero width"),
    ("\U0001f600", None, "emoji"),
    ("a\x00b", frozenset({"INVALID_PAYLOAD", "NOT_IN_ROOM"}), "NUL"),  # a handler's check, after membership
    ("a\udc00b", frozenset({"BAD_REQUEST"}), "lone low surrogate"),
    ("\ud83d", frozenset({"BAD_REQUEST"}), "lone high surrogate"), ("\ufeff\ufffe\uffff", None, "noncharacters"),
]


FAULTS = ["valid", "wrong_type", "drop", "out_of_range", "extra", "id", "type", "data", "unicode", "duplicate",
          "nesting", "truncated", "cross", "oversize"]


@st.composite
def cases(draw: st.DrawFn, room: str, serial: int, binary: bool, fault: str | None = None) -> Case:
    """One frame of one kind of fault (drawn unless given; "valid": none), with what its reply must be."""
    kind = draw(st.sampled_from(sorted(INBOUND_BY_TYPE)))
    data = templates(room)[kind]
    op_id: Any = f"h-{serial}" if draw(st.booleans()) else 10_000 + serial
    frame: dict[str, Any] = {"type": kind, "id": op_id}
    if data is not None:
        frame["data"] = dict(data)
    fields = data_fields(kind)
    fault = fault or draw(st.sampled_from(FAULTS))
    invalid = frozenset({"INVALID_PAYLOAD"})
    if fault == "wrong_type" and fields:
        name = draw(st.sampled_from(sorted(fields)))
        wrong = sorted(set(SAMPLES) - accepted(fields[name]))
        if wrong:
            frame["data"][name] = SAMPLES[draw(st.sampled_from(wrong))]
            return Case(frame, op_id, invalid, f"wrong type at $.data.{name}")
    if fault == "drop" and required(kind):
        del frame["data"][draw(st.sampled_from(sorted(required(kind))))]
        return Case(frame, op_id, invalid, "a required field dropped")
    if fault == "out_of_range" and fields:
        name = draw(st.sampled_from(sorted(fields)))
        values = [v for v in out_of_range(fields[name]) if not binary or plain(v)]
        if values:
            frame["data"][name] = draw(st.sampled_from(values))
            return Case(frame, op_id, invalid, f"out of range at $.data.{name}")
    if fault == "extra":
        where = frame["data"] if data is not None and draw(st.booleans()) else frame
        where[draw(st.sampled_from(["extra", "user_id", "seq", "from_user", "\u0000", "é"]))] = {"n": [1]}
        return Case(frame, op_id, None, "an unknown field")
    if fault == "id":
        value, readable = draw(st.sampled_from([*ID_KINDS, *((i, True) for i in readable_ids(serial))]
                                               ).filter(lambda i: not binary or plain(i[0])))
        frame["id"] = value
        return Case(frame, value if readable else None, None if readable else invalid, f"id {value!r}")
    if fault == "type":
        frame["type"] = draw(st.sampled_from([7, None, True, ["chat.send"], {"t": 1}, "chat.sendx", "", "app.nope",
                                              "CHAT.SEND", "chat.send\u0000", "\u202echat.send"]))
        string = isinstance(frame["type"], str)
        return Case(frame, op_id, frozenset({"UNKNOWN_TYPE" if string else "BAD_REQUEST"}), f"type {frame['type']!r}")
    if fault == "data":
        frame["data"] = draw(st.sampled_from([5, "x", [], True, 1.5]))
        return Case(frame, op_id, invalid, "data not an object")
    if fault == "unicode":
        body, codes, why = draw(st.sampled_from([u for u in UNICODE_BODIES if not binary or plain_text(u[0])]))
        frame = {"type": "chat.send", "id": op_id, "data": {"scope": room, "body": body}}
        return Case(frame, op_id, codes, why)
    if fault == "duplicate" and fields:
        name = draw(st.sampled_from(sorted(fields)))
        items = [(k, v) for k, v in frame["data"].items() if k != name]
        wrong = sorted(set(SAMPLES) - accepted(fields[name]))
        if name in frame["data"] and wrong and not binary:
            first = SAMPLES[draw(st.sampled_from(wrong))]
            items += [(name, first), (name, frame["data"][name])]
            frame["data"] = Pairs(tuple(items))
            return Case(frame, op_id, invalid, f"$.data.{name} twice, the first of the wrong type")
    if fault == "nesting":
        depth = draw(st.sampled_from([65, 200]))
        nested: Any = 1
        for _ in range(depth):
            nested = [nested]
        frame = {"type": "room.signal", "id": op_id, "data": {"room": room, "kind": "k", "payload": nested}}
        return Case(frame, op_id, invalid, f"payload {depth} deep")
    if fault == "truncated":
        text = dump(frame) if not binary else msgspec.msgpack.encode(frame)
        cut = draw(st.integers(1, len(text) - 1))
        return Case(Raw(text[:cut]) if isinstance(text, str) else text[:cut], None,
                    frozenset({"BAD_REQUEST"}), "cut short")
    if fault == "cross":
        if binary:  # JSON text on a MessagePack connection: its id echoed if MessagePack can carry it
            if draw(st.booleans()):
                frame["id"] = op_id = draw(st.sampled_from([2**64 + serial, -(2**63) - 1 - serial]))
                return Case(frame, None, frozenset({"BAD_REQUEST"}), "text frame on msgpack, id past 64 bits",
                            as_text=True)
            return Case(frame, op_id, frozenset({"BAD_REQUEST"}), "text frame on msgpack", as_text=True)
        return Case(frame, op_id, None, "JSON in a binary frame of a JSON connection", as_text=False)
    if fault == "oversize":
        frame["padding"] = "p" * FRAME_LIMIT
        return Case(frame, op_id, frozenset({"TOO_LARGE"}), "over max_frame_bytes")
    return Case(frame, op_id, None, "valid")


def wire(case: Case, binary: bool) -> str | bytes:
    frame = case.frame
    if isinstance(frame, bytes):
        return frame
    if isinstance(frame, Raw):
        return frame.text
    if binary and case.as_text is not True:
        return msgspec.msgpack.encode(frame)
    text = dump(frame)
    return text.encode() if case.as_text is False else text


# --------------------------------------------------------------------------- the checks


def key(op_id: Any) -> tuple[str, Any]:
    return type(op_id).__name__, op_id


async def exercise(url: str, room: str, batch: list[Case], binary: bool) -> None:
    """Send ``batch`` as ``fz`` beside ``ob`` in ``room`` and check every promise of the module docstring."""
    async with connect(url, user="ob") as ob, connect(url, user="fz", msgpack=binary) as fz:
        for c in (ob, fz):
            await c.request("room.join", {"room": room})
        await ob.request_raw("presence.ping")
        ob.pending_events()
        own: list[str] = []
        for n, case in enumerate(batch):
            await fz.send(wire(case, binary))
            if n == len(batch) // 2:  # ob is served in the middle of fz's frames
                with trio.fail_after(5):
                    own.append((await ob.request("chat.send", {"scope": room, "body": "ob's own"}))["id"])
        with trio.fail_after(10):
            pong = await fz.request_raw("presence.ping", op_id="sentinel")  # every frame before it is answered
        assert pong["type"] == "presence.pong"
        assert not fz.closed.is_set(), "bad input closed the connection"
        replies = [e for e in fz.pending_events() if e["type"] in REPLIES]
        check_replies(batch, replies)

        kinds = {key(c.op_id): c.frame.get("type") for c in batch if c.op_id is not None and isinstance(c.frame, dict)}
        acked_sends = [r["data"]["data"]["id"] for r in replies
                       if r["type"] == "ack" and kinds.get(key(r["data"]["op_id"])) == "chat.send"]
        with trio.fail_after(5):
            page = await ob.request("chat.history", {"room": room, "limit": 200})
        stored = Counter(m["id"] for m in page["messages"])
        assert all(stored[i] == 1 for i in acked_sends + own), (acked_sends, own, stored)
        sends = sum(1 for c in batch if isinstance(c.frame, dict) and c.frame.get("type") == "chat.send")
        assert len(page["messages"]) <= sends + len(own)

        with trio.fail_after(5):
            await ob.request_raw("presence.ping")
        assert ob.unmatched_errors == [] and not ob.closed.is_set()
        for event in ob.pending_events():
            assert event["type"] in CAUSES, f"ob got {event['type']!r}, which nothing fz did can cause"
            body = event["data"]
            assert body.get("user_id", "fz") == "fz" and body.get("from_user", "fz") == "fz", event


def check_replies(batch: list[Case], replies: list[dict[str, Any]]) -> None:
    errors = [r["data"] for r in replies if r["type"] == "error"]
    assert [e for e in errors if e["code"] not in CONTRACT_CODES or set(e) != {"op_id", "code", "message"}] == []
    by_id: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for reply in replies:
        by_id.setdefault(key(reply["data"]["op_id"]), []).append(reply)
    unreadable = [c for c in batch if c.op_id is None]
    for case in batch:
        if case.op_id is None:
            continue
        got = by_id.pop(key(case.op_id), [])
        assert len(got) == 1, f"{case.why}: {len(got)} replies for id {case.op_id!r}: {got}"
        reply = got[0]
        if case.codes is None:
            assert reply["type"] != "error" or reply["data"]["code"] in CARRIED_OUT_CODES, (case.why, reply)
        else:
            assert reply["type"] == "error" and reply["data"]["code"] in case.codes, (case.why, case.frame, reply)
    nulls = by_id.pop(key(None), [])
    assert not by_id, f"replies for ids never sent: {list(by_id)}"
    assert len(nulls) <= len(unreadable), (nulls, [c.why for c in unreadable])
    allowed = CARRIED_OUT_CODES.union(*(c.codes or () for c in unreadable))
    # presence.ping without an id still gets its pong (op_id null), docs/protocol.md
    assert all(r["type"] == "presence.pong" or (r["type"] == "error" and r["data"]["code"] in allowed)
               for r in nulls), nulls


def properties(examples: int) -> settings:
    return settings(max_examples=examples, derandomize=True, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
@pytest.mark.parametrize("fault", FAULTS)
@properties(8)
@given(data=st.data(), count=st.integers(1, 6))
def test_frames_of_one_fault_get_their_one_reply_and_break_nothing(
    daemon: Served, fault: str, binary: bool, data: st.DataObject, count: int
) -> None:
    room = f"p{next(rooms):06d}"  # one width: a frame's size must not change on replay
    batch = [data.draw(cases(room, serial, binary, fault), label=f"frame {serial}") for serial in range(count)]
    logged = daemon.log_size()
    trio.run(exercise, daemon.url, room, batch, binary)
    assert daemon.tracebacks(since=logged) == []


@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
@properties(25)
@given(data=st.data(), count=st.integers(1, 10))
def test_every_bad_frame_gets_its_one_reply_and_breaks_nothing(
    daemon: Served, binary: bool, data: st.DataObject, count: int
) -> None:
    room = f"p{next(rooms):06d}"  # one width: a frame's size must not change on replay
    batch = [data.draw(cases(room, serial, binary), label=f"frame {serial}") for serial in range(count)]
    logged = daemon.log_size()
    trio.run(exercise, daemon.url, room, batch, binary)
    assert daemon.tracebacks(since=logged) == []


# --------------------------------------------------------------------------- the rate limit's rule

BURST = 5
STRICT_CONFIG = f"""
[limits]
max_frame_bytes = {FRAME_LIMIT}
rate_per_s = 0.1
rate_burst = {BURST}
[server]
heartbeat_s = 3600.0
new_connections_per_ip_per_s = 0
"""


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(tmp_path_factory.mktemp("props-ws-strict"), STRICT_CONFIG) as served:
        yield served


async def flood(url: str, batch: list[Case], binary: bool, user: str) -> None:
    """The rate limit's rule whatever the frames: the first ``BURST`` are carried out (their replies as
    above), the next ``BURST`` get ``RATE_LIMITED`` with their id, and the one after closes with 1008
    (a ping sent after the batch is one more frame)."""
    closes = len(batch) >= 2 * BURST
    async with connect(url, user=user, msgpack=binary) as fz:
        try:
            for case in batch:
                await fz.send(wire(case, binary))
            if closes:
                await fz.send({"type": "presence.ping", "id": "one-more"})
        except ConnectionClosed:  # the close for flooding came while we sent
            assert closes
        if closes:
            with trio.fail_after(5):
                await fz.closed.wait()
            assert fz.ws.closed is not None and fz.ws.closed.code == 1008
        else:
            with trio.fail_after(5):
                reply = await fz.request_raw("presence.ping", op_id="sentinel")  # limited or not, answered
            assert reply["data"]["op_id"] == "sentinel"
            assert reply["type"] == ("presence.pong" if len(batch) < BURST else "error")
        replies = [e for e in fz.pending_events() if e["type"] in REPLIES]
    check_replies(batch[:BURST], [r for r in replies if r["data"].get("code") != "RATE_LIMITED"])
    limited = [r["data"]["op_id"] for r in replies if r["data"].get("code") == "RATE_LIMITED"]
    expected = batch[BURST:2 * BURST]
    assert len(limited) == len(expected), (limited, [c.why for c in expected])
    assert [op_id for op_id in limited if op_id is not None] == [c.op_id for c in expected if c.op_id is not None]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
@properties(15)
@given(data=st.data(), count=st.integers(1, 3 * BURST))
def test_whatever_a_flood_holds_the_rate_limit_answers_each_frame_then_closes_1008(
    strict: Served, binary: bool, data: st.DataObject, count: int
) -> None:
    room = f"f{next(rooms):06d}"
    batch = [data.draw(cases(room, serial, binary), label=f"frame {serial}") for serial in range(count)]
    logged = strict.log_size()
    trio.run(flood, strict.url, batch, binary, room)  # a user of its own: the user's budget survives reconnects
    assert strict.tracebacks(since=logged) == []


def test_zz_the_daemon_logged_no_traceback_and_still_serves(daemon: Served) -> None:
    async def still_serves() -> None:
        async with connect(daemon.url, user="last") as c:
            pong = await c.request_raw("presence.ping", op_id="last")
        assert pong["data"]["op_id"] == "last"

    trio.run(still_serves)
    assert daemon.tracebacks() == []
