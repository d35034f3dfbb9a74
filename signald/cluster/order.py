"""A room's chat changes in ``rev`` order on this node, whichever node committed them (sans-IO).

Two nodes that commit into one room at once publish in any order; each node therefore passes every
change of a room it hears (its own included) through :class:`RoomOrder`: the next ``rev`` goes out
at once, a later one waits for the ones before it. Events without a ``rev`` (read receipts) never
wait. A room's order on a node starts where the join that brought the room to the node read its
history (:meth:`RoomOrder.start`): changes heard while that read is under way wait for it, so two
changes heard out of order at that moment still go out in order, and none is dropped as old.

A gap that stays open for the hold time (the node that committed the missing change died before
it published it, or its publish was lost) is **filled from the store**: the caller reads the
room's changes after :meth:`RoomOrder.missing` and hands them to :meth:`RoomOrder.fill`, which
delivers, in ``rev`` order up to the revision the read saw, each held change, or the stored state
of a message where nothing is held (or where the held event was only a part of it: a reaction to a
message whose creation was lost), and moves the order past that revision. A change that turns up
after that is dropped: what it said was delivered (a change that several later ones folded into
went out as the message's later state). Filled messages go out as ``chat.message`` with their
whole current state (a hard-deleted one as ``chat.deleted``), which a client applies by ``id`` and
``rev`` as it applies a ``chat.changes`` page.

If the store cannot say what is missing (it cannot be read, or retention removed part of it), the
gap is **lost** (:meth:`RoomOrder.lose`): nothing held above it goes out, nor any change of the
room heard after it, until a join's read starts the room's order again (the changes heard
meanwhile above that read are then filled from the store as a gap). Delivering past the gap would
give the room's clients a resume point above changes they never got; their connections here are
closed instead (:func:`signald.cluster.gaps.fill_gap`), and they resume from the last change they
applied. A room with no order here (no join read it) still delivers what it heard, in order, once the hold
time passed (:meth:`RoomOrder.give_up`): nobody here holds a resume point it could move past.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from signald.delivery.frames import Frame
from signald.protocol import ChatEditedEvent, ChatMessageEvent

HOLD_S: Final = 0.5  # how long a later change waits for the missing ones before it
MAX_SKIPPED: Final = 1024  # revs of one given-up gap still delivered if they turn up late

Deliver = Callable[[str, Frame, "str | None"], None]
Held = tuple[Frame, "str | None"]


def rev_of(frame: Frame) -> int | None:
    rev = getattr(getattr(frame.message, "data", None), "rev", None)
    return rev if isinstance(rev, int) else None


def _whole(frame: Frame) -> bool:
    """Does the event carry the message's whole state (not just one change to it)?"""
    return isinstance(frame.message, ChatMessageEvent | ChatEditedEvent)


class RoomOrder:
    """Per room: the last ``rev`` delivered here and the changes held back behind a gap."""

    def __init__(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._last: dict[str, int] = {}
        self._held: dict[str, dict[int, Held]] = {}
        self._gaps = 0  # counts gaps, so a timer armed for one gap never acts on a later one
        self._gap_of: dict[str, int] = {}
        self._skipped: dict[str, set[int]] = {}  # revs given up on (no order): still delivered if they come
        self._lost: dict[str, int] = {}  # rooms whose gap was lost -> the highest rev heard since (dropped)

    def offer(self, room: str, frame: Frame, exclude: str | None) -> int | None:
        """Deliver ``frame`` now or hold it; a gap number when the room just started holding (arm a
        timer that calls :meth:`missing` with it), else None."""
        rev = rev_of(frame)
        if rev is not None and room in self._lost:  # its connections here are closing: none gets it
            self._lost[room] = max(self._lost[room], rev)
            return None
        last = self._last.get(room)
        if rev is not None and last is not None and rev <= last:
            skipped = self._skipped.get(room)
            if skipped is None or rev not in skipped:
                return None  # delivered already, or filled from the store
            skipped.discard(rev)
        if rev is None or (last is not None and rev <= last + 1):
            self._deliver(room, frame, exclude)
            if rev is not None and last is not None and rev > last:
                self._last[room] = rev
                self._drain(room)
            return None
        held = self._held.setdefault(room, {})
        held[rev] = (frame, exclude)
        return self._gap(room) if len(held) == 1 else None

    def start(self, room: str, rev: int, *, alone: bool = False) -> int | None:
        """A join read the room at ``rev``: if this node has no order for the room yet, or ``alone``
        (no connection of this node is in the room yet) and its order is behind ``rev`` (it has not
        heard the room for a while), the order starts there. What was held up to ``rev`` goes out
        first, in order, for the joins still reading (each keeps what is above its own read).

        A room whose gap was lost (:meth:`lose`) starts again so; a gap number (arm a timer as for
        :meth:`offer`) if changes above ``rev`` were heard, and dropped, before this read started it:
        they are filled from the store as any gap."""
        dropped = self._lost.pop(room, None)
        last = self._last.get(room)
        if last is not None and not (alone and rev > last):
            return None
        held = self._held.get(room, {})
        for early in sorted(r for r in held if r <= rev):
            self._deliver(room, *held.pop(early))
        self._last[room] = rev
        self._skipped.pop(room, None)
        self._drain(room)
        if dropped is not None and dropped > self._last[room] and room not in self._gap_of:
            return self._gap(room)
        return None

    def missing(self, room: str, gap: int) -> int | None:
        """The hold time of ``gap`` passed: the ``rev`` after which to read the room's stored changes
        (then :meth:`fill`), or None if the gap was closed meanwhile. A room without an order (no
        join read it: nothing here to deliver to) gives its held changes up instead."""
        if self._gap_of.get(room) != gap:
            return None
        last = self._last.get(room)
        if last is None:
            self.give_up(room, gap)
        return last

    def fill(self, room: str, gap: int | None, stored: list[Frame], upto: int) -> int | None:
        """What the store holds of ``room`` after :meth:`missing` (``gap`` None: after :meth:`last`,
        whether or not a gap is open), read at revision ``upto``: deliver it with what was held, in
        ``rev`` order, up to ``upto`` (see the module docstring). Returns a gap number to arm a
        timer for if changes above ``upto`` still wait behind a gap."""
        if gap is not None and self._gap_of.get(room) != gap:
            return None  # closed meanwhile (the missing changes arrived)
        last = self._last.get(room)
        if last is None:
            return None  # no order (the room is not heard here any more)
        held = self._held.get(room, {})
        found = {rev: frame for frame in stored if (rev := rev_of(frame)) is not None and last < rev <= upto}
        for rev in sorted(found.keys() | {rev for rev in held if rev <= upto}):
            mine = held.pop(rev, None)
            if mine is not None and (_whole(mine[0]) or rev not in found):
                self._deliver(room, *mine)
            else:
                self._deliver(room, found[rev], None)
        self._last[room] = max(last, upto)
        self._gap_of.pop(room, None)  # (a timer armed for it finds it gone)
        if not held:
            self._held.pop(room, None)
            return None
        self._drain(room)
        return self._gap(room) if room in self._held else None

    def lose(self, room: str, gap: int) -> bool:
        """``gap`` cannot be filled (the store cannot say what is missing): drop what waits behind it
        and forget the room's order; until a join's read starts it again (:meth:`start`), the room's
        changes heard here are dropped too (its connections here are being closed to resume). False
        if ``gap`` was closed meanwhile: nothing changes then."""
        if self._gap_of.get(room) != gap:
            return False
        self._gap_of.pop(room, None)
        self._lost[room] = max(self._held.pop(room, {}), default=0)
        self._last.pop(room, None)
        self._skipped.pop(room, None)
        return True

    def give_up(self, room: str, gap: int | None = None) -> None:
        """Deliver what waits behind ``gap`` (None: any), in order, leaving the gap behind (a change
        in it that turns up later still goes out): for a room no join read here (no order to keep
        exact) or one this node stops hearing (:meth:`forget`)."""
        if gap is not None and self._gap_of.get(room) != gap:
            return  # that gap was filled; the room may be waiting on a newer one, with its own timer
        self._gap_of.pop(room, None)
        held = self._held.pop(room, {})
        last = self._last.get(room)
        skipped = self._skipped.setdefault(room, set())
        for rev in sorted(held):
            if last is not None:  # (a bounded number: a gap this wide is not waiting for one lost publish)
                skipped.update(range(last + 1, min(rev, last + 1 + MAX_SKIPPED)))
            frame, exclude = held[rev]
            self._deliver(room, frame, exclude)
            last = self._last[room] = max(self._last.get(room, rev), rev)
        if not skipped:
            del self._skipped[room]
        if room in self._last:
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
        self._skipped.pop(room, None)
        self._lost.pop(room, None)

    def _gap(self, room: str) -> int:
        self._gaps += 1
        self._gap_of[room] = self._gaps
        return self._gaps

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
            self._gap_of.pop(room, None)
