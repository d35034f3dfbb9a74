"""Handlers of the protocol's inbound types, one module per concern.

:func:`default_router` returns a router with every protocol type registered (the one table of
which handler serves which type is :data:`HANDLERS`); embedders start from it and add their own
``app.*`` types.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

from signald import protocol
from signald.handlers import calls, chat, rooms, session
from signald.router import Router

HANDLERS: Final[tuple[tuple[type[Any], Callable[[Any, Any], Awaitable[Any]]], ...]] = (
    (protocol.PresencePing, session.presence_ping),
    (protocol.AuthRefresh, session.auth_refresh),
    (protocol.RoomJoin, rooms.room_join),
    (protocol.RoomLeave, rooms.room_leave),
    (protocol.RoomKick, rooms.room_kick),
    (protocol.RoomSignal, rooms.room_signal),
    (protocol.PresenceSet, rooms.presence_set),
    (protocol.ChatTyping, rooms.chat_typing),
    (protocol.SessionInfo, rooms.session_info),
    (protocol.SystemStats, rooms.system_stats),
    (protocol.ChatSend, chat.chat_send),
    (protocol.ChatEdit, chat.chat_edit),
    (protocol.ChatDelete, chat.chat_delete),
    (protocol.ChatRedact, chat.chat_redact),
    (protocol.ChatRead, chat.chat_read),
    (protocol.ChatReaction, chat.chat_reaction),
    (protocol.ChatHistory, chat.chat_history),
    (protocol.ChatChanges, chat.chat_changes),
    (protocol.CallOffer, calls.call_offer),
    (protocol.CallAnswer, calls.call_answer),
    (protocol.CallIce, calls.call_ice),
    (protocol.CallEnd, calls.call_end),
)


def default_router() -> Router:
    """A router that handles every protocol type."""
    router = Router()
    for message_type, handler in HANDLERS:
        router.add(message_type, handler)
    return router
