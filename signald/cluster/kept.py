"""What a node says again after a broker outage that its records in Redis cannot: its calls and kicks.

The records (:mod:`signald.cluster.records`) say what *is* (devices, rooms, statuses), so a resync
can tell the others what changed while a node's writes were lost. A call's answer, its end and a
kick are transitions, not states: once their publish is lost, no record says they happened. So
every node keeps the last ones it shared (:class:`KeptOps`) and, after an outage, shares them
again (:meth:`KeptOps.again`), as the original ops (a hang-up keeps its reason). It does so when its
own resync runs, and when another node's resync asks (that node's pub/sub may have missed them).

Applying one twice changes nothing: an end, answer or timeout of a call that already moved on is
refused by the registry and skipped (:mod:`signald.cluster.apply`); a kick of a user no longer in
the room kicks nobody. What is kept:

- a call's **answer**, while the call is answered here (a later end replaces it), for :data:`KEPT_S`;
- a call's **end** and **ring timeout** (the caller's node decided it once in Redis: only the
  outcome is told again, nothing is decided again), for :data:`KEPT_S`, unless this node has a live
  call under that ``call_id`` again (an ended call's id may be used again);
- a **kick**, for :data:`KEPT_S`, until the kicked user joins that room again here.

ICE candidates are not kept: they are best-effort (a connection that misses one uses the others,
and an ICE restart asks for new ones). An offer is not kept either: one lost rings nobody elsewhere
and its caller gets ``call.end timeout``, as for a callee who does not answer.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from signald.app.hub import Hub
from signald.app.replica import CallAnswered, CallEnded, CallTimedOut, Join, Kick, Op
from signald.state.calls import State

KEPT_S: Final = 600.0  # how long an end or a kick is told again after an outage (longer than any grace)
KEPT_MAX: Final = 10_000  # and how many at most (the oldest go first)


class KeptOps:
    """The call transitions and kicks this node shared lately (see the module docstring)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        # ("call", call_id) or ("kick", room + NUL + user) -> (when, op), oldest first
        self._ops: OrderedDict[tuple[str, str], tuple[float, Op]] = OrderedDict()

    def shared(self, op: Op, now: float) -> None:
        """This node shares ``op``: keep it if it is one to tell again."""
        if isinstance(op, CallAnswered | CallEnded | CallTimedOut):
            self._keep(("call", op.call_id), now, op)
        elif isinstance(op, Kick):
            self._keep(("kick", f"{op.room}\0{op.user}"), now, op)

    def joined(self, op: Join) -> None:
        """``op.user`` joined ``op.room`` (here or elsewhere): an earlier kick from it is not told again."""
        self._ops.pop(("kick", f"{op.room}\0{op.user}"), None)

    def again(self, now: float) -> list[Op]:
        """The kept ops still worth telling, oldest first (the stale ones are forgotten)."""
        self._forget_before(now - KEPT_S)
        calls, ops = self.hub.calls, list[Op]()
        for key, (_, op) in list(self._ops.items()):
            if isinstance(op, CallAnswered) and calls.state_of(op.call_id) is not State.ACTIVE:
                del self._ops[key]  # ended since (here or elsewhere): its end is what counts
            elif not isinstance(op, CallEnded | CallTimedOut) or calls.state_of(op.call_id) is State.NONE:
                ops.append(op)
        return ops

    def _keep(self, key: tuple[str, str], now: float, op: Op) -> None:
        self._ops.pop(key, None)
        self._ops[key] = (now, op)
        self._forget_before(now - KEPT_S)
        while len(self._ops) > KEPT_MAX:
            self._ops.popitem(last=False)

    def _forget_before(self, when: float) -> None:
        while self._ops and next(iter(self._ops.values()))[0] < when:
            self._ops.popitem(last=False)
