"""Fill a room's gap in ``rev`` order from the shared store (the effect of :class:`~signald.cluster.order.RoomOrder`).

A change held back behind a missing one waits :data:`~signald.cluster.order.HOLD_S`; if the
missing change has not arrived by then (its node died between its commit and its publish, or the
publish was lost), :func:`fill_gap` reads the room's changes after the last one delivered from
the store every node shares (the store's own reads: off the Trio thread where it has a thread)
and hands them to :meth:`RoomOrder.fill`, which delivers them in order with what was held.

If the store cannot say what is missing (unreachable from this node, or retention removed part of
it), nothing past the gap goes out: a client given the later change would hold a resume point above
the missing one, and its next resume would skip it for good. Instead the gap is lost
(:meth:`RoomOrder.lose`: nothing of the room goes out here until the next join's read starts its
order again) and this node's connections in the room, and those joining it, are closed with 1012
(service restart, "room events were missed: resume"). Their clients reconnect with backoff and
join again with ``since_rev``, the last change they applied: while this node still cannot read the
store the join fails with ``INTERNAL`` (to be tried again later); once it can, the join's ack holds
exactly what they missed. The room's connections on other nodes, and this node's connections not
in the room, are not affected.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

import trio

from signald.app.hub import Hub
from signald.cluster.order import HOLD_S, RoomOrder
from signald.cluster.recovery import close_to_resume
from signald.delivery.frames import Frame
from signald.protocol import ChatDeletedEvent, ChatMessage, ChatMessageEvent, DeletedData
from signald.protocol.common import Change
from signald.timefmt import iso_utc

log = logging.getLogger("signald.cluster")

FILL_MAX: Final = 1000  # changes read per fill (a wider gap is filled in several rounds)


def frame_of(change: Change, now: float) -> Frame:
    """The live event of a change read from the store: the message's whole state, or its removal
    (whose time the store no longer keeps: the time of the fill)."""
    if isinstance(change, ChatMessage):
        return Frame(ChatMessageEvent(data=change))
    return Frame(ChatDeletedEvent(data=DeletedData(message_id=change.id, room=change.room, deleted_at=iso_utc(now),
                                                   mode="hard", rev=change.rev)))


async def fill_gap(hub: Hub, order: RoomOrder, room: str, gap: int | None) -> None:
    """Wait the hold time of ``gap``; if it is still open, fill it from the store (and so on for a
    gap found behind it)."""
    while gap is not None:
        await trio.sleep(HOLD_S)
        after = order.missing(room, gap)
        if after is None:
            return  # the missing changes arrived in time
        why = "no history store" if hub.history is None else None
        if hub.history is not None:
            try:
                page = await hub.history.store.changes(room=room, after_rev=after, limit=FILL_MAX)
            except Exception as exc:
                why = f"the store cannot be read: {exc or type(exc).__name__}"
            else:
                if page.changes_reset:
                    why = "the store no longer holds every change after it"
        if why is not None:
            if order.lose(room, gap):  # (else the missing changes arrived while the store was asked)
                closed = lose_room(hub, room)
                log.warning("cluster: room %s: a change after rev %d did not arrive within %g s and %s; nothing "
                            "after it delivered, %d connections closed to resume", room, after, HOLD_S, why, closed)
            return
        upto = page.changes[-1].rev if page.has_more and page.changes else page.rev
        log.warning("cluster: room %s: a change after rev %d did not arrive within %g s; filled from the store up "
                    "to rev %d", room, after, HOLD_S, upto)
        now = hub.wall_clock()
        gap = order.fill(room, gap, [frame_of(change, now) for change in page.changes], upto)


def lose_room(hub: Hub, room: str) -> int:
    """Close (1012) this node's connections in ``room`` and those joining it (their reads may be
    behind what was dropped): returns how many."""
    joining = hub.history.joining(room) if hub.history is not None else []
    return close_to_resume(hub, {*hub.rooms.conns_in(room), *joining}, "room events were missed")


async def fill_now(hub: Hub, order: RoomOrder, room: str, gap_left: Callable[[str, int], None]) -> bool:
    """Deliver, in order and at once, what the store holds of ``room`` after what this node
    delivered (its pub/sub was away a moment: what was published meanwhile will not come); False
    if that cannot be done in one read (the store fails, or holds more than :data:`FILL_MAX`
    changes, or no longer every one of them). A gap left behind changes held above the read goes
    to ``gap_left``, to be filled as any other (:func:`fill_gap`)."""
    after = order.last(room)
    if hub.history is None or after is None:
        return False
    try:
        page = await hub.history.store.changes(room=room, after_rev=after, limit=FILL_MAX)
    except Exception as exc:
        log.warning("cluster: room %s: cannot read the changes after rev %d: %s", room, after, exc or repr(exc))
        return False
    if page.changes_reset or page.has_more:
        return False
    if page.changes:
        log.info("cluster: room %s: %d change(s) published while this node's pub/sub moved, delivered from the "
                 "store", room, len(page.changes))
    gap = order.fill(room, None, [frame_of(change, hub.wall_clock()) for change in page.changes], page.rev)
    if gap is not None:
        gap_left(room, gap)
    return True
