"""Bounds of the wire types: numbers fit 64 bits, free-form fields nest at most MAX_NESTING deep."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from signald.protocol import FrameError
from signald.protocol.codec import decode_frame
from signald.protocol.common import MAX_NESTING, check_free_form


def nested(levels: int) -> Any:
    value: Any = 1
    for i in range(levels):
        value = [value] if i % 2 else {"k": value}
    return value


def test_free_form_values_within_the_bounds_pass() -> None:
    for value in (None, 1, "x", [], {}, nested(MAX_NESTING), [2**64 - 1, -(2**63)], {"a": [1.5, True, None]}):
        check_free_form(value, "payload")


@pytest.mark.parametrize(("value", "says"), [
    (nested(MAX_NESTING + 1), f"`payload` nests more than {MAX_NESTING} levels deep"),
    (2**64, "`payload` holds an integer that does not fit in 64 bits"),
    ([1, {"a": [-(2**63) - 1]}], "`payload` holds an integer that does not fit in 64 bits"),
])
def test_free_form_values_beyond_the_bounds_are_refused_naming_the_field(value: Any, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        check_free_form(value, "payload")


@pytest.mark.parametrize("msgpack", [False, True])
def test_a_frame_nested_deeper_than_the_decoder_goes_is_bad_request_not_a_recursion_error(msgpack: bool) -> None:
    levels = 100_000
    frame: bytes | str = b"\x91" * levels + b"\x90" if msgpack else "[" * levels + "]" * levels
    with pytest.raises(FrameError) as refused:
        decode_frame(frame, msgpack=msgpack)
    assert (refused.value.code, refused.value.message) == ("BAD_REQUEST", "frame nests too deeply")


def test_a_deep_payload_is_invalid_payload_at_data() -> None:
    frame = msgspec.json.encode({"type": "room.signal", "id": 9, "data": {"room": "r", "kind": "k",
                                                                           "payload": nested(MAX_NESTING + 1)}})
    with pytest.raises(FrameError) as refused:
        decode_frame(frame)
    assert refused.value.code == "INVALID_PAYLOAD"
    assert refused.value.op_id == 9
    assert "`payload` nests more than" in refused.value.message and "$.data" in refused.value.message
