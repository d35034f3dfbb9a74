"""The WAL checkpoint that inline commits ask for does not hold up the sends made meanwhile.

Copying the WAL of 1,000 inline commits takes ~10 ms (its fsyncs); while it ran on the shared
connection, every ``chat.send`` waited for it. The bulk now runs on the writer thread's second
connection; these tests hold it mid-copy and send.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from signald.history.store import HistoryStore
from signald.history.writer import Writer

Outcome = tuple[Any, BaseException | None]


class HeldCheckpointer:
    """Stands for the writer's second connection: its checkpoint, once made, returns when released."""

    def __init__(self) -> None:
        self.conn: sqlite3.Connection | None = None
        self.started = threading.Event()
        self.release = threading.Event()

    def execute(self, sql: str) -> sqlite3.Cursor:
        assert self.conn is not None
        cursor = self.conn.execute(sql)
        if "wal_checkpoint" in sql:  # copied: now hold the thread, as a long copy would
            self.started.set()
            assert self.release.wait(10), "the test never released the checkpoint"
        return cursor


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> HeldCheckpointer:
    """The held second connection of the store a test opens; checkpoints every 3 inline commits."""
    monkeypatch.setattr("signald.history.inline.CHECKPOINT_INLINE", 3)
    checkpointer = HeldCheckpointer()
    opened = getattr(Writer, "_w_checkpointer", None)

    def wrapped(self: Writer) -> Any:
        if checkpointer.conn is None:
            assert opened is not None, "the writer has no second connection to checkpoint on"
            checkpointer.conn = opened(self)
        return checkpointer

    monkeypatch.setattr(Writer, "_w_checkpointer", wrapped, raising=False)
    return checkpointer


async def send_inline(store: HistoryStore, body: str, outcomes: list[Outcome]) -> None:
    await trio.testing.wait_all_tasks_blocked()  # a turn of an otherwise idle loop: committed inline
    store.send_nowait(room="lobby", user_id="ann", body=body,
                      then=lambda result, error: outcomes.append((result, error)))


async def wait_for(event: threading.Event) -> None:
    with trio.fail_after(10):
        await trio.to_thread.run_sync(event.wait)


async def test_sends_are_committed_inline_while_the_writer_thread_checkpoints(
    tmp_path: Path, held: HeldCheckpointer
) -> None:
    async with HistoryStore(tmp_path / "h.db") as store:
        outcomes: list[Outcome] = []
        for i in range(3):  # the third asks the writer thread for a checkpoint
            await send_inline(store, f"before {i}", outcomes)
        await wait_for(held.started)
        for i in range(2):  # the checkpoint is mid-copy: these do not wait for it
            await send_inline(store, f"during {i}", outcomes)
            assert len(outcomes) == 4 + i and outcomes[-1][1] is None
        assert store.inline_commits == 5 and store.checkpoints == 0
        held.release.set()
        await store.get("none")  # through the writer thread: after its checkpoint
        assert store.checkpoints == 1
        history = await store.history(room="lobby", limit=10)
        assert [m.body for m in history.messages] == [*(f"before {i}" for i in range(3)), "during 0", "during 1"]


async def test_the_wal_starts_again_after_a_checkpoint_that_sends_overlapped(
    tmp_path: Path, held: HeldCheckpointer
) -> None:
    """Frames committed during the copy are copied too (under the lock, a few pages), so the next
    write starts the WAL again from its beginning instead of growing it."""
    path = tmp_path / "h.db"
    async with HistoryStore(path) as store:
        outcomes: list[Outcome] = []
        for _ in range(3):
            await send_inline(store, "x" * 3000, outcomes)
        await wait_for(held.started)
        await send_inline(store, "during the copy", outcomes)
        held.release.set()
        await store.get("none")
        assert store.checkpoints == 1
        await send_inline(store, "after", outcomes)  # restarts the WAL: it was copied to its end
        with sqlite3.connect(path) as other:
            _, frames, _ = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert 0 < frames <= 6, frames  # the last send's pages only, not every page since the start
        assert [error for _, error in outcomes] == [None] * 5
