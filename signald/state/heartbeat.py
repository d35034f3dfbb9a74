"""Heartbeats for every connection of the hub, from one timing wheel instead of a task per connection.

A connection is pinged once it has been silent for ``interval`` seconds (any bytes received count:
a busy connection is never pinged), and given up on when it stays silent for ``timeout`` seconds
after that ping. Due times are rounded up to ``resolution``: connections due in the same slot
share one list (appending is all scheduling costs), and a small heap orders the slots. An idle
connection costs one list entry and one ping per ``interval``; there is no task, timer or cancel
scope per connection.

The wheel holds connections by weak reference: a closed connection is freed (socket, session,
outbox and all) when its task ends, not when its slot next comes due, up to ``interval`` later.
Kept alive that long, every short connection's objects outlived the young garbage collections
and were traversed again and again by them (about a tenth of the CPU of a connection closed
right after its set-up).

Sans-IO: :meth:`Heartbeats.tick` is driven by the hub's heartbeat task (or by a test) with the
current time; it calls :meth:`Monitored.send_ping` and :meth:`Monitored.silent`, which never block.
"""

from __future__ import annotations

import heapq
import math
import weakref
from typing import Protocol


class Monitored(Protocol):
    """What a heartbeat needs of a connection (:class:`signald.transport.websocket.ServerWebSocket`)."""

    heard_at: float  # when bytes last arrived
    ping_sent_at: float | None  # our ping that is still unanswered
    gone: bool  # closed: forget it

    def send_ping(self) -> None: ...

    def silent(self) -> None: ...


class Heartbeats:
    """When each connection is next looked at, and what happens then."""

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        # Connections come due one by one; waking for each costs more than the ping. Ticks at most
        # this often handle all that came due together (their timing is that much less exact).
        self.resolution = min(1.0, max(0.01, min(interval, timeout) / 20))
        self._slots: dict[int, list[weakref.ref[Monitored]]] = {}  # slot number -> connections due then
        self._slot_order: list[int] = []  # heap of the slot numbers in _slots
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, conn: Monitored, now: float) -> None:
        """Watch a new connection (its first look is ``interval`` from now); ``conn`` must take weak references."""
        self._push(now + self.interval, weakref.ref(conn))

    def next_due(self) -> float:
        return self._slot_order[0] * self.resolution if self._slot_order else math.inf

    def tick(self, now: float) -> None:
        """Ping the connections silent for ``interval``; give up on those that did not answer."""
        order, slots, resolution = self._slot_order, self._slots, self.resolution
        while order and order[0] * resolution <= now:
            due = slots.pop(heapq.heappop(order))
            self._count -= len(due)
            for ref in due:
                conn = ref()
                if conn is None or conn.gone:
                    continue
                sent = conn.ping_sent_at
                if sent is None:
                    if now - conn.heard_at < self.interval:
                        self._push(conn.heard_at + self.interval, ref)
                    else:
                        conn.ping_sent_at = now
                        conn.send_ping()
                        self._push(now + self.timeout, ref)
                elif conn.heard_at >= sent:  # heard from at or after the ping (a mock clock may stand still)
                    conn.ping_sent_at = None
                    self._push(max(conn.heard_at + self.interval, now), ref)
                else:
                    conn.silent()

    def _push(self, when: float, ref: weakref.ref[Monitored]) -> None:
        slot = math.ceil(when / self.resolution)
        due = self._slots.get(slot)
        if due is None:
            self._slots[slot] = due = []
            heapq.heappush(self._slot_order, slot)
        due.append(ref)
        self._count += 1
