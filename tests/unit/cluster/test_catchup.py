"""A join whose read of the store is ahead of what its node delivered waits until the node catches up."""

from __future__ import annotations

import trio
from trio.testing import MockClock

from signald.cluster.catchup import WAIT_S, CatchUp
from signald.cluster.order import RoomOrder
from signald.delivery.frames import Frame
from signald.protocol import ReactionUpdateData
from signald.protocol.outbound import ChatReactionUpdateEvent


def change(rev: int) -> Frame:
    return Frame(ChatReactionUpdateEvent(data=ReactionUpdateData(
        message_id="m", user_id="u", reaction="+1", action="add", room="r", rev=rev)))


async def test_a_join_read_at_rev_5_returns_once_the_order_delivered_up_to_5() -> None:
    catch_up = CatchUp()
    order = RoomOrder(lambda room, frame, exclude: catch_up.delivered(room, frame))
    order.start("r", 2)
    order.offer("r", change(3), None)
    done: list[float] = []

    async def join() -> None:
        await catch_up.until("r", 5, order.last("r"))
        done.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(join)
        await trio.testing.wait_all_tasks_blocked()
        order.offer("r", change(4), None)
        await trio.testing.wait_all_tasks_blocked()
        assert not done  # 4 is not 5
        order.offer("r", change(5), None)
    assert done


async def test_a_join_not_ahead_does_not_wait(autojump_clock: MockClock) -> None:
    catch_up = CatchUp()
    start = trio.current_time()
    await catch_up.until("r", 5, None)  # no order here yet: it starts at the read
    await catch_up.until("r", 5, 5)
    await catch_up.until("r", 5, 7)
    assert trio.current_time() == start


async def test_a_change_that_never_comes_holds_the_join_at_most_wait_s(autojump_clock: MockClock) -> None:
    catch_up = CatchUp()
    start = trio.current_time()
    await catch_up.until("r", 5, 3)
    assert trio.current_time() - start == WAIT_S
    catch_up.delivered("r", change(9))  # nobody waits any more: nothing to wake
