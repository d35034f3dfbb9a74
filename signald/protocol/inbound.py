"""Client-to-server messages: one Struct per ``type``, with its ``data`` typed.

``Inbound`` is the base of a msgspec tagged union over ``type``; decoding a frame into
:data:`InboundMessage` validates every field in one pass (see :mod:`signald.protocol.codec`).
"""

from __future__ import annotations

from typing import Annotated, Any, Final, TypeAlias, Union

from msgspec import Meta, Struct

from signald.protocol.common import (
    Attachments,
    CallId,
    CallType,
    DeleteMode,
    JsonObject,
    MessageId,
    OpId,
    PageLimit,
    Reaction,
    ReactionAction,
    Reason,
    Rev,
    RoomName,
    Seq,
    SignalKind,
    Status,
    UserId,
    check_free_form,
)

__all__ = [
    "NoData", "AuthRefreshData", "RoomJoinData", "RoomLeaveData", "ChatSendData", "ChatEditData", "ChatDeleteData",
    "ChatRedactData", "ChatReadData", "ChatReactionData", "ChatTypingData", "ChatHistoryData", "CallOfferData",
    "CallAnswerData", "CallIceData", "CallEndData", "PresenceSetData", "RoomSignalData", "RoomKickData", "Inbound",
    "AuthRefresh", "RoomJoin", "RoomLeave", "ChatSend", "ChatEdit", "ChatDelete", "ChatRedact", "ChatRead",
    "ChatReaction", "ChatTyping", "ChatHistory", "ChatChanges", "ChatChangesData", "CallOffer", "CallAnswer",
    "CallIce", "CallEnd", "PresenceSet", "RoomSignal", "RoomKick", "SessionInfo", "PresencePing", "SystemStats",
    "INBOUND_MESSAGES", "InboundMessage"
]

# --------------------------------------------------------------------------- inbound payloads


class NoData(Struct):
    """Payload of message types that carry no fields."""


class AuthRefreshData(Struct):
    refresh_token: Annotated[str, Meta(min_length=1, max_length=8192)]


class RoomJoinData(Struct):
    room: RoomName
    since: Seq | None = None
    since_rev: Rev | None = None


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
    limit: PageLimit | None = None


class ChatChangesData(Struct):
    room: RoomName
    after_rev: Rev
    limit: PageLimit | None = None


class CallOfferData(Struct):
    target_id: UserId
    call_type: CallType
    sdp: JsonObject
    call_id: CallId | None = None

    def __post_init__(self) -> None:
        check_free_form(self.sdp, "sdp")


class CallAnswerData(Struct):
    target_id: UserId
    sdp: JsonObject
    call_id: CallId | None = None

    def __post_init__(self) -> None:
        check_free_form(self.sdp, "sdp")


class CallIceData(Struct):
    target_id: UserId
    candidate: JsonObject
    call_id: CallId | None = None

    def __post_init__(self) -> None:
        check_free_form(self.candidate, "candidate")


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

    def __post_init__(self) -> None:
        check_free_form(self.payload, "payload")


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


class ChatChanges(Inbound, tag="chat.changes"):
    data: ChatChangesData


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
    ChatReaction, ChatTyping, ChatHistory, ChatChanges, CallOffer, CallAnswer, CallIce, CallEnd,
    PresenceSet, RoomSignal, RoomKick, SessionInfo, PresencePing, SystemStats,
)

InboundMessage: TypeAlias = Union[
    AuthRefresh, RoomJoin, RoomLeave, ChatSend, ChatEdit, ChatDelete, ChatRedact, ChatRead,
    ChatReaction, ChatTyping, ChatHistory, ChatChanges, CallOffer, CallAnswer, CallIce, CallEnd,
    PresenceSet, RoomSignal, RoomKick, SessionInfo, PresencePing, SystemStats,
]
