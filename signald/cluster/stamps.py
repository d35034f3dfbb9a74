"""Last writer wins for a user's chosen status, the same last writer on every node.

Two devices of a user on two nodes that set a status at the same moment each apply their own at
once and the other's a pub/sub delivery later: in arrival order, each node would end with the other
one's. So every ``SetStatus`` a node shares carries a stamp, and a node applies one from elsewhere
only if it is later than the last it applied for that user, ties broken by node id: every node
keeps the same one. A stamp is the wall clock, but never below the last stamp the node saw for the
user (a hybrid logical clock): a status chosen after another one was heard wins over it even on a
node whose clock is behind. A node back from a broker outage announces its users' statuses again
with the stamp of the one it applied last (:meth:`StatusStamps.last`): a status chosen elsewhere
meanwhile, which it missed, is later and wins, and the node that refuses the stale one tells its own
again.
"""

from __future__ import annotations

import math
import time
from typing import Final

FIRST: Final = math.ulp(0.0)  # the stamp of a status nobody chose (before any chosen one)


class StatusStamps:
    """The last applied ``SetStatus`` stamp of each user with a device (see the module docstring)."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._last: dict[str, tuple[float, str]] = {}  # user -> (stamp, node that set it)

    def stamp(self, user: str) -> float:
        """The stamp of a status this node sets for ``user`` now."""
        now, last = time.time(), self._last.get(user)
        stamp = now if last is None or now > last[0] else math.nextafter(last[0], math.inf)
        self._last[user] = (stamp, self.node_id)
        return stamp

    def last(self, user: str) -> tuple[float, str]:
        """The stamp and the node that stamped the status applied last for ``user`` (what a node
        announcing it again after an outage sends), or (:data:`FIRST`, "") when none was chosen
        since the user's first device (any chosen one wins over it)."""
        return self._last.get(user, (FIRST, ""))

    def later(self, user: str, stamp: float, origin: str) -> bool:
        """Whether a status ``origin`` set at ``stamp`` is to be applied (and is now the last)."""
        if stamp == 0.0:  # loaded from Redis: no order of its own
            return True
        last = self._last.get(user)
        if last is not None and (stamp, origin) < last:
            return False
        self._last[user] = (stamp, origin)
        return True

    def mine(self, user: str) -> bool:
        """Whether the last status applied for ``user`` was set on this node."""
        last = self._last.get(user)
        return last is not None and last[1] == self.node_id

    def forget(self, user: str) -> None:
        """``user`` has no device left: the next status starts afresh."""
        self._last.pop(user, None)
