"""Field types, constants and the structs that both directions of signald protocol v1 share.

Field constraints declared here (lengths, patterns, bounds) are what turns bad input into
``INVALID_PAYLOAD`` errors naming the field path, so they live once, next to the types that use them.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Final, Literal, Union

import msgspec
from msgspec import Meta, Struct

__all__ = [
    "PROTOCOL_VERSION", "SUBPROTOCOL_JSON", "SUBPROTOCOL_MSGPACK", "RoomName", "UserId", "MessageId", "CallId",
    "OpId", "Seq", "ShortText", "Reaction", "SignalKind", "Reason", "JsonObject", "Status", "CallType", "DeleteMode",
    "ReactionAction", "MAX_ATTACHMENTS", "Attachment", "Attachments", "ChatMessage", "Limits", "Rev", "Tombstone",
    "Change", "field_error_text", "fits_wire_int"
]

PROTOCOL_VERSION: Final = 1
SUBPROTOCOL_JSON: Final = "signald.v1"
SUBPROTOCOL_MSGPACK: Final = "signald.v1.msgpack"

# --------------------------------------------------------------------------- field types

RoomName = Annotated[
    str,
    Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+\Z",
         description="1-128 characters of [A-Za-z0-9._:@-]"),
]
UserId = Annotated[str, Meta(min_length=1, max_length=128)]
MessageId = Annotated[str, Meta(min_length=1, max_length=64)]
CallId = Annotated[str, Meta(min_length=1, max_length=128)]
OpId = Union[Annotated[str, Meta(max_length=128)], int, None]
# Every number a client sends fits a signed 64-bit integer (what SQLite stores): 0 <= n < 2**63.
# (msgspec takes no bound outside int64, so "< 2**63" is written "<= 2**63 - 1".) Out of range is
# INVALID_PAYLOAD naming the field, never an overflow deeper down.
INT64_MAX: Final = 2**63 - 1
Seq = Annotated[int, Meta(ge=0, le=INT64_MAX)]
Count = Annotated[int, Meta(ge=0, le=INT64_MAX)]
PageLimit = Annotated[int, Meta(ge=1, le=INT64_MAX)]
Rev = Seq
"""A room revision: raised by one with every stored change to the room's history."""
ShortText = Annotated[str, Meta(max_length=256)]
Reaction = Annotated[str, Meta(min_length=1, max_length=64)]
SignalKind = Annotated[str, Meta(min_length=1, max_length=64)]
Reason = Annotated[str, Meta(min_length=1, max_length=64)]
JsonObject = dict[str, Any]

Status = Literal["online", "away", "busy", "offline"]
CallType = Literal["audio", "video", "screen", "data"]
DeleteMode = Literal["soft", "hard"]
ReactionAction = Literal["add", "remove"]

MAX_ATTACHMENTS: Final = 10
MAX_NESTING: Final = 64  # levels of arrays/objects in a free-form field (room.signal payload, sdp, candidate)
_WIDE_INT: Final = (-(2**63), 2**64)  # what both wire formats can carry (MessagePack: int64 and uint64)


def fits_wire_int(value: int) -> bool:
    """Whether both wire formats can carry ``value`` (MessagePack: int64 and uint64)."""
    return _WIDE_INT[0] <= value < _WIDE_INT[1]


_ROOM_PATTERN_TEXT: Final = re.compile(r"`str` matching regex '[^']*'")


def field_error_text(exc: msgspec.ValidationError) -> str:
    """The ``INVALID_PAYLOAD`` message for a schema refusal, always naming the field's path.

    msgspec gives the path after `` - at `` except for a field missing at the top level (`data` of a
    frame, `room` of a server API body), which gets `` - at `$` `` here; a room name's regex is told
    as the rule it stands for.
    """
    text = _ROOM_PATTERN_TEXT.sub("a room name (1-128 characters of [A-Za-z0-9._:@-])", str(exc))
    return text if " - at `" in text else text + " - at `$`"


def _scalar_refusal(value: Any, field: str) -> str | None:
    """Why the value (neither an array nor an object) cannot reach every recipient, or None."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return None
    if kind is int:
        return None if fits_wire_int(value) else f"`{field}` holds an integer that does not fit in 64 bits"
    if kind is float:
        return None if math.isfinite(value) else f"`{field}` holds NaN or an infinity, which JSON cannot carry"
    return f"`{field}` holds a {kind.__name__} value, which JSON cannot carry"


def check_free_form(value: Any, field: str) -> None:
    """Refuse a free-form value that some recipient could not be sent as it came: nested deeper than
    :data:`MAX_NESTING` levels (the encoder would hit Python's recursion limit), holding an integer
    outside 64 bits (MessagePack cannot carry it), or holding what only MessagePack can say (a map key
    that is not a string, binary data, an extension type, a timestamp, NaN or an infinity: a JSON
    member could not get it untouched, and a key JSON cannot encode at all failed the whole fan-out).
    Raises ValueError naming ``field``; called from a Struct's ``__post_init__``, msgspec turns it into
    a ValidationError with the path.
    """
    if not isinstance(value, dict | list):
        if (refusal := _scalar_refusal(value, field)) is not None:
            raise ValueError(refusal)
        return
    level: list[Any] = [value]
    for depth in range(1, MAX_NESTING + 2):
        deeper: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                if not all(type(key) is str for key in item):
                    raise ValueError(f"`{field}` holds an object key that is not a string")
                children: Any = item.values()
            else:
                children = item
            for child in children:
                if isinstance(child, dict | list):
                    deeper.append(child)
                elif type(child) is not str and (refusal := _scalar_refusal(child, field)) is not None:
                    raise ValueError(refusal)
        if not deeper:
            return
        if depth >= MAX_NESTING:
            raise ValueError(f"`{field}` nests more than {MAX_NESTING} levels deep")
        level = deeper


class Attachment(Struct, omit_defaults=True, forbid_unknown_fields=False):
    """Metadata of a file the client uploaded elsewhere; signald stores only this."""

    url: Annotated[str, Meta(min_length=1, max_length=2048)]
    name: ShortText | None = None
    mime: Annotated[str, Meta(max_length=128)] | None = None
    size: Count | None = None
    width: Count | None = None
    height: Count | None = None


Attachments = Annotated[list[Attachment], Meta(max_length=MAX_ATTACHMENTS)]


class ChatMessage(Struct):
    """A stored chat message as clients see it (history, acks and ``chat.message``)."""

    id: str
    room: str
    seq: int
    rev: int
    """The room revision of the message's latest change (creation, edit, deletion, redaction, reaction)."""
    user_id: str
    body: str
    attachments: list[Attachment]
    parent_id: str | None
    created_at: str
    edited_at: str | None
    deleted_at: str | None
    redacted: bool
    reactions: dict[str, list[str]]


class Tombstone(Struct):
    """A hard-deleted message in ``changes``: ``rev`` is that of its deletion."""

    id: str
    room: str
    seq: int
    rev: int
    removed: Literal[True] = True


Change = Union[ChatMessage, Tombstone]
"""One entry of ``changes``: a message in its current state, or the tombstone of a hard delete."""


class Limits(Struct):
    """The limits in force for a connection, exactly the keys of ``welcome`` in docs/protocol.md."""

    max_frame_bytes: int
    max_body_chars: int
    rate_per_s: float
    rate_burst: int
    max_rooms: int
    max_connections_per_user: int
    send_queue: int
    history_page_max: int
    ring_timeout_s: float
    typing_timeout_s: float


