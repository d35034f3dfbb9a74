"""Wire types of signald protocol v1 and the one place the message-type set is frozen.

Every frame is an envelope ``{"type": ..., "id": ..., "data": {...}}``. Inbound messages are a
msgspec tagged union over ``type`` (one Struct per type, ``data`` typed per message), so field
constraints declared here turn bad input into ``INVALID_PAYLOAD`` errors that name the field path
(``$.data.room``). Outbound events are Structs of the same shape, encoded once per event.

Decoding (:func:`decode_frame`) tries the tagged union first (the fast path); only when that fails
does it look closer to choose between ``BAD_REQUEST``, ``UNKNOWN_TYPE`` and ``INVALID_PAYLOAD``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal, TypeAlias, Union, cast

import msgspec
from msgspec import Meta, Struct

from signald.errors import SignalError

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
Seq = Annotated[int, Meta(ge=0)]
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


class Attachment(Struct, omit_defaults=True, forbid_unknown_fields=False):
    """Metadata of a file the client uploaded elsewhere; signald stores only this."""

    url: Annotated[str, Meta(min_length=1, max_length=2048)]
    name: ShortText | None = None
    mime: Annotated[str, Meta(max_length=128)] | None = None
    size: Annotated[int, Meta(ge=0)] | None = None
    width: Annotated[int, Meta(ge=0)] | None = None
    height: Annotated[int, Meta(ge=0)] | None = None


Attachments = Annotated[list[Attachment], Meta(max_length=MAX_ATTACHMENTS)]


class ChatMessage(Struct):
    """A stored chat message as clients see it (history, acks and ``chat.message``)."""

    id: str
    room: str
    seq: int
    user_id: str
    body: str
    attachments: list[Attachment]
    parent_id: str | None
    created_at: str
    edited_at: str | None
    deleted_at: str | None
    redacted: bool
    reactions: dict[str, list[str]]


# --------------------------------------------------------------------------- inbound payloads


class NoData(Struct):
    """Payload of message types that carry no fields."""


class AuthRefreshData(Struct):
    refresh_token: Annotated[str, Meta(min_length=1, max_length=8192)]


class RoomJoinData(Struct):
    room: RoomName
    since: Seq | None = None


class RoomLeaveData(Struct):
    room: RoomName


class ChatSendData(Struct):
    scope: RoomName
    body: str
    attachments: Attachments = []
    parent_id: MessageId | None = None
    client_msg_id: Annotated[str, Meta(min_length=1, max_length=128)] | None = None


class ChatEditData(Struct):
    message_id: MessageId
    new_body: str


class ChatDeleteData(Struct):
    message_id: MessageId
    mode: DeleteMode = "soft"


class ChatRedactData(Struct):
    message_id: MessageId
    mask: Annotated[str, Meta(max_length=256)] = "[redacted]"


class ChatReadData(Struct):
    message_id: MessageId
    room: RoomName


class ChatReactionData(Struct):
    message_id: MessageId
    reaction: Reaction
    action: ReactionAction
    scope: RoomName


class ChatTypingData(Struct):
    scope: RoomName
    typing: bool


class ChatHistoryData(Struct):
    room: RoomName
    before: Seq | None = None
    after: Seq | None = None
    limit: Annotated[int, Meta(ge=1)] | None = None


class CallOfferData(Struct):
    target_id: UserId
    call_type: CallType
    sdp: JsonObject
    call_id: CallId | None = None


class CallAnswerData(Struct):
    target_id: UserId
    sdp: JsonObject
    call_id: CallId | None = None


class CallIceData(Struct):
    target_id: UserId
    candidate: JsonObject
    call_id: CallId | None = None


class CallEndData(Struct):
    target_id: UserId
    reason: Reason | None = None
    call_id: CallId | None = None


class PresenceSetData(Struct):
    status: Status


class RoomSignalData(Struct):
    room: RoomName
    kind: SignalKind
    payload: Any = None


class RoomKickData(Struct):
    room: RoomName
    user_id: UserId
    reason: Annotated[str, Meta(max_length=256)] | None = None


# --------------------------------------------------------------------------- inbound messages


class Inbound(Struct, tag_field="type", kw_only=True):
    """Base of every client-to-server message; ``id`` is the client's op id."""

    id: OpId = None


class AuthRefresh(Inbound, tag="auth.refresh"):
    data: AuthRefreshData


class RoomJoin(Inbound, tag="room.join"):
    data: RoomJoinData


class RoomLeave(Inbound, tag="room.leave"):
    data: RoomLeaveData


class ChatSend(Inbound, tag="chat.send"):
    data: ChatSendData


class ChatEdit(Inbound, tag="chat.edit"):
    data: ChatEditData


class ChatDelete(Inbound, tag="chat.delete"):
    data: ChatDeleteData


class ChatRedact(Inbound, tag="chat.redact"):
    data: ChatRedactData


class ChatRead(Inbound, tag="chat.read"):
    data: ChatReadData


class ChatReaction(Inbound, tag="chat.reaction"):
    data: ChatReactionData


class ChatTyping(Inbound, tag="chat.typing"):
    data: ChatTypingData


class ChatHistory(Inbound, tag="chat.history"):
    data: ChatHistoryData


class CallOffer(Inbound, tag="call.offer"):
    data: CallOfferData


class CallAnswer(Inbound, tag="call.answer"):
    data: CallAnswerData


class CallIce(Inbound, tag="call.ice"):
    data: CallIceData


class CallEnd(Inbound, tag="call.end"):
    data: CallEndData


class PresenceSet(Inbound, tag="presence.set"):
    data: PresenceSetData


class RoomSignal(Inbound, tag="room.signal"):
    data: RoomSignalData


class RoomKick(Inbound, tag="room.kick"):
    data: RoomKickData


class SessionInfo(Inbound, tag="session.info"):
    data: NoData | None = None


class PresencePing(Inbound, tag="presence.ping"):
    data: NoData | None = None


class SystemStats(Inbound, tag="system.stats"):
    data: NoData | None = None


INBOUND_MESSAGES: Final[tuple[type[Inbound], ...]] = (
    AuthRefresh, RoomJoin, RoomLeave, ChatSend, ChatEdit, ChatDelete, ChatRedact, ChatRead,
    ChatReaction, ChatTyping, ChatHistory, CallOffer, CallAnswer, CallIce, CallEnd, PresenceSet,
    RoomSignal, RoomKick, SessionInfo, PresencePing, SystemStats,
)

InboundMessage: TypeAlias = Union[
    AuthRefresh, RoomJoin, RoomLeave, ChatSend, ChatEdit, ChatDelete, ChatRedact, ChatRead,
    ChatReaction, ChatTyping, ChatHistory, CallOffer, CallAnswer, CallIce, CallEnd, PresenceSet,
    RoomSignal, RoomKick, SessionInfo, PresencePing, SystemStats,
]

# --------------------------------------------------------------------------- outbound payloads


class Limits(Struct):
    """The limits in force for a connection, exactly the keys PROTOCOL.md lists."""

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


class WelcomeData(Struct):
    protocol_version: int
    session_id: str
    user_id: str
    server_time: str
    heartbeat_s: float
    limits: Limits


class AckData(Struct):
    op_id: OpId
    data: Any


class ErrorData(Struct):
    op_id: OpId
    code: str
    message: str


class Member(Struct, omit_defaults=True):
    user_id: str
    status: Status
    devices: list[str]
    last_seen: str | None = None


class RoomJoinResult(Struct, omit_defaults=True):
    room: str
    members: list[Member]
    active: bool
    unread: int
    missed: list[ChatMessage] | None = None
    missed_truncated: bool | None = None


class HistoryPage(Struct):
    messages: list[ChatMessage]
    has_more: bool


class DeletedData(Struct):
    message_id: str
    room: str
    deleted_at: str
    mode: DeleteMode


class DeleteResult(Struct):
    message_id: str
    deleted_at: str


class RedactedData(Struct):
    message_id: str
    room: str
    new_body: str


class RedactResult(Struct):
    message_id: str
    new_body: str


class ReadUpdateData(Struct):
    message_id: str
    user_id: str
    room: str


class ReactionUpdateData(Struct):
    message_id: str
    user_id: str
    reaction: str
    action: ReactionAction
    room: str


class TypingUserData(Struct):
    scope: str
    user_id: str
    typing: bool


class CallOfferEventData(Struct):
    from_user: str
    call_id: str
    call_type: CallType
    sdp: JsonObject


class CallAnswerEventData(Struct):
    from_user: str
    call_id: str
    sdp: JsonObject


class CallIceEventData(Struct):
    from_user: str
    call_id: str
    candidate: JsonObject


class CallEndEventData(Struct):
    from_user: str
    call_id: str
    reason: str


class CallOfferResult(Struct):
    call_id: str


class RoomUserData(Struct):
    room: str
    user_id: str


class RoomData(Struct):
    room: str


class DeviceData(Struct):
    device_id: str
    user_id: str


class PresenceUpdateData(Struct):
    user_id: str
    status: Status


class PongData(Struct):
    op_id: OpId
    timestamp: str


class RoomSignalEventData(Struct):
    room: str
    user_id: str
    kind: str
    payload: Any


class KickedData(Struct):
    room: str
    by: str
    reason: str | None


class RevokedData(Struct):
    reason: str


class ExpiredData(Struct):
    expired_at: str


class ExpiresResult(Struct):
    expires_at: str | None


class SessionInfoResult(Struct):
    session_id: str
    user_id: str
    roles: list[str]
    rooms: list[str]
    connected_at: str
    expires_at: str | None
    devices: list[str]


class StatsResult(Struct):
    connections: int
    users: int
    rooms: int
    calls: int
    messages_in: int
    messages_out: int
    uptime_s: float
    db_bytes: int


# --------------------------------------------------------------------------- outbound messages


class Outbound(Struct, tag_field="type", kw_only=True):
    """Base of every server-to-client message."""



class Welcome(Outbound, tag="welcome"):
    data: WelcomeData


class Ack(Outbound, tag="ack"):
    data: AckData


class Error(Outbound, tag="error"):
    data: ErrorData


class ChatMessageEvent(Outbound, tag="chat.message"):
    data: ChatMessage


class ChatEditedEvent(Outbound, tag="chat.edited"):
    data: ChatMessage


class ChatDeletedEvent(Outbound, tag="chat.deleted"):
    data: DeletedData


class ChatRedactedEvent(Outbound, tag="chat.redacted"):
    data: RedactedData


class ChatReadUpdateEvent(Outbound, tag="chat.read.update"):
    data: ReadUpdateData


class ChatReactionUpdateEvent(Outbound, tag="chat.reaction.update"):
    data: ReactionUpdateData


class ChatTypingUserEvent(Outbound, tag="chat.typing.user"):
    data: TypingUserData


class CallOfferEvent(Outbound, tag="call.offer"):
    data: CallOfferEventData


class CallAnswerEvent(Outbound, tag="call.answer"):
    data: CallAnswerEventData


class CallIceEvent(Outbound, tag="call.ice"):
    data: CallIceEventData


class CallEndEvent(Outbound, tag="call.end"):
    data: CallEndEventData


class MemberJoinedEvent(Outbound, tag="member.joined"):
    data: RoomUserData


class MemberLeftEvent(Outbound, tag="member.left"):
    data: RoomUserData


class RoomActiveEvent(Outbound, tag="room.active"):
    data: RoomData


class RoomWaitingEvent(Outbound, tag="room.waiting"):
    data: RoomData


class DeviceOnlineEvent(Outbound, tag="device.online"):
    data: DeviceData


class DeviceOfflineEvent(Outbound, tag="device.offline"):
    data: DeviceData


class PresenceUpdateEvent(Outbound, tag="presence.update"):
    data: PresenceUpdateData


class PresencePongEvent(Outbound, tag="presence.pong"):
    data: PongData


class RoomSignalEvent(Outbound, tag="room.signal"):
    data: RoomSignalEventData


class RoomKickedEvent(Outbound, tag="room.kicked"):
    data: KickedData


class SessionRevokedEvent(Outbound, tag="session.revoked"):
    data: RevokedData


class SessionExpiredEvent(Outbound, tag="session.expired"):
    data: ExpiredData


OUTBOUND_MESSAGES: Final[tuple[type[Outbound], ...]] = (
    Welcome, Ack, Error, ChatMessageEvent, ChatEditedEvent, ChatDeletedEvent, ChatRedactedEvent,
    ChatReadUpdateEvent, ChatReactionUpdateEvent, ChatTypingUserEvent, CallOfferEvent,
    CallAnswerEvent, CallIceEvent, CallEndEvent, MemberJoinedEvent, MemberLeftEvent,
    RoomActiveEvent, RoomWaitingEvent, DeviceOnlineEvent, DeviceOfflineEvent, PresenceUpdateEvent,
    PresencePongEvent, RoomSignalEvent, RoomKickedEvent, SessionRevokedEvent, SessionExpiredEvent,
)


def type_of(cls: type[Struct]) -> str:
    """The wire ``type`` string of a message class."""
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


# The frozen surface: docs/protocol.md lists exactly these (tests/test_frozen_surface.py).
INBOUND_TYPES: Final[frozenset[str]] = frozenset(type_of(c) for c in INBOUND_MESSAGES)
OUTBOUND_TYPES: Final[frozenset[str]] = frozenset(type_of(c) for c in OUTBOUND_MESSAGES)
APP_EVENT_PREFIX: Final = "app."
INBOUND_BY_TYPE: Final[dict[str, type[Inbound]]] = {type_of(c): c for c in INBOUND_MESSAGES}

# --------------------------------------------------------------------------- codecs (built once)


class _Envelope(Struct):
    """Loose view of a frame, used only to classify a frame the typed decoder refused."""

    type: Any = msgspec.UNSET
    id: Any = None
    data: Any = None


_json_decoder: Final = msgspec.json.Decoder(InboundMessage)
_msgpack_decoder: Final = msgspec.msgpack.Decoder(InboundMessage)
_json_envelope: Final = msgspec.json.Decoder(_Envelope)
_msgpack_envelope: Final = msgspec.msgpack.Decoder(_Envelope)
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


class FrameError(SignalError):
    """A frame that could not be turned into a message; carries the op id if one was readable."""

    def __init__(self, code: Any, message: str, op_id: OpId = None) -> None:
        super().__init__(code, message)
        self.op_id = op_id


def _readable_op_id(value: Any) -> OpId:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, str) and len(value) <= 128):
        return value
    return None


_ROOM_PATTERN_TEXT: Final = re.compile(r"`str` matching regex '[^']*'")


def decode_frame(frame: bytes | str, *, msgpack: bool = False) -> InboundMessage:
    """Decode one inbound frame into its typed message.

    Error handling: raises :class:`FrameError` with ``BAD_REQUEST`` (not JSON, not an object,
    ``type`` missing or not a string), ``UNKNOWN_TYPE`` or ``INVALID_PAYLOAD`` (the message names
    the field path, e.g. ``$.data.room``). ``op_id`` is set whenever the frame's ``id`` could be read.
    """
    decoder = _msgpack_decoder if msgpack else _json_decoder
    if msgpack and isinstance(frame, str):
        raise FrameError("BAD_REQUEST", "this connection speaks MessagePack: send binary frames")
    try:
        message: InboundMessage = decoder.decode(cast(Any, frame))  # msgspec also decodes str
        return message
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        pass
    raise _classify(frame, msgpack)


def _classify(frame: bytes | str, msgpack: bool) -> FrameError:
    loose = _msgpack_any if msgpack else _json_any
    try:
        value = loose.decode(cast(Any, frame))
    except (msgspec.DecodeError, UnicodeDecodeError):
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
        return FrameError("UNKNOWN_TYPE", f"unknown message type {kind[:64]!r}", op_id)
    typed = (_typed_msgpack if msgpack else _typed_json)[kind]
    try:
        typed.decode(cast(Any, frame))
    except msgspec.ValidationError as exc:
        text = _ROOM_PATTERN_TEXT.sub("a room name (1-128 characters of [A-Za-z0-9._:@-])", str(exc))
        if text.endswith("- at `$.id`"):
            return FrameError("INVALID_PAYLOAD", text, None)
        if "data" in value and not isinstance(value["data"], dict) and value["data"] is not None:
            return FrameError("INVALID_PAYLOAD", "`$.data` must be an object", op_id)
        return FrameError("INVALID_PAYLOAD", text, op_id)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # pragma: no cover - loose decode succeeded
        return FrameError("BAD_REQUEST", str(exc), op_id)
    # The typed decoder accepts it alone, so the union refused it for another reason.
    return FrameError("INVALID_PAYLOAD", "message does not match its type", op_id)  # pragma: no cover


def encode_json(message: Outbound) -> bytes:
    """Encode an outbound message as one JSON text frame payload."""
    return json_encoder.encode(message)


def encode_msgpack(message: Outbound) -> bytes:
    """Encode an outbound message as one MessagePack binary frame payload."""
    return msgpack_encoder.encode(message)


def encode_app_event(event_type: str, data: Any) -> dict[str, Any]:
    """Build an embedder's ``app.*`` event; its type must start with ``app.``."""
    if not event_type.startswith(APP_EVENT_PREFIX) or len(event_type) <= len(APP_EVENT_PREFIX):
        raise ValueError(f"application events must be named 'app.<name>', got {event_type!r}")
    return {"type": event_type, "data": data}
