"""The call log: the start, answer and end of each call stored as system messages.

With ``calls.call_log`` on, each call's entries are stored (``user_id`` ``$system``) in a room both
parties shared when the call was offered; one task writes them, so they are stored in the order
they happened and call handling never waits for the disk.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

import trio

from signald.errors import SignalError
from signald.history.contract import ChatStore
from signald.protocol import ChatMessage, ChatMessageEvent, Outbound
from signald.state.calls import CallLogEntry
from signald.state.rooms import RoomRegistry

SYSTEM_USER: Final = "$system"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    whole = int(seconds)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    return f", {hours}:{minutes:02d}:{secs:02d}" if hours else f", {minutes:02d}:{secs:02d}"


def describe(entry: CallLogEntry) -> str:
    """The text of a call-log system message."""
    if entry.kind == "started":
        return f"{entry.call_type} call from {entry.caller} to {entry.callee}"
    if entry.kind == "answered":
        return f"{entry.call_type} call answered by {entry.callee}"
    return f"{entry.call_type} call ended ({entry.reason}){_duration(entry.duration_s)}"


class CallLog:
    """Stores call-log entries as system messages, in order, without blocking call handling."""

    def __init__(self, rooms: RoomRegistry, store: ChatStore, announce: Callable[[str, Outbound], None]) -> None:
        """``announce(room, event)`` delivers what the store committed to the room's connections
        (:meth:`signald.app.history.HistoryService.announce`, which also serves joins under way)."""
        self._rooms_registry = rooms
        self._store = store
        self._announce = announce
        self._rooms: dict[str, str] = {}
        self._send, self._receive = trio.open_memory_channel[tuple[str, CallLogEntry]](math.inf)

    def record(self, entries: list[CallLogEntry]) -> None:
        for entry in entries:
            room = self._room_for(entry)
            if entry.kind == "ended":
                self._rooms.pop(entry.call_id, None)
            if room is not None:
                self._send.send_nowait((room, entry))

    def _room_for(self, entry: CallLogEntry) -> str | None:
        if entry.kind == "started":
            rooms = self._rooms_registry
            shared = sorted(rooms.rooms_of_user(entry.caller) & rooms.rooms_of_user(entry.callee))
            if not shared:
                return None
            self._rooms[entry.call_id] = shared[0]
        return self._rooms.get(entry.call_id)

    async def run(self) -> None:
        def announce(message: ChatMessage) -> None:
            self._announce(message.room, ChatMessageEvent(data=message))

        async for room, entry in self._receive:
            try:
                await self._store.send(room=room, user_id=SYSTEM_USER, body=describe(entry), on_commit=announce)
            except SignalError:
                continue
