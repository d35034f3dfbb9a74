"""A gap the store cannot fill is never delivered past: the room's connections on this node are
closed (1012) to resume instead, and its order starts again at the next join (signald.cluster.gaps)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from test_recovery import Session, change
from trio.testing import MockClock

from signald.cluster.gaps import fill_gap
from signald.cluster.order import HOLD_S, RoomOrder
from signald.cluster.recovery import CLOSE_SERVICE_RESTART
from signald.history.contract import StorageError
from signald.protocol import ChatMessage


def message(rev: int) -> ChatMessage:
    return ChatMessage(id=f"m{rev}", room="r", seq=rev, rev=rev, user_id="u", body="", attachments=[],
                       parent_id=None, created_at="2026-01-01T00:00:00.000Z", edited_at=None, deleted_at=None,
                       redacted=False, reactions={})


class Page:
    def __init__(self, rev: int, changes: list[ChatMessage], *, reset: bool) -> None:
        self.rev, self.changes_reset, self.changes, self.has_more = rev, reset, changes, False


class Store:
    """The shared store as this node sees it: down, cut by retention, or (``fails`` None, no
    ``reset``) answering with ``messages``; ``asked`` is set once read."""

    def __init__(self, fails: BaseException | None, *, reset: bool = False) -> None:
        self.fails, self.reset = fails, reset
        self.messages: list[ChatMessage] = []
        self.asked, self.answer = trio.Event(), trio.Event()
        self.answer.set()

    async def changes(self, *, room: str, after_rev: int, limit: int) -> Page:
        self.asked.set()
        await self.answer.wait()
        if self.fails is not None:
            raise self.fails
        found = [m for m in self.messages if m.rev > after_rev]
        return Page(max((m.rev for m in found), default=after_rev), found, reset=self.reset)


class Hub:
    """What fill_gap reads of the hub: the store, who is in (or joining) which room, the sessions."""

    def __init__(self, store: Store, members: dict[str, list[str]], joining: dict[str, list[str]]) -> None:
        self.history = self
        self.store = store
        self.sessions = {conn: Session() for conns in (*members.values(), *joining.values()) for conn in conns}
        self._members, self._joining = members, joining
        self.rooms = self

    def conns_in(self, room: str) -> list[str]:
        return self._members.get(room, [])

    def joining(self, room: str) -> list[str]:
        return self._joining.get(room, [])

    def wall_clock(self) -> float:
        return 0.0


def setup(store: Store) -> tuple[Any, RoomOrder, list[tuple[str, int | None]]]:
    out: list[tuple[str, int | None]] = []
    order = RoomOrder(lambda room, frame, exclude: out.append((room, getattr(frame.message.data, "rev", None))))
    hub: Any = Hub(store, {"r": ["c1", "c2"], "other": ["c3"]}, {"r": ["j1"]})
    order.start("r", 5)
    order.start("other", 1)
    return hub, order, out


@pytest.mark.parametrize("reset", [False, True], ids=["store down", "retention cut the changes"])
async def test_a_gap_the_store_cannot_fill_delivers_nothing_past_it_and_closes_the_room_here_to_resume(
    autojump_clock: MockClock, reset: bool
) -> None:
    store = Store(None if reset else StorageError("connection refused"), reset=reset)
    hub, order, out = setup(store)
    gap = order.offer("r", change("r", 7), None)  # 6 never arrives
    assert gap is not None
    order.offer("r", change("r", 8), None)
    start = trio.current_time()
    await fill_gap(hub, order, "r", gap)
    assert trio.current_time() - start == HOLD_S
    assert out == []  # 7 and 8 not delivered: a client given them would resume past 6 and never get it
    closed = {conn: session.closed for conn, session in hub.sessions.items() if session.closed is not None}
    assert set(closed) == {"c1", "c2", "j1"}  # the room's connections here, and the join still reading it
    assert {code for code, _ in closed.values()} == {CLOSE_SERVICE_RESTART}
    assert all("room events were missed" in reason and "resume" in reason for _, reason in closed.values())
    assert order.last("r") is None and order.last("other") == 1  # the room starts again at the next join
    order.offer("other", change("other", 2), None)  # the node's other rooms go on
    # the room's: dropped, with no timer to give it up later (its connections here are closing, but a
    # reply they still owe keeps them open a moment: they must get no change past 6 meanwhile)
    assert order.offer("r", change("r", 9), None) is None
    assert out == [("other", 2)]
    store.fails, store.reset, store.messages = None, False, [message(9)]  # the store answers again
    gap = order.start("r", 8, alone=True)  # a rejoin's read (its ack has up to 8) starts the room again,
    await fill_gap(hub, order, "r", gap)  # and what was dropped above it is filled from the store
    order.offer("r", change("r", 10), None)
    assert out == [("other", 2), ("r", 9), ("r", 10)]


async def test_a_gap_closed_while_the_store_was_asked_closes_nothing(autojump_clock: MockClock) -> None:
    store = Store(StorageError("connection refused"))
    store.answer = trio.Event()  # the store takes its time
    hub, order, out = setup(store)
    gap = order.offer("r", change("r", 7), None)
    assert gap is not None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fill_gap, hub, order, "r", gap)
        await store.asked.wait()
        order.offer("r", change("r", 6), None)  # the missing change arrived meanwhile
        store.answer.set()
    assert out == [("r", 6), ("r", 7)] and order.last("r") == 7
    assert all(session.closed is None for session in hub.sessions.values())
