"""Sharing users' activity with the other nodes, for automatic away (docs/cluster.md).

Every inbound message is activity; sharing each one would put every message on the state channel
that every node hears. A node shares a user's activity at once when it has not shared theirs for
``away_after_s / 4``. Activity within that window is shared when the window ends, with how long
ago it happened (:class:`~signald.app.replica.Activity` ``ago``), and the other nodes count it
from then (:meth:`signald.state.presence.PresenceTracker.activity`). So every node learns a
user's last activity, as it happened, at most a quarter of ``away_after_s`` after it (well before
their deadline), every node turns the user ``away`` at the same moment, and at most one op per
user per window leaves a node.

Resource handling: :meth:`ActivityShare.run` is the one task (the replica's nursery runs it); it
sleeps while nothing waits to be shared.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

import trio

from signald.app.replica import Activity, Op

__all__ = ["ActivityShare"]


class ActivityShare:
    """When to share whose activity; ``share`` sends an op to the other nodes."""

    def __init__(self, share: Callable[[Op], None], away_after_s: float) -> None:
        self._share = share
        self._every = away_after_s / 4 if away_after_s > 0 else math.inf
        # user -> when their activity was last shared, in that order (so the first window ends first);
        # an entry whose window is over is dropped: the next activity is shared at once anyway
        self._shared: OrderedDict[str, float] = OrderedDict()
        self._pending: dict[str, float] = {}  # user -> their last activity not shared yet
        self._wake = trio.Event()

    def activity(self, user: str, now: float) -> None:
        """``user`` was active on this node at ``now``."""
        last = self._shared.get(user)
        if last is None or now - last >= self._every:
            self._pending.pop(user, None)
            self._shared_now(user, now)
            self._share(Activity(user))
        else:
            self._pending[user] = now
            self._wake.set()

    def forget(self, user: str, now: float) -> None:
        """``user``'s last connection here closed: what waits is shared now, the window forgotten."""
        self._flush_one(user, now)
        self._shared.pop(user, None)

    async def run(self) -> None:
        shared, pending = self._shared, self._pending
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while pending:
                now = trio.current_time()
                while shared:
                    user = next(iter(shared))
                    if shared[user] + self._every > now:
                        break
                    del shared[user]
                    self._flush_one(user, now)
                if pending and shared:
                    await trio.sleep_until(shared[next(iter(shared))] + self._every)

    def _flush_one(self, user: str, now: float) -> None:
        when = self._pending.pop(user, None)
        if when is not None:
            self._shared_now(user, now)
            self._share(Activity(user, ago=max(0.0, now - when)))

    def _shared_now(self, user: str, now: float) -> None:
        self._shared[user] = now
        self._shared.move_to_end(user)
