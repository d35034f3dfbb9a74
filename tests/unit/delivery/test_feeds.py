"""Room feeds: a busy room's member events go out in batches, and every connection still receives
exactly what it would have received without them, in the same order (on a MockClock)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from trio.testing import MockClock, wait_all_tasks_blocked

from signald.delivery.broker import LocalBroker
from signald.delivery.cork import Cork
from signald.delivery.feeds import MAX_INTERVAL_S, MIN_INTERVAL_S, RoomFeeds, interval_for
from signald.delivery.frames import Frame
from signald.delivery.outbox import Outbox
from signald.protocol import MemberJoinedEvent, RoomActiveEvent, RoomData, RoomUserData


class Conn:
    """One connection: an outbox whose socket takes everything, and the writes it got."""

    def __init__(self, name: str, cork: Cork, *, binary: bool = False) -> None:
        self.name = name
        self.writes: list[bytes] = []
        self.outbox = Outbox(64, binary=binary, on_overflow=lambda: None, cork=cork)
        self.outbox.direct_write = self._write

    def _write(self, data: bytes) -> int:
        self.writes.append(data)
        return len(data)

    @property
    def received(self) -> bytes:
        return b"".join(self.writes)


class Rig:
    def __init__(self) -> None:
        self.cork = Cork()
        self.conns: dict[str, Conn] = {}
        self.broker = LocalBroker()
        self.feeds = RoomFeeds(self.broker, self.cork)

    def add(self, *names: str, binary: bool = False) -> list[Conn]:
        for name in names:
            self.conns[name] = Conn(name, self.cork, binary=binary)
            self.broker.attach(name, self.conns[name].outbox)
        return [self.conns[n] for n in names]


def joined(user: str, room: str = "r") -> Frame:
    return Frame(MemberJoinedEvent(data=RoomUserData(room=room, user_id=user)))


def wire(*frames: Frame) -> bytes:
    return b"".join(f.wire_text for f in frames)


@pytest.fixture
async def rig(nursery: trio.Nursery) -> AsyncIterator[Rig]:
    rig = Rig()
    nursery.start_soon(rig.feeds.run)
    await wait_all_tasks_blocked()
    yield rig


async def test_a_quiet_rooms_event_leaves_in_the_same_pass(rig: Rig, mock_clock: MockClock) -> None:
    a, b = rig.add("a", "b")
    event = joined("carol")
    start = trio.current_time()
    assert rig.feeds.publish("r", frozenset({"a", "b"}), event) == 2
    assert a.writes == []  # not yet: at the end of the pass
    await wait_all_tasks_blocked()
    assert a.received == b.received == wire(event)
    assert trio.current_time() == start


async def test_a_busy_rooms_events_wait_then_leave_in_one_write(rig: Rig, mock_clock: MockClock) -> None:
    (a,) = rig.add("a")
    first, second, third = joined("u1"), joined("u2"), joined("u3")
    rig.feeds.publish("r", frozenset({"a"}), first)
    await wait_all_tasks_blocked()
    flushed = trio.current_time()
    rig.feeds.publish("r", frozenset({"a"}), second)
    rig.feeds.publish("r", frozenset({"a"}), third)
    await wait_all_tasks_blocked()
    assert a.writes == [wire(first)]  # the other two wait for the room's interval
    mock_clock.jump(MIN_INTERVAL_S * 0.9)
    await wait_all_tasks_blocked()
    assert a.writes == [wire(first)]
    mock_clock.jump(MIN_INTERVAL_S * 0.1)
    await wait_all_tasks_blocked()
    assert a.writes == [wire(first), wire(second, third)]  # together, in order
    assert trio.current_time() == pytest.approx(flushed + MIN_INTERVAL_S)


async def test_a_big_room_holds_its_events_longer(rig: Rig, mock_clock: MockClock) -> None:
    conns = rig.add(*(f"c{n}" for n in range(150)))
    everyone = frozenset(c.name for c in conns)
    rig.feeds.publish("r", everyone, joined("warmup"))
    await wait_all_tasks_blocked()
    rig.feeds.publish("r", everyone, joined("u1"))
    mock_clock.jump(MAX_INTERVAL_S * 0.99)  # a flush is a write per member: at most ~100 a second
    await wait_all_tasks_blocked()
    assert conns[0].received == wire(joined("warmup"))
    mock_clock.jump(MAX_INTERVAL_S * 0.01)
    await wait_all_tasks_blocked()
    assert all(c.received == wire(joined("warmup"), joined("u1")) for c in conns)
    assert interval_for(2) == MIN_INTERVAL_S and interval_for(50) == 0.5 and interval_for(10_000) == MAX_INTERVAL_S


async def test_a_joiner_gets_only_later_events_and_a_leaver_only_earlier_ones(rig: Rig, mock_clock: MockClock) -> None:
    a, b, c = rig.add("a", "b", "c")
    rig.feeds.publish("r", frozenset({"a"}), joined("warmup"))
    await wait_all_tasks_blocked()
    e1, e2, e3 = joined("u1"), joined("u2"), joined("u3")
    rig.feeds.publish("r", frozenset({"a", "c"}), e1)  # c leaves after this one
    rig.feeds.publish("r", frozenset({"a", "b"}), e2)  # b joined before this one
    rig.feeds.publish("r", frozenset({"a", "b"}), e3)
    mock_clock.jump(MIN_INTERVAL_S)
    await wait_all_tasks_blocked()
    assert a.received == wire(joined("warmup"), e1, e2, e3)
    assert b.received == wire(e2, e3)
    assert c.received == wire(e1)


async def test_another_frame_for_a_reader_takes_its_waiting_share_first(rig: Rig, mock_clock: MockClock) -> None:
    a, b = rig.add("a", "b")
    rig.feeds.publish("r", frozenset({"a", "b"}), joined("warmup"))
    await wait_all_tasks_blocked()
    waiting = joined("dave")
    rig.feeds.publish("r", frozenset({"a", "b"}), waiting)
    chat = Frame(RoomActiveEvent(data=RoomData(room="r")))
    assert a.outbox.push(chat)  # e.g. dave's first message: after the news that he joined
    assert a.received == wire(joined("warmup"), waiting, chat)
    assert a.outbox.reading is None  # caught up: its next pushes do not look at the feed
    again = joined("erin")
    rig.feeds.publish("r", frozenset({"a", "b"}), again)
    assert a.outbox.reading  # a new frame waits for it: looked at again
    assert a.outbox.push(chat)
    assert a.received == wire(joined("warmup"), waiting, chat, again, chat)
    mock_clock.jump(MIN_INTERVAL_S)
    await wait_all_tasks_blocked()
    assert a.received == wire(joined("warmup"), waiting, chat, again, chat)  # not again
    assert b.received == wire(joined("warmup"), waiting, again)


async def test_a_rejoined_connection_skips_what_its_member_list_already_holds(rig: Rig, mock_clock: MockClock) -> None:
    (a,) = rig.add("a")
    rig.feeds.publish("r", frozenset({"a"}), joined("warmup"))
    await wait_all_tasks_blocked()
    rig.feeds.publish("r", frozenset({"a"}), joined("u1"))
    rig.feeds.entered("r", "a")  # left and joined again (another device kept the user in): no event
    later = joined("u2")
    rig.feeds.publish("r", frozenset({"a"}), later)
    mock_clock.jump(MIN_INTERVAL_S)
    await wait_all_tasks_blocked()
    assert a.received == wire(joined("warmup"), later)


async def test_binary_connections_get_messagepack_and_a_closing_one_its_share(rig: Rig, mock_clock: MockClock) -> None:
    (text,) = rig.add("t")
    (packed,) = rig.add("p", binary=True)
    rig.feeds.publish("r", frozenset({"t", "p"}), joined("warmup"))
    await wait_all_tasks_blocked()
    event = joined("u1")
    rig.feeds.publish("r", frozenset({"t", "p"}), event)
    packed.outbox.close(drop=False)  # closing normally: what it was owed goes before the close
    assert packed.received == joined("warmup").wire_binary + event.wire_binary
    mock_clock.jump(MIN_INTERVAL_S)
    await wait_all_tasks_blocked()
    assert text.received == wire(joined("warmup"), event)
    assert packed.received == joined("warmup").wire_binary + event.wire_binary


async def test_without_the_flushing_task_events_go_at_once() -> None:
    rig = Rig()
    (a,) = rig.add("a")
    event = joined("u1")
    assert rig.feeds.publish("r", frozenset({"a", "elsewhere"}), event) == 1
    assert a.received == wire(event)


async def test_what_waits_is_sent_when_the_task_ends(mock_clock: MockClock) -> None:
    rig = Rig()
    (a,) = rig.add("a")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.feeds.run)
        await wait_all_tasks_blocked()
        rig.feeds.publish("r", frozenset({"a"}), joined("warmup"))
        await wait_all_tasks_blocked()
        rig.feeds.publish("r", frozenset({"a"}), joined("u1"))
        nursery.cancel_scope.cancel()
    assert a.received == wire(joined("warmup"), joined("u1"))


# A random history of member events (each to a set of connections), other frames to single
# connections and time passing: every connection must receive exactly the frames addressed to it,
# in the order they were addressed, as if each had been written at once.
CONNS = ("a", "b", "c", "d")
step = st.one_of(
    st.tuples(st.just("event"), st.sampled_from(("r1", "r2")), st.frozensets(st.sampled_from(CONNS), min_size=1)),
    st.tuples(st.just("direct"), st.sampled_from(CONNS), st.just(frozenset())),
    st.tuples(st.just("wait"), st.sampled_from(("0", "0.02", "0.06", "1")), st.just(frozenset())),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, max_size=40))
@example(steps=[  # a busy room's frame, then a quiet room's: the quiet one must not overtake it
    ("event", "r1", frozenset({"a"})), ("wait", "0", frozenset()), ("event", "r1", frozenset({"a"})),
    ("event", "r2", frozenset({"a"})), ("event", "r1", frozenset({"a"}))])
def test_every_connection_receives_its_frames_in_order(steps: list[tuple[str, str, frozenset[str]]]) -> None:
    async def scenario() -> None:
        rig = Rig()
        conns = dict(zip(CONNS, rig.add(*CONNS), strict=True))
        expected: dict[str, list[Frame]] = {c: [] for c in CONNS}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rig.feeds.run)
            for n, (kind, arg, targets) in enumerate(steps):
                if kind == "event":
                    # a room's events go to its members; membership changes between events
                    frame = joined(f"u{n}", arg)
                    rig.feeds.publish(arg, targets, frame)
                    for c in targets:
                        expected[c].append(frame)
                elif kind == "direct":
                    frame = Frame(RoomActiveEvent(data=RoomData(room=f"x{n}")))
                    conns[arg].outbox.push(frame)
                    expected[arg].append(frame)
                else:
                    await trio.sleep(float(arg))
            await trio.sleep(MAX_INTERVAL_S * 2)
            nursery.cancel_scope.cancel()
        for c in CONNS:
            assert conns[c].received == wire(*expected[c]), c

    trio.run(scenario, clock=MockClock(autojump_threshold=0))



async def test_leaving_and_joining_again_many_times_keeps_one_entry_per_feed(rig: Rig, mock_clock: MockClock) -> None:
    """A reconnect storm's retries: a connection leaves and joins a busy room again and again while
    it also gets other frames. Its list of feeds to check must not grow with each round (every push
    walks it)."""
    a, _ = rig.add("a", "b")
    rig.feeds.publish("r", frozenset({"a", "b"}), joined("warmup"))
    await wait_all_tasks_blocked()
    chat = Frame(RoomActiveEvent(data=RoomData(room="r")))
    for n in range(50):
        rig.feeds.publish("r", frozenset({"b"}), joined(f"left{n}"))  # a is out of the room
        rig.feeds.publish("r", frozenset({"a", "b"}), joined(f"back{n}"))  # and in again
        a.outbox.push(chat)
        assert len(a.outbox.reading or ()) <= 1
    feed = rig.feeds._pending["r"]
    assert len(feed.caught_up) <= 2
    mock_clock.jump(MAX_INTERVAL_S)
    await wait_all_tasks_blocked()
    assert a.received == wire(joined("warmup"), *(f for n in range(50) for f in (joined(f"back{n}"), chat)))
