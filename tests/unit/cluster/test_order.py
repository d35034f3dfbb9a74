"""A room's chat changes leave a node in ``rev`` order, whichever node committed them first."""

from __future__ import annotations

from signald.cluster.order import RoomOrder
from signald.delivery.frames import Frame
from signald.protocol import ChatMessage, ChatMessageEvent, ChatReadUpdateEvent, ReactionUpdateData, ReadUpdateData
from signald.protocol.outbound import ChatReactionUpdateEvent


def change(rev: int) -> Frame:
    return Frame(ChatReactionUpdateEvent(data=ReactionUpdateData(
        message_id="m", user_id="u", reaction="+1", action="add", room="r", rev=rev)))


def stored(rev: int, message_id: str = "m") -> Frame:
    """A message's whole state as the store has it, as a fill delivers it."""
    return Frame(ChatMessageEvent(data=ChatMessage(
        id=message_id, room="r", seq=rev, rev=rev, user_id="u", body=f"at {rev}", attachments=[], parent_id=None,
        created_at="2026-01-01T00:00:00.000Z", edited_at=None, deleted_at=None, redacted=False, reactions={})))


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
    assert not order.lose("r", gap)  # the timer of a closed gap changes nothing
    order.give_up("r", gap)
    assert out == [1, 2, 3, 4] and order.last("r") == 4


def test_a_gap_the_store_cannot_fill_is_lost_nothing_past_it_goes_out_and_the_next_join_starts_the_room_again(
) -> None:
    order, out = setup()
    order.start("r", 5)
    old = order.offer("r", change(7), None)  # 6 is missing
    assert old is not None
    order.offer("r", change(8), None)
    assert order.missing("r", old) == 5
    assert order.lose("r", old)  # the store could not say what 6 was
    assert out == [] and order.last("r") is None  # 7 and 8 never go out: a client given them would skip 6
    assert not order.lose("r", old)  # its timer again: nothing left to lose
    order.offer("r", change(6), None)  # heard before a join's read starts the room again: dropped (its
    order.offer("r", change(9), None)  # connections here are closing: none may get a change past 6)
    assert out == []
    again = order.start("r", 8, alone=True)  # a rejoin's read (at 8: 6 to 8 are in its ack) starts the room:
    assert again is not None and order.missing("r", again) == 8  # 9, dropped, is a gap to fill from the store
    assert order.fill("r", again, [stored(9)], upto=9) is None
    order.offer("r", change(10), None)
    assert out == [9, 10] and order.last("r") == 10


def test_a_join_that_starts_a_lost_room_above_what_was_dropped_opens_no_gap() -> None:
    order, out = setup()
    order.start("r", 5)
    gap = order.offer("r", change(7), None)
    assert gap is not None and order.lose("r", gap)
    order.offer("r", change(8), None)
    assert order.start("r", 8) is None  # its read has all that was dropped
    order.offer("r", change(9), None)
    assert out == [9]
    order.forget("r")  # forgetting a lost room ends it too: heard afresh, held, then given up in order
    lost = order.offer("r", change(3), None)
    assert lost is not None and order.lose("r", lost)
    order.forget("r")
    order.offer("r", change(12), None)
    assert out == [9] and order.last("r") is None


def test_a_gap_closed_while_the_store_was_asked_is_not_lost_and_a_newer_gap_keeps_its_own_timer() -> None:
    order, out = setup()
    order.start("r", 5)
    old = order.offer("r", change(7), None)
    assert old is not None and order.missing("r", old) == 5
    order.offer("r", change(6), None)  # arrived while the store was read
    assert out == [6, 7]
    new = order.offer("r", change(9), None)
    assert new is not None and new != old
    assert not order.lose("r", old)  # the old timer cannot end the newer gap
    assert out == [6, 7] and order.last("r") == 7 and order.holding("r", new)
    order.offer("r", change(8), None)
    assert out == [6, 7, 8, 9]


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
    gap = order.offer("r", change(43), None)  # heard afresh, with no join reading it: held ...
    order.offer("r", change(42), None)
    assert out == [None, 3, 4] and gap is not None
    assert order.missing("r", gap) is None  # ... for the hold time, then given up on, in order
    assert out == [None, 3, 4, 42, 43] and order.last("r") == 43


def test_changes_heard_while_the_first_join_reads_wait_for_its_read_and_leave_in_order() -> None:
    order, out = setup()
    assert order.offer("r", change(12), None) is not None  # two nodes committed 11 and 12: 12 came first
    order.offer("r", change(11), None)
    order.offer("r", change(10), None)  # committed before the read: the join's ack has it
    assert out == []
    order.start("r", 10, alone=True)
    assert out == [10, 11, 12]  # 10 only for a join still reading from lower (each keeps what is above its read)
    order.offer("r", change(11), None)
    assert out == [10, 11, 12] and order.last("r") == 12


def test_a_join_alone_moves_an_order_that_stopped_hearing_the_room_but_never_moves_it_back() -> None:
    order, out = setup()
    order.start("r", 5)
    order.start("r", 50)  # somebody here is still in the room: its order stands
    assert order.last("r") == 5
    order.start("r", 50, alone=True)  # nobody here is: what it heard last is stale, the join's read counts
    order.offer("r", change(51), None)
    assert out == [51]
    order.start("r", 40, alone=True)
    assert order.last("r") == 51


def test_a_gap_that_stays_open_is_filled_from_the_store_in_order_and_the_late_change_is_dropped() -> None:
    out: list[tuple[str, int | None]] = []
    order = RoomOrder(lambda room, frame, exclude: out.append(
        (type(frame.message).__name__, getattr(frame.message.data, "rev", None))))
    order.start("r", 5)
    gap = order.offer("r", change(8), None)  # 6 and 7 are missing
    assert gap is not None and order.missing("r", gap) == 5
    order.offer("r", change(9), None)
    # The store, read at rev 10: 6 is there; 7 was folded into the message's later change (9); 10
    # is committed but its publish is still on its way: it must wait for its own event.
    assert order.fill("r", gap, [stored(6, "a"), stored(9, "b"), stored(10, "c")], upto=10) is None
    assert out == [("ChatMessageEvent", 6), ("ChatReactionUpdateEvent", 8), ("ChatMessageEvent", 9),
                   ("ChatMessageEvent", 10)]  # 9: the held reaction was part of a message the store has whole
    for late in (6, 7, 8, 9, 10):  # a publish that turns up after the fill said nothing new
        order.offer("r", change(late), None)
    order.offer("r", change(11), None)
    assert out[4:] == [("ChatReactionUpdateEvent", 11)] and order.last("r") == 11


def test_a_fill_stops_at_the_revision_it_read_and_what_waits_above_it_gets_a_new_gap() -> None:
    out: list[int | None] = []
    order = RoomOrder(lambda room, frame, exclude: out.append(getattr(frame.message.data, "rev", None)))
    order.start("r", 0)
    gap = order.offer("r", change(2), None)
    assert gap is not None
    order.offer("r", change(5), None)  # committed after the store was read (at rev 3), 4 still on its way
    again = order.fill("r", gap, [stored(1), stored(3)], upto=3)
    assert out == [1, 2, 3] and again is not None and again != gap and order.missing("r", again) == 3
    order.offer("r", change(4), None)  # arrives in time: 5 follows, the new gap closes
    assert out == [1, 2, 3, 4, 5] and order.missing("r", again) is None
    assert order.fill("r", again, [stored(4)], upto=5) is None and out == [1, 2, 3, 4, 5]  # a fill too late: nothing


def test_a_fill_for_a_gap_closed_meanwhile_changes_nothing() -> None:
    order, out = setup()
    order.start("r", 0)
    gap = order.offer("r", change(2), None)
    assert gap is not None
    order.offer("r", change(1), None)
    assert order.missing("r", gap) is None
    assert order.fill("r", gap, [stored(1), stored(2)], upto=2) is None
    assert out == [1, 2]


def test_a_fill_at_once_delivers_what_was_missed_with_or_without_a_gap_and_its_timer_finds_it_gone() -> None:
    """After the pub/sub moved (signald's slot moved), what the store holds past the order is filled
    at once (``gap`` None): with nothing held, or with a gap whose timer is still running."""
    order, out = setup()
    order.start("r", 0)
    assert order.fill("r", None, [stored(1), stored(2)], upto=2) is None  # missed, nothing after it heard
    assert out == [1, 2] and order.last("r") == 2
    gap = order.offer("r", change(4), None)  # 3 was missed, 4 came once the pub/sub was back
    assert gap is not None
    assert order.fill("r", None, [stored(3), stored(4)], upto=4) is None
    assert out == [1, 2, 3, 4] and order.missing("r", gap) is None  # the gap's timer: nothing left to do
    assert order.fill("unheard", None, [stored(1)], upto=1) is None and out == [1, 2, 3, 4]
