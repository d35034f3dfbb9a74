"""Server-to-client messages: replies (``ack``, ``error``), ``welcome`` and events.

Each is a Struct of the envelope's shape, encoded once per event whatever the number of recipients.
"""

from __future__ import annotations

from typing import Any, Final

from msgspec import Struct

from signald.protocol.common import (
    CallType,
    Change,
    ChatMessage,
    DeleteMode,
    JsonObject,
    Limits,
    OpId,
    ReactionAction,
    Status,
)

__all__ = [
    "WelcomeData", "AckData", "ErrorData", "Member", "RoomJoinResult", "HistoryPage", "ChangesPage", "DeletedData",
    "DeleteResult", "RedactedData", "RedactResult", "ReadUpdateData", "ReactionUpdateData", "ReactionResult",
    "TypingUserData", "CallOfferEventData", "CallAnswerEventData", "CallIceEventData", "CallEndEventData",
    "CallOfferResult", "RoomUserData", "RoomData", "DeviceData", "PresenceUpdateData", "PongData",
    "RoomSignalEventData", "KickedData", "RevokedData", "ExpiredData", "ExpiresResult", "SessionInfoResult",
    "StatsResult", "Outbound", "Welcome", "Ack", "Error", "ChatMessageEvent", "ChatEditedEvent", "ChatDeletedEvent",
    "ChatRedactedEvent", "ChatReadUpdateEvent", "ChatReactionUpdateEvent", "ChatTypingUserEvent", "CallOfferEvent",
    "CallAnswerEvent", "CallIceEvent", "CallEndEvent", "MemberJoinedEvent", "MemberLeftEvent", "RoomActiveEvent",
    "RoomWaitingEvent", "DeviceOnlineEvent", "DeviceOfflineEvent", "PresenceUpdateEvent", "PresencePongEvent",
    "RoomSignalEvent", "RoomKickedEvent", "SessionRevokedEvent", "SessionExpiredEvent", "OUTBOUND_MESSAGES"
]

# --------------------------------------------------------------------------- outbound payloads

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


class ErrorData(Struct, omit_defaults=True):
    op_id: OpId
    code: str
    message: str
    retry_after_s: float | None = None
    """Set on ``RATE_LIMITED`` refusals of a connection (close 4429): seconds to wait."""


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
    rev: int
    """The room's revision at the moment of the join: every live event after the ack is above it."""
    missed: list[ChatMessage] | None = None
    missed_truncated: bool | None = None
    changes: list[Change] | None = None
    changes_truncated: bool | None = None
    changes_reset: bool | None = None


class HistoryPage(Struct):
    messages: list[ChatMessage]
    has_more: bool


class ChangesPage(Struct, omit_defaults=True):
    """Result of ``chat.changes``; ``changes_reset`` when retention removed part of what was asked."""

    changes: list[Change]
    rev: int
    has_more: bool
    changes_reset: bool | None = None


class DeletedData(Struct):
    message_id: str
    room: str
    deleted_at: str
    mode: DeleteMode
    rev: int


class DeleteResult(Struct):
    message_id: str
    deleted_at: str
    rev: int


class RedactedData(Struct):
    message_id: str
    room: str
    new_body: str
    rev: int


class RedactResult(Struct):
    message_id: str
    new_body: str
    rev: int


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
    rev: int


class ReactionResult(Struct):
    """Ack of a ``chat.reaction`` that changed the reaction set (one that did not answers null)."""

    rev: int


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
