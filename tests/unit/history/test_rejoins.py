"""Rejoin reads under a storm (signald.history.rejoins): shared while queued, each join answered once
and as if it had read alone, at most REJOIN_READS distinct reads queued at once.

The writer thread is held busy (an operation that waits for a threading.Event) while the joins
arrive, so that they find each other's reads still queued; the store is a real SQLite file.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from signald.history import queries
from signald.history.queries import Rejoin
from signald.history.rejoins import REJOIN_READS
from signald.history.store import HistoryStore
from signald.history.writes import SKIP


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[HistoryStore]:
    async with HistoryStore(tmp_path / "h.db") as store:
        for room in ("lobby", "other"):
            for i in range(12):
                await store.send(room=room, user_id="alice", body=f"{room} {i}")
        yield store


class Held:
    """Keeps the writer thread busy until released: what arrives meanwhile stays queued."""

    def __init__(self, store: HistoryStore) -> None:
        self.store = store
        self.release = threading.Event()
        self.busy = threading.Event()

    async def run(self) -> None:
        def wait(_conn: Any) -> tuple[None, Any]:
            self.busy.set()
            self.release.wait(10)
            return None, SKIP

        await self.store.run_on_connection(wait, write=False)

    async def start(self, nursery: trio.Nursery) -> None:
        """Once this returns, the thread is busy with the held operation."""
        nursery.start_soon(self.run)
        assert await trio.to_thread.run_sync(self.busy.wait, 10)


async def alone(store: HistoryStore, user: str, room: str, since_rev: int) -> Rejoin:
    """What one join reads without sharing (the reference)."""
    return await store.run_on_connection(
        lambda conn: (queries.rejoin(conn, user, room, None, since_rev, 200), SKIP), write=False)


async def test_joins_at_the_same_revision_share_one_read_and_each_gets_its_own_answer(
        store: HistoryStore) -> None:
    page = await store.history(room="lobby", limit=12)
    await store.mark_read(user_id="u3", room="lobby", message_id=page.messages[8].id)  # u3 read up to seq 9
    held = Held(store)
    answers: dict[str, Rejoin] = {}
    reads_before = store._rejoins.reads

    async def join(user: str) -> None:
        answers[user] = await store.rejoin(user_id=user, room="lobby", since=None, since_rev=7, limit=200)

    async with trio.open_nursery() as nursery:
        await held.start(nursery)
        for i in range(40):
            nursery.start_soon(join, f"u{i}")
        await trio.testing.wait_all_tasks_blocked()
        assert answers == {}  # all waiting behind the held thread
        held.release.set()
    assert store._rejoins.reads - reads_before == 1  # one read for the forty joins
    assert sorted(answers) == sorted(f"u{i}" for i in range(40))  # each answered, once
    for user in ("u0", "u3", "u39"):
        assert answers[user] == await alone(store, user, "lobby", 7)
    assert [c.rev for c in answers["u0"].changes or []] == [8, 9, 10, 11, 12]
    assert (answers["u0"].unread, answers["u3"].unread) == (12, 3)  # per user, not shared


async def test_a_read_the_thread_took_is_not_joined_and_other_ranges_read_apart(store: HistoryStore) -> None:
    held = Held(store)
    answers: dict[tuple[str, int], Rejoin] = {}
    reads_before = store._rejoins.reads

    async def join(room: str, since_rev: int) -> None:
        answers[room, since_rev] = await store.rejoin(user_id="bob", room=room, since=None, since_rev=since_rev,
                                                      limit=200)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(join, "lobby", 10)  # queued first: the thread takes it before the hold
        await trio.sleep(0.05)
        await held.start(nursery)
        nursery.start_soon(join, "lobby", 11)
        nursery.start_soon(join, "other", 11)
        await trio.testing.wait_all_tasks_blocked()
        held.release.set()
    assert store._rejoins.reads - reads_before == 3
    for (room, since_rev), answer in answers.items():
        assert answer == await alone(store, "bob", room, since_rev)


async def test_at_most_rejoin_reads_distinct_reads_wait_on_the_thread_at_once(store: HistoryStore) -> None:
    held = Held(store)
    answers: dict[tuple[str, str], Rejoin] = {}
    reads_before = store._rejoins.reads

    async def join(room: str, user: str) -> None:
        answers[room, user] = await store.rejoin(user_id=user, room=room, since=None, since_rev=0, limit=200)

    rooms = [f"r{i}" for i in range(REJOIN_READS + 4)]
    async with trio.open_nursery() as nursery:
        await held.start(nursery)
        for user in ("ann", "ben"):
            for room in rooms:
                nursery.start_soon(join, room, user)
        await trio.testing.wait_all_tasks_blocked()
        assert store.queued == REJOIN_READS  # the other 4 rooms wait their turn (and are joined meanwhile)
        held.release.set()
    assert store._rejoins.reads - reads_before == len(rooms)  # one per room, both users in each
    assert sorted(answers) == sorted((room, user) for room in rooms for user in ("ann", "ben"))
    assert all((a.rev, a.changes) == (0, []) for a in answers.values())
