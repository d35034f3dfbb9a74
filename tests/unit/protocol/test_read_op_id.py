"""``read_op_id``: the ``id`` of a refused frame, read without decoding the rest of it.

It must agree with what :func:`decode_frame` echoes in ``op_id`` (an integer or a string of at most
128 characters, at the top level only), and give None for anything else rather than raise.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from signald.protocol import FrameError, decode_frame
from signald.protocol.codec import read_op_id

READABLE: list[Any] = [0, -1, 7, 2**63 - 1, "", "c-17", "é" * 128, "x" * 128]
UNREADABLE: list[Any] = [True, False, None, 1.5, -0.0, [], ["x"], {"x": 1}, "x" * 129, "é" * 129]


@pytest.mark.parametrize("op_id", READABLE)
@pytest.mark.parametrize("msgpack", [False, True])
def test_a_top_level_id_is_read(op_id: Any, msgpack: bool) -> None:
    message = {"type": "chat.send", "data": {"scope": "lobby", "body": "x" * 100}, "id": op_id}
    frame = msgspec.msgpack.encode(message) if msgpack else json.dumps(message)
    assert read_op_id(frame, msgpack=msgpack) == op_id


@pytest.mark.parametrize("op_id", UNREADABLE)
@pytest.mark.parametrize("msgpack", [False, True])
def test_an_id_that_decode_frame_would_not_echo_gives_none(op_id: Any, msgpack: bool) -> None:
    message = {"type": "presence.ping", "id": op_id}
    frame = msgspec.msgpack.encode(message) if msgpack else json.dumps(message)
    assert read_op_id(frame, msgpack=msgpack) is None


@pytest.mark.parametrize("msgpack", [False, True])
def test_an_id_nested_in_data_is_never_taken(msgpack: bool) -> None:
    message = {"type": "chat.send", "data": {"id": "inner", "scope": "lobby", "body": "b"}}
    frame = msgspec.msgpack.encode(message) if msgpack else json.dumps(message)
    assert read_op_id(frame, msgpack=msgpack) is None
    assert read_op_id(json.dumps([{"id": "in-an-array"}])) is None


@pytest.mark.parametrize("frame", [
    "", "{", '{"id": "a"', '{"id": "a"} trailing', "null", "42", '"id"', "[]", b"\xff\xfe", b'{"id": "\xff"}',
])
def test_a_frame_that_does_not_decode_gives_none(frame: str | bytes) -> None:
    assert read_op_id(frame) is None


def test_the_id_is_read_whatever_comes_before_or_after_it() -> None:
    frame = json.dumps({"type": "x", "data": {"deep": [[[{"id": 1}]]], "pad": "y" * 70_000}, "id": "late"})
    assert read_op_id(frame) == "late"
    assert read_op_id(frame.encode()) == "late"  # a binary frame of a JSON connection is JSON too


def test_a_text_frame_of_a_msgpack_connection_is_read_as_json() -> None:
    assert read_op_id('{"id": "t"}', msgpack=True) == "t"
    assert read_op_id(b'{"id": "t"}', msgpack=True) is None  # bytes are MessagePack there, and these are not
    assert read_op_id(msgspec.msgpack.encode({"id": "m"}), msgpack=False) is None


def test_the_last_of_duplicate_ids_wins_as_in_decode_frame() -> None:
    frame = '{"type": "nope", "id": "first", "id": "second"}'
    with pytest.raises(FrameError) as refused:
        decode_frame(frame)
    assert read_op_id(frame) == refused.value.op_id == "second"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=140),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8)


@given(st.dictionaries(st.text(max_size=4), JSON_VALUES, max_size=4), JSON_VALUES,
       st.sampled_from(["room.explode", "presence.ping", 5]))
def test_read_op_id_agrees_with_what_decode_frame_echoes(message: dict[str, Any], op_id: Any, kind: Any) -> None:
    message.update(type=kind, id=op_id)
    frame = json.dumps(message)
    try:
        decode_frame(frame)
    except FrameError as exc:
        assert read_op_id(frame) == exc.op_id
    else:
        assert read_op_id(frame) == op_id


@pytest.mark.parametrize("op_id", ["s3", 7, "x" * 128])
@pytest.mark.parametrize("as_text", [False, True])
def test_an_id_beside_a_lone_surrogate_is_read_and_echoed(op_id: Any, as_text: bool) -> None:
    """msgspec refuses a lone UTF-16 surrogate escape (valid JSON grammar: a browser's JSON.stringify
    writes it for text cut inside an emoji); the frame's id is still read, so the request completes."""
    frame = json.dumps({"type": "chat.send", "id": op_id, "data": {"scope": "lobby", "body": "a\udc00b"}})
    assert "\\udc00" in frame
    data = frame if as_text else frame.encode()
    assert read_op_id(data) == op_id
    with pytest.raises(FrameError) as refused:
        decode_frame(data)
    assert (refused.value.code, refused.value.op_id) == ("BAD_REQUEST", op_id)
    assert "surrogate" in str(refused.value)


@pytest.mark.parametrize("frame", [
    '["\\udc00"]', '{"id": true, "a": "\\udc00"}', '{"id": 18446744073709551616, "a": "\\udc00"}',
    '{"id": "x", "a": "\\udc00"', '{"data": {"id": "x"}, "a": "\\udc00"}',
    '{"id": "' + "x" * 129 + '", "a": "\\udc00"}',
    '{"id": "\\udc00", "type": "ping"}', '{"id": "s\\ud83d", "a": "\\udc00"}',  # the id cannot be echoed
])
def test_beside_a_lone_surrogate_only_a_readable_id_is_read(frame: str) -> None:
    assert read_op_id(frame) is None
    with pytest.raises(FrameError) as refused:
        decode_frame(frame)
    assert refused.value.op_id is None


def test_a_frame_over_the_surrogate_read_bound_keeps_the_cheap_refusal_without_its_id() -> None:
    """Read again only up to SURROGATE_READ_BYTES: a refused frame must not cost a full parse."""
    from signald.protocol.codec import SURROGATE_READ_BYTES

    def frame(size: int) -> str:
        head = '{"type": "chat.send", "id": "s9", "data": {"scope": "lobby", "body": "\\udc00'
        return head + "x" * (size - len(head) - 3) + '"}}'

    assert len(frame(SURROGATE_READ_BYTES)) == SURROGATE_READ_BYTES
    assert read_op_id(frame(SURROGATE_READ_BYTES)) == "s9"
    assert read_op_id(frame(SURROGATE_READ_BYTES + 1)) is None


def test_an_id_no_msgpack_reply_could_carry_is_not_read_for_a_msgpack_connection() -> None:
    """A JSON text frame may hold ``2**64``; a MessagePack reply cannot, and encoding it failed the connection."""
    for big in (2**64, -(2**63) - 1, 10**30):
        frame = f'{{"type": "presence.ping", "id": {big}}}'
        assert read_op_id(frame) == big  # a JSON connection echoes it as given
        assert read_op_id(frame, msgpack=True) is None
        with pytest.raises(FrameError) as refused:
            decode_frame(frame, msgpack=True)
        assert (refused.value.code, refused.value.op_id) == ("BAD_REQUEST", None)
    assert read_op_id(f'{{"id": {2**64 - 1}}}', msgpack=True) == 2**64 - 1


@pytest.mark.parametrize(("frame", "code", "op_id", "named"), [
    ('{"type": "chat.history", "id": 1, "data": {"room": "r", "limit": 1e400}}', "INVALID_PAYLOAD", 1, "$.data.limit"),
    ('{"type": "nope", "id": "n", "x": -1e400}', "UNKNOWN_TYPE", "n", "nope"),
    ('{"type": 5, "id": "t", "x": 1e400}', "BAD_REQUEST", "t", "type"),
    ('{"type": "presence.ping", "id": 1e400}', "INVALID_PAYLOAD", None, "$.id"),
    ("[1e400]", "BAD_REQUEST", None, "object"),
])
def test_a_number_beyond_a_float_is_classified_like_any_other_value(frame: str, code: str, op_id: Any,
                                                                     named: str) -> None:
    """msgspec refuses ``1e400`` as out of range; the frame used to be "not valid JSON" without its id."""
    with pytest.raises(FrameError) as refused:
        decode_frame(frame)
    assert (refused.value.code, refused.value.op_id) == (code, op_id)
    assert named in refused.value.message
    assert read_op_id(frame) == op_id


def test_a_large_frame_with_a_number_beyond_a_float_keeps_the_cheap_refusal() -> None:
    from signald.protocol.codec import SURROGATE_READ_BYTES

    padding = "x" * SURROGATE_READ_BYTES
    frame = f'{{"type": "room.signal", "id": 9, "data": {{"room": "r", "kind": "k", "payload": [1e400, "{padding}"]}}}}'
    with pytest.raises(FrameError) as refused:
        decode_frame(frame)
    assert (refused.value.code, refused.value.op_id) == ("BAD_REQUEST", 9)


@pytest.mark.parametrize("body", ["\ud83d", "cut \ud83d", "\ud83d then text", "\udbff"])
@pytest.mark.parametrize("as_text", [False, True])
def test_a_lone_high_surrogate_is_refused_as_one_with_its_id(body: str, as_text: bool) -> None:
    """What JSON.stringify writes for text cut after the first half of an emoji: a high surrogate escape
    followed by no low one. msgspec calls that "truncated" input (a low one it calls a bad surrogate),
    so the frame got "not valid JSON" and lost its id."""
    frame = json.dumps({"type": "chat.send", "id": "h1", "data": {"scope": "lobby", "body": body}})
    data = frame if as_text else frame.encode()
    assert read_op_id(data) == "h1"
    with pytest.raises(FrameError) as refused:
        decode_frame(data)
    assert (refused.value.code, refused.value.op_id) == ("BAD_REQUEST", "h1")
    assert "surrogate" in str(refused.value)
    cut = data[:-4]  # truly cut short, with the escape inside: not JSON, and no id
    assert read_op_id(cut) is None
    with pytest.raises(FrameError) as refused:
        decode_frame(cut)
    assert (refused.value.code, refused.value.op_id) == ("BAD_REQUEST", None)


@pytest.mark.parametrize("other_key", [1, -3, b"k", 1.5, True, None, (1, 2)])
@pytest.mark.parametrize("op_id", [5, "c-9", 2**64 - 1])
def test_a_msgpack_map_with_a_key_that_is_no_string_keeps_its_id(other_key: Any, op_id: Any) -> None:
    """MessagePack maps may have keys of any type; decode_frame reads such a map and echoes its id,
    so the refusals answered before decoding (RATE_LIMITED, TOO_LARGE) must echo it too. The id-only
    Struct refused the map and the reply carried ``op_id: null``."""
    frame = msgspec.msgpack.encode({other_key: 2, "type": "presence.ping", "id": op_id, "data": {}})
    assert read_op_id(frame, msgpack=True) == op_id
    with pytest.raises(FrameError) as refused:
        decode_frame(msgspec.msgpack.encode({other_key: 2, "type": "nope", "id": op_id}), msgpack=True)
    assert refused.value.op_id == op_id
    for unreadable in UNREADABLE:
        assert read_op_id(msgspec.msgpack.encode({other_key: 2, "id": unreadable}), msgpack=True) is None
    assert read_op_id(msgspec.msgpack.encode({other_key: 2}), msgpack=True) is None
