"""Joins that wait for this node to deliver what their read of the store already saw (Trio).

A join reads the room's history from the store every node shares, at some ``rev``; the changes up
to that ``rev`` are in its ack. On one node everything up to the read was delivered before it. On
several, the changes another node committed reach this node a little after their commit, so the
read can be ahead of what this node has delivered in order: were the joiner a member when they
arrive, it would get them live a second time, older than its ack. So the join waits, still
capturing what is delivered meanwhile (and keeping only what is newer than its read), until this
node's order has delivered up to its read, for at most :data:`WAIT_S`: a change whose node died
before publishing it is filled in by then (or, if the store cannot say what it was, the join is
closed with 1012, as the room's connections are: signald.cluster.gaps).
"""

from __future__ import annotations

from typing import Final

import trio

from signald.cluster.order import HOLD_S, rev_of
from signald.delivery.frames import Frame

WAIT_S: Final = 2 * HOLD_S


class CatchUp:
    """Per room, the joins waiting for a ``rev`` to be delivered here."""

    def __init__(self) -> None:
        self._waiting: dict[str, list[tuple[int, trio.Event]]] = {}

    async def until(self, room: str, rev: int, last: int | None) -> None:
        """Return once this node delivered ``room``'s changes up to ``rev`` (``last``: what it had)."""
        if last is None or last >= rev:
            return
        entry = (rev, trio.Event())
        waiting = self._waiting.setdefault(room, [])
        waiting.append(entry)
        try:
            with trio.move_on_after(WAIT_S):
                await entry[1].wait()
        finally:
            waiting.remove(entry)
            if not waiting:
                del self._waiting[room]

    def delivered(self, room: str, frame: Frame) -> None:
        """``frame`` went out here in ``room``'s order: wake the joins it catches up with."""
        waiting = self._waiting.get(room)
        rev = rev_of(frame) if waiting else None
        if waiting and rev is not None:
            for wanted, caught_up in waiting:
                if rev >= wanted:
                    caught_up.set()
