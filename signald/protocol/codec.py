"""Frames to messages and messages to frames; every decoder and encoder is built once.

:func:`decode_frame` tries the tagged union first, so a valid frame costs one msgspec decode (the
hot path). Only when that fails does it look closer: one loose decode chooses between
``BAD_REQUEST``, ``UNKNOWN_TYPE`` and ``INVALID_PAYLOAD`` and reads the ``id`` to echo, and for a
protocol type the typed decoder of that type names the field path (``$.data.room``).

:func:`read_op_id` reads only the ``id`` of a frame that is refused before it is decoded (rate
limited, too large): one pass that skips everything else without building it, so a refusal keeps
"exactly one reply" without costing a decode.

:class:`FrameDecoder` widens the union with an embedder's own tagged Structs (``app.*`` types), so
those decode in the same single pass instead of failing first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, Final, Union, cast

import msgspec
from msgspec import Struct

from signald.errors import ErrorCode, SignalError
from signald.protocol.common import OpId, field_error_text, fits_wire_int
from signald.protocol.inbound import INBOUND_MESSAGES, InboundMessage
from signald.protocol.types import APP_EVENT_PREFIX, INBOUND_BY_TYPE, type_of

__all__ = [
    "json_encoder", "msgpack_encoder", "FrameError", "decode_frame", "FrameDecoder", "encode_app_event"
]

_json_decoder: Final = msgspec.json.Decoder(InboundMessage)
_msgpack_decoder: Final = msgspec.msgpack.Decoder(InboundMessage)
_json_any: Final = msgspec.json.Decoder()
_msgpack_any: Final = msgspec.msgpack.Decoder()
_typed_json: Final[dict[str, msgspec.json.Decoder[Any]]] = {
    t: msgspec.json.Decoder(c) for t, c in INBOUND_BY_TYPE.items()
}
_typed_msgpack: Final[dict[str, msgspec.msgpack.Decoder[Any]]] = {
    t: msgspec.msgpack.Decoder(c) for t, c in INBOUND_BY_TYPE.items()
}

json_encoder: Final = msgspec.json.Encoder()
msgpack_encoder: Final = msgspec.msgpack.Encoder()

# RecursionError: a frame nested deeper than the decoder's stack allows (a client fault, not a bug).
_DECODE_FAILURES: Final = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError)
_TOO_DEEP: Final = "frame nests too deeply"


class _IdOnly(Struct):
    """A frame seen for its top-level ``id`` alone: msgspec skips every other key unbuilt."""

    id: OpId = None


_json_id: Final = msgspec.json.Decoder(_IdOnly)
_msgpack_id: Final = msgspec.msgpack.Decoder(_IdOnly)


class FrameError(SignalError):
    """A frame that could not be turned into a message; carries the op id if one was readable."""

    def __init__(self, code: ErrorCode, message: str, op_id: OpId = None) -> None:
        super().__init__(code, message)
        self.op_id = op_id


def _readable_op_id(value: Any) -> OpId:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, str) and len(value) <= 128):
        return value
    return None


def read_op_id(frame: bytes | str, *, msgpack: bool = False) -> OpId:
    """The top-level ``id`` of ``frame`` if it can be read, else None; nothing else is decoded.

    "Can be read" means what :func:`decode_frame` echoes: the frame is a JSON object (MessagePack
    map for binary frames of a MessagePack connection; text frames are read as JSON whatever the
    connection speaks) whose ``id`` is an integer or a string of at most 128 characters. A bool,
    a float, an over-long string or anything else gives None, as does a frame that does not
    decode; an ``id`` nested in ``data`` is never taken. With ``msgpack`` (the reply goes out in
    MessagePack) an integer must also fit it (:func:`fits_wire_int`): a JSON text frame can hold
    ``2**70``, which no MessagePack reply could carry (encoding it failed the whole connection).

    Cost: one msgspec pass that validates the syntax and skips every other value without
    building it, linear in the frame's size (docs/benchmarks.md, "Reading the id of a refused
    frame"); callers pass only frames the transport already bounded (``server.max_transport_bytes``).
    """
    decoder = _msgpack_id if msgpack and not isinstance(frame, str) else _json_id
    try:
        op_id = decoder.decode(cast(Any, frame)).id
    except msgspec.ValidationError:  # before DecodeError, its base class
        if decoder is not _msgpack_id:
            return None
        op_id = _msgpack_id_beside_other_keys(frame)
    except msgspec.DecodeError as exc:
        if decoder is _json_id and _for_a_surrogate(exc, frame):
            return _id_beside_lone_surrogate(frame)
        return None
    except _DECODE_FAILURES:
        return None
    if msgpack and type(op_id) is int and not fits_wire_int(op_id):
        return None
    return op_id


# A map of keys of any type whose values are left unbuilt (msgspec skips them as raw bytes).
_msgpack_raw_map: Final = msgspec.msgpack.Decoder(dict[Any, msgspec.Raw])


def _msgpack_id_beside_other_keys(frame: bytes | str) -> OpId:
    """The ``id`` of a MessagePack map that :class:`_IdOnly` refuses, typically for a key that is no
    string (``{1: 2, "id": 5}``, which MessagePack allows and :func:`decode_frame` reads): the map is
    read again with keys of any type and every value left raw, then only the ``id`` is decoded. Only
    refused frames come here; the second pass is as cheap as the first (nothing else is built)."""
    try:
        raw = _msgpack_raw_map.decode(cast(Any, frame)).get("id")
        return None if raw is None else _readable_op_id(_msgpack_any.decode(raw))
    except (*_DECODE_FAILURES, TypeError):
        return None


SURROGATE_READ_BYTES: Final = 1 << 16  # the largest frame read again for its id beside a lone surrogate
# A surrogate escape (\ud800-\udfff): msgspec names a lone one in its error only sometimes. For a high
# one followed by no escape (what JSON.stringify writes for text cut after the first half of an emoji)
# it reports truncated input, or, when only skipping the string, the end of a hex escape.
_SURROGATE_TEXT: Final = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_BYTES: Final = re.compile(rb"\\u[dD][89a-fA-F]")


def _for_a_surrogate(exc: msgspec.DecodeError, frame: bytes | str) -> bool:
    """Whether msgspec may have refused JSON ``frame`` for a lone UTF-16 surrogate escape: its error
    says so, or the frame holds a surrogate escape at all (the second read,
    :func:`_id_beside_lone_surrogate`, tells whether the frame is JSON otherwise)."""
    if "surrogate" in str(exc):
        return True
    if isinstance(frame, str):
        return _SURROGATE_TEXT.search(frame) is not None
    return _SURROGATE_BYTES.search(frame) is not None


_UNREAD: Final = object()


def _read_again(frame: bytes | str) -> Any:
    """The value of a JSON frame msgspec refuses though it is JSON grammar: a number beyond a float
    (``1e400``), so that it is classified like any other frame (the typed decode then names the field,
    ``Number out of range - at `$.data.limit```, and the reply keeps the frame's ``id``), or a lone
    high surrogate that msgspec calls truncated input. Read by the standard library, which takes
    both, and only up to :data:`SURROGATE_READ_BYTES` (as the lone surrogate's id is);
    :data:`_UNREAD` for a larger frame or one it refuses too."""
    if len(frame) > SURROGATE_READ_BYTES:
        return _UNREAD
    try:
        return json.loads(frame)
    except (ValueError, RecursionError):
        return _UNREAD


def _id_beside_lone_surrogate(frame: bytes | str) -> OpId:
    """The ``id`` of a JSON frame that msgspec refuses only for a lone UTF-16 surrogate escape
    (``"\\udc00"``: valid JSON grammar, what a browser's ``JSON.stringify`` writes for text cut in the
    middle of an emoji). The standard library reads such text, so the client's request still completes.
    Only frames refused for a surrogate come here, and only up to :data:`SURROGATE_READ_BYTES`: the
    standard library builds the whole frame (~8x msgspec's id-only pass), so a larger one keeps the
    cheap refusal and gives no id."""
    return _id_read_again(_read_again(frame))


def _id_read_again(value: Any) -> OpId:
    """The ``id`` a reply can echo from what :func:`_read_again` read (None for :data:`_UNREAD`)."""
    if not isinstance(value, dict):
        return None
    op_id = _readable_op_id(value.get("id"))
    if isinstance(op_id, int) and not fits_wire_int(op_id):
        return None
    if isinstance(op_id, str) and not op_id.isascii():  # the id may be the lone surrogate: no text to echo
        try:
            op_id.encode()
        except UnicodeEncodeError:
            return None
    return op_id


def _text_frame_on_msgpack(frame: str) -> FrameError:
    return FrameError("BAD_REQUEST", "this connection speaks MessagePack: send binary frames",
                      read_op_id(frame, msgpack=True))


def decode_frame(frame: bytes | str, *, msgpack: bool = False) -> InboundMessage:
    """Decode one inbound frame into its typed message.

    Error handling: raises :class:`FrameError` with ``BAD_REQUEST`` (not JSON, not an object,
    ``type`` missing or not a string), ``UNKNOWN_TYPE`` or ``INVALID_PAYLOAD`` (the message names
    the field path, e.g. ``$.data.room``). ``op_id`` is set whenever the frame's ``id`` could be read.
    """
    decoder = _msgpack_decoder if msgpack else _json_decoder
    if msgpack and isinstance(frame, str):
        raise _text_frame_on_msgpack(frame)
    try:
        message: InboundMessage = decoder.decode(cast(Any, frame))  # msgspec also decodes str
        return message
    except _DECODE_FAILURES:
        pass
    raise _classify(frame, msgpack)


class FrameDecoder:
    """Decodes the protocol's inbound types and extra tagged Structs in one union.

    The extra Structs (an embedder's ``app.*`` types) must be tagged on ``type`` like
    :class:`~signald.protocol.inbound.Inbound`. A valid frame of any type costs one decode; a
    refused frame of an extra type costs one more (the loose decode that classifies it and reads
    its ``id``), because the union's own error already names the field. Frames of protocol types
    are answered exactly as :func:`decode_frame` answers them.
    """

    def __init__(self, extra: Iterable[type[Struct]]) -> None:
        extra = tuple(extra)
        union: Any = Union[(*INBOUND_MESSAGES, *extra)]
        self._json: msgspec.json.Decoder[Struct] = msgspec.json.Decoder(union)
        self._msgpack: msgspec.msgpack.Decoder[Struct] = msgspec.msgpack.Decoder(union)
        self._extra_types = frozenset(type_of(c) for c in extra)

    def decode(self, frame: bytes | str, *, msgpack: bool = False) -> Struct:
        """Decode one frame; refusals raise :class:`FrameError` as :func:`decode_frame` does."""
        if msgpack and isinstance(frame, str):
            raise _text_frame_on_msgpack(frame)
        try:
            return (self._msgpack if msgpack else self._json).decode(cast(Any, frame))
        except _DECODE_FAILURES as exc:
            refusal = exc
        raise _classify(frame, msgpack, self._extra_types, refusal)


def _classify(
    frame: bytes | str, msgpack: bool, extra: frozenset[str] = frozenset(), refusal: Exception | None = None
) -> FrameError:
    """Why the typed decode refused ``frame``; ``refusal`` is its error, used for ``extra`` types."""
    loose = _msgpack_any if msgpack else _json_any
    try:
        value = loose.decode(cast(Any, frame))
    except RecursionError:
        return FrameError("BAD_REQUEST", _TOO_DEEP)
    except msgspec.ValidationError:  # valid JSON holding a number no float can hold (1e400)
        value = _UNREAD if msgpack else _read_again(frame)
        if value is _UNREAD:
            return FrameError("BAD_REQUEST", "frame holds a number out of range", read_op_id(frame, msgpack=msgpack))
    except msgspec.DecodeError as exc:
        if not msgpack and _for_a_surrogate(exc, frame):
            again = _read_again(frame)  # read once, for the verdict and the id
            if "surrogate" in str(exc) or again is not _UNREAD:  # else truly cut short
                return FrameError("BAD_REQUEST", "frame holds a lone UTF-16 surrogate (an escape such as \\udc00 "
                                  "without its pair), which is not text", _id_read_again(again))
        return FrameError("BAD_REQUEST", "frame is not valid " + ("MessagePack" if msgpack else "JSON"))
    except UnicodeDecodeError:
        return FrameError("BAD_REQUEST", "frame is not valid " + ("MessagePack" if msgpack else "JSON"))
    if not isinstance(value, dict):
        return FrameError("BAD_REQUEST", "frame must be an object")
    op_id = _readable_op_id(value.get("id"))
    kind = value.get("type")
    if kind is None and "type" not in value:
        return FrameError("BAD_REQUEST", "missing field `type`", op_id)
    if not isinstance(kind, str):
        return FrameError("BAD_REQUEST", "`type` must be a string", op_id)
    if kind not in INBOUND_BY_TYPE:
        if kind in extra and isinstance(refusal, msgspec.ValidationError):
            return FrameError("INVALID_PAYLOAD", field_error_text(refusal), op_id)
        if kind in extra:  # pragma: no cover - the loose decode of the same bytes succeeded
            return FrameError("BAD_REQUEST", str(refusal), op_id)
        return FrameError("UNKNOWN_TYPE", f"unknown message type {kind[:64]!r}", op_id)
    typed = (_typed_msgpack if msgpack else _typed_json)[kind]
    try:
        typed.decode(cast(Any, frame))
    except msgspec.ValidationError as exc:
        text = field_error_text(exc)
        if text.endswith("- at `$.id`"):
            return FrameError("INVALID_PAYLOAD", text, None)
        if "data" in value and not isinstance(value["data"], dict) and value["data"] is not None:
            return FrameError("INVALID_PAYLOAD", "`$.data` must be an object", op_id)
        return FrameError("INVALID_PAYLOAD", text, op_id)
    except RecursionError:  # pragma: no cover - the loose decode of the same bytes went as deep
        return FrameError("BAD_REQUEST", _TOO_DEEP, op_id)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # pragma: no cover - loose decode succeeded
        return FrameError("BAD_REQUEST", str(exc), op_id)
    # The typed decoder accepts it alone, so the union refused it for another reason.
    return FrameError("INVALID_PAYLOAD", "message does not match its type", op_id)  # pragma: no cover


def encode_app_event(event_type: str, data: Any) -> dict[str, Any]:
    """Build an embedder's ``app.*`` event; its type must start with ``app.``."""
    if not event_type.startswith(APP_EVENT_PREFIX) or len(event_type) <= len(APP_EVENT_PREFIX):
        raise ValueError(f"application events must be named 'app.<name>', got {event_type!r}")
    return {"type": event_type, "data": data}
