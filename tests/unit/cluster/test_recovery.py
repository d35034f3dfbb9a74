"""After an outage a node closes (1012) the connections of the rooms it is truly behind in, not of
rooms whose last change is only still on its way (signald.cluster.recovery.close_rooms_behind)."""

from __future__ import annotations

import itertools
import logging
import random
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from signald.app.replica import Resynced
from signald.cluster.catchup import WAIT_S, CatchUp
from signald.cluster.order import RoomOrder
from signald.cluster.recovery import CLOSE_SERVICE_RESTART, close_rooms_behind
from signald.cluster.resp import LinkError
from signald.delivery.frames import Frame
from signald.history.contract import StorageError
from signald.protocol import ReactionUpdateData
from signald.protocol.outbound import ChatReactionUpdateEvent


def change(room: str, rev: int) -> Frame:
    return Frame(ChatReactionUpdateEvent(data=ReactionUpdateData(
        message_id="m", user_id="u", reaction="+1", action="add", room=room, rev=rev)))


class Page:
    def __init__(self, rev: int, reset: bool = False) -> None:
        self.rev, self.changes_reset = rev, reset


class Store:
    """The shared store's revision of each room (and whether retention cut its changes)."""

    def __init__(self, revs: dict[str, int], reset: frozenset[str] = frozenset()) -> None:
        self.revs, self.reset = revs, reset

    async def changes(self, *, room: str, after_rev: int, limit: int) -> Page:
        return Page(self.revs[room], room in self.reset)


class Session:
    def __init__(self) -> None:
        self.detached = False
        self.closed: tuple[int, str] | None = None

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


class Hub:
    """What close_rooms_behind reads of the hub: the store, who is in which room, the sessions."""

    def __init__(self, store: Store, members: dict[str, list[str]]) -> None:
        self.history = type("History", (), {"store": store})()
        self.sessions = {conn: Session() for conns in members.values() for conn in conns}
        self._members = members
        self.rooms = self

    def conns_in(self, room: str) -> list[str]:
        return self._members[room]


async def test_only_rooms_still_behind_after_the_catch_up_wait_are_closed(autojump_clock: MockClock) -> None:
    # "late": its rev 4 is on its way (arrives 0.1 s into the wait); "lost": its rev 7 was published
    # while this node was off the broker and never comes; "even": nothing missed; "cut": retention.
    catch_up = CatchUp()
    order = RoomOrder(lambda room, frame, exclude: catch_up.delivered(room, frame))
    for room, rev in (("late", 3), ("lost", 6), ("even", 2), ("cut", 1)):
        order.start(room, rev)
    store = Store({"late": 4, "lost": 7, "even": 2, "cut": 1}, reset=frozenset({"cut"}))
    hub: Any = Hub(store, {"late": ["c1", "c2"], "lost": ["c3"], "even": ["c4"], "cut": ["c5"]})
    start = trio.current_time()
    closed: list[int] = []

    async def resync() -> None:
        closed.append(await close_rooms_behind(hub, ["late", "lost", "even", "cut"], order.last, catch_up.until))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(resync)
        await trio.sleep(0.1)
        order.offer("late", change("late", 4), None)

    assert closed == [2]
    assert trio.current_time() - start == WAIT_S  # the rooms waited together, not one after the other
    assert {conn for conn, s in hub.sessions.items() if s.closed} == {"c3", "c5"}
    assert hub.sessions["c3"].closed[0] == CLOSE_SERVICE_RESTART


async def test_without_a_catch_up_every_room_behind_is_closed_at_once(autojump_clock: MockClock) -> None:
    order = RoomOrder(lambda room, frame, exclude: None)
    order.start("late", 3)
    hub: Any = Hub(Store({"late": 4}), {"late": ["c1"]})
    start = trio.current_time()
    assert await close_rooms_behind(hub, ["late"], order.last) == 1
    assert trio.current_time() == start


async def test_after_a_slot_move_rooms_behind_are_filled_at_once(autojump_clock: MockClock) -> None:
    """The pub/sub was away only while signald's slot moved: ``fill`` delivers what a room missed
    from the store at once (no catch-up wait); a room it cannot fill (too much missed, the store
    failing) waits as after an outage and is closed if still behind."""
    catch_up = CatchUp()
    order = RoomOrder(lambda room, frame, exclude: catch_up.delivered(room, frame))
    for room, rev in (("moved", 3), ("big", 6)):
        order.start(room, rev)
    hub: Any = Hub(Store({"moved": 5, "big": 9000}), {"moved": ["c1"], "big": ["c2"]})
    filled: list[str] = []

    async def fill(room: str) -> bool:
        await trio.lowlevel.checkpoint()
        if room == "big":
            return False
        filled.append(room)
        order.fill(room, None, [change(room, 4), change(room, 5)], 5)
        return True

    start = trio.current_time()
    assert await close_rooms_behind(hub, ["big"], order.last, catch_up.until, fill) == 1
    assert trio.current_time() - start == WAIT_S  # "big" could not be filled: it waited, then was closed
    start = trio.current_time()
    assert await close_rooms_behind(hub, ["moved"], order.last, catch_up.until, fill) == 0
    assert trio.current_time() == start and filled == ["moved"] and order.last("moved") == 5
    assert hub.sessions["c1"].closed is None


class Recorder:
    """A writer that remembers each pipeline and whether it asked for a fresh connection."""

    def __init__(self) -> None:
        self.pipelines: list[tuple[list[Any], bool]] = []

    async def execute(self, commands: list[Any], *, fresh: bool = False) -> None:
        self.pipelines.append((commands, fresh))


class Records:
    """The node's records: one connection's."""

    names = type("Names", (), {"parse": staticmethod(lambda channel: ("room", channel))})

    def rewritten(self) -> list[Any]:
        return [("hset", "conns", {"c1": b"record"})]

    def shared(self, ops: list[Any], statuses_gone: list[str] | None = None) -> list[Any]:
        return [("publish", "state", op) for op in ops]

    def published(self, op: Any) -> Any:
        return ("publish", "state", op)


class Nodes:
    def grace(self) -> None:
        pass

    async def load(self, kicked: frozenset[tuple[str, str]] = frozenset()) -> None:
        await trio.lowlevel.checkpoint()

    async def leftovers(self) -> tuple[list[Any], list[str]]:  # what its records said that is no longer so
        await trio.lowlevel.checkpoint()
        return ["c2 closed meanwhile"], []


class Channels:
    heard: list[str] = []


async def test_the_resync_writes_its_records_over_a_fresh_connection() -> None:
    """After the pub/sub found Redis again (a failover, the slot moved), the writer's connection may
    still reach the old server, which would refuse the resync and drop the pub/sub once more."""
    from signald.cluster.recovery import Resync

    hub: Any = Hub(Store({}), {})
    hub.history, hub.sessions_by_user = None, {}
    writer, downs, beats = Recorder(), [], []

    async def beat() -> None:
        beats.append(1)

    resync = Resync(hub, Records(), writer, Nodes(), Channels(), RoomOrder(lambda *a: None),  # type: ignore[arg-type]
                    CatchUp(), beat=beat, down=downs.append, spawn=lambda task: None)
    await resync.run()
    # what changed while the writes were lost goes first, then the records as they are
    # (the others asked first to tell their calls' and kicks' transitions again)
    assert writer.pipelines == [([("publish", "state", Resynced()), ("publish", "state", "c2 closed meanwhile"),
                                  ("hset", "conns", {"c1": b"record"})], True)]
    assert beats == [1] and downs == []


class FailingStore(Store):
    """A store that fails every read while ``down``; when each read was made."""

    def __init__(self, revs: dict[str, int]) -> None:
        super().__init__(revs)
        self.down, self.reads = True, list[float]()

    async def changes(self, *, room: str, after_rev: int, limit: int) -> Page:
        self.reads.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        if self.down:
            raise StorageError("history store unavailable")
        return await super().changes(room=room, after_rev=after_rev, limit=limit)


def resync_over(store: Store, members: dict[str, list[str]], order: RoomOrder, catch_up: CatchUp) -> Any:
    from signald.cluster.recovery import Resync

    hub: Any = Hub(store, members)
    hub.sessions_by_user, hub.rooms_of = {}, lambda conn: set()
    for session in hub.sessions.values():
        session.user_id = "u"
    channels = type("Heard", (), {"heard": sorted(members)})()

    async def beat() -> None:
        await trio.lowlevel.checkpoint()

    return Resync(hub, Records(), Recorder(), Nodes(), channels, order, catch_up,  # type: ignore[arg-type]
                  beat=beat, down=lambda exc: None, spawn=lambda task: None)


async def test_a_store_check_that_failed_is_tried_again_until_the_store_answers(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The store fails for a minute after the resync: the check is tried again with backoff (0.5 s
    doubling to 5 s), logged at most once per 10 s, and closes the room still behind once the store
    answers, not the one whose missing change arrived meanwhile."""
    caplog.set_level(logging.INFO, logger="signald.cluster")
    catch_up = CatchUp()
    order = RoomOrder(lambda room, frame, exclude: catch_up.delivered(room, frame))
    order.start("lost", 6)  # rev 7 was lost with the broker
    order.start("caught", 3)  # rev 4 arrives while the store is down
    store = FailingStore({"lost": 7, "caught": 4})
    resync = resync_over(store, {"lost": ["c1"], "caught": ["c2"]}, order, catch_up)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(resync.run)
        await trio.sleep(30)
        order.offer("caught", change("caught", 4), None)
        await trio.sleep(30)
        store.down = False
    sessions = resync.hub.sessions
    assert sessions["c1"].closed[0] == CLOSE_SERVICE_RESTART and sessions["c2"].closed is None
    tries = sorted({round(t - start, 6) for t in store.reads})
    waits = [later - earlier for earlier, later in itertools.pairwise(tries)]
    assert tries[0] == 0 and 0.25 <= waits[0] <= 0.5 and max(waits) <= 5.0 and tries[-1] - 60 <= 5.0
    lines = [r.getMessage() for r in caplog.records if r.name == "signald.cluster"]
    failed = [line for line in lines if "history store" in line and "fail" in line]
    assert 4 <= len(failed) <= 7, lines  # the first, then one per 10 s at most (tries 2.5-5 s apart)
    assert lines[-1].startswith("cluster: the history store answers again; 1 connections closed"), lines


async def test_a_newer_resync_takes_over_the_store_check_of_an_older_one(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resync whose store check is being tried again stops trying when a newer one starts (which
    checks with what is delivered then): never two loops of tries at once, and each room closed once."""
    monkeypatch.setattr(random, "uniform", lambda low, high: high)  # no jitter: the tries' times are known
    catch_up = CatchUp()
    order = RoomOrder(lambda room, frame, exclude: catch_up.delivered(room, frame))
    order.start("lost", 6)
    store = FailingStore({"lost": 7})
    resync = resync_over(store, {"lost": ["c1"]}, order, catch_up)
    start, ended = trio.current_time(), list[tuple[str, float]]()

    async def run(name: str) -> None:
        await resync.run()
        ended.append((name, trio.current_time() - start))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "older")
        await trio.sleep(20)
        nursery.start_soon(run, "newer")
        await trio.sleep(21)
        store.down = False
    assert [t - start for t in store.reads] == [
        0, 0.5, 1.5, 3.5, 7.5, 12.5, 17.5,  # the older one: 0.5 s doubling to 5 s
        20, 20.5, 21.5, 23.5, 27.5, 32.5, 37.5,  # the newer one, alone (the older would try at 22.5)
        42.5]  # the store answers
    assert ended == [("older", 20), ("newer", 42.5 + WAIT_S)]  # (the room waited to catch up, then closed)
    assert resync.hub.sessions["c1"].closed[0] == CLOSE_SERVICE_RESTART


async def test_a_newer_resync_that_meets_the_broker_down_leaves_the_older_ones_check_going(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The newer one does not get to the store check (Redis failed again meanwhile: it tries again
    with backoff): the older one's tries go on, and the room is closed once the store answers; the
    newer one checks once it gets through."""
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    catch_up = CatchUp()
    order = RoomOrder(lambda room, frame, exclude: catch_up.delivered(room, frame))
    order.start("lost", 6)
    store = FailingStore({"lost": 7})
    resync = resync_over(store, {"lost": ["c1"]}, order, catch_up)
    start, broker = trio.current_time(), {"down": False}
    loaded = resync.nodes.load

    async def load(kicked: frozenset[tuple[str, str]] = frozenset()) -> None:
        await trio.lowlevel.checkpoint()
        if broker["down"]:
            raise LinkError("Redis closed the connection")
        await loaded(kicked)

    monkeypatch.setattr(resync.nodes, "load", load)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(resync.run)
        await trio.sleep(10)
        broker["down"] = True
        nursery.start_soon(resync.run)  # fails at 10, tries again at 10.5, 11.5, 13.5, 17.5, 22.5, 27.5, 32.5
        await trio.sleep(10)
        store.down = False
        await trio.sleep(22.5 + WAIT_S + 0.1 - 20)
        assert resync.hub.sessions["c1"].closed[0] == CLOSE_SERVICE_RESTART  # by the older one's check
        await trio.sleep(30 - trio.current_time() + start)
        broker["down"] = False
    assert [t - start for t in store.reads] == [0, 0.5, 1.5, 3.5, 7.5, 12.5, 17.5, 22.5, 32.5]


class GatedNodes(Nodes):
    """Nodes whose ``load`` waits while ``shut`` (a slow Redis), and fails while ``failing`` > 0
    (counted down by each load); when each load started."""

    def __init__(self, failing: int = 0) -> None:
        self.loads, self.failing, self.shut = list[float](), failing, False
        self.opened = trio.Event()

    async def load(self, kicked: frozenset[tuple[str, str]] = frozenset()) -> None:
        self.loads.append(trio.current_time())
        if self.shut:
            await self.opened.wait()
        await trio.lowlevel.checkpoint()
        if self.failing:
            self.failing -= 1
            raise LinkError("Redis closed the connection")


def resync_with(nodes: Nodes, writer: Recorder, beat: Any = None, downs: list[BaseException] | None = None) -> Any:
    from signald.cluster.recovery import Resync

    hub: Any = Hub(Store({}), {})
    hub.history, hub.sessions_by_user = None, {}

    async def beaten() -> None:
        await trio.lowlevel.checkpoint()

    return Resync(hub, Records(), writer, nodes, Channels(), RoomOrder(lambda *a: None),  # type: ignore[arg-type]
                  CatchUp(), beat=beat or beaten, down=(downs if downs is not None else []).append,
                  spawn=lambda task: None)


def runs_of(writer: Recorder) -> int:
    """How many resyncs wrote their records (each starts with a Resynced on a fresh connection)."""
    return sum(1 for commands, fresh in writer.pipelines if fresh and commands[0] == ("publish", "state", Resynced()))


async def test_a_resync_asked_for_while_one_runs_runs_once_more_after_it(autojump_clock: MockClock) -> None:
    """Redis restarted again while the resync was loading the others' records (what it wrote before
    is lost): the pub/sub's reconnect asks for a resync then; the one under way does it all once
    more when it ends, once however often it was asked meanwhile (not dropped, not run twice at once)."""
    nodes, writer = GatedNodes(), Recorder()
    nodes.shut = True
    resync = resync_with(nodes, writer)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(resync.run)
        await trio.sleep(1)
        assert len(nodes.loads) == 1
        for _ in range(3):  # the reconnect, a heartbeat that found the node taken out, ...
            await resync.run()  # returns at once: the run under way takes it over
        assert runs_of(writer) == 1
        nodes.shut = False
        nodes.opened.set()
    assert runs_of(writer) == 2 and len(nodes.loads) == 2  # all of it once more, after the first one ended
    assert nodes.loads[1] >= nodes.loads[0] + 1


async def test_the_resyncs_own_heartbeat_finding_the_node_taken_out_asks_no_second_run(
    autojump_clock: MockClock
) -> None:
    """After Redis restarted empty, the heartbeat the resync sends finds the node missing from the
    ``nodes`` set (it is what puts it back): that is no reason to run it all again."""
    nodes, writer = GatedNodes(), Recorder()
    resync: Any = None
    beats = list[float]()

    async def beat() -> None:  # the replica's heartbeat: the node is out of ``nodes`` until its first one
        await trio.lowlevel.checkpoint()
        beats.append(trio.current_time())
        if len(beats) == 1:
            resync.taken_out()

    resync = resync_with(nodes, writer, beat)
    resync._spawn = lambda task: nursery.start_soon(task)
    async with trio.open_nursery() as nursery:
        await resync.run()
    assert runs_of(writer) == 1 and len(nodes.loads) == 1
    async with trio.open_nursery() as nursery:
        resync.taken_out()  # the heartbeat's own (a stall outlasted node_ttl_s): a resync
    assert runs_of(writer) == 2


async def test_a_resync_that_failed_while_the_pubsub_stays_up_is_tried_again_with_backoff(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Loading the others' records failed (a timeout on the command connection) while the pub/sub
    stayed up: nothing would ask for the resync again, so it tries again itself (0.5 s doubling to
    5 s) until it completes, saying so in the log at most once per 10 s."""
    caplog.set_level(logging.INFO, logger="signald.cluster")
    monkeypatch.setattr(random, "uniform", lambda low, high: high)  # no jitter: the tries' times are known
    nodes, writer, downs = GatedNodes(failing=6), Recorder(), list[BaseException]()
    resync = resync_with(nodes, writer, downs=downs)
    start = trio.current_time()
    await resync.run()
    assert [t - start for t in nodes.loads] == [0, 0.5, 1.5, 3.5, 7.5, 12.5, 17.5]
    assert runs_of(writer) == 7 and len(downs) == 6  # each try all of it: /readyz says why meanwhile
    lines = [r.getMessage() for r in caplog.records if r.name == "signald.cluster"]
    assert len([line for line in lines if "resync" in line and "trying again" in line]) == 2, lines  # at 0 and 12.5
    assert lines[-1].startswith("cluster: back on the broker"), lines


async def test_a_resync_waiting_to_try_again_tries_at_once_when_asked(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pub/sub reconnected while the resync waits to try again: it tries now, not at the end of
    its backoff."""
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    nodes, writer = GatedNodes(failing=4), Recorder()
    resync = resync_with(nodes, writer)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(resync.run)
        await trio.sleep(5)  # tries at 0, 0.5, 1.5, 3.5: the next at 7.5
        await resync.run()
    assert [t - start for t in nodes.loads] == [0, 0.5, 1.5, 3.5, 5]
