"""The records behind :class:`~signald.state.calls.CallRegistry` (sans-IO): one live call, and
what one registry operation produced so far; plus the helpers of its indexes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, TypeVar

import attrs

from signald.protocol import CallEndEvent, CallEndEventData, CallType
from signald.state.call_outcome import CallEventMessage, CallLogEntry
from signald.state.call_table import State
from signald.state.send import Send

__all__ = ["CallRecord", "OutcomeBuilder", "end_event", "link", "pair", "unlink"]


@attrs.define(slots=True, eq=False)
class CallRecord:
    """One live call: its parties, devices, state and ring deadline."""

    call_id: str
    caller: str
    caller_device: str
    callee: str
    call_type: CallType
    ringing: dict[str, None]  # callee devices still ringing, in ring order (an ordered set)
    deadline: float
    serial: int  # tells this call's deadline entry from a stale one of an ended call with the same id
    state: State = State.NONE
    winner: str | None = None
    answered_at: float | None = None

    def devices(self) -> list[str]:
        return [self.caller_device, *self.ringing, *([self.winner] if self.winner else [])]

    def peer_devices(self, of_caller: bool) -> tuple[str, ...]:
        if not of_caller:
            return (self.caller_device,)
        return tuple(self.ringing) if self.winner is None else (self.winner,)

    def entry(self, kind: Literal["started", "answered", "ended"], reason: str | None = None,
              duration_s: float | None = None) -> CallLogEntry:
        return CallLogEntry(kind, self.call_id, self.caller, self.callee, self.call_type, reason, duration_s)


_K = TypeVar("_K")


def link(index: dict[_K, dict[str, None]], key: _K, call_id: str) -> None:
    index.setdefault(key, {})[call_id] = None


def unlink(index: dict[_K, dict[str, None]], key: _K, call_id: str) -> None:
    ids = index.get(key)
    if ids is not None:
        ids.pop(call_id, None)
        if not ids:
            del index[key]


def pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def end_event(from_user: str, call_id: str, reason: str) -> CallEndEvent:
    return CallEndEvent(data=CallEndEventData(from_user=from_user, call_id=call_id, reason=reason))


class OutcomeBuilder:
    """What one operation produced so far."""

    __slots__ = ("busy_before", "log", "sends")

    def __init__(self) -> None:
        self.sends: list[Send] = []
        self.log: list[CallLogEntry] = []
        self.busy_before: dict[str, bool] = {}

    def send(self, devices: Iterable[str], event: CallEventMessage) -> None:
        targets = frozenset(devices)
        if targets:
            self.sends.append(Send(targets, event))
