"""A room's chat changes in ``rev`` order on this node, whichever node committed them (sans-IO).

Two nodes that commit into one room at once publish in any order; each node therefore passes every
change of a room it hears (its own included) through :class:`RoomOrder`: the next ``rev`` goes out
at once, a later one waits for the ones before it. A gap that stays open for the hold time (the
node that committed the missing change died before it published it) is given up on: what waited
goes out in order, and a missing change that turns up later is still delivered, late rather than
never (clients that must be exact resume with ``since_rev``). Events without a ``rev`` (read
receipts) never wait. The first change a node hears of a room sets where its order starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from signald.delivery.frames import Frame

HOLD_S: Final = 0.5  # how long a later change waits for the missing ones before it

Deliver = Callable[[str, Frame, "str | None"], None]


def rev_of(frame: Frame) -> int | None:
    rev = getattr(getattr(frame.message, "data", None), "rev", None)
    return rev if isinstance(rev, int) else None


class RoomOrder:
    """Per room: the last ``rev`` delivered here and the changes held back behind a gap."""

    def __init__(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._last: dict[str, int] = {}
        self._held: dict[str, dict[int, tuple[Frame, str | None]]] = {}
        self._gaps = 0  # counts gaps, so a timer armed for one gap never gives up on a later one
        self._gap_of: dict[str, int] = {}

    def offer(self, room: str, frame: Frame, exclude: str | None) -> int | None:
        """Deliver ``frame`` now or hold it; a gap number when the room just started holding (arm a
        timer that calls :meth:`give_up` with it), else None."""
        rev = rev_of(frame)
        last = self._last.get(room)
        if rev is None or last is None or rev <= last + 1:
            self._deliver(room, frame, exclude)
            if rev is not None and (last is None or rev > last):
                self._last[room] = rev
                self._drain(room)
            return None
        held = self._held.setdefault(room, {})
        held[rev] = (frame, exclude)
        if len(held) > 1:
            return None
        self._gaps += 1
        self._gap_of[room] = self._gaps
        return self._gaps

    def start(self, room: str, rev: int) -> None:
        """A join read the room at ``rev``: if this node has no order for the room yet, it starts there."""
        if room not in self._last:
            self._last[room] = rev
            self._drain(room)

    def give_up(self, room: str, gap: int | None = None) -> None:
        """The hold time of ``gap`` passed (None: any): deliver what waits, in order, leaving the gap behind."""
        if gap is not None and self._gap_of.get(room) != gap:
            return  # that gap was filled; the room may be waiting on a newer one, with its own timer
        self._gap_of.pop(room, None)
        held = self._held.pop(room, {})
        for rev in sorted(held):
            frame, exclude = held[rev]
            self._deliver(room, frame, exclude)
            self._last[room] = max(self._last.get(room, rev), rev)
        self._drain(room)

    def last(self, room: str) -> int | None:
        """The last ``rev`` of ``room`` delivered here in order (None: no order yet)."""
        return self._last.get(room)

    def holding(self, room: str, gap: int) -> bool:
        return self._gap_of.get(room) == gap

    def forget(self, room: str) -> None:
        """This node no longer hears ``room``: the next change it hears starts the order again."""
        self.give_up(room)
        self._last.pop(room, None)

    def _drain(self, room: str) -> None:
        held = self._held.get(room)
        last = self._last[room]
        while held and last + 1 in held:
            last += 1
            frame, exclude = held.pop(last)
            self._deliver(room, frame, exclude)
        self._last[room] = last
        if held is not None and not held:
            del self._held[room]
            del self._gap_of[room]
