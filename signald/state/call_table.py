"""The call state machine: its states, its events, and the table of which event leads where (sans-IO).

States
    ``NONE`` no live call with that id: never offered, or ended (an ended call is freed at once, so
    its id is unknown again and a later offer may reuse it). ``RINGING`` offered, not answered.
    ``ACTIVE`` answered by one callee device (the *winner*). ``ENDED`` terminal, has no row.

Transition table (:data:`TRANSITIONS`, which :func:`transition` reads for every step; a cell is
the next state or the error code raised; tests/unit/state/test_call_table.py checks that this text equals
the table)::

    event               NONE        RINGING     ACTIVE
    OFFER               RINGING     CONFLICT    CONFLICT
    OFFER_BUSY          ENDED       CONFLICT    CONFLICT
    OFFER_GLARE_LOST    ENDED       CONFLICT    CONFLICT
    ANSWER              NOT_FOUND   ACTIVE      CONFLICT
    ICE_FROM_CALLER     NOT_FOUND   RINGING     ACTIVE
    ICE_FROM_CALLEE     NOT_FOUND   RINGING     ACTIVE
    END_BY_CALLER       NOT_FOUND   ENDED       ENDED
    END_BY_CALLEE       NOT_FOUND   ENDED       ENDED
    TIMEOUT             NONE        ENDED       ACTIVE
    GLARE               NONE        ENDED       ACTIVE
    DISCONNECT_CALLER   NONE        ENDED       ENDED
    DISCONNECT_CALLEE   NONE        ENDED       ENDED
    RING_DEVICE_GONE    NONE        RINGING     ACTIVE

The last five are server events: they never fail, and where they do not apply the state stays.
``DISCONNECT_CALLEE`` is the winner or the *last* ringing device going away; ``RING_DEVICE_GONE``
a ringing device going away while others still ring.

:class:`signald.state.calls.CallRegistry` calls :func:`transition` for every step it takes, so
this table, and nothing else, decides which requests a call accepts in which state.
"""

from __future__ import annotations

import enum
from typing import Final, TypeAlias, Union

from signald.errors import ErrorCode, SignalError

__all__ = ["SOURCE_STATES", "TRANSITIONS", "Event", "Next", "State", "transition"]


class State(enum.Enum):
    NONE = "none"
    RINGING = "ringing"
    ACTIVE = "active"
    ENDED = "ended"


class Event(enum.Enum):
    OFFER = "offer"
    OFFER_BUSY = "offer_busy"
    OFFER_GLARE_LOST = "offer_glare_lost"
    ANSWER = "answer"
    ICE_FROM_CALLER = "ice_from_caller"
    ICE_FROM_CALLEE = "ice_from_callee"
    END_BY_CALLER = "end_by_caller"
    END_BY_CALLEE = "end_by_callee"
    TIMEOUT = "timeout"
    GLARE = "glare"
    DISCONNECT_CALLER = "disconnect_caller"
    DISCONNECT_CALLEE = "disconnect_callee"
    RING_DEVICE_GONE = "ring_device_gone"


Next: TypeAlias = Union[State, ErrorCode]
SOURCE_STATES: Final = (State.NONE, State.RINGING, State.ACTIVE)
_N, _R, _A, _X = State.NONE, State.RINGING, State.ACTIVE, State.ENDED
_ROWS: Final[dict[Event, tuple[Next, Next, Next]]] = {
    #                        NONE          RINGING      ACTIVE
    Event.OFFER:             (_R,          "CONFLICT",  "CONFLICT"),
    Event.OFFER_BUSY:        (_X,          "CONFLICT",  "CONFLICT"),
    Event.OFFER_GLARE_LOST:  (_X,          "CONFLICT",  "CONFLICT"),
    Event.ANSWER:            ("NOT_FOUND", _A,          "CONFLICT"),
    Event.ICE_FROM_CALLER:   ("NOT_FOUND", _R,          _A),
    Event.ICE_FROM_CALLEE:   ("NOT_FOUND", _R,          _A),
    Event.END_BY_CALLER:     ("NOT_FOUND", _X,          _X),
    Event.END_BY_CALLEE:     ("NOT_FOUND", _X,          _X),
    Event.TIMEOUT:           (_N,          _X,          _A),
    Event.GLARE:             (_N,          _X,          _A),
    Event.DISCONNECT_CALLER: (_N,          _X,          _X),
    Event.DISCONNECT_CALLEE: (_N,          _X,          _X),
    Event.RING_DEVICE_GONE:  (_N,          _R,          _A),
}
TRANSITIONS: Final[dict[tuple[State, Event], Next]] = {
    (state, event): row[i] for event, row in _ROWS.items() for i, state in enumerate(SOURCE_STATES)
}


def transition(state: State, event: Event) -> State:
    """The state a call in ``state`` moves to on ``event``; raises the table's error code instead."""
    nxt = TRANSITIONS.get((state, event), "NOT_FOUND")  # ENDED is terminal: no row, no such call
    if isinstance(nxt, State):
        return nxt
    what = "no such call" if nxt == "NOT_FOUND" else f"call is {state.value}"
    raise SignalError(nxt, f"{event.value}: {what}")
