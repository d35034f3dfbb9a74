"""What one call operation produces: the events to send, whose busy flag flipped, the call-log entries.

:class:`signald.state.calls.CallRegistry` returns a :class:`CallOutcome` from every operation; the
app delivers its ``sends``, updates presence for ``busy_changed`` and hands ``log`` to the call log.
"""

from __future__ import annotations

from typing import Literal, TypeAlias, Union

import attrs

from signald.protocol import CallAnswerEvent, CallEndEvent, CallIceEvent, CallOfferEvent, CallType
from signald.state.send import Send

__all__ = ["CallEventMessage", "CallLogEntry", "CallOutcome"]

CallEventMessage: TypeAlias = Union[CallOfferEvent, CallAnswerEvent, CallIceEvent, CallEndEvent]


@attrs.frozen(slots=True)
class CallLogEntry:
    """One line of the call log: a call started, was answered, or ended (with why and how long)."""

    kind: Literal["started", "answered", "ended"]
    call_id: str
    caller: str
    callee: str
    call_type: CallType
    reason: str | None = None  # "ended" only
    duration_s: float | None = None  # "ended" only: seconds since the answer, None if never answered


@attrs.frozen(slots=True)
class CallOutcome:
    """What one operation did: ``call_id`` for the offer's ack; ``sends`` go out after the ack."""

    call_id: str | None = None
    sends: list[Send] = attrs.Factory(list)
    busy_changed: set[str] = attrs.Factory(set)
    log: list[CallLogEntry] = attrs.Factory(list)
