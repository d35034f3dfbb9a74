"""The call transition table: complete, terminal at ENDED, and exactly what its docstring shows.

Every (state, event) pair is walked: :func:`transition` either moves to the state the documented
table names or refuses with the error code it names. How the registry drives the table through
the public API is tested in tests/unit/state/test_calls.py.
"""

from __future__ import annotations

import itertools
import re

import pytest

from signald.errors import SignalError
from signald.state import call_table
from signald.state.call_table import SOURCE_STATES, TRANSITIONS, Event, State, transition


def documented_table() -> dict[tuple[State, Event], str]:
    """The table as the module docstring shows it: ``(state, event) -> next state or error code``."""
    doc = call_table.__doc__ or ""
    rows = re.findall(r"^ {4}([A-Za-z_]+) +([A-Z_]+) +([A-Z_]+) +([A-Z_]+)$", doc, re.MULTILINE)
    header, *cells = rows
    assert header[0] == "event" and header[1:] == tuple(s.name for s in SOURCE_STATES)
    return {(State[column], Event[row[0]]): cell
            for row in cells for column, cell in zip(header[1:], row[1:], strict=True)}


DOCUMENTED = documented_table()


def test_table_is_complete_and_ended_is_terminal() -> None:
    assert set(TRANSITIONS) == set(itertools.product(SOURCE_STATES, Event))
    for event in Event:
        with pytest.raises(SignalError) as info:
            transition(State.ENDED, event)
        assert info.value.code == "NOT_FOUND"


def test_docstring_shows_exactly_the_table() -> None:
    assert {k: v.name if isinstance(v, State) else v for k, v in TRANSITIONS.items()} == DOCUMENTED


@pytest.mark.parametrize(("state", "event"), sorted(DOCUMENTED, key=lambda k: (k[0].name, k[1].name)),
                         ids=lambda v: v.name)
def test_every_pair_moves_to_the_documented_state_or_is_refused_with_its_code(state: State, event: Event) -> None:
    expected = DOCUMENTED[state, event]
    if expected in State.__members__:
        assert transition(state, event) is State[expected]
    else:
        with pytest.raises(SignalError) as info:
            transition(state, event)
        assert info.value.code == expected
        assert event.value in info.value.message


def test_refusals_are_only_the_codes_a_client_can_act_on() -> None:
    refusals = {cell for cell in DOCUMENTED.values() if cell not in State.__members__}
    assert refusals == {"CONFLICT", "NOT_FOUND"}
    server_events = (Event.TIMEOUT, Event.GLARE, Event.DISCONNECT_CALLER, Event.DISCONNECT_CALLEE,
                     Event.RING_DEVICE_GONE)
    for state, event in itertools.product(SOURCE_STATES, server_events):
        assert DOCUMENTED[state, event] in State.__members__, "server events never fail"
