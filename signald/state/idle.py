"""When each active user goes idle: automatic away's deadlines (sans-IO).

A user's deadline is their last activity plus ``away_after_s``. Activities normally arrive in
time order (``now`` never decreases), so the users are kept in an ordered dict, oldest activity
first: touching one moves it to the end, and the expired ones are taken from the front, both O(1).
An activity learned late (another node's, shared a moment after it happened) can be older than
the newest there; such a user waits in a heap instead (O(log n)), so that a late entry never holds
up the ones behind it nor is held up by them. An activity older than what is known of the user
changes nothing.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict

__all__ = ["Idleness"]


class Idleness:
    """The non-idle users and when each goes idle (``away_after_s = 0``: never)."""

    __slots__ = ("_active", "_after", "_late", "_late_at", "_newest")

    def __init__(self, away_after_s: float) -> None:
        self._after = away_after_s
        self._active: OrderedDict[str, float] = OrderedDict()  # user -> last activity, oldest first
        self._newest = -math.inf  # the last activity put at the end of _active
        self._late: list[tuple[float, str]] = []  # (activity, user), current while _late_at says so
        self._late_at: dict[str, float] = {}

    def touch(self, user: str, when: float) -> bool:
        """``user`` was active at ``when``; False if a later activity of theirs is known already."""
        if self._after <= 0:
            return True
        active, late_at = self._active, self._late_at
        known = active.get(user)
        if known is None and late_at:
            known = late_at.get(user)
        if known is not None and known >= when:
            return False
        if when < self._newest:  # older than the newest: learned late
            active.pop(user, None)
            late_at[user] = when
            heapq.heappush(self._late, (when, user))
        else:
            if late_at:
                late_at.pop(user, None)
            active[user] = self._newest = when
            active.move_to_end(user)
        return True

    def forget(self, user: str) -> None:
        """``user`` went offline: no deadline."""
        self._active.pop(user, None)
        self._late_at.pop(user, None)

    def expire(self, now: float) -> list[str]:
        """The users whose deadline is ``<= now``, oldest first; they are forgotten."""
        if self._after <= 0:
            return []
        gone: list[str] = []
        active, after = self._active, self._after
        while active:
            user = next(iter(active))
            if active[user] + after > now:
                break
            del active[user]
            gone.append(user)
        late = self._late
        while late and late[0][0] + after <= now:
            when, user = heapq.heappop(late)
            if self._late_at.get(user) == when:
                del self._late_at[user]
                gone.append(user)
        return gone

    def next_deadline(self) -> float | None:
        """The earliest deadline, or None."""
        if self._after <= 0:
            return None
        deadlines = []
        if self._active:
            deadlines.append(self._active[next(iter(self._active))] + self._after)
        late = self._late
        while late and self._late_at.get(late[0][1]) != late[0][0]:
            heapq.heappop(late)  # superseded by a later activity, or the user went offline
        if late:
            deadlines.append(late[0][0] + self._after)
        return min(deadlines) if deadlines else None
