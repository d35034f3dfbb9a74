"""Tests of the history store contract on both stores, and of the SQLite store's own mechanics.

The ``store`` fixture is parametrized over SQLite (a real file) and PostgreSQL (a database of the
session's private server, see tests/postgres.py): every test that uses it checks the contract on
both. Tests of SQLite's own mechanics (inline commits, group commit on its writer thread, the
room counters, the WAL, its migrations) are marked ``sqlite_only``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from signald.errors import SignalError
from signald.history.export import export
from signald.history.inline import tasks_runnable
from signald.history.postgres.store import PostgresStore
from signald.history.retention import RETENTION_BATCH, Retention
from signald.history.schema import MIGRATIONS, SCHEMA_VERSION, SchemaError, migrate, user_version
from signald.history.store import Deleted, HistoryStore, StorageError
from signald.history.transactions import Transactions
from signald.protocol import Attachment, Change, ChangesPage, ChatMessage, Tombstone
from signald.timefmt import iso_utc

T0 = 1795694400.0  # 2026-11-26T12:00:00Z


class FakeClock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


BACKENDS = ["sqlite", "postgres"]
sqlite_only = pytest.mark.parametrize("store", ["sqlite"], indirect=True)
"""A test of the SQLite store's own mechanics, not of the contract."""


def open_store(backend: str, request: pytest.FixtureRequest, path: Path, clock: FakeClock, **kw: Any) -> Any:
    """A store of ``backend``, not opened yet (PostgreSQL: a new database of the session's server)."""
    if backend == "sqlite":
        return HistoryStore(path, clock=clock, **kw)
    return PostgresStore(request.getfixturevalue("postgres_url"), clock=clock, **kw)


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> AsyncIterator[HistoryStore]:
    async with open_store(request.param, request, tmp_path / "history.db", clock) as s:
        yield s


async def send(store: HistoryStore, body: str = "hi", *, room: str = "lobby", user: str = "ann",
               **kw: Any) -> ChatMessage:
    message, created = await store.send(room=room, user_id=user, body=body, **kw)
    assert created
    return message


async def expect_error(code: str, fn: Callable[[], Any]) -> None:
    with pytest.raises(SignalError) as info:
        await fn()
    assert info.value.code == code, info.value


# --------------------------------------------------------------------------- basics


async def test_send_returns_stored_message_with_gap_free_seq_per_room(store: HistoryStore) -> None:
    a1 = await send(store, "one", attachments=[Attachment(url="https://x/a.png", name="a.png", size=3)])
    a2 = await send(store, "two", parent_id=a1.id)
    b1 = await send(store, "other", room="kitchen")
    assert (a1.seq, a2.seq, b1.seq) == (1, 2, 1)
    assert a1.created_at == "2026-11-26T12:00:00.000Z"
    assert a1.attachments == [Attachment(url="https://x/a.png", name="a.png", size=3)]
    assert a2.parent_id == a1.id
    assert len({a1.id, a2.id, b1.id}) == 3
    assert (a1.edited_at, a1.deleted_at, a1.redacted, a1.reactions) == (None, None, False, {})
    assert await store.get(a1.id) == a1
    assert await store.get("nope") is None


def test_iso_utc() -> None:
    assert iso_utc(T0) == "2026-11-26T12:00:00.000Z"
    assert iso_utc(T0 + 1.2345) == "2026-11-26T12:00:01.234Z"
    assert iso_utc(0) == "1970-01-01T00:00:00.000Z"
    # the text of the last second is reused: going back and forth never mixes seconds up
    assert [iso_utc(T0 + d) for d in (0.999, 1.0, 0.5, 86400.001)] == [
        "2026-11-26T12:00:00.999Z", "2026-11-26T12:00:01.000Z", "2026-11-26T12:00:00.500Z",
        "2026-11-27T12:00:00.001Z",
    ]


async def test_concurrent_senders_get_ordered_gap_free_seqs_and_on_commit_in_seq_order(
    store: HistoryStore,
) -> None:
    committed: list[int] = []
    per_sender: dict[int, list[int]] = {}

    def on_commit(message: ChatMessage) -> None:
        committed.append(message.seq)

    async def sender(n: int) -> None:
        seqs = per_sender.setdefault(n, [])
        for i in range(10):
            message, _ = await store.send(room="lobby", user_id=f"u{n}", body=f"{n}:{i}", on_commit=on_commit)
            # on_commit ran before this task was woken
            assert committed[-1] >= message.seq and message.seq in committed
            seqs.append(message.seq)

    async with trio.open_nursery() as nursery:
        for n in range(50):
            nursery.start_soon(sender, n)

    assert committed == list(range(1, 501))
    for n, seqs in per_sender.items():
        assert seqs == sorted(seqs), f"sender {n} got seqs out of order"
    page = await store.history(room="lobby", limit=1000)
    assert [m.seq for m in page.messages] == list(range(1, 501))
    for n in range(50):  # one sender's messages are stored in the order it sent them
        bodies = [m.body for m in page.messages if m.user_id == f"u{n}"]
        assert bodies == [f"{n}:{i}" for i in range(10)]


def collect(outcomes: list[Outcome]) -> Callable[[Any, BaseException | None], None]:
    def then(result: Any, error: BaseException | None) -> None:
        outcomes.append((result, error))

    return then


async def all_done(outcomes: list[Outcome], n: int) -> None:
    while len(outcomes) < n:  # noqa: ASYNC110 - the callbacks run on the Trio thread between our polls
        await trio.sleep(0.005)


async def test_sends_of_one_batch_keep_the_rules_of_sends_one_by_one(store: HistoryStore) -> None:
    """A batch with retries, a key twice and a parent sent in the same batch (PostgreSQL stores
    plain batches at once and must fall back for these) ends as if sent one after the other."""
    first = await send(store, "first", client_msg_id="k0")
    outcomes: list[Outcome] = []
    for room, body, key, parent in [("a", "1", None, None), ("b", "2", "k1", None), ("lobby", "again", "k0", None),
                                    ("b", "3", "k1", None), ("lobby", "reply", None, first.id),
                                    ("a", "bad parent", None, "f" * 24), ("a", "4", None, None)]:
        store.send_nowait(room=room, user_id="ann", body=body, client_msg_id=key, parent_id=parent,
                          then=collect(outcomes))
    with trio.fail_after(10):
        await all_done(outcomes, 7)
    got = [(result[0].room, result[0].seq, result[0].body, result[1]) if result else getattr(error, "code", error)
           for result, error in outcomes]
    assert got == [("a", 1, "1", True), ("b", 1, "2", True), ("lobby", 1, "first", False), ("b", 1, "2", False),
                   ("lobby", 2, "reply", True), "NOT_FOUND", ("a", 2, "4", True)]
    revs = [m.rev for m in (await store.history(room="a")).messages]
    assert revs == [1, 2]


async def test_plain_batches_of_sends_get_consecutive_seqs_per_room_in_send_order(store: HistoryStore) -> None:
    outcomes: list[Outcome] = []
    for i in range(40):
        store.send_nowait(room=f"r{i % 3}", user_id="ann", body=f"{i}", client_msg_id=f"c{i}",
                          then=collect(outcomes))
    with trio.fail_after(10):
        await all_done(outcomes, 40)
    assert all(error is None for _, error in outcomes)
    for r in range(3):
        page = await store.history(room=f"r{r}", limit=100)
        assert [(m.seq, m.rev, m.body) for m in page.messages] == [
            (n + 1, n + 1, f"{i}") for n, i in enumerate(range(r, 40, 3))]


async def test_group_commit_batches_concurrent_sends(store: HistoryStore) -> None:
    before = store.commits
    async with trio.open_nursery() as nursery:
        for n in range(50):
            nursery.start_soon(send, store, f"m{n}")
    assert store.commits - before < 50
    assert (await store.stats())["messages"] == 50


async def hold_writer(
    nursery: trio.Nursery, store: HistoryStore, on_commit: Callable[[Any], None] | None = None
) -> threading.Event:
    """Keep the writer thread inside an operation until the returned event is set: what is queued
    meanwhile is taken as one batch. ``on_commit`` runs when that operation is done."""
    entered, release = threading.Event(), threading.Event()

    def blocker(conn: sqlite3.Connection) -> tuple[None, Any]:
        entered.set()
        release.wait(10)
        return None, None

    nursery.start_soon(partial(store.run_on_connection, blocker, write=True, on_commit=on_commit))
    await trio.to_thread.run_sync(entered.wait)
    return release


@sqlite_only
async def test_group_commit_takes_everything_queued_in_one_transaction(store: HistoryStore) -> None:
    before = store.commits
    results: list[ChatMessage] = []

    async def one(n: int) -> None:
        results.append(await send(store, f"m{n}"))

    async with trio.open_nursery() as nursery:
        release = await hold_writer(nursery, store)
        for n in range(50):
            nursery.start_soon(one, n)
        await trio.testing.wait_all_tasks_blocked()
        assert store.queued == 50
        assert results == []
        release.set()
    assert store.commits - before == 2  # the blocker's transaction, then all 50 sends in one
    assert sorted(m.seq for m in results) == list(range(1, 51))


@sqlite_only
async def test_failed_operation_in_a_batch_does_not_roll_back_the_others(store: HistoryStore) -> None:
    base = await send(store, "base")
    outcomes: dict[str, Any] = {}

    async def run(name: str, fn: Callable[[], Any]) -> None:
        try:
            outcomes[name] = await fn()
        except SignalError as exc:
            outcomes[name] = exc.code

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "a", lambda: store.send(room="lobby", user_id="ann", body="a"))
        nursery.start_soon(run, "bad", lambda: store.edit(message_id=base.id, user_id="bob", new_body="x"))
        nursery.start_soon(run, "b", lambda: store.send(room="lobby", user_id="ann", body="b"))
    assert outcomes["bad"] == "FORBIDDEN"
    page = await store.history(room="lobby")
    assert sorted(m.body for m in page.messages) == ["a", "b", "base"]
    assert [m.seq for m in page.messages] == [1, 2, 3]


@sqlite_only
async def test_sqlite_error_in_one_operation_fails_only_that_one(store: HistoryStore) -> None:
    def broken(conn: sqlite3.Connection) -> tuple[None, Any]:
        conn.execute("INSERT INTO rooms (room, last_seq, count) VALUES ('x', 1, 1)")
        conn.execute("INSERT INTO no_such_table VALUES (1)")
        return None, None

    with pytest.raises(StorageError) as info:
        await store.run_on_connection(broken, write=True)
    assert info.value.code == "INTERNAL" and info.value.message == "history storage failed"
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    assert await store.rooms() == []  # its partial write was rolled back
    assert (await send(store)).seq == 1


@sqlite_only
async def test_failed_commit_fails_the_whole_batch_and_announces_nothing(store: HistoryStore) -> None:
    events: list[ChatMessage] = []
    outcomes: list[str] = []

    def sabotage(conn: sqlite3.Connection) -> tuple[None, Any]:
        conn.execute("ROLLBACK")  # ends the batch's transaction under everybody's feet
        return None, None

    async def attempt(fn: Callable[[], Any]) -> None:
        try:
            await fn()
            outcomes.append("ok")
        except StorageError:
            outcomes.append("INTERNAL")

    async with trio.open_nursery() as nursery:
        release = await hold_writer(nursery, store)
        nursery.start_soon(attempt, lambda: store.send(room="r", user_id="u", body="a", on_commit=events.append))
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(attempt, lambda: store.run_on_connection(sabotage, write=True))
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(attempt, lambda: store.send(room="r", user_id="u", body="b", on_commit=events.append))
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert outcomes == ["INTERNAL"] * 3 and events == []
    assert (await store.history(room="r")).messages == []
    assert (await send(store, room="r")).seq == 1  # the store keeps working


@sqlite_only
async def test_stats_and_rooms_count_what_was_queued_before_them_in_their_batch(store: HistoryStore) -> None:
    seen: dict[str, Any] = {}

    async def look() -> None:
        seen["stats"] = await store.stats()

    async def rooms() -> None:
        seen["rooms_list"] = await store.rooms()

    outcomes: list[Outcome] = []
    async with trio.open_nursery() as nursery:
        release = await hold_writer(nursery, store)
        nowait(store, "queued", outcomes, room="new")  # the thread is busy: one batch with the reads
        nursery.start_soon(look)
        nursery.start_soon(rooms)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert outcomes[0][1] is None and store.inline_commits == 0
    assert (seen["stats"]["rooms"], seen["stats"]["messages"]) == (1, 1)
    assert seen["rooms_list"] == ["new"]


async def test_on_commit_exception_is_logged_and_others_still_run(
    store: HistoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[int] = []

    def bad(message: ChatMessage) -> None:
        raise RuntimeError("boom")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: store.send(room="r", user_id="u", body="1", on_commit=bad))
        nursery.start_soon(
            lambda: store.send(room="r", user_id="u", body="2", on_commit=lambda m: seen.append(m.seq))
        )
    assert len(seen) == 1
    assert "on_commit callback failed" in caplog.text


async def test_cancelled_caller_does_not_cancel_the_operation(store: HistoryStore) -> None:
    seen: list[ChatMessage] = []
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.send(room="r", user_id="u", body="x", on_commit=seen.append)
    assert scope.cancelled_caught
    # A later write completes after the cancelled one (writes are applied in order; a read would
    # not wait for it on PostgreSQL, whose reads run on their own connections).
    await store.set_last_seen({"flush": "2026-01-01T00:00:00+00:00"})
    assert [m.body for m in seen] == ["x"]
    assert [m.body for m in (await store.history(room="r")).messages] == ["x"]


# --------------------------------------------------------------------------- send_nowait: inline commits

Outcome = tuple[Any, BaseException | None]


def nowait(store: HistoryStore, body: str, outcomes: list[Outcome], *, room: str = "lobby",
           announced: list[int] | None = None) -> None:
    store.send_nowait(
        room=room, user_id="ann", body=body, then=lambda result, error: outcomes.append((result, error)),
        on_commit=(lambda m: announced.append(m.seq)) if announced is not None else None,
    )


def stored_bodies(path: Path) -> list[str]:
    """What another connection (another process, say) reads from the file right now."""
    with sqlite3.connect(path) as other:
        return [row[0] for row in other.execute("SELECT body FROM messages ORDER BY seq")]


async def next_turn() -> None:
    await trio.testing.wait_all_tasks_blocked()


@sqlite_only
async def test_lone_send_nowait_is_committed_and_announced_before_it_returns(
    store: HistoryStore, tmp_path: Path
) -> None:
    await next_turn()
    outcomes: list[Outcome] = []
    announced: list[int] = []
    nowait(store, "hello", outcomes, announced=announced)
    assert announced == [1]  # on_commit, then then, both already done
    assert len(outcomes) == 1 and outcomes[0][1] is None
    message, created = outcomes[0][0]
    assert (message.seq, message.body, created) == (1, "hello", True)
    assert store.inline_commits == 1
    assert stored_bodies(tmp_path / "history.db") == ["hello"]  # committed, visible to others


@sqlite_only
async def test_sends_of_one_turn_after_the_inline_one_share_one_transaction(store: HistoryStore) -> None:
    await next_turn()
    outcomes: list[Outcome] = []
    announced: list[int] = []
    before = store.commits
    for i in range(20):
        nowait(store, f"m{i}", outcomes, announced=announced)
    assert len(outcomes) == 1  # only the first went inline; the rest wait for the writer thread
    await store.get("none")  # queued after them: they are done when it is
    assert [result[0].seq for result, _ in outcomes] == announced == list(range(1, 21))
    assert store.inline_commits == 1
    assert store.commits - before < 10  # the writer thread took the queued ones together
    await next_turn()
    nowait(store, "later", outcomes)  # the store is idle again in a later turn: inline again
    assert len(outcomes) == 21 and store.inline_commits == 2


@sqlite_only
async def test_send_nowait_queues_while_other_tasks_wait_to_run(store: HistoryStore) -> None:
    """Under load (other readers with frames to handle) messages share the thread's transactions."""
    outcomes: list[Outcome] = []
    async with trio.open_nursery() as nursery:
        await next_turn()
        for _ in range(3):
            nursery.start_soon(trio.lowlevel.checkpoint)
        assert tasks_runnable() == trio.lowlevel.current_statistics().tasks_runnable == 3
        nowait(store, "busy", outcomes)
        assert outcomes == [] and store.inline_commits == 0
    await store.get("none")
    assert outcomes[0][1] is None


@sqlite_only
async def test_send_nowait_never_overtakes_work_queued_before_it(store: HistoryStore) -> None:
    order: list[str] = []
    async with trio.open_nursery() as nursery:
        release = await hold_writer(nursery, store, on_commit=lambda _: order.append("blocker"))
        await next_turn()
        store.send_nowait(room="r", user_id="u", body="x", then=lambda result, error: order.append("send"))
        assert order == [] and store.inline_commits == 0
        release.set()
    await store.get("none")
    assert order == ["blocker", "send"]


@sqlite_only
async def test_send_nowait_waits_for_earlier_commits_to_be_announced(store: HistoryStore) -> None:
    """A batch the thread committed but whose callbacks have not run yet still goes first."""
    inside, proceed = threading.Event(), threading.Event()

    def earlier(conn: sqlite3.Connection) -> tuple[None, Any]:
        inside.set()
        proceed.wait(10)
        return None, "committed"

    order: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(store.run_on_connection, earlier, write=True,
                                   on_commit=lambda _: order.append("earlier")))
        await trio.to_thread.run_sync(inside.wait)
        await next_turn()
        proceed.set()
        while store.connection_busy:  # blocking on purpose: the loop cannot run the callbacks
            time.sleep(0.0005)  # noqa: ASYNC251
        store.send_nowait(room="r", user_id="u", body="x", on_commit=lambda _: order.append("send"),
                          then=lambda result, error: None)
        assert order == [] and store.inline_commits == 0
    await store.get("none")
    assert order == ["earlier", "send"]


@sqlite_only
async def test_send_nowait_queues_rather_than_wait_for_another_connections_write_lock(
    store: HistoryStore, tmp_path: Path
) -> None:
    other = sqlite3.connect(tmp_path / "history.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # holds the database's write lock
        await next_turn()
        outcomes: list[Outcome] = []
        started = trio.current_time()
        nowait(store, "waits", outcomes)
        assert trio.current_time() - started < 1.0  # not the 5 s busy timeout, on the event loop
        assert outcomes == [] and store.inline_commits == 0
        other.execute("COMMIT")
        await store.get("none")
        assert outcomes[0][1] is None and outcomes[0][0][0].body == "waits"
    finally:
        other.close()


@sqlite_only
async def test_the_next_turn_allows_an_inline_commit_whatever_order_its_tasks_run_in(
    store: HistoryStore
) -> None:
    # A client sending one message at a time: its reader is woken in the turn right after the
    # inline commit of its previous message, possibly before any other task of that turn runs.
    await next_turn()
    outcomes: list[Outcome] = []
    for i in range(30):
        nowait(store, f"m{i}", outcomes)
        assert len(outcomes) == i + 1 and store.inline_commits == i + 1
        await trio.lowlevel.checkpoint()  # the very next turn


@pytest.mark.parametrize(("synchronous", "inline"), [("FULL", True), ("NORMAL", False)])
async def test_fsync_per_commit_or_inline_off_never_commits_on_the_event_loop(
    tmp_path: Path, synchronous: str, inline: bool
) -> None:
    async with HistoryStore(tmp_path / "h.db", synchronous=synchronous, inline=inline) as store:
        await next_turn()
        outcomes: list[Outcome] = []
        nowait(store, "fsynced", outcomes)
        assert outcomes == []  # an fsync per commit (or a disk that may stall) is for the writer thread
        await store.get("none")
        assert store.inline_commits == 0 and outcomes[0][1] is None


async def test_inline_commits_have_the_writer_thread_checkpoint_the_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("signald.history.inline.CHECKPOINT_INLINE", 5)
    path = tmp_path / "h.db"
    async with HistoryStore(path) as store:
        size_before = path.stat().st_size
        outcomes: list[Outcome] = []
        for i in range(12):
            await store.get("none")  # through the writer thread: after any checkpoint it was asked for
            await next_turn()
            nowait(store, f"m{i}" * 500, outcomes)
        await store.get("none")
        assert store.inline_commits == 12 and store.checkpoints == 2
        assert path.stat().st_size > size_before  # pages copied from the WAL into the database


async def inline_sends(store: HistoryStore, bodies: Iterable[str], outcomes: list[Outcome]) -> None:
    """Each body sent on its own turn of an otherwise idle loop: committed inline."""
    for body in bodies:
        await next_turn()
        nowait(store, body, outcomes)


def rooms_table(path: Path) -> list[tuple[str, int, int]]:
    with sqlite3.connect(path) as other:
        return list(other.execute("SELECT room, last_seq, count FROM rooms ORDER BY room"))


async def test_inline_commits_leave_the_room_counters_to_the_writer_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("signald.history.inline.CHECKPOINT_INLINE", 5)
    path = tmp_path / "h.db"
    async with HistoryStore(path) as store:
        outcomes: list[Outcome] = []
        await inline_sends(store, ["m0", "m1", "m2"], outcomes)
        assert store.inline_commits == 3
        assert rooms_table(path) == [("lobby", 0, 0)]  # created with the first message, then left
        assert (await store.stats())["messages"] == 3  # stats first bring the table up to date
        assert rooms_table(path) == [("lobby", 3, 3)]
        await inline_sends(store, [f"m{i}" for i in range(3, 8)], outcomes)
        await store.get("none")  # after the checkpoint asked for by the 5th inline commit
        assert store.checkpoints == 1
        # as of when the thread ran it: the loop's next sends may or may not have come first (a
        # busy machine lets the thread in sooner)
        counted = rooms_table(path)
        assert counted in [[("lobby", n, n)] for n in range(5, 9)]
        await inline_sends(store, ["last"], outcomes)
        assert rooms_table(path) == counted
    assert rooms_table(path) == [("lobby", 9, 9)]  # written when the store closed
    assert [error for _, error in outcomes] == [None] * 9


async def test_counters_written_by_the_thread_go_with_a_hard_delete(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    async with HistoryStore(path) as store:
        outcomes: list[Outcome] = []
        await inline_sends(store, ["m0", "m1", "m2"], outcomes)
        last = outcomes[-1][0][0]
        await store.delete(message_id=last.id, user_id="ann", mode="hard")
        # the deleted seq 3 is gone from messages: the row must say 3 or it would be handed out again
        assert rooms_table(path) == [("lobby", 3, 2)]
        assert (await send(store)).seq == 4


# --------------------------------------------------------------------------- history paging


@pytest.fixture
async def ten(store: HistoryStore) -> HistoryStore:
    for i in range(1, 11):
        await send(store, f"m{i}")
    return store


@pytest.mark.parametrize(
    ("before", "after", "limit", "seqs", "has_more"),
    [
        (None, None, 3, [8, 9, 10], True),  # newest page
        (None, None, 10, list(range(1, 11)), False),  # exactly everything
        (None, None, 50, list(range(1, 11)), False),
        (None, None, 1, [10], True),
        (8, None, 3, [5, 6, 7], True),  # before: newest below the bound
        (4, None, 3, [1, 2, 3], False),
        (3, None, 5, [1, 2], False),
        (1, None, 5, [], False),
        (100, None, 2, [9, 10], True),
        (None, 7, 3, [8, 9, 10], False),  # after: oldest above the bound
        (None, 6, 3, [7, 8, 9], True),
        (None, 0, 2, [1, 2], True),
        (None, 10, 5, [], False),
        (9, 2, 3, [3, 4, 5], True),  # both: oldest part of the open interval
        (9, 2, 6, [3, 4, 5, 6, 7, 8], False),
        (9, 2, 50, [3, 4, 5, 6, 7, 8], False),
        (6, 5, 3, [], False),
        (3, 7, 3, [], False),
        (11, 0, 10, list(range(1, 11)), False),
    ],
)
async def test_history_paging(
    ten: HistoryStore, before: int | None, after: int | None, limit: int, seqs: list[int], has_more: bool
) -> None:
    page = await ten.history(room="lobby", before=before, after=after, limit=limit)
    assert [m.seq for m in page.messages] == seqs
    assert [m.body for m in page.messages] == [f"m{s}" for s in seqs]
    assert page.has_more is has_more


async def test_history_paging_walks_both_ways_across_hard_deleted_gaps(ten: HistoryStore) -> None:
    for message in (await ten.history(room="lobby", limit=10)).messages:
        if message.seq in (4, 5, 9):
            await ten.delete(message_id=message.id, user_id="ann", mode="hard")
    expected = [1, 2, 3, 6, 7, 8, 10]

    backwards: list[int] = []
    page = await ten.history(room="lobby", limit=2)
    while True:
        backwards = [m.seq for m in page.messages] + backwards
        if not page.has_more:
            break
        page = await ten.history(room="lobby", before=page.messages[0].seq, limit=2)
    assert backwards == expected

    forwards: list[int] = []
    after = 0
    while True:
        page = await ten.history(room="lobby", after=after, limit=3)
        forwards += [m.seq for m in page.messages]
        if not page.has_more:
            break
        after = page.messages[-1].seq
    assert forwards == expected


async def test_history_limit_and_unknown_room(ten: HistoryStore) -> None:
    await expect_error("INVALID_PAYLOAD", lambda: ten.history(room="lobby", limit=0))
    page = await ten.history(room="nowhere")
    assert (page.messages, page.has_more) == ([], False)


async def test_missed_and_rejoin(ten: HistoryStore) -> None:
    info = await ten.rejoin(user_id="bob", room="lobby", since=4, limit=3)
    assert ([m.seq for m in info.missed or ()], info.truncated) == ([5, 6, 7], True)
    info = await ten.rejoin(user_id="bob", room="lobby", since=7, limit=3)
    assert ([m.seq for m in info.missed or ()], info.truncated) == ([8, 9, 10], False)
    info = await ten.rejoin(user_id="bob", room="lobby", since=10, limit=3)
    assert (info.missed, info.truncated) == ([], False)
    info = await ten.rejoin(user_id="bob", room="lobby", since=8, limit=5)
    assert info.missed is not None and [m.seq for m in info.missed] == [9, 10]
    assert (info.truncated, info.unread) == (False, 10)
    info = await ten.rejoin(user_id="bob", room="lobby", since=None, limit=5)
    assert (info.missed, info.truncated, info.unread) == (None, None, 10)


# --------------------------------------------------------------------------- folding


async def test_edit_sets_body_and_edited_at(store: HistoryStore, clock: FakeClock) -> None:
    message = await send(store, "draft")
    clock.t += 5
    events: list[ChatMessage] = []
    edited = await store.edit(message_id=message.id, user_id="ann", new_body="final", on_commit=events.append)
    assert edited.body == "final" and edited.edited_at == "2026-11-26T12:00:05.000Z"
    assert (edited.id, edited.seq, edited.created_at) == (message.id, message.seq, message.created_at)
    assert events == [edited]
    assert (await store.history(room="lobby")).messages == [edited]


async def test_soft_delete_keeps_id_and_seq_and_empties_content(
    store: HistoryStore, clock: FakeClock
) -> None:
    message = await send(store, "secret", attachments=[Attachment(url="https://x/y")])
    await store.react(message_id=message.id, user_id="bob", reaction="+1", action="add", room="lobby")
    clock.t += 1
    events: list[Deleted] = []
    result = await store.delete(message_id=message.id, user_id="ann", mode="soft", on_commit=events.append)
    assert result == ("lobby", "2026-11-26T12:00:01.000Z", 3) and events == [result]  # rev: send, react, delete
    folded = await store.get(message.id)
    assert folded is not None
    assert (folded.id, folded.seq, folded.rev, folded.body, folded.attachments) == (message.id, 1, 3, "", [])
    assert (folded.deleted_at, folded.reactions) == ("2026-11-26T12:00:01.000Z", {})
    assert (await store.history(room="lobby")).messages == [folded]
    clock.t += 1  # deleting again is idempotent: first deleted_at, no event
    again = await store.delete(message_id=message.id, user_id="ann", mode="soft", on_commit=events.append)
    assert again == result and len(events) == 1


async def test_hard_delete_removes_message_and_reactions(store: HistoryStore) -> None:
    first = await send(store, "1")
    second = await send(store, "2")
    await store.react(message_id=second.id, user_id="bob", reaction="+1", action="add", room="lobby")
    room, deleted_at, rev = await store.delete(message_id=second.id, user_id="mod", mode="hard", moderator=True)
    assert room == "lobby" and deleted_at.endswith("Z") and rev == 4
    assert await store.get(second.id) is None
    assert (await store.history(room="lobby")).messages == [first]
    tombstone = Tombstone(id=second.id, room="lobby", seq=2, rev=4)
    assert (await store.changes(room="lobby", after_rev=1, limit=10)).changes == [tombstone]
    assert (await send(store, "3")).seq == 3  # never reused
    if isinstance(store, HistoryStore):
        with sqlite3.connect(store.path) as conn:
            assert conn.execute("SELECT count(*) FROM reactions").fetchone()[0] == 0


async def test_redact_replaces_body_and_sets_flag(store: HistoryStore) -> None:
    message = await send(store, "rude", attachments=[Attachment(url="https://x/y")])
    redacted = await store.redact(message_id=message.id, mask="[redacted]")
    assert (redacted.body, redacted.redacted, redacted.attachments) == ("[redacted]", True, [])
    assert (await store.history(room="lobby")).messages == [redacted]


async def test_reactions_fold_in_order_and_are_idempotent(store: HistoryStore) -> None:
    message = await send(store)
    events: list[bool] = []

    async def react(user: str, reaction: str, action: Any = "add") -> bool:
        return await store.react(
            message_id=message.id, user_id=user, reaction=reaction, action=action, room="lobby",
            on_commit=events.append,
        )

    assert await react("bob", "+1")
    assert await react("cy", "heart")
    assert await react("ann", "+1")
    assert not await react("bob", "+1")  # already there
    assert not await react("dee", "+1", "remove")  # nothing to remove
    assert len(events) == 3
    folded = await store.get(message.id)
    assert folded is not None and folded.reactions == {"+1": ["bob", "ann"], "heart": ["cy"]}
    assert list(folded.reactions) == ["+1", "heart"]
    assert await react("bob", "+1", "remove")
    assert await react("cy", "heart", "remove")
    assert await react("bob", "+1")
    folded = await store.get(message.id)
    assert folded is not None and folded.reactions == {"+1": ["ann", "bob"]}


async def test_idempotent_retry_returns_original_without_event(store: HistoryStore) -> None:
    events: list[ChatMessage] = []
    first, created = await store.send(room="lobby", user_id="ann", body="x", client_msg_id="c1",
                                      on_commit=events.append)
    assert created
    again, created = await store.send(room="lobby", user_id="ann", body="different", client_msg_id="c1",
                                      on_commit=events.append)
    assert (again, created) == (first, False) and events == [first]
    other_room, created = await store.send(room="kitchen", user_id="ann", body="x", client_msg_id="c1")
    assert created and other_room.id != first.id
    other_user, created = await store.send(room="lobby", user_id="bob", body="x", client_msg_id="c1")
    assert created and other_user.seq == 2
    await store.react(message_id=first.id, user_id="bob", reaction="+1", action="add", room="lobby")
    folded, created = await store.send(room="lobby", user_id="ann", body="x", client_msg_id="c1")
    assert not created and folded.reactions == {"+1": ["bob"]}
    await store.delete(message_id=first.id, user_id="ann", mode="hard")
    await expect_error(
        "CONFLICT", lambda: store.send(room="lobby", user_id="ann", body="x", client_msg_id="c1")
    )
    assert (await send(store, "next")).seq == 3


# --------------------------------------------------------------------------- permissions and errors


async def test_permission_and_not_found_errors(store: HistoryStore) -> None:
    message = await send(store, "mine")
    kitchen = await send(store, "food", room="kitchen")
    await expect_error("FORBIDDEN", lambda: store.edit(message_id=message.id, user_id="bob", new_body="x"))
    await expect_error("NOT_FOUND", lambda: store.edit(message_id="nope", user_id="ann", new_body="x"))
    await expect_error("FORBIDDEN", lambda: store.delete(message_id=message.id, user_id="bob", mode="soft"))
    await expect_error("FORBIDDEN", lambda: store.delete(message_id=message.id, user_id="bob", mode="hard"))
    await expect_error("NOT_FOUND", lambda: store.delete(message_id="nope", user_id="ann", mode="soft"))
    await expect_error("NOT_FOUND", lambda: store.redact(message_id="nope", mask="x"))
    await expect_error("NOT_FOUND", lambda: store.react(
        message_id=kitchen.id, user_id="ann", reaction="+1", action="add", room="lobby"))
    await expect_error("NOT_FOUND", lambda: store.react(
        message_id="nope", user_id="ann", reaction="+1", action="add", room="lobby"))
    await expect_error("NOT_FOUND", lambda: store.mark_read(user_id="ann", room="lobby",
                                                            message_id=kitchen.id))
    for parent in (kitchen.id, "nope"):
        await expect_error("NOT_FOUND", lambda p=parent: store.send(  # type: ignore[misc]
            room="lobby", user_id="ann", body="re", parent_id=p))
    # nothing above changed anything
    assert await store.get(message.id) == message
    assert (await send(store, "next")).seq == 2


async def test_redacted_and_deleted_messages_conflict(store: HistoryStore) -> None:
    redacted = await send(store, "a")
    await store.redact(message_id=redacted.id, mask="[x]")
    await expect_error("CONFLICT", lambda: store.edit(message_id=redacted.id, user_id="ann", new_body="b"))
    deleted = await send(store, "b")
    await store.delete(message_id=deleted.id, user_id="mod", mode="soft", moderator=True)
    await expect_error("CONFLICT", lambda: store.edit(message_id=deleted.id, user_id="ann", new_body="c"))
    await expect_error("CONFLICT", lambda: store.redact(message_id=deleted.id, mask="[x]"))
    await expect_error("CONFLICT", lambda: store.react(
        message_id=deleted.id, user_id="ann", reaction="+1", action="add", room="lobby"))
    assert not await store.react(
        message_id=deleted.id, user_id="ann", reaction="+1", action="remove", room="lobby"
    )
    reply = await send(store, "reply to a tombstone", parent_id=deleted.id)
    assert reply.parent_id == deleted.id
    gone = await send(store, "c")
    await store.delete(message_id=gone.id, user_id="ann", mode="hard")
    await expect_error("NOT_FOUND", lambda: store.edit(message_id=gone.id, user_id="ann", new_body="d"))
    await expect_error("NOT_FOUND", lambda: store.delete(message_id=gone.id, user_id="ann", mode="soft"))


# --------------------------------------------------------------------------- read receipts, presence


async def test_unread_and_mark_read_never_moves_backwards(store: HistoryStore) -> None:
    messages = [await send(store, f"m{i}") for i in range(1, 6)]
    assert await store.unread(user_id="bob", room="lobby") == 5
    assert await store.last_read(user_id="bob", room="lobby") is None
    assert await store.mark_read(user_id="bob", room="lobby", message_id=messages[2].id)
    assert await store.unread(user_id="bob", room="lobby") == 2
    assert not await store.mark_read(user_id="bob", room="lobby", message_id=messages[0].id)
    assert not await store.mark_read(user_id="bob", room="lobby", message_id=messages[2].id)
    assert await store.last_read(user_id="bob", room="lobby") == 3
    assert await store.unread(user_id="bob", room="lobby") == 2
    await store.delete(message_id=messages[4].id, user_id="ann", mode="soft")
    assert await store.unread(user_id="bob", room="lobby") == 1
    await store.delete(message_id=messages[3].id, user_id="ann", mode="hard")
    assert await store.unread(user_id="bob", room="lobby") == 0
    assert await store.unread(user_id="ann", room="lobby") == 3  # never read: all not-deleted
    assert await store.unread(user_id="bob", room="kitchen") == 0


async def test_last_seen(store: HistoryStore) -> None:
    assert await store.last_seen(["ann"]) == {}
    await store.set_last_seen({"ann": "2026-11-26T12:00:00.000Z", "bob": "2026-11-26T12:01:00.000Z"})
    await store.set_last_seen({"ann": "2026-11-26T13:00:00.000Z"})
    await store.set_last_seen({})
    assert await store.last_seen(["ann", "bob", "cy"]) == {
        "ann": "2026-11-26T13:00:00.000Z", "bob": "2026-11-26T12:01:00.000Z"
    }
    many = {f"u{i}": "2026-11-26T12:00:00.000Z" for i in range(1200)}
    await store.set_last_seen(many)
    assert await store.last_seen(list(many)) == many


# --------------------------------------------------------------------------- lifecycle


async def test_data_survives_close_and_reopen(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "h.db"
    async with HistoryStore(path, clock=clock) as store:
        first = await send(store, "1", client_msg_id="c")
        second = await send(store, "2")
        await store.delete(message_id=second.id, user_id="ann", mode="hard")
        await store.react(message_id=first.id, user_id="bob", reaction="+1", action="add", room="lobby")
        await store.mark_read(user_id="bob", room="lobby", message_id=first.id)
        await store.set_last_seen({"bob": "t"})
        expected = await store.get(first.id)
    assert path.exists()
    async with HistoryStore(path, clock=clock) as store:
        assert await store.get(first.id) == expected
        assert (await store.history(room="lobby")).messages == [expected]
        assert await store.last_read(user_id="bob", room="lobby") == 1
        assert await store.last_seen(["bob"]) == {"bob": "t"}
        retry = await store.send(room="lobby", user_id="ann", body="1", client_msg_id="c")
        assert retry == (expected, False)
        assert (await send(store, "3")).seq == 3


async def test_aclose_finishes_queued_work_then_refuses(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.db")
    await store.open()
    results: list[ChatMessage] = []

    async def one(n: int) -> None:
        results.append(await send(store, f"m{n}"))

    async with trio.open_nursery() as nursery:
        for n in range(20):
            nursery.start_soon(one, n)
        await trio.testing.wait_all_tasks_blocked()
        await store.aclose()
    assert len(results) == 20
    await expect_error("INTERNAL", lambda: store.send(room="lobby", user_id="ann", body="late"))
    with pytest.raises(StorageError):
        await store.get("x")
    await store.aclose()  # idempotent
    async with HistoryStore(tmp_path / "h.db") as again:
        assert (await again.stats())["messages"] == 20


async def test_memory_store_stats_and_export(clock: FakeClock) -> None:
    async with HistoryStore(":memory:", clock=clock) as store:
        for room in ("b", "a"):
            for i in range(3):
                await send(store, f"{room}{i}", room=room)
        stats = await store.stats()
        assert (stats["rooms"], stats["messages"], stats["db_bytes"]) == (2, 6, 0)
        assert stats["schema_version"] == SCHEMA_VERSION
        assert await store.rooms() == ["a", "b"]
        assert [m.body async for m in export(store, batch=2)] == ["a0", "a1", "a2", "b0", "b1", "b2"]
        assert [m.seq async for m in export(store, "b", batch=1)] == [1, 2, 3]
        assert [m async for m in export(store, "none")] == []


async def test_file_store_reports_db_bytes(store: HistoryStore) -> None:
    await send(store)
    stats = await store.stats()
    assert stats["db_bytes"] == store.db_bytes() > 0
    assert stats["synchronous"] == ("NORMAL" if isinstance(store, HistoryStore) else "on")


async def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        await HistoryStore(tmp_path / "missing-dir" / "h.db").open()
    with pytest.raises(ValueError):
        HistoryStore(tmp_path / "h.db", synchronous="SOMETIMES")
    store = HistoryStore(tmp_path / "h.db")
    await expect_error("INTERNAL", lambda: store.get("x"))  # not opened yet


KILL_9_LOOPS = {
    "awaited": (  # each send through the writer thread
        "        for i in range(1_000_000):\n"
        "            m, _ = await store.send(room='r', user_id='u', body=f'm{i}')\n"
        "            print(m.seq, store.inline_commits, flush=True)\n"
    ),
    "inline": (  # one send at a time on an idle store: committed in the Trio thread
        "        def then(result, error):\n"
        "            print(result[0].seq, store.inline_commits, flush=True)\n"
        "        for i in range(1_000_000):\n"
        "            store.send_nowait(room='r', user_id='u', body=f'm{i}', then=then)\n"
        "            await trio.sleep(0.0005)\n"
    ),
}


@pytest.mark.parametrize("how", sorted(KILL_9_LOOPS))
def test_acked_sends_survive_kill_9(tmp_path: Path, how: str) -> None:
    path = tmp_path / "h.db"
    script = (
        "import sys, trio\n"
        "from signald.history.store import HistoryStore\n"
        "async def main(path):\n"
        "    async with HistoryStore(path) as store:\n"
        f"{KILL_9_LOOPS[how]}"
        "trio.run(main, sys.argv[1])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    watchdog = threading.Timer(60, proc.kill)  # never hang the suite on a stuck child
    watchdog.start()
    try:
        lines = [proc.stdout.readline().split() for _ in range(300)]
    finally:
        watchdog.cancel()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    # Read the rest through the same text stream: readline() may have buffered lines past the 300th,
    # which communicate() (it reads the raw pipe) would skip.
    rest = proc.stdout.read()
    lines += [line.split() for line in rest.splitlines() if line]
    acked = [int(seq) for seq, _ in lines]
    inline = int(lines[-1][1])
    assert inline > len(lines) // 2 if how == "inline" else inline == 0
    assert proc.returncode == -signal.SIGKILL
    assert (path.parent / "h.db-wal").exists()  # killed before any clean close

    async def check() -> None:
        async with HistoryStore(path) as store:
            stored = [m.seq async for m in export(store, "r")]
            assert stored[: len(acked)] == acked == list(range(1, len(acked) + 1))
            # the room's counters, mostly never written before the kill, are rebuilt on open
            assert (await store.stats())["messages"] == len(stored)
            assert (await send(store, room="r")).seq == stored[-1] + 1

    trio.run(check)


# --------------------------------------------------------------------------- migrations


def _seed_v1(conn: sqlite3.Connection, rooms: str = "('lobby', 3, 2)") -> None:
    conn.executescript(
        f"INSERT INTO rooms VALUES {rooms};"
        """
        INSERT INTO messages (id, room, seq, user_id, body, attachments, parent_id, created_at, created_ts,
                              edited_at, deleted_at, redacted)
        VALUES ('m1', 'lobby', 1, 'ann', 'hello', '[{"url":"https://x/a"}]', NULL,
                '2026-11-26T12:00:00.000Z', 1795694400.0, '2026-11-26T12:00:01.000Z', NULL, 0),
               ('m3', 'lobby', 3, 'bob', '', '[]', 'm1', '2026-11-26T12:00:02.000Z', 1795694402.0,
                NULL, '2026-11-26T12:00:03.000Z', 0);
        INSERT INTO reactions VALUES ('lobby', 1, '+1', 'bob'), ('lobby', 1, '+1', 'ann');
        INSERT INTO read_receipts VALUES ('bob', 'lobby', 1);
        INSERT INTO last_seen VALUES ('bob', '2026-11-26T12:05:00.000Z');
        INSERT INTO client_msgs VALUES ('ann', 'lobby', 'c1', 'm1');
        """
    )


async def _check_v0(store: HistoryStore) -> None:
    assert (await store.stats())["messages"] == 0
    assert (await send(store, "first")).seq == 1


async def _check_v1(store: HistoryStore) -> None:
    page = await store.history(room="lobby")
    assert [(m.id, m.seq) for m in page.messages] == [("m1", 1), ("m3", 3)]
    m1, m3 = page.messages
    assert (m1.body, m1.attachments, m1.edited_at) == ("hello", [Attachment(url="https://x/a")],
                                                       "2026-11-26T12:00:01.000Z")
    assert m1.reactions == {"+1": ["bob", "ann"]}
    assert (m3.parent_id, m3.deleted_at) == ("m1", "2026-11-26T12:00:03.000Z")
    assert await store.unread(user_id="bob", room="lobby") == 0
    assert await store.last_seen(["bob"]) == {"bob": "2026-11-26T12:05:00.000Z"}
    assert await store.send(room="lobby", user_id="ann", body="x", client_msg_id="c1") == (m1, False)
    assert (await store.stats())["messages"] == 2
    assert (await send(store, "next")).seq == 4
    assert (await store.stats())["messages"] == 3


def _seed_v2(conn: sqlite3.Connection) -> None:
    # As v1, but the room's counters were not written since seq 1 (killed before the thread wrote
    # them): opening the store must count message 3 and never hand out seq 3 again.
    _seed_v1(conn, rooms="('lobby', 1, 1)")


async def _check_v1_revisions(store: HistoryStore) -> None:
    # Existing messages got rev = seq; a message went before revisions existed (seq 2), so a resume
    # from below the migration's revision cannot be exact; from it, it is.
    assert [(m.id, m.rev) for m in (await store.history(room="lobby")).messages] == [("m1", 1), ("m3", 3)]
    assert await store.changes(room="lobby", after_rev=1, limit=10) == ChangesPage([], 3, False, True)
    assert await store.changes(room="lobby", after_rev=3, limit=10) == ChangesPage([], 3, False)
    await _check_v1(store)
    latest = await store.changes(room="lobby", after_rev=3, limit=10)
    assert [(c.seq, c.rev) for c in latest.changes] == [(4, 4)] and latest.rev == 4


async def _check_v2_revisions(store: HistoryStore) -> None:
    # Killed before the counters were written: the revision is rebuilt from the messages too.
    assert (await store.changes(room="lobby", after_rev=0, limit=10)).rev == 3
    await _check_v1(store)
    assert (await send(store, "after")).rev == 5


def _seed_v3(conn: sqlite3.Connection) -> None:
    # m1 (seq 1) edited at rev 4, m2 (seq 2) hard-deleted at rev 5, m3 (seq 3) unchanged since rev 3.
    conn.executescript(
        """
        INSERT INTO rooms VALUES ('lobby', 3, 2, 5, 0);
        INSERT INTO messages (id, room, seq, rev, user_id, body, attachments, parent_id, created_at,
                              created_ts, edited_at, deleted_at, redacted)
        VALUES ('m1', 'lobby', 1, 4, 'ann', 'hello', '[]', NULL, '2026-11-26T12:00:00.000Z', 1795694400.0,
                '2026-11-26T12:00:05.000Z', NULL, 0),
               ('m3', 'lobby', 3, 3, 'bob', 'hi', '[]', NULL, '2026-11-26T12:00:02.000Z', 1795694402.0,
                NULL, NULL, 0);
        INSERT INTO tombstones VALUES ('lobby', 5, 'm2', 2, 1795694401.0);
        """
    )


async def _check_v3(store: HistoryStore) -> None:
    page = await store.changes(room="lobby", after_rev=0, limit=10)
    assert [(c.id, c.rev, isinstance(c, Tombstone)) for c in page.changes] == [
        ("m3", 3, False), ("m1", 4, False), ("m2", 5, True)]
    assert page.rev == 5
    assert ((await send(store, "next")).seq, (await send(store, "again")).rev) == (4, 7)


# SEEDERS[k] fills a database at schema version k with representative data; CHECKS[k] verifies it
# through the store after migrating to the current version. Adding a migration means adding both.
SEEDERS: dict[int, Callable[[sqlite3.Connection], None]] = {
    0: lambda conn: None, 1: _seed_v1, 2: _seed_v2, 3: _seed_v3}
CHECKS: dict[int, Callable[[HistoryStore], Any]] = {
    0: _check_v0, 1: _check_v1_revisions, 2: _check_v2_revisions, 3: _check_v3}


def test_every_schema_version_has_seed_data() -> None:
    assert set(SEEDERS) == set(CHECKS) == set(range(SCHEMA_VERSION + 1))
    assert len(MIGRATIONS) == SCHEMA_VERSION


def _schema(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as conn:
        return sorted(conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL"))


@pytest.mark.parametrize("version", range(SCHEMA_VERSION + 1))
async def test_migrates_from_every_version(tmp_path: Path, version: int) -> None:
    fresh = tmp_path / "fresh.db"
    async with HistoryStore(fresh):
        pass
    path = tmp_path / f"v{version}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, version) == (0, version)
    SEEDERS[version](conn)
    conn.close()
    async with HistoryStore(path) as store:
        await CHECKS[version](store)
    with sqlite3.connect(path) as conn:
        assert user_version(conn) == SCHEMA_VERSION
    assert _schema(path) == _schema(fresh)


RELEASED_DB = Path(__file__).parents[2] / "data" / "signald-0868df2.db"
"""A database written by signald at commit 0868df2 (schema 2, before revisions) through its own store."""


async def test_a_database_of_the_release_before_revisions_opens_with_revisions_in_seq_order(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    shutil.copy(RELEASED_DB, path)
    async with HistoryStore(path) as store:
        page = (await store.history(room="lobby")).messages
        assert [(m.seq, m.rev) for m in page] == [(seq, seq) for seq in (1, 2, 3, 4, 6, 7, 8)]  # 5: hard-deleted
        assert [m.body for m in page] == ["m0 edited", "m1", "", "m3", "[redacted]", "m6", "m7"]
        assert page[1].reactions == {"+1": ["ann", "bob"]} and page[3].attachments == [Attachment(url="https://x/a")]
        assert await store.unread(user_id="bob", room="lobby") == 3
        # a message went without a tombstone before revisions existed: only a resume from the
        # migration's revision on is exact; the other room lost nothing
        assert await store.changes(room="lobby", after_rev=0, limit=50) == ChangesPage([], 8, False, True)
        assert await store.changes(room="lobby", after_rev=8, limit=50) == ChangesPage([], 8, False)
        dev = (await store.history(room="dev")).messages
        assert (await store.changes(room="dev", after_rev=0, limit=50)).changes == [*dev]
        edited = await store.edit(message_id=page[6].id, user_id="bob", new_body="after the upgrade")
        assert edited.rev == 9
        assert (await store.changes(room="lobby", after_rev=8, limit=50)).changes == [edited]
        assert await store.send(room="lobby", user_id="bob", body="m1", client_msg_id="c1") == (page[1], False)
        assert (await send(store, "new")).rev == 10


async def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaError):
        await HistoryStore(path).open()


# --------------------------------------------------------------------------- retention


@pytest.mark.parametrize("backend", BACKENDS)
async def test_retention_by_age(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> None:
    async with open_store(backend, request, tmp_path / "h.db", clock, retention_max_age_s=50,
                          retention_interval_s=3600) as store:
        old = [await send(store, f"old{i}", client_msg_id=f"c{i}") for i in range(5)]
        await store.react(message_id=old[0].id, user_id="bob", reaction="+1", action="add", room="lobby")
        clock.t += 100
        new = [await send(store, f"new{i}") for i in range(5)]
        clock.t += 20
        await store.run_retention()  # (the writer thread, idle, may have run it already)
        assert (await store.history(room="lobby")).messages == new
        assert (await store.stats())["messages"] == 5
        assert await store.run_retention() == 0
        # the idempotency key went with the message; seq is never reused
        again, created = await store.send(room="lobby", user_id="ann", body="old0", client_msg_id="c0")
        assert created and again.seq == 11
    if backend == "sqlite":
        with sqlite3.connect(tmp_path / "h.db") as conn:
            assert conn.execute("SELECT count(*) FROM reactions").fetchone()[0] == 0


@pytest.mark.parametrize("backend", BACKENDS)
async def test_retention_by_age_goes_room_by_room_in_seq_order(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> None:
    async with open_store(backend, request, tmp_path / "h.db", clock, retention_max_age_s=50,
                          retention_interval_s=3600) as store:
        for room in ("a", "c"):
            await send(store, "old", room=room)
        clock.t += 100
        for room in ("b", "c"):
            await send(store, "new", room=room)
        clock.t -= 90  # the wall clock steps back: this one is "older" than c's new message
        await send(store, "stepped back", room="c")
        clock.t += 90
        await store.run_retention()  # (the writer thread, idle, may have run it already)
        assert await store.rooms() == ["b", "c"]
        # c's last message is expired by its timestamp but waits behind the newer-stamped seq 2
        assert [m.body for m in (await store.history(room="c")).messages] == ["new", "stepped back"]
        assert (await store.stats())["messages"] == 3


@pytest.mark.parametrize("backend", BACKENDS)
async def test_retention_by_count_in_batches(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> None:
    async with open_store(backend, request, tmp_path / "h.db", clock, retention_max_count=100,
                          retention_interval_s=3600) as store:
        async def sender(n: int) -> None:
            for _ in range(120):
                await send(store, f"{n}")

        async with trio.open_nursery() as nursery:
            for n in range(10):
                nursery.start_soon(sender, n)
        for i in range(3):
            await send(store, f"k{i}", room="kitchen")
        await store.run_retention()  # whatever the writer thread has not removed by itself yet
        page = await store.history(room="lobby", limit=1000)
        assert [m.seq for m in page.messages] == list(range(1101, 1201))
        assert len((await store.history(room="kitchen")).messages) == 3
        assert (await store.stats())["messages"] == 103


@pytest.mark.parametrize("backend", BACKENDS)
async def test_age_retention_takes_tombstones_of_that_age_and_resets_resumes_from_below(
    backend: str, request: pytest.FixtureRequest,
    tmp_path: Path, clock: FakeClock
) -> None:
    async with open_store(backend, request, tmp_path / "h.db", clock, retention_max_age_s=50,
                          retention_interval_s=3600) as store:
        old = [await send(store, f"old{i}") for i in range(3)]  # revs 1-3
        await store.delete(message_id=old[1].id, user_id="ann", mode="hard")  # rev 4: a tombstone
        assert [c.rev for c in (await store.changes(room="lobby", after_rev=3, limit=10)).changes] == [4]
        clock.t += 100
        new = await send(store, "new")  # rev 5 (once the clock moved, the idle writer thread may run retention)
        await store.run_retention()  # (the writer thread, idle, may have run it already)
        # what retention removed went up to rev 4: a resume from below it is no longer exact
        assert await store.changes(room="lobby", after_rev=3, limit=10) == ChangesPage([], 5, False, True)
        assert await store.changes(room="lobby", after_rev=4, limit=10) == ChangesPage([new], 5, False)
        rejoin = await store.rejoin(user_id="bob", room="lobby", since=None, since_rev=0, limit=10)
        assert (rejoin.changes_reset, rejoin.changes, rejoin.rev) == (True, None, 5)
    if backend == "sqlite":
        with sqlite3.connect(tmp_path / "h.db") as conn:
            assert conn.execute("SELECT count(*) FROM tombstones").fetchone() == (0,)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_count_retention_takes_the_tombstones_below_the_oldest_message_it_keeps(
    backend: str, request: pytest.FixtureRequest,
    tmp_path: Path, clock: FakeClock
) -> None:
    async with open_store(backend, request, tmp_path / "h.db", clock, retention_max_count=3,
                          retention_interval_s=3600) as store:
        first = await send(store, "1")
        await store.delete(message_id=first.id, user_id="ann", mode="hard")  # rev 2, seq 1
        kept = [await send(store, f"{i}") for i in range(2, 6)]  # seqs 2-5, revs 3-6
        await store.run_retention()  # (or the writer thread did it already): seq 2 and the tombstone go
        assert await store.changes(room="lobby", after_rev=3, limit=10) == ChangesPage(kept[1:], 6, False)
        assert (await store.changes(room="lobby", after_rev=2, limit=10)).changes_reset
    if backend == "sqlite":
        with sqlite3.connect(tmp_path / "h.db") as conn:
            assert conn.execute("SELECT count(*) FROM tombstones").fetchone() == (0,)


def test_retention_removes_at_most_one_batch_per_step(tmp_path: Path, clock: FakeClock) -> None:
    retention = Retention(Transactions(clock), max_age_s=1000, max_count=100, interval_s=10.0)
    conn = sqlite3.connect(tmp_path / "h.db", isolation_level=None)
    migrate(conn)
    rows = [(f"id{i}", "lobby", i, "ann", "x", "t", T0 - 2000 * (i <= 600)) for i in range(1, 1201)]
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO messages (id, room, seq, user_id, body, created_at, created_ts, attachments)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, '[]')", rows,
    )
    conn.execute("INSERT INTO rooms VALUES ('lobby', 1200, 1200, 1200, 0)")
    conn.execute("COMMIT")
    steps = []
    while True:  # as the writer thread does it: one transaction per step, counters written with it
        steps.append(retention.step(conn))
        if not retention.due:
            break
    assert steps == [RETENTION_BATCH, 500, 100] and RETENTION_BATCH == 500  # age 600, then count 500
    assert conn.execute("SELECT min(seq), max(seq), count(*) FROM messages").fetchone() == (1101, 1200, 100)
    assert conn.execute("SELECT count FROM rooms").fetchone() == (100,)
    conn.close()


async def messages_drop_to(store: HistoryStore, count: int) -> None:
    for _ in range(500):
        if (await store.stats())["messages"] <= count:
            return
        await trio.sleep(0.01)
    raise AssertionError(f"retention did not bring the store down to {count} messages")


async def test_retention_runs_by_itself(tmp_path: Path, clock: FakeClock) -> None:
    async with HistoryStore(tmp_path / "h.db", clock=clock, retention_max_count=2, retention_max_age_s=60,
                          retention_interval_s=0.02) as store:
        for i in range(5):
            await send(store, f"m{i}")
        await messages_drop_to(store, 2)
        assert [m.seq for m in (await store.history(room="lobby")).messages] == [4, 5]
        clock.t += 61
        await messages_drop_to(store, 0)


# --------------------------------------------------------------------------- model-based


@dataclass
class ModelMessage:
    id: str
    room: str
    seq: int
    user_id: str
    body: str
    attachments: list[Attachment]
    parent_id: str | None
    created_at: str
    edited_at: str | None = None
    deleted_at: str | None = None
    redacted: bool = False
    reactions: dict[str, list[str]] = field(default_factory=dict)
    rev: int = 0

    def folded(self) -> ChatMessage:
        return ChatMessage(
            id=self.id, room=self.room, seq=self.seq, rev=self.rev, user_id=self.user_id, body=self.body,
            attachments=list(self.attachments), parent_id=self.parent_id, created_at=self.created_at,
            edited_at=self.edited_at, deleted_at=self.deleted_at, redacted=self.redacted,
            reactions={k: list(v) for k, v in self.reactions.items()},
        )


USERS = ["ann", "bob", "cy"]
ROOMS = ["r1", "r2"]
_ix = st.integers(0, 40)
_user = st.sampled_from(USERS)
_room = st.sampled_from(ROOMS)
OPS = st.one_of(
    st.tuples(st.just("send"), _user, _room, st.text(max_size=4), st.booleans(), st.none() | _ix,
              st.none() | st.sampled_from(["c1", "c2"])),
    st.tuples(st.just("edit"), _ix, _user, st.text(max_size=4)),
    st.tuples(st.just("delete"), _ix, _user, st.sampled_from(["soft", "hard"]), st.booleans()),
    st.tuples(st.just("react"), _ix, _user, st.sampled_from(["+1", "ok"]), st.sampled_from(["add", "remove"]),
              _room),
    st.tuples(st.just("redact"), _ix, st.sampled_from(["[x]", "***"])),
    st.tuples(st.just("read"), _ix, _user, _room),
)


class Model:
    def __init__(self) -> None:
        self.messages: dict[str, ModelMessage] = {}
        self.counters: dict[str, int] = {}
        self.keys: dict[tuple[str, str, str], str] = {}
        self.reads: dict[tuple[str, str], int] = {}
        self.revs: dict[str, int] = {}
        self.tombstones: list[Tombstone] = []

    def next_rev(self, room: str) -> int:
        rev = self.revs[room] = self.revs.get(room, 0) + 1
        return rev

    def changes(self, room: str, after_rev: int) -> list[Change]:
        """What ``changes`` must answer: the room's messages and tombstones above ``after_rev``."""
        found: list[Change] = [m.folded() for m in self.messages.values() if m.room == room and m.rev > after_rev]
        found += [t for t in self.tombstones if t.room == room and t.rev > after_rev]
        return sorted(found, key=lambda change: change.rev)

    def find(self, message_id: str, room: str | None = None) -> ModelMessage:
        message = self.messages.get(message_id)
        if message is None or (room is not None and message.room != room):
            raise SignalError("NOT_FOUND", message_id)
        return message


async def _apply(store: HistoryStore, model: Model, ids: list[str], op: tuple[Any, ...], now: str) -> None:
    """Apply ``op`` to the store and the model; results, error codes and events must agree."""
    events: list[Any] = []
    name = op[0]

    def pick(ix: int) -> str:
        return ids[ix % len(ids)] if ids else "missing"

    def expect(fn: Callable[[], Any]) -> tuple[Any, str | None, bool]:
        try:
            return fn(), None, True
        except SignalError as exc:
            return None, exc.code, False

    async def real(fn: Callable[[], Any]) -> tuple[Any, str | None]:
        try:
            return await fn(), None
        except SignalError as exc:
            return None, exc.code

    if name == "send":
        _, user, room, body, with_file, parent_ix, key = op
        files = [Attachment(url="https://x/f")] if with_file else []
        parent = None if parent_ix is None else pick(parent_ix)
        got, code = await real(lambda: store.send(
            room=room, user_id=user, body=body, attachments=files, parent_id=parent, client_msg_id=key,
            on_commit=events.append,
        ))

        def model_send() -> Any:
            if "\x00" in body:  # stored text never holds NUL: PostgreSQL cannot store it
                raise SignalError("INVALID_PAYLOAD", "NUL")
            if key is not None and (user, room, key) in model.keys:
                original = model.messages.get(model.keys[user, room, key])
                if original is None:
                    raise SignalError("CONFLICT", "deleted")
                return original.folded(), False
            if parent is not None:
                model.find(parent, room)
            assert got is not None, code
            seq = model.counters[room] = model.counters.get(room, 0) + 1
            message = ModelMessage(got[0].id, room, seq, user, body, files, parent, now, rev=model.next_rev(room))
            model.messages[message.id] = message
            ids.append(message.id)
            if key is not None:
                model.keys[user, room, key] = message.id
            return message.folded(), True

        want, want_code, _ = expect(model_send)
        fires = want is not None and want[1]
    elif name == "edit":
        _, ix, user, body = op
        target = pick(ix)
        got, code = await real(lambda: store.edit(message_id=target, user_id=user, new_body=body,
                                                  on_commit=events.append))

        def model_edit() -> ChatMessage:
            if "\x00" in body:
                raise SignalError("INVALID_PAYLOAD", "NUL")
            message = model.find(target)
            if message.user_id != user:
                raise SignalError("FORBIDDEN", "x")
            if message.deleted_at is not None or message.redacted:
                raise SignalError("CONFLICT", "x")
            message.body, message.edited_at, message.rev = body, now, model.next_rev(message.room)
            return message.folded()

        want, want_code, fires = expect(model_edit)
    elif name == "delete":
        _, ix, user, mode, moderator = op
        target = pick(ix)
        got, code = await real(lambda: store.delete(message_id=target, user_id=user, mode=mode,
                                                    moderator=moderator, on_commit=events.append))
        fires = True

        def model_delete() -> tuple[str, str, int]:
            nonlocal fires
            message = model.find(target)
            if message.user_id != user and not moderator:
                raise SignalError("FORBIDDEN", "x")
            if mode == "hard":
                del model.messages[target]
                rev = model.next_rev(message.room)
                model.tombstones.append(Tombstone(id=message.id, room=message.room, seq=message.seq, rev=rev))
                return message.room, now, rev
            if message.deleted_at is not None:
                fires = False
                return message.room, message.deleted_at, message.rev
            message.body, message.attachments, message.reactions, message.deleted_at = "", [], {}, now
            message.rev = model.next_rev(message.room)
            return message.room, now, message.rev

        want, want_code, ok = expect(model_delete)
        fires = fires and ok
    elif name == "react":
        _, ix, user, reaction, action, room = op
        target = pick(ix)
        got, code = await real(lambda: store.react(message_id=target, user_id=user, reaction=reaction,
                                                   action=action, room=room, on_commit=events.append))

        def model_react() -> int | None:
            message = model.find(target, room)
            users = message.reactions.get(reaction, [])
            if action == "add":
                if message.deleted_at is not None:
                    raise SignalError("CONFLICT", "x")
                if user in users:
                    return None
                message.reactions[reaction] = [*users, user]
            else:
                if user not in users:
                    return None
                users.remove(user)
                if not users:
                    del message.reactions[reaction]
            message.rev = model.next_rev(room)
            return message.rev

        want, want_code, _ = expect(model_react)
        fires = want is not None
    elif name == "redact":
        _, ix, mask = op
        target = pick(ix)
        got, code = await real(lambda: store.redact(message_id=target, mask=mask, on_commit=events.append))

        def model_redact() -> ChatMessage:
            message = model.find(target)
            if message.deleted_at is not None:
                raise SignalError("CONFLICT", "x")
            message.body, message.attachments, message.redacted = mask, [], True
            message.rev = model.next_rev(message.room)
            return message.folded()

        want, want_code, fires = expect(model_redact)
    else:
        _, ix, user, room = op
        target = pick(ix)
        got, code = await real(lambda: store.mark_read(user_id=user, room=room, message_id=target))

        def model_read() -> bool:
            message = model.find(target, room)
            old = model.reads.get((user, room), 0)
            model.reads[user, room] = max(old, message.seq)
            return message.seq > old

        want, want_code, _ = expect(model_read)
        fires = False
    assert (got, code) == (want, want_code), op
    assert len(events) == (1 if fires else 0), op


def _empty_postgres(url: str) -> Callable[[FakeClock], PostgresStore]:
    """A store on ``url`` whose tables are emptied first (one database for every example)."""
    import psycopg

    def make(clock: FakeClock) -> PostgresStore:
        with psycopg.connect(url, autocommit=True) as conn:
            if conn.execute("SELECT to_regclass('signald.messages')").fetchone() != (None,):
                conn.execute("TRUNCATE signald.rooms, signald.messages, signald.tombstones, signald.reactions,"
                             " signald.read_receipts, signald.last_seen, signald.client_msgs")
        return PostgresStore(url, clock=clock)

    return make


@pytest.fixture(params=BACKENDS)
def model_store(request: pytest.FixtureRequest) -> Callable[[FakeClock], Any]:
    """Makes an empty store for each hypothesis example."""
    if request.param == "postgres":
        return _empty_postgres(request.getfixturevalue("postgres_url"))
    tmp = request.getfixturevalue("tmp_path")
    paths = (tmp / f"h{i}.db" for i in itertools.count())
    return lambda clock: HistoryStore(next(paths), clock=clock)


@example(ops=[("send", "ann", "r1", "a\x00b", False, None, None), ("edit", 0, "ann", "\x00")])
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(OPS, max_size=30))
def test_folded_history_matches_a_simple_model(model_store: Callable[[FakeClock], Any], ops: list[tuple[Any, ...]]
                                               ) -> None:
    async def run() -> None:
        clock = FakeClock()
        model, ids = Model(), list[str]()
        async with model_store(clock) as store:
            for i, op in enumerate(ops):
                clock.t = T0 + i
                await _apply(store, model, ids, op, iso_utc(clock.t))
            for room in ROOMS:
                expected = sorted(
                    (m for m in model.messages.values() if m.room == room), key=lambda m: m.seq
                )
                page = await store.history(room=room, limit=1000)
                assert page.messages == [m.folded() for m in expected]
                assert not page.has_more
                for user in USERS:
                    last = model.reads.get((user, room), 0)
                    unread = sum(1 for m in expected if m.seq > last and m.deleted_at is None)
                    assert await store.unread(user_id=user, room=room) == unread
                # exact resume: from every revision, every change after it, each once, as it is now
                rev = model.revs.get(room, 0)
                for after in range(rev + 1):
                    want = model.changes(room, after)
                    got = await store.changes(room=room, after_rev=after, limit=1000)
                    assert (got.changes, got.rev, got.has_more) == (want, rev, False), after
                    if len(want) > 2:  # paging by limit: the first two, and more to come
                        first = await store.changes(room=room, after_rev=after, limit=2)
                        assert (first.changes, first.has_more) == (want[:2], True)

    trio.run(run)
