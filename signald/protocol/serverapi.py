"""The wire types of the HTTP server API (docs/server-api.md): request bodies, results, errors.

Bodies are decoded with msgspec into the structs below, so a bad body becomes an
``INVALID_PAYLOAD`` error whose message names the field (``$.room``), exactly as a bad WebSocket
frame does; where a call does what a WebSocket request does, it reuses that request's struct
(``kick`` decodes :class:`KickBody`, a :class:`~signald.protocol.inbound.RoomKickData`, ``history``
:class:`HistoryQuery`, a :class:`~signald.protocol.inbound.ChatHistoryData`). Sans-IO: no sockets, no event loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final

import msgspec
from msgspec import Meta, Struct

from signald.errors import ErrorCode, SignalError
from signald.protocol.common import Reason, RoomName, UserId, check_free_form, field_error_text
from signald.protocol.inbound import ChatHistoryData, RoomKickData
from signald.protocol.types import APP_EVENT_PREFIX

# Every error code, with the HTTP status an API call that fails with it answers. A body that is
# too large is a bad request like a malformed one (400); the code tells them apart.
STATUS_OF: Final[dict[str, int]] = {
    "BAD_REQUEST": 400,
    "UNKNOWN_TYPE": 400,
    "INVALID_PAYLOAD": 400,
    "TOO_LARGE": 400,
    "UNAUTHORIZED": 401,
    "FORBIDDEN": 403,
    "NOT_FOUND": 404,
    "NOT_IN_ROOM": 404,
    "TARGET_OFFLINE": 404,
    "RATE_LIMITED": 429,
    "LIMIT_EXCEEDED": 429,
    "CONFLICT": 409,
    "INTERNAL": 500,
}

AppType = Annotated[str, Meta(min_length=1, max_length=128, description="app.<name>")]


def check_app_type(event_type: str) -> None:
    """``INVALID_PAYLOAD`` unless ``event_type`` is ``app.<name>``: the other types are the protocol's."""
    if not event_type.startswith(APP_EVENT_PREFIX) or len(event_type) <= len(APP_EVENT_PREFIX):
        raise SignalError("INVALID_PAYLOAD", f"`$.type` must be 'app.<name>', got {event_type!r}")


class PublishBody(Struct, forbid_unknown_fields=True):
    """``POST /api/v1/publish``: an ``app.*`` event to every connection in ``room``."""

    room: RoomName
    type: AppType
    data: Any = None
    store: bool = False

    def __post_init__(self) -> None:
        check_free_form(self.data, "data")  # what every member's wire format carries, as room.signal's payload


class NotifyBody(Struct, forbid_unknown_fields=True):
    """``POST /api/v1/notify``: an ``app.*`` event to every device of ``user_id``."""

    user_id: UserId
    type: AppType
    data: Any = None

    def __post_init__(self) -> None:
        check_free_form(self.data, "data")


class DisconnectBody(Struct, forbid_unknown_fields=True):
    """``POST /api/v1/disconnect``: ``session.revoked {reason}`` then close 4003."""

    user_id: UserId
    reason: Reason


class KickBody(RoomKickData, forbid_unknown_fields=True):
    """``POST /api/v1/kick``: ``room.kick``'s fields, with unknown fields refused like every body's (a
    WebSocket frame ignores them; a backend's ``"reson"`` must not drop its reason silently)."""


class HistoryQuery(ChatHistoryData, forbid_unknown_fields=True):
    """``GET /api/v1/history?room=R&before=&after=&limit=``: ``chat.history``'s fields, with unknown
    parameters refused as ``presence`` refuses them (a frame ignores unknown fields; a backend's
    ``limt=5`` must not silently give a default page)."""


class PresenceQuery(Struct, forbid_unknown_fields=True):
    """``GET /api/v1/presence?room=R``."""

    room: RoomName


class StatsQuery(Struct, forbid_unknown_fields=True):
    """``GET /api/v1/stats``: no parameters (one given is a typo or a misunderstanding: refused)."""


class Delivered(Struct):
    delivered: int


class Sessions(Struct):
    sessions: int


class PresenceMember(Struct):
    user_id: str
    status: str
    devices: list[str]
    last_seen: str | None


class PresenceResult(Struct):
    members: list[PresenceMember]


class Health(Struct, omit_defaults=True):
    status: str
    reason: str | None = None


_encoder: Final = msgspec.json.Encoder()


def result_body(result: Any) -> bytes:
    """``{"result": ...}``."""
    return _encoder.encode({"result": result})


def error_body(code: ErrorCode, message: str) -> bytes:
    """``{"error": {"code", "message"}}``."""
    return _encoder.encode({"error": {"code": code, "message": message}})


def decode_body(data: bytes, kind: type[Any]) -> Any:
    """Decode a JSON body into ``kind``; ``BAD_REQUEST`` if it is not JSON (or nests deeper than the
    decoder goes), ``INVALID_PAYLOAD`` (naming the field) if it does not fit."""
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.ValidationError as exc:
        raise SignalError("INVALID_PAYLOAD", field_error_text(exc)) from None
    except msgspec.DecodeError as exc:
        raise SignalError("BAD_REQUEST", f"the body is not JSON: {exc}") from None
    except RecursionError:  # deeper than the decoder goes: a client's fault, as in a WebSocket frame
        raise SignalError("BAD_REQUEST", "the body nests too deeply") from None


def decode_query(query: Mapping[str, str], kind: type[Any]) -> Any:
    """Build ``kind`` from query parameters (strings, converted as their fields say). A field given
    empty (``before=``, as curl users write it) is not given; an unknown name is refused, empty or not."""
    fields = kind.__struct_fields__
    try:
        return msgspec.convert({k: v for k, v in query.items() if v != "" or k not in fields}, type=kind, strict=False)
    except msgspec.ValidationError as exc:
        raise SignalError("INVALID_PAYLOAD", field_error_text(exc)) from None
