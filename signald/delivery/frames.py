"""Encode once, deliver to many: the outbound :class:`Frame` and which events supersede each other.

A :class:`Frame` wraps one outbound message and encodes it at most once per wire format (JSON
text or MessagePack binary), however many connections receive it. :func:`coalesce_key` is the
protocol's policy of which events a slow reader only needs the latest of; the outbox applies it.
"""

from __future__ import annotations

from typing import Any

from signald.delivery.wsframe import OPCODE_BINARY, OPCODE_TEXT, websocket_frame
from signald.protocol import (
    ChatTypingUserEvent,
    Outbound,
    PresenceUpdateEvent,
    RoomSignalEvent,
    json_encoder,
    msgpack_encoder,
)


def coalesce_key(message: Outbound | dict[str, Any]) -> tuple[str, ...] | None:
    """Events of which a slow reader only needs the latest: same key, newer one supersedes.

    ``presence.update`` per user, ``chat.typing.user`` per (room, user), ``room.signal`` per
    (room, user, kind). Chat, call, membership, ack and error frames are never superseded.
    """
    if isinstance(message, PresenceUpdateEvent):
        return ("presence", message.data.user_id)
    if isinstance(message, ChatTypingUserEvent):
        return ("typing", message.data.scope, message.data.user_id)
    if isinstance(message, RoomSignalEvent):
        return ("signal", message.data.room, message.data.user_id, message.data.kind)
    return None


class Frame:
    """One outbound message, encoded lazily and at most once per format.

    ``text``/``binary`` are the JSON / MessagePack payloads; ``wire_text``/``wire_binary`` the
    complete WebSocket frames around them. Server frames are unmasked, so the same frame bytes
    serve every recipient: fan-out costs one encode per event and one buffer append per recipient.
    """

    __slots__ = ("_binary", "_text", "_wire_binary", "_wire_text", "key", "message")

    def __init__(self, message: Outbound | dict[str, Any]) -> None:
        self.message = message
        self.key = coalesce_key(message)
        self._text: str | None = None
        self._binary: bytes | None = None
        self._wire_text: bytes | None = None
        self._wire_binary: bytes | None = None

    @classmethod
    def encoded(cls, message: Outbound | dict[str, Any], text: bytes) -> Frame:
        """A frame whose JSON ``text`` was encoded elsewhere (by another node): not encoded again."""
        frame = cls(message)
        frame._text = text.decode()
        frame._wire_text = websocket_frame(text, OPCODE_TEXT)
        return frame

    @property
    def wire_text(self) -> bytes:
        """The complete text frame (JSON)."""
        if self._wire_text is None:
            self._wire_text = websocket_frame(json_encoder.encode(self.message), OPCODE_TEXT)
        return self._wire_text

    @property
    def wire_binary(self) -> bytes:
        """The complete binary frame (MessagePack)."""
        if self._wire_binary is None:
            self._wire_binary = websocket_frame(self.binary, OPCODE_BINARY)
        return self._wire_binary

    @property
    def kind(self) -> str:
        """The frame's ``type``."""
        message = self.message
        if isinstance(message, dict):
            return str(message.get("type"))
        return str(message.__struct_config__.tag)

    @property
    def text(self) -> str:
        """The JSON text frame payload."""
        if self._text is None:
            self._text = json_encoder.encode(self.message).decode()
        return self._text

    @property
    def binary(self) -> bytes:
        """The MessagePack binary frame payload."""
        if self._binary is None:
            self._binary = msgpack_encoder.encode(self.message)
        return self._binary
