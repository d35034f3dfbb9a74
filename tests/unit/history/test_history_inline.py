"""Inline commits: the run-queue probe, and what an inline commit reports when it is done."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel

from signald.history import inline
from signald.history.store import HistoryStore, StorageError
from signald.history.writer import Writer
from signald.protocol import ChatMessage


def test_tasks_runnable_reads_trios_run_queue_and_agrees_with_the_public_statistics() -> None:
    # The public statistics walk every registered fd; if a trio release moves the run queue,
    # signald falls back to them (correct, but O(fds) per idle send): this test says so.
    async def main() -> list[tuple[int, int]]:
        assert inline.reads_run_queue(), "trio moved its run queue: update signald.history.inline"
        seen = [(inline.tasks_runnable(), trio.lowlevel.current_statistics().tasks_runnable)]
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(trio.lowlevel.checkpoint)
            seen.append((inline.tasks_runnable(), trio.lowlevel.current_statistics().tasks_runnable))
        seen.append((inline.tasks_runnable(), trio.lowlevel.current_statistics().tasks_runnable))
        return seen

    assert trio.run(main) == [(0, 0), (3, 3), (0, 0)]


def test_outside_a_trio_run_the_probe_says_so() -> None:
    assert not inline.reads_run_queue()


async def test_a_message_committed_inline_is_acked_and_announced_when_the_writer_takes_no_more_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit asks the writer thread for a checkpoint; that the thread no longer takes work
    (it stopped) must not turn the committed message into an error."""
    monkeypatch.setattr(inline, "CHECKPOINT_INLINE", 1)  # every inline commit asks for a checkpoint
    async with HistoryStore(tmp_path / "h.db") as store:
        def stopped(self: Writer, op: Any) -> None:
            raise StorageError("history store is closed")

        monkeypatch.setattr(Writer, "put", stopped)
        await trio.lowlevel.checkpoint()  # a new turn of the loop: the send may go inline
        announced: list[ChatMessage] = []
        outcomes: list[tuple[Any, BaseException | None]] = []
        store.send_nowait(room="r", user_id="u", body="kept", on_commit=announced.append,
                          then=lambda result, error: outcomes.append((result, error)))
        assert store.inline_commits == 1
        assert [m.body for m in announced] == ["kept"]
        assert len(outcomes) == 1 and outcomes[0][1] is None and outcomes[0][0][0] == announced[0]
        monkeypatch.undo()
        assert [m.body for m in (await store.history(room="r")).messages] == ["kept"]
