"""A room's chat changes leave a node in ``rev`` order, whichever node committed them first."""

from __future__ import annotations

from signald.cluster.order import RoomOrder
from signald.delivery.frames import Frame
from signald.protocol import ChatReadUpdateEvent, ReactionUpdateData, ReadUpdateData
from signald.protocol.outbound import ChatReactionUpdateEvent


def change(rev: int) -> Frame:
    return Frame(ChatReactionUpdateEvent(data=ReactionUpdateData(
        message_id="m", user_id="u", reaction="+1", action="add", room="r", rev=rev)))


def setup() -> tuple[RoomOrder, list[int | None]]:
    out: list[int | None] = []
    order = RoomOrder(lambda room, frame, exclude: out.append(getattr(frame.message.data, "rev", None)))
    return order, out


def test_a_change_waits_for_the_ones_before_it_and_a_timer_is_armed_once_per_gap() -> None:
    order, out = setup()
    order.start("r", 0)
    assert order.offer("r", change(1), None) is None
    gap = order.offer("r", change(3), None)
    assert gap is not None and order.offer("r", change(4), None) is None  # same gap: no second timer
    assert out == [1]
    assert order.offer("r", change(2), None) is None
    assert out == [1, 2, 3, 4]
    assert not order.holding("r", gap)
    order.give_up("r", gap)  # the timer of a filled gap changes nothing
    assert out == [1, 2, 3, 4]


def test_a_gap_that_stays_open_is_given_up_and_the_late_change_still_arrives() -> None:
    order, out = setup()
    order.start("r", 5)
    old = order.offer("r", change(7), None)
    assert old is not None
    order.give_up("r", old)
    assert out == [7]
    new = order.offer("r", change(9), None)  # a newer gap gets its own timer ...
    assert new is not None and new != old
    order.give_up("r", old)  # ... which the old one cannot end
    assert out == [7]
    order.offer("r", change(6), None)  # late, but never lost
    order.offer("r", change(8), None)
    assert out == [7, 6, 8, 9]


def test_events_without_a_rev_never_wait_and_a_join_sets_where_the_order_starts() -> None:
    order, out = setup()
    order.start("r", 2)
    order.offer("r", change(4), None)
    order.offer("r", Frame(ChatReadUpdateEvent(data=ReadUpdateData(message_id="m", user_id="u", room="r"))), None)
    assert out == [None]
    order.start("r", 10)  # the room already has an order here: a later join does not move it
    order.offer("r", change(3), None)
    assert out == [None, 3, 4]
    order.forget("r")
    order.offer("r", change(42), None)  # heard afresh: the first change starts the order
    order.offer("r", change(43), None)
    assert out == [None, 3, 4, 42, 43]
