"""The daemon's two timer tasks: one for deadlines in the state modules, one for heartbeats.

**Deadlines** (ring timeouts, typing expiry, automatic away) live in the sans-IO state modules,
which say when their next one is due (``next_deadline``) and what happens then (``expire`` /
``tick``). :meth:`Timers.run` sleeps until the earliest and ticks. Whoever may have moved a
deadline earlier calls :meth:`Timers.poke`, which wakes the task only when the new deadline comes
before the time it already meant to look: a poke that changes nothing costs no wake-up.
Inbound messages, which renew their user's automatic-away deadline, go through
:meth:`Timers.activity`, which does not even look up the deadlines when the task wakes sooner.

**Heartbeats** are one sweep over every connection (:mod:`signald.state.heartbeat`):
:meth:`Timers.run_heartbeats` wakes once per ``resolution`` at most.

Everything runs on the Trio thread; both tasks run until cancelled (the hub runs them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import attrs
import trio

from signald.state.calls import CallOutcome, CallRegistry
from signald.state.heartbeat import Heartbeats
from signald.state.presence import PresenceTracker
from signald.state.send import Send


@attrs.define(eq=False)
class Timers:
    """Runs the deadlines of ``presence`` and ``calls``, and the ``heartbeats`` sweep.

    ``apply_calls`` delivers what a call transition produced (ring timeouts); ``publish`` delivers
    presence's events (typing expiry, automatic away).
    """

    _presence: PresenceTracker
    _calls: CallRegistry
    _heartbeats: Heartbeats
    _apply_calls: Callable[[CallOutcome], None] = attrs.field(kw_only=True)
    _publish: Callable[[Iterable[Send]], None] = attrs.field(kw_only=True)
    _away_after_s: float = attrs.field(kw_only=True)
    _changed: trio.Event = attrs.field(init=False, factory=trio.Event)
    _wakes_at: float = attrs.field(init=False, default=math.inf)  # when the deadline task will next look
    wakeups: int = attrs.field(init=False, default=0)  # how many times the deadline task woke (for tests)
    # Several nodes: ring timeouts are decided with the others (signald.app.replica.CallDecisions),
    # so the due calls are handed over instead of ended here.
    decide_ring_timeouts: Callable[[list[str]], None] | None = attrs.field(init=False, default=None)

    def next_deadline(self) -> float:
        """The earliest deadline of any state module (``inf``: none)."""
        candidates = (self._presence.next_deadline(), self._calls.next_deadline())
        return min((d for d in candidates if d is not None), default=math.inf)

    def poke(self) -> None:
        """A deadline may have moved earlier: wake the task if it would now sleep too long."""
        if self.next_deadline() < self._wakes_at:
            self._changed.set()

    def activity(self, now: float) -> None:
        """An inbound message at ``now`` renewed its user's automatic-away deadline.

        That deadline is ``now + away_after_s`` (none if automatic away is off): if the task wakes
        before it anyway, there is nothing to look up.
        """
        away = self._away_after_s
        if away > 0 and now + away < self._wakes_at:
            self.poke()

    def tick(self, now: float) -> None:
        """Run every deadline due at ``now``: ring timeouts, typing expiry, automatic away."""
        if self.decide_ring_timeouts is None:
            self._apply_calls(self._calls.expire(now))
        else:
            due = self._calls.due(now)
            if due:
                self.decide_ring_timeouts(due)
        self._publish(self._presence.tick(now))

    async def run(self) -> None:
        """The deadline task."""
        while True:
            self._wakes_at = self.next_deadline()
            with trio.move_on_at(self._wakes_at):
                await self._changed.wait()
            self.wakeups += 1
            self.tick(trio.current_time())
            # Reset after ticking: the tick's own pokes are covered by the next deadline lookup.
            self._changed = trio.Event()

    async def run_heartbeats(self) -> None:
        """The heartbeat task."""
        heartbeats = self._heartbeats
        while True:
            now = trio.current_time()
            # Batch what comes due within ``resolution``; a connection added meanwhile is due
            # ``interval`` from its start, never before this wake-up.
            wake = max(heartbeats.next_due(), now + heartbeats.resolution)
            await trio.sleep_until(min(wake, now + heartbeats.interval))
            heartbeats.tick(trio.current_time())
