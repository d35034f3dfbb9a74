"""The router without sockets: frames in through ``decode``, replies out of ``dispatch``.

A ``Router`` is built here with its own handlers and driven with a minimal stand-in for the
handler context (what ``dispatch`` reads: the metrics counter of the message type, and the
session's names for the log lines). The end-to-end versions of these rules live in
tests/e2e/test_envelope.py.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, cast

import attrs
import msgspec
import pytest

from signald.app.context import Context
from signald.errors import SignalError
from signald.protocol import (
    Ack,
    AckData,
    Error,
    ErrorData,
    FrameError,
    PongData,
    PresencePing,
    PresencePongEvent,
    PresenceSet,
    RoomJoin,
    Welcome,
    decode_frame,
)
from signald.router import LATER, CustomMessage, Reply, Router

ROOT = Path(__file__).resolve().parents[3]


# --------------------------------------------------------------------------- a context without a daemon


class CountingMetric:
    """One labelled child of the ``messages_in`` counter: counts into the shared tally."""

    def __init__(self, tally: Counter[str], kind: str) -> None:
        self.tally, self.kind = tally, kind

    def inc(self) -> None:
        self.tally[self.kind] += 1


class MessagesInBy:
    def __init__(self) -> None:
        self.tally: Counter[str] = Counter()

    def __getitem__(self, kind: str) -> CountingMetric:
        return CountingMetric(self.tally, kind)


@attrs.define
class FakeMetrics:
    messages_in_by: MessagesInBy = attrs.Factory(MessagesInBy)


@attrs.define
class FakeHub:
    metrics: FakeMetrics = attrs.Factory(FakeMetrics)


@attrs.define
class FakeSession:
    user_id: str = "alice"
    session_id: str = "s-1"
    remote: str = "203.0.113.7:5000"
    roles: frozenset[str] = frozenset()

    def may_audit(self) -> bool:
        return True


@attrs.define
class FakeContext:
    hub: FakeHub = attrs.Factory(FakeHub)
    session: FakeSession = attrs.Factory(FakeSession)
    after_reply: list[Any] = attrs.Factory(list)


def fake_context() -> Context:
    return cast(Context, FakeContext())


async def reply_to(router: Router, frame: str, ctx: Context | None = None) -> Any:
    """What ``dispatch`` answers for one JSON frame."""
    return await router.dispatch(ctx or fake_context(), router.decode(frame, binary=False))


class EchoData(msgspec.Struct):
    text: str
    times: int = 1


async def echo(ctx: Context, msg: CustomMessage) -> dict[str, Any]:
    data: EchoData = msg.data
    return {"echo": data.text * data.times, "type": msg.type, "id": msg.id}


def echo_router() -> Router:
    router = Router()
    router.add_custom("app.echo", EchoData, echo)
    return router


# --------------------------------------------------------------------------- dispatch: one reply per request


async def test_success_is_acked_with_the_handlers_result() -> None:
    router = Router()
    seen: list[PresenceSet] = []

    async def set_status(ctx: Context, msg: PresenceSet) -> dict[str, str]:
        seen.append(msg)
        return {"status": msg.data.status}

    router.add(PresenceSet, set_status)
    ctx = fake_context()
    reply = await reply_to(router, '{"type": "presence.set", "id": "a1", "data": {"status": "busy"}}', ctx)
    assert reply == Ack(data=AckData(op_id="a1", data={"status": "busy"}))
    assert [m.data.status for m in seen] == ["busy"]
    assert cast(FakeContext, ctx).hub.metrics.messages_in_by.tally == {"presence.set": 1}


async def test_signal_error_becomes_an_error_with_its_code_and_op_id() -> None:
    router = Router()

    async def refuse(ctx: Context, msg: RoomJoin) -> None:
        raise SignalError("FORBIDDEN", f"not allowed in {msg.data.room}")

    router.add(RoomJoin, refuse)
    reply = await reply_to(router, '{"type": "room.join", "id": 7, "data": {"room": "vault"}}')
    assert reply == Error(data=ErrorData(op_id=7, code="FORBIDDEN", message="not allowed in vault"))


async def test_any_other_exception_is_internal_and_logged_on_the_router_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = Router()

    async def crash(ctx: Context, msg: PresencePing) -> None:
        raise RuntimeError("kaboom")

    router.add(PresencePing, crash)
    with caplog.at_level(logging.ERROR, logger="signald.router"):
        reply = await reply_to(router, '{"type": "presence.ping", "id": "p1"}')
    assert isinstance(reply, Error)
    assert (reply.data.code, reply.data.op_id) == ("INTERNAL", "p1")
    assert "kaboom" not in reply.data.message
    logged = [r for r in caplog.records if r.name == "signald.router"]
    assert len(logged) == 1
    assert "presence.ping" in logged[0].getMessage() and "s-1" in logged[0].getMessage()
    assert logged[0].exc_info is not None and isinstance(logged[0].exc_info[1], RuntimeError)


async def test_without_id_success_gets_no_reply_and_failure_an_error_with_null_op_id() -> None:
    router = Router()

    async def ok(ctx: Context, msg: PresenceSet) -> str:
        return "done"

    async def refuse(ctx: Context, msg: RoomJoin) -> None:
        raise SignalError("NOT_FOUND", "no such room")

    async def crash(ctx: Context, msg: PresencePing) -> None:
        raise KeyError("x")

    router.add(PresenceSet, ok)
    router.add(RoomJoin, refuse)
    router.add(PresencePing, crash)
    assert await reply_to(router, '{"type": "presence.set", "data": {"status": "away"}}') is None
    refused = await reply_to(router, '{"type": "room.join", "data": {"room": "lobby"}}')
    assert refused == Error(data=ErrorData(op_id=None, code="NOT_FOUND", message="no such room"))
    crashed = await reply_to(router, '{"type": "presence.ping"}')
    assert isinstance(crashed, Error)
    assert (crashed.data.code, crashed.data.op_id) == ("INTERNAL", None)


async def test_a_reply_result_is_sent_as_is_with_or_without_id() -> None:
    router = Router()
    pong = PresencePongEvent(data=PongData(op_id="q", timestamp="2026-01-01T00:00:00.000Z"))

    async def answer(ctx: Context, msg: PresencePing) -> Reply:
        return Reply(pong)

    router.add(PresencePing, answer)
    assert await reply_to(router, '{"type": "presence.ping", "id": "q"}') is pong
    assert await reply_to(router, '{"type": "presence.ping"}') is pong


async def test_later_sends_nothing_now() -> None:
    router = Router()

    async def defer(ctx: Context, msg: PresencePing) -> Any:
        return LATER

    router.add(PresencePing, defer)
    assert await reply_to(router, '{"type": "presence.ping", "id": "l1"}') is None


async def test_a_type_without_handler_is_unknown_type() -> None:
    reply = await reply_to(Router(), '{"type": "presence.ping", "id": "u1"}')
    assert reply == Error(data=ErrorData(op_id="u1", code="UNKNOWN_TYPE",
                                         message="unknown message type 'presence.ping'"))


# --------------------------------------------------------------------------- registration


def test_add_refuses_a_class_that_is_not_an_inbound_type() -> None:
    async def handler(ctx: Context, msg: Any) -> None:  # pragma: no cover - never registered
        pass

    with pytest.raises(ValueError, match="welcome"):
        Router().add(Welcome, handler)


@pytest.mark.parametrize("name", ["room.join", "presence.ping", "app.", "app", "echo", "App.echo", "xapp.echo"])
def test_add_custom_accepts_only_names_under_app(name: str) -> None:
    router = Router()
    with pytest.raises(ValueError, match="app"):
        router.add_custom(name, dict, echo)
    assert router.handled_types == frozenset()


async def test_add_custom_cannot_redefine_a_protocol_type() -> None:
    router = Router()

    async def ping(ctx: Context, msg: PresencePing) -> str:
        return "protocol handler"

    router.add(PresencePing, ping)
    with pytest.raises(ValueError):
        router.add_custom("presence.ping", dict, echo)
    message = router.decode('{"type": "presence.ping", "id": 1}', binary=False)
    assert isinstance(message, PresencePing)
    assert await router.dispatch(fake_context(), message) == Ack(data=AckData(op_id=1, data="protocol handler"))


# --------------------------------------------------------------------------- decode


@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
async def test_custom_type_decodes_and_is_acked(binary: bool) -> None:
    router = echo_router()
    value = {"type": "app.echo", "id": "c1", "data": {"text": "ab", "times": 2}}
    frame = msgspec.msgpack.encode(value) if binary else json.dumps(value)
    message = router.decode(frame, binary=binary)
    assert isinstance(message, CustomMessage)
    assert (message.type, message.id, message.data) == ("app.echo", "c1", EchoData("ab", 2))
    reply = await router.dispatch(fake_context(), message)
    assert reply == Ack(data=AckData(op_id="c1", data={"echo": "abab", "type": "app.echo", "id": "c1"}))


@pytest.mark.parametrize(("data", "path"), [
    ({"text": 5}, "$.data.text"),
    ({"text": "a", "times": "2"}, "$.data.times"),
    ({}, "`text`"),
    ([1], "$.data"),
], ids=["wrong-type", "second-field", "missing-field", "not-an-object"])
@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
def test_invalid_custom_payload_names_the_field_path(data: Any, path: str, binary: bool) -> None:
    value = {"type": "app.echo", "id": "e1", "data": data}
    frame = msgspec.msgpack.encode(value) if binary else json.dumps(value)
    with pytest.raises(FrameError) as refused:
        echo_router().decode(frame, binary=binary)
    assert (refused.value.code, refused.value.op_id) == ("INVALID_PAYLOAD", "e1")
    assert path in refused.value.message


@pytest.mark.parametrize("router", [Router(), echo_router()], ids=["no-custom-types", "with-custom-types"])
@pytest.mark.parametrize(("frame", "op_id"), [
    ('{"type": "room.explode", "id": "u1"}', "u1"),
    ('{"type": "app.nothing", "id": 3}', 3),
    ('{"type": "app.nothing"}', None),
])
def test_unknown_type_is_unknown_type(router: Router, frame: str, op_id: Any) -> None:
    with pytest.raises(FrameError) as refused:
        router.decode(frame, binary=False)
    assert (refused.value.code, refused.value.op_id) == ("UNKNOWN_TYPE", op_id)


PROTOCOL_FRAMES = [
    '{"type": "presence.ping", "id": 1}',
    '{"type": "room.join", "id": "j", "data": {"room": "lobby", "since": 3}}',
    '{"type": "room.join", "id": "r1", "data": {"room": "a b"}}',
    '{"type": "room.join", "id": "d1", "data": [1]}',
    '{"type": "presence.ping", "id": true}',
    '{"type": 5, "id": "t1"}',
    '{"id": "m1"}',
    "[1]",
    '{"type": "presence.ping", ',
]


@pytest.mark.parametrize("frame", PROTOCOL_FRAMES)
def test_custom_types_do_not_change_how_protocol_frames_decode(frame: str) -> None:
    def outcome(decode: Any) -> Any:
        try:
            return decode()
        except FrameError as exc:
            return (exc.code, exc.message, exc.op_id)

    expected = outcome(lambda: decode_frame(frame))
    assert outcome(lambda: echo_router().decode(frame, binary=False)) == expected
    assert outcome(lambda: Router().decode(frame, binary=False)) == expected


# Counts every msgspec decode (decoder objects and the module-level functions alike) made while the
# router decodes one frame. It runs in a fresh interpreter because the protocol's decoders are built
# at import time: the counting stand-ins must be in place before signald is imported.
COUNT_DECODES = """
import json, sys
import msgspec

calls = 0

def counting_decoder(real):
    class CountingDecoder:
        def __init__(self, *args, **kwargs):
            self._real = real(*args, **kwargs)

        def __class_getitem__(cls, item):
            return cls

        def decode(self, buf):
            global calls
            calls += 1
            return self._real.decode(buf)
    return CountingDecoder

def counting_function(real):
    def decode(*args, **kwargs):
        global calls
        calls += 1
        return real(*args, **kwargs)
    return decode

for module in (msgspec.json, msgspec.msgpack):
    module.Decoder = counting_decoder(module.Decoder)
    module.decode = counting_function(module.decode)

from signald.protocol import FrameError
from signald.router import Router

class Echo(msgspec.Struct):
    text: str

router = Router()
router.add_custom("app.echo", Echo, None)
counts = {}
for name, frame in json.loads(sys.argv[1]).items():
    for binary in (False, True):
        encoded = msgspec.msgpack.encode(json.loads(frame)) if binary else frame
        calls = 0
        try:
            router.decode(encoded, binary=binary)
        except FrameError:
            pass
        counts[f"{name}/{'msgpack' if binary else 'json'}"] = calls
print(json.dumps(counts))
"""

COUNTED_FRAMES = {
    "protocol": '{"type": "presence.ping", "id": 1}',
    "custom": '{"type": "app.echo", "id": 2, "data": {"text": "hi"}}',
    "custom-invalid": '{"type": "app.echo", "id": 3, "data": {"text": 5}}',
    "custom-bad-id": '{"type": "app.echo", "id": true, "data": {"text": "hi"}}',
    "unregistered-app-type": '{"type": "app.nothing", "id": 4}',
}


def test_a_custom_frame_costs_at_most_two_decodes_and_a_protocol_frame_one() -> None:
    out = subprocess.run([sys.executable, "-c", COUNT_DECODES, json.dumps(COUNTED_FRAMES)],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    counts = json.loads(out.stdout)
    assert len(counts) == 2 * len(COUNTED_FRAMES)
    for name, calls in counts.items():
        limit = 1 if name.startswith("protocol/") else 2
        assert calls <= limit, f"{name}: {calls} decodes (at most {limit})\n{counts}"
