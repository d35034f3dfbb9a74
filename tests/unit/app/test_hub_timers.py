"""The deadline task (:class:`signald.app.timers.Timers`) on a MockClock, with real state modules.

Time moves only when a test jumps the clock, so "fires at its deadline and not before" is exact,
and ``Timers.wakeups`` tells whether a poke woke the task. (Each test names ``mock_clock``:
pytest-trio runs a test on the clock among the test's own arguments, not its fixtures'.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import attrs
import pytest
import trio
from trio.testing import MockClock, wait_all_tasks_blocked

from signald.app.timers import Timers
from signald.protocol import PresenceUpdateEvent
from signald.state.calls import CallOutcome, CallRegistry
from signald.state.heartbeat import Heartbeats
from signald.state.presence import PresenceTracker
from signald.state.rooms import RoomRegistry

RING_S = 30.0
AWAY_S = 60.0


@attrs.define
class Rig:
    timers: Timers
    rooms: RoomRegistry
    presence: PresenceTracker
    calls: CallRegistry
    clock: MockClock
    outcomes: list[CallOutcome] = attrs.field(factory=list)
    published: list[tuple[float, Any]] = attrs.field(factory=list)  # (when, Send) from the timers

    async def jump(self, seconds: float) -> None:
        self.clock.jump(seconds)
        await wait_all_tasks_blocked()

    def ring(self, caller: str, callee: str, ring_s: float = RING_S) -> None:
        self.calls.offer(caller=caller, caller_device=f"{caller}-1", callee=callee, callee_devices=[f"{callee}-1"],
                         call_type="audio", sdp={}, call_id=None, now=trio.current_time(), ring_timeout_s=ring_s)
        self.timers.poke()

    def away_events(self) -> list[tuple[str, float]]:
        """(user, when) of each ``presence.update`` to ``away`` published by the timers."""
        return [(s.event.data.user_id, when) for when, s in self.published
                if isinstance(s.event, PresenceUpdateEvent) and s.event.data.status == "away"]


@pytest.fixture
async def rig(mock_clock: MockClock, nursery: trio.Nursery) -> AsyncIterator[Rig]:
    rooms = RoomRegistry()
    presence = PresenceTracker(rooms.peers_of_user, rooms.conns_in, away_after_s=AWAY_S)
    calls = CallRegistry(allow_concurrent_calls=True)
    outcomes: list[CallOutcome] = []
    published: list[tuple[float, Any]] = []

    def publish(sends: Iterable[Any]) -> None:
        published.extend((trio.current_time(), send) for send in sends)

    timers = Timers(presence, calls, Heartbeats(30.0, 10.0), apply_calls=outcomes.append, publish=publish,
                    away_after_s=AWAY_S)
    nursery.start_soon(timers.run)
    await wait_all_tasks_blocked()
    yield Rig(timers, rooms, presence, calls, mock_clock, outcomes, published)


def rang_out(rig: Rig) -> bool:
    return any(outcome.sends for outcome in rig.outcomes)


async def test_a_ring_timeout_fires_at_its_deadline_and_not_before(rig: Rig, mock_clock: MockClock) -> None:
    rig.ring("alice", "bob")
    await rig.jump(RING_S - 0.25)
    assert len(rig.calls) == 1 and not rang_out(rig)
    await rig.jump(0.25)
    assert len(rig.calls) == 0 and rang_out(rig)
    assert trio.current_time() == RING_S


async def test_a_poke_that_moves_the_next_deadline_earlier_wakes_the_task(rig: Rig, mock_clock: MockClock) -> None:
    rig.ring("alice", "bob", ring_s=100.0)
    await wait_all_tasks_blocked()
    woke = rig.timers.wakeups
    rig.ring("carol", "dave", ring_s=10.0)  # earlier than the task meant to look
    await wait_all_tasks_blocked()
    assert rig.timers.wakeups == woke + 1
    await rig.jump(10.0)
    assert len(rig.calls) == 1  # carol's call timed out at 10 s, not at 100 s
    await rig.jump(90.0)
    assert len(rig.calls) == 0


async def test_a_poke_that_moves_nothing_earlier_causes_no_wakeup(rig: Rig, mock_clock: MockClock) -> None:
    rig.ring("alice", "bob", ring_s=10.0)
    await wait_all_tasks_blocked()
    woke = rig.timers.wakeups
    rig.ring("carol", "dave", ring_s=100.0)  # later than the next deadline
    rig.timers.poke()
    rig.timers.activity(trio.current_time())  # away deadline after the ring timeout: nothing to look up
    await wait_all_tasks_blocked()
    assert rig.timers.wakeups == woke
    await rig.jump(10.0)
    assert rig.timers.wakeups == woke + 1  # the one wake-up, for the deadline itself


async def test_automatic_away_fires_after_away_after_s_of_inactivity(rig: Rig, mock_clock: MockClock) -> None:
    for user in ("alice", "bob"):
        rig.rooms.join(f"{user}-1", user, "lobby", max_rooms=10)
        rig.presence.connect(f"{user}-1", user, trio.current_time())
    rig.timers.poke()
    await rig.jump(30.0)
    rig.presence.activity("alice", trio.current_time(), 0.0)  # alice's activity renews her deadline only
    rig.timers.activity(trio.current_time())
    await rig.jump(AWAY_S - 30.0 - 0.25)
    assert (rig.presence.status_of("alice"), rig.presence.status_of("bob")) == ("online", "online")
    await rig.jump(0.25)
    assert (rig.presence.status_of("alice"), rig.presence.status_of("bob")) == ("online", "away")
    await rig.jump(30.0 - 0.25)
    assert rig.presence.status_of("alice") == "online"
    await rig.jump(0.25)
    assert rig.presence.status_of("alice") == "away"
    # bob, idle since he connected, went away at 60 s; alice, active at 30 s, at 90 s
    assert sorted(set(rig.away_events())) == [("alice", 30.0 + AWAY_S), ("bob", AWAY_S)]


async def test_with_several_nodes_a_due_call_is_handed_over_to_be_decided_not_ended(
    rig: Rig, mock_clock: MockClock
) -> None:
    handed: list[tuple[float, list[str]]] = []
    rig.timers.decide_ring_timeouts = lambda call_ids: handed.append((trio.current_time(), call_ids))
    rig.ring("alice", "bob", ring_s=10.0)
    await rig.jump(10.0)
    assert handed == [(10.0, rig.calls.calls_of("alice"))] and len(rig.calls) == 1 and not rang_out(rig)
    await rig.jump(100.0)
    assert len(handed) == 1  # handed over once; it rings on until the decision ends it
