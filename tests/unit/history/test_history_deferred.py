"""Sends deferred to the end of a busy scheduler pass: committed together in the Trio thread.

A real SQLite file each; "busy" means other Trio tasks are waiting to run when ``send_nowait``
is called (as when several connections' readers have frames in one pass).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from signald.errors import SignalError
from signald.history.store import HistoryStore, StorageError
from signald.history.writer import Writer

Outcome = tuple[Any, BaseException | None]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[HistoryStore]:
    async with HistoryStore(tmp_path / "history.db") as opened:
        yield opened


def send(store: HistoryStore, body: str, outcomes: list[Outcome], *, room: str = "lobby",
         announced: list[str] | None = None, parent_id: str | None = None) -> None:
    store.send_nowait(
        room=room, user_id="ann", body=body, parent_id=parent_id,
        then=lambda result, error: outcomes.append((result, error)),
        on_commit=(lambda m: announced.append(f"{m.room}:{m.seq}")) if announced is not None else None,
    )


def stored(path: Path) -> list[tuple[str, int, str]]:
    """What another connection (another process, say) reads from the file right now."""
    with sqlite3.connect(path) as other:
        return list(other.execute("SELECT room, seq, body FROM messages ORDER BY room, seq"))


def make_busy(nursery: trio.Nursery) -> None:
    """Other tasks waiting to run in this pass (readers with frames of their own)."""
    for _ in range(3):
        nursery.start_soon(trio.lowlevel.checkpoint)


async def test_sends_of_a_busy_pass_share_one_inline_commit_and_complete_in_call_order(
    store: HistoryStore, tmp_path: Path
) -> None:
    await trio.testing.wait_all_tasks_blocked()
    before = store.commits
    outcomes: list[Outcome] = []
    announced: list[str] = []
    async with trio.open_nursery() as nursery:
        make_busy(nursery)
        for i in range(10):
            send(store, f"m{i}", outcomes, room=f"r{i % 3}", announced=announced)
        assert outcomes == []  # not acked before it is stored
    await trio.testing.wait_all_tasks_blocked()
    assert [error for _, error in outcomes] == [None] * 10
    assert [result[0].body for result, _ in outcomes] == [f"m{i}" for i in range(10)]
    assert announced == ["r0:1", "r1:1", "r2:1", "r0:2", "r1:2", "r2:2", "r0:3", "r1:3", "r2:3", "r0:4"]
    assert (store.commits - before, store.inline_commits) == (1, 1)  # one transaction, no thread
    assert len(stored(tmp_path / "history.db")) == 10  # committed: another connection sees them


async def test_a_failing_send_in_a_deferred_batch_fails_alone(store: HistoryStore, tmp_path: Path) -> None:
    outcomes: list[Outcome] = []
    async with trio.open_nursery() as nursery:
        make_busy(nursery)
        send(store, "a", outcomes)
        send(store, "orphan", outcomes, parent_id="no-such-message")
        send(store, "b", outcomes)
    await trio.testing.wait_all_tasks_blocked()
    await store.get("none")  # behind them, should they have gone to the writer thread
    errors = [error for _, error in outcomes]
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], SignalError) and errors[1].code == "NOT_FOUND"
    assert [body for _, _, body in stored(tmp_path / "history.db")] == ["a", "b"]
    assert [result[0].seq for result, error in outcomes if error is None] == [1, 2]


async def test_an_operation_called_after_deferred_sends_sees_them(store: HistoryStore) -> None:
    outcomes: list[Outcome] = []
    async with trio.open_nursery() as nursery:
        make_busy(nursery)
        for i in range(5):
            send(store, f"m{i}", outcomes)
        page = await store.history(room="lobby")  # queued for the writer thread: the sends go first
    assert [m.body for m in page.messages] == [f"m{i}" for i in range(5)]
    assert len(outcomes) == 5 and store.inline_commits == 0  # the writer thread stored them


async def test_a_deferred_batch_never_waits_for_another_connections_lock_on_the_event_loop(
    store: HistoryStore, tmp_path: Path
) -> None:
    other = sqlite3.connect(tmp_path / "history.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # holds the database's write lock
        outcomes: list[Outcome] = []
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            make_busy(nursery)
            send(store, "waits", outcomes)
        await trio.testing.wait_all_tasks_blocked()  # the commit was tried: queued for the thread
        assert trio.current_time() - started < 1.0  # not the 5 s busy timeout, on the event loop
        assert outcomes == [] and store.inline_commits == 0
        other.execute("COMMIT")
        await store.get("none")  # behind the queued send
        assert outcomes[0][1] is None and outcomes[0][0][0].body == "waits"
    finally:
        other.close()


async def test_sends_deferred_when_the_store_closes_are_stored_and_acked(tmp_path: Path) -> None:
    outcomes: list[Outcome] = []
    async with HistoryStore(tmp_path / "history.db") as store, trio.open_nursery() as nursery:
        make_busy(nursery)
        send(store, "last", outcomes)
        await store.aclose()  # before the committer's pass came
    assert len(outcomes) == 1 and outcomes[0][1] is None
    assert stored(tmp_path / "history.db") == [("lobby", 1, "last")]


async def test_deferred_sends_fail_with_an_error_if_the_writer_thread_is_gone(
    store: HistoryStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A deferred batch that can neither commit inline nor be queued is failed, not lost."""
    other = sqlite3.connect(tmp_path / "history.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # the inline commit cannot begin: the batch must be queued

        def gone(self: Writer, op: Any) -> None:
            raise StorageError("history store is closed")

        monkeypatch.setattr(Writer, "put", gone)
        outcomes: list[Outcome] = []
        async with trio.open_nursery() as nursery:
            make_busy(nursery)
            send(store, "lost?", outcomes)
        await trio.testing.wait_all_tasks_blocked()
        assert len(outcomes) == 1 and isinstance(outcomes[0][1], StorageError)
        monkeypatch.undo()
        other.execute("COMMIT")
    finally:
        other.close()
